//! The observables of the SU(N) theory, in the order [`specs`] lists them.

use latflow_core::abi::{ObservableSpec, PluginError};
use latflow_core::gauge::gradflow;
use latflow_core::ErrorKind;

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
    if let Some(f) = t.flow() {
        let at = format!("after gradient flow to t/a^2 = {} ({} flow, RK3, eps {})", f.time, f.options.scheme.name(), f.options.eps);
        specs.push(spec("energy_density", &format!("clover E = -1/2 sum_mu,nu Tr F_mu,nu^2 per site, {at}")));
        specs.push(spec("t2_energy_density", &format!("t^2 E (clover), {at}")));
        if t.lattice().dim() == 4 {
            specs.push(spec("topological_charge", &format!("clover Q = -1/(32 pi^2) sum_x eps Tr F F, {at}")));
            specs.push(spec("topological_susceptibility", &format!("Q^2/V per configuration (its mean is chi_top a^4), {at}")));
        }
    }
    specs
}

/// Appends the observables of one configuration (links `u`) in [`specs`] order.
pub fn measure<G: SunGroup>(t: &Sun, u: &[G], out: &mut Vec<f64>) -> Result<(), PluginError> {
    measure_with(t, u, kernel::plaquette_sums(t.lattice(), u), out)
}

/// [`measure`] with the plaquette sums [all, spatial, temporal] of `u` given (a split lattice
/// sums them over its ranks' slabs with halos).
pub fn measure_with<G: SunGroup>(t: &Sun, u: &[G], plaquettes: [f64; 3], out: &mut Vec<f64>) -> Result<(), PluginError> {
    let lat = t.lattice();
    let (d, v, n) = (lat.dim(), lat.volume() as f64, t.n() as f64);
    let k = t.coefficients();
    let [all, spatial, temporal] = plaquettes;
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
    if let Some(f) = t.flow() {
        let mut flowed = u.to_vec();
        let point = gradflow::flow_measurements(lat, &mut flowed, &[f.time], &f.options)
            .map_err(|e| PluginError::new(ErrorKind::Numerical, format!("gradient flow to t = {}: {e}", f.time)))?;
        let p = &point[0];
        out.push(p.e_clover);
        out.push(p.t2e);
        if let Some(q) = p.q {
            out.push(q);
            out.push(q * q / v);
        }
    }
    Ok(())
}
