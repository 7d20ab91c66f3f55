//! The observables of the SU(N) theory, in the order [`specs`] lists them.

use latflow_core::abi::ObservableSpec;

use crate::kernel::{self, SunGroup};
use crate::Sun;

/// The observable list: plaquette (and its spatial and temporal parts in d > 2), rectangle,
/// action density, Polyakov loop (Re, Im), then the Wilson loops of the card.
pub fn specs(t: &Sun) -> Vec<ObservableSpec> {
    let spec = ObservableSpec::scalar;
    let mut specs = vec![spec("plaquette", "mean of Re Tr U_P / N over all sites and planes mu < nu")];
    if t.lattice().dim() > 2 {
        specs.push(spec("plaquette_spatial", "mean of Re Tr U_P / N over planes without the last (time) axis"));
        specs.push(spec("plaquette_temporal", "mean of Re Tr U_P / N over planes containing the last (time) axis"));
    }
    specs.push(spec("rectangle", "mean of Re Tr U_R / N over all 2x1 rectangles, both orientations"));
    specs.push(spec("action_density", "S/V, V = number of sites"));
    specs.push(ObservableSpec::new(
        "polyakov_loop",
        2,
        "(Re, Im) of the mean over spatial sites of Tr prod_t U_{d-1}(x, t) / N (the last axis is time)",
    ));
    for &(r, q) in &t.loops {
        specs.push(spec(
            &format!("wilson_loop_{r}x{q}"),
            &format!("mean Re Tr W / N of the {r}x{q} loop over sites and planes mu<nu, R={r} along mu, T={q} along nu"),
        ));
    }
    specs
}

/// Appends the observables of one configuration (links `u`) in [`specs`] order.
pub fn measure<G: SunGroup>(t: &Sun, u: &[G], out: &mut Vec<f64>) {
    let lat = t.lattice();
    let (d, v, n) = (lat.dim(), lat.volume() as f64, t.n() as f64);
    let k = t.coefficients();
    let [all, spatial, temporal] = kernel::plaquette_sums(lat, u);
    let planes = (d * (d - 1) / 2) as f64;
    out.push(all / (v * planes * n));
    if d > 2 {
        out.push(spatial / (v * ((d - 1) * (d - 2) / 2) as f64 * n));
        out.push(temporal / (v * (d - 1) as f64 * n));
    }
    let rect = kernel::rectangle_sum(lat, u);
    out.push(rect / (v * (d * (d - 1)) as f64 * n));
    let w0 = k.beta * k.c0 / n;
    let w1 = k.beta * k.c1 / n;
    out.push(-(w0 * all + w1 * rect) / v);
    out.extend(kernel::polyakov_loop(lat, u));
    for &(r, q) in &t.loops {
        out.push(kernel::wilson_loop(lat, u, r, q));
    }
}
