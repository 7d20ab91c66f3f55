//! The observables of the theory, in the order [`specs`] lists them: `plaquette`,
//! `chiral_condensate`, `pion_correlator` (optional), `cg_iterations`, and where the theory has
//! a topological charge `topological_charge` and `topological_susceptibility` (see the crate
//! docs for definitions and normalisations).

use std::cell::Cell;
use std::rc::Rc;

use latflow_core::abi::{ObservableSpec, PluginError};
use latflow_core::gauge::fermion::{
    dot, CgParams, Colour, DiracGauge, FermionError, HopCached, SolverWork, Spinor, SpinorOf, WilsonDirac,
    WilsonGroup,
};
use latflow_core::gauge::gradflow::{self, FlowGroup};
use latflow_core::gauge::{mean_plaquette, u1_geometric_charge, Complex, Su2, Su3, U1Angle};
use latflow_core::{ErrorKind, Stream};

use crate::terms::{links, Plain};
use crate::Qcd;

/// The observable list.
pub fn specs(t: &Qcd) -> Vec<ObservableSpec> {
    let spec = ObservableSpec::scalar;
    let c = t.condensate();
    let how = if c.exact {
        "exact trace over all unit sources".to_string()
    } else {
        format!(
            "{} complex Z2 noise sources, seed {} and a stream hashed from the configuration",
            c.sources, c.seed
        )
    };
    [
        spec("plaquette", "mean of Re Tr U_P / N over all sites and planes mu < nu (cos theta_P for U(1))"),
        spec(
            "chiral_condensate",
            &format!("Sigma = (1/V) Re Tr D_m^-1, D_m = D/(2 kappa), trace over sites, spin, colour; {how}"),
        ),
    ]
    .into_iter()
    .chain(t.pion().then(|| {
        ObservableSpec::new(
            "pion_correlator",
            t.lattice().time_extent(),
            "C(t) = sum_x tr |S(x, t; 0)|^2, S = D_m^-1 = 2 kappa D^-1 from a point source at the origin (all spins and colours); \
             t = 0 .. T-1 along the last axis",
        )
    }))
    .chain([spec("cg_iterations", "CG iterations of one evaluation of the pseudofermion action (all terms) at the reference fields")])
    .chain(topology_specs(t))
    .collect()
}

/// `topological_charge` and `topological_susceptibility` where the theory has a charge
/// ([`Qcd::has_topology`]).
fn topology_specs(t: &Qcd) -> Vec<ObservableSpec> {
    let how = match t.flow() {
        None if t.has_topology() => "geometric: (1/2pi) sum_x arg U_01(x), arg in (-pi, pi]; an integer".to_string(),
        None => return Vec::new(),
        Some(f) => format!(
            "clover Q = (1/32pi^2) sum_x eps_{{mu nu rho sigma}} Tr F_{{mu nu}} F_{{rho sigma}} after gradient flow to t/a^2 = {} \
             ({} flow, RK3, eps {})",
            f.time,
            f.options.scheme.name(),
            f.options.eps
        ),
    };
    vec![
        ObservableSpec::scalar("topological_charge", &format!("Q, {how}")),
        ObservableSpec::scalar("topological_susceptibility", "Q^2/V per configuration (its mean is chi_top)"),
    ]
}

/// The topological charge of a group's links, where [`Qcd::has_topology`] says there is one:
/// geometric for U(1) in 2D, clover after the card's gradient flow for SU(N) in 4D.
pub trait Topology: Sized {
    /// Q of `links`, or `None` where the theory measures none.
    fn charge(t: &Qcd, links: &[Self]) -> Result<Option<f64>, PluginError>;
}

impl Topology for U1Angle {
    fn charge(t: &Qcd, links: &[Self]) -> Result<Option<f64>, PluginError> {
        Ok(u1_geometric_charge(t.lattice(), links))
    }
}

/// Flows a copy of the links to the card's flow time and returns the clover charge there.
fn flowed_charge<G: FlowGroup>(t: &Qcd, links: &[G]) -> Result<Option<f64>, PluginError> {
    let Some(f) = t.flow() else { return Ok(None) };
    let mut flowed = links.to_vec();
    let points = gradflow::flow_measurements(t.lattice(), &mut flowed, &[f.time], &f.options)
        .map_err(|e| PluginError::new(ErrorKind::Numerical, format!("topological_charge: gradient flow to t = {}: {e}", f.time)))?;
    Ok(points.first().and_then(|p| p.q))
}

impl Topology for Su2 {
    fn charge(t: &Qcd, links: &[Self]) -> Result<Option<f64>, PluginError> {
        flowed_charge(t, links)
    }
}

impl Topology for Su3 {
    fn charge(t: &Qcd, links: &[Self]) -> Result<Option<f64>, PluginError> {
        flowed_charge(t, links)
    }
}

/// A stream id from the configuration's bits (FNV-1a over the f64 bit patterns).
fn config_hash(config: &[f64]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in config {
        h ^= x.to_bits();
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Solves D ψ = η (even–odd when the theory is), counting nothing; errors name the observable.
fn solve<G: WilsonGroup, const NS: usize>(
    d: &WilsonDirac<G, NS>,
    eo: bool,
    g: &dyn DiracGauge<G>,
    eta: &[SpinorOf<G, NS>],
    psi: &mut [SpinorOf<G, NS>],
    work: &mut SolverWork<SpinorOf<G, NS>>,
    params: &CgParams,
) -> Result<(), FermionError> {
    psi.iter_mut().for_each(|s| *s = Spinor::default());
    if eo {
        d.solve_eo(g, eta, psi, work, params)?;
    } else {
        d.solve(g, eta, psi, work, params)?;
    }
    Ok(())
}

/// The operator of the first κ of `t` with zeroed source and solution vectors and solver
/// buffers: what both fermionic observables start from.
#[allow(clippy::type_complexity)]
fn light_operator<G: WilsonGroup, const NS: usize>(
    t: &Qcd,
) -> Result<(WilsonDirac<G, NS>, Vec<SpinorOf<G, NS>>, Vec<SpinorOf<G, NS>>, SolverWork<SpinorOf<G, NS>>), FermionError> {
    let d = t.dirac::<G, NS>(t.kappas()[0])?;
    let v = d.volume();
    Ok((d, vec![Spinor::default(); v], vec![Spinor::default(); v], SolverWork::new(v)))
}

/// Runs `f` with the gauge field `d` sees on the links `l`: the links themselves, or dressed
/// with the clover field when c_sw ≠ 0.
fn on_links<G: WilsonGroup + bytemuck::Pod, const NS: usize, R>(
    d: &WilsonDirac<G, NS>,
    l: &[G],
    f: impl FnOnce(&dyn DiracGauge<G>) -> Result<R, FermionError>,
) -> Result<R, FermionError> {
    if d.params().csw != 0.0 {
        let mut field = d.new_clover_field()?;
        f(&HopCached::new(&d.clover_gauge(l, &mut field)?))
    } else {
        f(&HopCached::new(&Plain(l)))
    }
}

/// (2κ/V) Re Tr D⁻¹ on the links `l`.
fn condensate<G: WilsonGroup + bytemuck::Pod, const NS: usize>(
    t: &Qcd,
    l: &[G],
    config: &[f64],
) -> Result<f64, FermionError> {
    let kappa = t.kappas()[0];
    let (d, mut eta, mut psi, mut work) = light_operator::<G, NS>(t)?;
    let v = d.volume();
    let params = t.solvers().action;
    let c = t.condensate();
    let nc = <G as latflow_core::gauge::GaugeGroup>::NC;
    let run = |g: &dyn DiracGauge<G>| -> Result<f64, FermionError> {
        let mut sum = latflow_core::sum::CompensatedSum::new();
        if c.exact {
            for x in 0..v {
                for s in 0..NS {
                    for a in 0..nc {
                        eta[x].0[s].components_mut()[a] = Complex::new(1.0, 0.0);
                        solve(&d, t.even_odd(), g, &eta, &mut psi, &mut work, &params)?;
                        sum.add(psi[x].0[s].components()[a].re);
                        eta[x].0[s].components_mut()[a] = Complex::ZERO;
                    }
                }
            }
            return Ok(sum.value());
        }
        let mut rng = Stream::new(c.seed, config_hash(config));
        let h = std::f64::consts::FRAC_1_SQRT_2;
        for _ in 0..c.sources {
            for sp in eta.iter_mut() {
                for col in sp.0.iter_mut() {
                    for z in col.components_mut() {
                        let bits = rng.next_u64();
                        let re = if bits & 1 == 0 { h } else { -h };
                        let im = if bits & 2 == 0 { h } else { -h };
                        *z = Complex::new(re, im);
                    }
                }
            }
            solve(&d, t.even_odd(), g, &eta, &mut psi, &mut work, &params)?;
            sum.add(dot(&eta, &psi).re);
        }
        Ok(sum.value() / f64::from(c.sources))
    };
    let trace = on_links(&d, l, run)?;
    Ok(2.0 * kappa * trace / v as f64)
}

/// The pion correlator C(t) = (2κ)² Σ_{x⃗} Σ_{s,a} |ψ_{s,a}(x⃗, t)|², ψ_{s,a} = D⁻¹ e_{0,s,a}:
/// by γ5-hermiticity the charged pion two-point function Σ_x⃗ tr[S(x,0) γ5 S(0,x) γ5] from a point
/// source at the origin.
fn pion<G: WilsonGroup + bytemuck::Pod, const NS: usize>(
    t: &Qcd,
    l: &[G],
) -> Result<Vec<f64>, FermionError> {
    let kappa = t.kappas()[0];
    let (d, mut eta, mut psi, mut work) = light_operator::<G, NS>(t)?;
    let nt = t.lattice().time_extent();
    let params = t.solvers().action;
    let nc = <G as latflow_core::gauge::GaugeGroup>::NC;
    let mut sums = vec![latflow_core::sum::CompensatedSum::new(); nt];
    let run = |g: &dyn DiracGauge<G>| -> Result<(), FermionError> {
        for s in 0..NS {
            for a in 0..nc {
                eta[0].0[s].components_mut()[a] = Complex::new(1.0, 0.0);
                solve(&d, t.even_odd(), g, &eta, &mut psi, &mut work, &params)?;
                eta[0].0[s].components_mut()[a] = Complex::ZERO;
                for (x, p) in psi.iter().enumerate() {
                    sums[t.lattice().time(x)].add(p.norm2());
                }
            }
        }
        Ok(())
    };
    on_links(&d, l, run)?;
    Ok(sums
        .iter()
        .map(|s| 4.0 * kappa * kappa * s.value())
        .collect())
}

/// Appends the observables of one configuration in [`specs`] order.
pub fn measure<G, const NS: usize>(
    t: &Qcd,
    config: &[f64],
    out: &mut Vec<f64>,
) -> Result<(), PluginError>
where
    G: WilsonGroup + Topology + bytemuck::Pod,
    G::Algebra: bytemuck::Pod,
{
    let l = links::<G>(config);
    out.push(mean_plaquette(t.lattice(), l));
    let sigma = condensate::<G, NS>(t, l, config)
        .map_err(|e| PluginError::new(ErrorKind::Numerical, format!("chiral_condensate: {e}")))?;
    out.push(sigma);
    if t.pion() {
        let c = pion::<G, NS>(t, l)
            .map_err(|e| PluginError::new(ErrorKind::Numerical, format!("pion_correlator: {e}")))?;
        out.extend(c);
    }
    let count = Rc::new(Cell::new(0));
    let levels = t.levels_counted::<G, NS>(count.clone())?;
    levels
        .action(&config.to_vec())
        .map_err(|e| PluginError::new(ErrorKind::ActionTerm, e.to_string()))?;
    out.push(count.get() as f64);
    if let Some(q) = G::charge(t, l)? {
        out.extend([q, q * q / t.lattice().volume() as f64]);
    }
    Ok(())
}
