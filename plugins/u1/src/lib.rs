//! latflow theory plugin: compact U(1) Wilson gauge theory in any dimension d ≥ 2.
//!
//! The field is one angle θ_μ(x) ∈ ℝ (any representative, periodic with 2π) per link, stored
//! `[site][μ]` with sites row-major (last axis fastest). The action is
//!
//! ```text
//! S[θ] = −β Σ_x Σ_{μ<ν} cos θ_P(x; μ, ν),   θ_P(x; μ, ν) = θ_μ(x) + θ_ν(x+μ̂) − θ_μ(x+ν̂) − θ_ν(x)
//! ```
//!
//! with Haar measure Π dθ/2π (docs/reference.md §3). Run-card keys (`[theory]`): `lattice`, `beta`
//! (finite, ≥ 0; β = 0 is the pure Haar measure) and `wilson_loops` (a list of [R, T] sizes,
//! default `[[1, 1], [2, 2]]`), and optionally `defect = [e_0, …, e_{d−1}]`: the plaquettes at
//! the sites of the box 0 ≤ x_i < e_i form a defect whose coupling is β·w (see [`Defect`]), or
//! `defect_sites = [[x_0, …, x_{d−1}], …]`: the plaquettes at the listed sites do.
//! Parameters for `parameter`/`set_parameter` (and card keys): `beta`, and with a defect
//! `defect_coupling` (w: 1, the plain theory, by default; finite and ≥ 0). An `anneal` step
//! that opens the defect (`parameter = "defect_coupling"`, `to = 0`) lets the topological charge
//! move at any β. The theory's own step kind `defect_snf` (2D, any defect) does the
//! same through trained flow layers, a stochastic normalizing flow over the defect (see
//! [`defect_flow`]).
//!
//! HMC moves the angles along real momenta (U(1)'s Lie algebra), θ ← θ + εp, with the force
//! ∂S/∂θ (the same Euclidean gradient that `action_grad` returns), and wraps the angles into
//! (−π, π] at the end of each trajectory's integration. One time scale only.

pub mod defect_flow;
mod kernel;

use latflow_core::abi::{parse_config, HmcParams, ObservableSpec, PluginError, Start};
use latflow_core::hmc::{ActionTerm, LeveledAction, TermError};
use latflow_core::layout::{ElementKind, FieldLayout, Support};
use latflow_core::sdk::Physics;

/// β of a gauge card: finite and ≥ 0 (shared by the gauge plugins, in core).
pub use latflow_core::gauge::check_beta;
use latflow_core::{Lattice, Stream};
use serde::Deserialize;

pub use defect_flow::{flux_field, CircleMap, DefectGeometry};
pub use kernel::{wrap_angle, Defect, Kernel};
pub use latflow_core::hmc::Angles;

/// The run card's `[theory]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    lattice: Vec<i64>,
    beta: f64,
    #[serde(default = "default_loops")]
    wilson_loops: Vec<[i64; 2]>,
    #[serde(default)]
    defect: Option<Vec<i64>>,
    #[serde(default)]
    defect_sites: Option<Vec<Vec<i64>>>,
    #[serde(default)]
    defect_coupling: Option<f64>,
}

fn default_loops() -> Vec<[i64; 2]> {
    vec![[1, 1], [2, 2]]
}

/// θ_μ(x) → θ_μ(x) + α(x) − α(x+μ̂) for every link: the gauge transformation by
/// g(x) = e^{iα(x)}, U_μ(x) → g(x) U_μ(x) g(x+μ̂)*. `alpha` holds one angle per site.
pub fn gauge_transform(lattice: &Lattice, config: &[f64], alpha: &[f64]) -> Vec<f64> {
    let d = lattice.dim();
    assert_eq!(config.len(), lattice.volume() * d, "configuration length");
    assert_eq!(alpha.len(), lattice.volume(), "one gauge angle per site");
    let mut out = config.to_vec();
    for x in 0..lattice.volume() {
        for mu in 0..d {
            out[x * d + mu] += alpha[x] - alpha[lattice.fwd(x, mu)];
        }
    }
    out
}

/// The Wilson action as the one HMC term.
#[derive(Clone, Copy)]
pub struct WilsonAction<'a> {
    pub kernel: &'a Kernel,
    pub beta: f64,
}

impl ActionTerm<Angles> for WilsonAction<'_> {
    fn name(&self) -> &str {
        "wilson"
    }

    fn action(&self, u: &Vec<f64>) -> Result<f64, TermError> {
        Ok(self.kernel.action(u, self.beta))
    }

    fn force(&self, u: &Vec<f64>, out: &mut Vec<f64>) -> Result<(), TermError> {
        self.kernel.gradient(u, self.beta, out);
        Ok(())
    }
}

/// The U(1) theory: lattice, β, the measured Wilson loops and the kernel.
pub struct U1 {
    lattice: Lattice,
    kernel: Kernel,
    beta: f64,
    loops: Vec<(usize, usize)>,
    /// The `defect_snf` step's geometry and trained layers.
    defect_flows: defect_flow::Cache,
}

impl U1 {
    /// β.
    pub fn beta(&self) -> f64 {
        self.beta
    }

    /// The lattice.
    pub fn lattice(&self) -> &Lattice {
        &self.lattice
    }

    /// Whether the card declared a `defect`.
    fn has_defect(&self) -> bool {
        !self.kernel.defect().plaquettes.is_empty()
    }

    /// w: finite and ≥ 0.
    fn check_defect_coupling(w: f64) -> Result<f64, PluginError> {
        if w.is_finite() && w >= 0.0 {
            Ok(w)
        } else {
            Err(PluginError::config(format!("defect_coupling: must be finite and ≥ 0, got {w}")))
        }
    }

    /// `defect_coupling` asked of a theory without a defect: say how to declare one.
    fn no_defect(&self, name: &str, e: PluginError) -> PluginError {
        if name == "defect_coupling" {
            PluginError::unsupported("u1 has no parameter 'defect_coupling' without a [theory] defect = [extents] box or defect_sites = [[x, y], ...]")
        } else {
            e
        }
    }

    /// The kernel (action, force, observables).
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// The validated `defect` box: one extent per axis, each in 1..=L_i.
    fn defect_box(lattice: &Lattice, extent: &[i64]) -> Result<Vec<usize>, PluginError> {
        let shape = lattice.shape();
        if extent.len() != shape.len() {
            return Err(PluginError::config(format!(
                "defect: needs one extent per axis ({} for the lattice {shape:?}), got {}",
                shape.len(),
                extent.len()
            )));
        }
        extent
            .iter()
            .zip(shape)
            .enumerate()
            .map(|(i, (&e, &l))| {
                if e >= 1 && e as usize <= l {
                    Ok(e as usize)
                } else {
                    Err(PluginError::config(format!("defect[{i}]: must lie in 1..={l} (the lattice extent), got {e}")))
                }
            })
            .collect()
    }

    /// The validated `defect_sites`: one coordinate per axis, each in 0..L_i, no site twice, at
    /// least one site; returns site indices.
    fn defect_sites(lattice: &Lattice, sites: &[Vec<i64>]) -> Result<Vec<usize>, PluginError> {
        let shape = lattice.shape();
        if sites.is_empty() {
            return Err(PluginError::config("defect_sites: needs at least one site"));
        }
        let mut out: Vec<usize> = Vec::with_capacity(sites.len());
        for (i, c) in sites.iter().enumerate() {
            if c.len() != shape.len() {
                return Err(PluginError::config(format!(
                    "defect_sites[{i}]: needs one coordinate per axis ({} for the lattice {shape:?}), got {}",
                    shape.len(),
                    c.len()
                )));
            }
            if let Some((axis, (&x, &l))) = c.iter().zip(shape).enumerate().find(|(_, (&x, &l))| x < 0 || x as usize >= l) {
                return Err(PluginError::config(format!("defect_sites[{i}][{axis}]: must lie in 0..{l}, got {x}")));
            }
            let x = lattice.index(&c.iter().map(|&x| x as usize).collect::<Vec<_>>());
            if out.contains(&x) {
                return Err(PluginError::config(format!("defect_sites[{i}]: {c:?} is listed twice")));
            }
            out.push(x);
        }
        Ok(out)
    }

    /// The validated Wilson-loop sizes of the card.
    fn loops(kernel: &Kernel, lattice: &Lattice, sizes: &[[i64; 2]]) -> Result<Vec<(usize, usize)>, PluginError> {
        let mut loops: Vec<(usize, usize)> = Vec::with_capacity(sizes.len());
        for (i, &[r, t]) in sizes.iter().enumerate() {
            let key = format!("wilson_loops[{i}]");
            if r < 1 || t < 1 {
                return Err(PluginError::config(format!("{key}: loop sizes must be at least 1, got [{r}, {t}]")));
            }
            let (r, t) = (r as usize, t as usize);
            if !kernel.loop_fits(r, t) {
                return Err(PluginError::config(format!(
                    "{key}: a {r}x{t} loop does not fit the lattice {:?} (R runs along μ, T along ν, for every plane μ < ν)",
                    lattice.shape()
                )));
            }
            if loops.contains(&(r, t)) {
                return Err(PluginError::config(format!("{key}: {r}x{t} is listed twice")));
            }
            loops.push((r, t));
        }
        Ok(loops)
    }
}

impl Physics for U1 {
    const NAME: &'static str = "u1";
    type Space = Angles;

    fn from_config(json: &str) -> Result<Self, PluginError> {
        let cfg: Config = parse_config(json)?;
        let lattice = latflow_core::gauge::gauge_lattice(&cfg.lattice)?;
        let beta = check_beta(cfg.beta)?;
        let mut kernel = Kernel::new(&lattice);
        match (&cfg.defect, &cfg.defect_sites, cfg.defect_coupling) {
            (Some(_), Some(_), _) => {
                return Err(PluginError::config(
                    "defect_sites: give either a defect box (defect = [extents]) or defect_sites, not both",
                ));
            }
            (Some(extent), None, w) => {
                kernel.set_defect_box(&Self::defect_box(&lattice, extent)?);
                kernel.set_defect_coupling(Self::check_defect_coupling(w.unwrap_or(1.0))?);
            }
            (None, Some(sites), w) => {
                kernel.set_defect_sites(&Self::defect_sites(&lattice, sites)?);
                kernel.set_defect_coupling(Self::check_defect_coupling(w.unwrap_or(1.0))?);
            }
            (None, None, Some(_)) => {
                return Err(PluginError::config(
                    "defect_coupling: needs a defect box, defect = [extents], or defect_sites = [[x, y], ...]",
                ));
            }
            (None, None, None) => {}
        }
        let loops = Self::loops(&kernel, &lattice, &cfg.wilson_loops)?;
        Ok(Self { lattice, kernel, beta, loops, defect_flows: defect_flow::Cache::default() })
    }

    fn layout(&self) -> FieldLayout {
        FieldLayout::single(self.lattice.shape(), "links", Support::Link, ElementKind::Angle)
    }

    fn params_json(&self) -> serde_json::Value {
        let loops: Vec<[usize; 2]> = self.loops.iter().map(|&(r, t)| [r, t]).collect();
        serde_json::json!({
            "lattice": self.lattice.shape(),
            "beta": self.beta,
            "wilson_loops": loops,
            "defect_plaquettes": self.kernel.defect().plaquettes.len(),
            "defect_coupling": self.kernel.defect().coupling,
            "convention": "S = -beta sum_P w_P cos(theta_P), w_P = defect_coupling on the defect's plaquettes and 1 elsewhere, theta_P = th_mu(x) + th_nu(x+mu) - th_mu(x+nu) - th_nu(x); links [site][mu]",
        })
    }

    fn parameter(&self, name: &str) -> Result<f64, PluginError> {
        match name {
            "defect_coupling" if self.has_defect() => Ok(self.kernel.defect().coupling),
            _ => latflow_core::gauge::beta_parameter(Self::NAME, self.beta, name).map_err(|e| self.no_defect(name, e)),
        }
    }

    fn set_parameter(&mut self, name: &str, value: f64) -> Result<(), PluginError> {
        match name {
            "defect_coupling" if self.has_defect() => {
                self.kernel.set_defect_coupling(Self::check_defect_coupling(value)?);
                Ok(())
            }
            _ => latflow_core::gauge::set_beta_parameter(Self::NAME, &mut self.beta, name, value)
                .map_err(|e| self.no_defect(name, e)),
        }
    }

    fn observables(&self) -> Vec<ObservableSpec> {
        let spec = ObservableSpec::scalar;
        let mut specs = vec![
            spec("plaquette", "mean of cos(theta_P) over all plaquettes"),
            spec("action_density", "S/V, V = number of sites"),
        ];
        if self.lattice.dim() == 2 {
            specs.push(spec(
                "topological_charge",
                "Q = (1/2pi) sum_P wrap(theta_P), wrap into (-pi, pi]; an integer (rounded)",
            ));
            specs.push(spec("topological_susceptibility", "Q^2/V per configuration (its mean is chi_top)"));
        }
        for &(r, t) in &self.loops {
            specs.push(spec(
                &format!("wilson_loop_{r}x{t}"),
                &format!("mean cos of the {r}x{t} loop over sites and planes mu<nu, R={r} along mu, T={t} along nu"),
            ));
        }
        specs
    }

    fn measure(&self, theta: &[f64], out: &mut Vec<f64>) -> Result<(), PluginError> {
        self.kernel.observables(theta, self.beta, &self.loops, out);
        Ok(())
    }

    fn action(&self, theta: &[f64]) -> f64 {
        self.kernel.action(theta, self.beta)
    }

    fn action_grad(&self, theta: &[f64], grad: &mut [f64]) -> f64 {
        self.kernel.action_and_gradient(theta, self.beta, grad)
    }

    fn initial(&self, start: Start, rng: &mut Stream) -> Vec<f64> {
        let mut theta = vec![0.0; self.kernel.n_links()];
        if start == Start::Hot {
            // uniform in (−π, π]: π − 2πu with u ∈ [0, 1)
            theta.iter_mut().for_each(|t| *t = std::f64::consts::PI - std::f64::consts::TAU * rng.uniform());
        }
        theta
    }

    fn space(&self) -> Angles {
        Angles { len: self.kernel.n_links() }
    }

    fn action_levels(&self, _params: &HmcParams) -> Result<LeveledAction<'_, Angles>, PluginError> {
        Ok(LeveledAction::single(Box::new(WilsonAction { kernel: &self.kernel, beta: self.beta })))
    }

    fn random_gauge_transform(&self, config: &[f64], rng: &mut Stream) -> Option<Vec<f64>> {
        let alpha: Vec<f64> = (0..self.lattice.volume()).map(|_| 10.0 * (rng.uniform() - 0.5)).collect();
        Some(gauge_transform(&self.lattice, config, &alpha))
    }

    fn step_kinds(&self) -> Vec<&'static str> {
        vec![defect_flow::KIND]
    }

    fn step_columns(&self, kind: &str, options: &serde_json::Value) -> Result<Vec<String>, PluginError> {
        if kind != defect_flow::KIND {
            return Err(latflow_core::sdk::unknown_step(Self::NAME, kind, &self.step_kinds()));
        }
        defect_flow::Options::parse(options)?;
        self.defect_flows.geometry(&self.kernel, &self.lattice)?;
        Ok(defect_flow::COLUMNS.iter().map(|c| c.to_string()).collect())
    }

    fn step(
        &self,
        kind: &str,
        options: &serde_json::Value,
        config: &mut [f64],
        rng: &mut Stream,
        out: &mut Vec<f64>,
    ) -> Result<(), PluginError> {
        if kind != defect_flow::KIND {
            return Err(latflow_core::sdk::unknown_step(Self::NAME, kind, &self.step_kinds()));
        }
        let options = defect_flow::Options::parse(options)?;
        let geometry = self.defect_flows.geometry(&self.kernel, &self.lattice)?;
        let protocol = defect_flow::Protocol::new(geometry, self.beta, self.kernel.defect().coupling, &options)?;
        defect_flow::apply(&protocol, &self.defect_flows, config, rng, out)
    }
}

latflow_core::export_theory!(U1,
description: "compact U(1) Wilson gauge theory, any dimension >= 2: S = -beta sum_P cos(theta_P)",
provides: [
    "keys: lattice, beta, wilson_loops (default [[1, 1], [2, 2]]), defect (a box of sites: its plaquettes' coupling is beta*defect_coupling) or defect_sites (a list of sites), defect_coupling (default 1)",
    "observables: plaquette action_density topological_charge topological_susceptibility (2D) wilson_loop_RxT",
    "parameters: beta, defect_coupling (with a defect)",
    "step kinds: defect_snf (2D, with a defect: a stochastic normalizing flow over its plaquettes)",
    "hmc levels: 1",
]);

#[cfg(test)]
mod gauge_tests;
#[cfg(test)]
mod tests;
