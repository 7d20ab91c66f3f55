//! latflow theory plugin: lattice gauge theory with Nf = 2 dynamical Wilson fermions
//! (pseudofermion HMC), for U(1), SU(2) and SU(3) links in 2D and 4D.
//!
//! # Action and conventions
//! The weight is e^{−S_g} det(D†D), with the Wilson gauge action
//! S_g = −(β/N) Σ_x Σ_{μ<ν} Re Tr U_P(x; μ, ν) (for U(1): −β Σ cos θ_P) and the Wilson–Dirac
//! operator D of [`latflow_core::gauge::fermion`] in the hopping-parameter normalisation
//! (D = 1 + i·2κμγ5 + clover − κH, bare mass m₀ = 1/(2κ) − d, twisted mass μ in lattice units;
//! with μ ≠ 0 the weight is det(D_0†D_0 + (2κμ)²)). The **last axis is time**, antiperiodic for
//! the fermions; the γ basis is the module's (2D: γ_0 = σ1, γ_1 = σ2, γ5 = σ3; 4D:
//! DeGrand–Rossi).
//!
//! The field is the links `[site][μ]`: U(1) as angles (`ElementKind::Angle`), SU(N) as N×N
//! complex matrices row-major with (re, im) interleaved. HMC momenta are algebra coefficients
//! with K = ½ Σ (p^a)².
//!
//! # Pseudofermions
//! det(D†D) is sampled with pseudofermions: S_pf = φ†(D†D)⁻¹φ, refreshed by the heat bath
//! φ = D†η (Gaussian η, density ∝ e^{−η†η}) at the start of every trajectory through the
//! [`latflow_core::hmc::ActionTerm::refresh`] hook of core's HMC. With `even_odd` (default when every extent is
//! even) D is replaced by the Schur complement D̂ on the even sites, and with c_sw ≠ 0 the
//! exact term −ln det(A_oo†A_oo) is added (`clover_det`).
//!
//! Hasenbusch masses κ > κ₁ > κ₂ > … split det(D†D) = [det(D†D)/det(D₁†D₁)]·
//! [det(D₁†D₁)/det(D₂†D₂)]⋯det(D_n†D_n): one ratio term φ†D_{i+1}(D_i†D_i)⁻¹D_{i+1}†φ per
//! pair and one plain pseudofermion for the heaviest κ_n.
//!
//! # Exact determinant (`determinant = "exact"`)
//! With `determinant = "exact"` (default `"pseudofermion"`) the action is
//! S = S_g − ln det(D†D), the fermion determinant computed densely ([`exact_det`]: the
//! Wilson–Dirac matrix of dimension n = V·d·N, LU with partial pivoting, det(D†D) = |det D|²,
//! which with twisted mass is det(D_0†D_0 + (2κμ)²)). It is meant for small lattices: n is at most
//! [`exact_det::MAX_DENSE_DIM`], and a larger lattice is refused naming the limit, as are the
//! clover term and Hasenbusch masses. Then:
//! * [`Physics::action`] is the exact −ln of the weight (no additive constant) and
//!   [`Physics::action_is_exact`] is true, so flow Metropolis and reweighting accept the theory and
//!   are exact; the log q, log w and log Ẑ they report refer to this action (Ẑ estimates
//!   ∫ e^{−S_g} det(D†D) in the model's measure);
//! * [`Physics::action_grad`] is the exact gradient: in the angles for U(1), in the ambient
//!   (Re, Im) matrix entries for SU(N) (the coordinates flow-sun trains in);
//! * HMC runs on the levels `[exact_det] [gauge]` with the exact determinant force;
//! * the theory offers a random gauge transformation (the action is gauge invariant).
//!
//! The cost is O(n³) per action or gradient evaluation.
//!
//! # Time scales
//! One level per fermion term, the lightest (most expensive, smallest force) outermost, then the
//! heavier ones, and the gauge action (with `clover_det`) innermost: a plain run has the levels
//! `[pseudofermion] [gauge]`, one Hasenbusch mass `[hasenbusch] [pseudofermion] [gauge]`. The
//! HMC step's `md_steps` counts the outer steps and `inner_steps` the sub-steps of each inner
//! level (default 1).
//!
//! # Run card (`[theory]`)
//! `group` (`u1`, `su2`, `su3`), `lattice` (2D or 4D, extents ≥ 2), `beta` (≥ 0), `kappa`
//! (> 0), `mu` (≥ 0, default 0), `csw` (4D only, default 0), `hasenbusch` (a list of κ values,
//! each smaller than the one before, starting below `kappa`; default none), `solver = { tol,
//! force_tol, max_iter, layout }` (relative residual targets of CG on D†D for the action and heat bath,
//! and for the forces; defaults 1e-10, `tol`, 10000; `layout`: the solvers' data layout for SU(3)
//! in 4D, `"auto"` (default), `"sites"` or `"lanes"`, see [`Qcd::check_layout`]), `even_odd` (default: true when every
//! extent is even), `condensate = { sources, exact, seed }` (see below), `determinant`
//! (`"pseudofermion"` or `"exact"`, see above), `nf` (2, default, or 1: rational HMC with
//! `rhmc = { lambda_min, lambda_max, degree, spectrum_check }`, see [`terms::RationalTerm`]; one flavour
//! refuses `mu`, `csw`, `hasenbusch` and the exact determinant).
//!
//! A CG solve that does not reach its target is an error that names the term and the residual
//! reached: a trajectory never runs on a wrong force.
//!
//! # Observables
//! * `plaquette`: the mean of Re Tr U_P / N over sites and planes (cos θ_P for U(1)).
//! * `chiral_condensate`: Σ = (1/V) Re Tr D_m⁻¹ with D_m = D/(2κ), i.e. (2κ/V) Re Tr D⁻¹, the
//!   trace over sites, spin and colour. By default estimated with `sources` (default 4)
//!   complex Z2 noise vectors ξ (entries (±1 ± i)/√2, ⟨ξξ†⟩ = 1): Tr D⁻¹ ≈ (1/n) Σ ξ†D⁻¹ξ. The
//!   noise stream is `condensate.seed` with a stream id hashed from the configuration's bits,
//!   so a configuration always gives the same value. With `exact = true` the trace is summed
//!   over all unit sources (V·d·N solves; allowed up to 4096 of them).
//! * `pion_correlator` (T values, with `pion_correlator = true`, the default): C(t) =
//!   Σ_x⃗ Σ_{s,a} |S(x⃗, t; 0)_{·,(s,a)}|² with S = D_m⁻¹ = 2κD⁻¹ from a point source at the
//!   origin (d·N solves), by γ5-hermiticity the (charged) pion two-point function.
//! * `cg_iterations`: the CG iterations of one action evaluation (all terms) on the
//!   configuration, a cost measure; per trajectory the iterations are recorded by the theory
//!   step kind `pf_hmc` (see [`steps`]).
//! * `topological_charge` and `topological_susceptibility` (Q²/V per configuration), where the
//!   theory has a charge: for U(1) in 2D the geometric Q = (1/2π) Σ_x arg U_01(x), an integer;
//!   for SU(2)/SU(3) in 4D with `gradient_flow = { time, eps, scheme }` the clover charge
//!   after flowing a copy of the configuration to that time (core's gradient flow, the same as
//!   the `sun` plugin's). `gradient_flow` is refused elsewhere.

pub mod exact_det;
mod observables;
mod space;
pub mod steps;
pub mod terms;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use latflow_core::abi::{parse_config, HmcParams, ObservableSpec, PluginError, Start};
use latflow_core::gauge::fermion::rational::{InverseSqrt, MAX_DEGREE};
use latflow_core::gauge::fermion::{
    CgParams, FermionError, SolverLayout, WilsonDirac, WilsonGroup, WilsonParams,
};
use latflow_core::gauge::flat::view_mut;
use latflow_core::gauge::gradflow::{FlowCard, FlowMeasurement};
use latflow_core::gauge::{check_beta, Complex, GaugeGroup};
use latflow_core::hmc::{LeveledAction, Term};
use latflow_core::layout::{ElementKind, FieldLayout, Support};
use latflow_core::sdk::Physics;
use latflow_core::{Lattice, Stream};
use serde::Deserialize;

pub use space::QcdSpace;
use terms::{CloverDetTerm, FermionTerm, GaugeTerm, Operator, RationalTerm, Solvers, SpectrumCheck};

/// Runs `$body` with `$g` the group type and `$ns` the spin count (= dimension) of the theory.
macro_rules! with_theory {
    ($t:expr, $g:ident, $ns:ident => $body:expr) => {
        match ($t.group, $t.lattice.dim() == 2) {
            (Group::U1, true) => {
                type $g = latflow_core::gauge::U1Angle;
                const $ns: usize = 2;
                $body
            }
            (Group::U1, false) => {
                type $g = latflow_core::gauge::U1Angle;
                const $ns: usize = 4;
                $body
            }
            (Group::Su2, true) => {
                type $g = latflow_core::gauge::Su2;
                const $ns: usize = 2;
                $body
            }
            (Group::Su2, false) => {
                type $g = latflow_core::gauge::Su2;
                const $ns: usize = 4;
                $body
            }
            (Group::Su3, true) => {
                type $g = latflow_core::gauge::Su3;
                const $ns: usize = 2;
                $body
            }
            (Group::Su3, false) => {
                type $g = latflow_core::gauge::Su3;
                const $ns: usize = 4;
                $body
            }
        }
    };
}
pub(crate) use with_theory;

/// The gauge group of the card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    U1,
    Su2,
    Su3,
}

impl Group {
    fn parse(name: &str) -> Result<Self, PluginError> {
        match name {
            "u1" => Ok(Group::U1),
            "su2" => Ok(Group::Su2),
            "su3" => Ok(Group::Su3),
            other => Err(PluginError::config(format!(
                "group: unknown gauge group '{other}' (expected u1, su2 or su3)"
            ))),
        }
    }

    /// The card name.
    pub fn name(&self) -> &'static str {
        match self {
            Group::U1 => "u1",
            Group::Su2 => "su2",
            Group::Su3 => "su3",
        }
    }

    /// N (1 for U(1)).
    pub fn nc(&self) -> usize {
        match self {
            Group::U1 => 1,
            Group::Su2 => 2,
            Group::Su3 => 3,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    group: String,
    lattice: Vec<i64>,
    beta: f64,
    kappa: f64,
    #[serde(default)]
    mu: f64,
    #[serde(default)]
    csw: f64,
    #[serde(default)]
    hasenbusch: Vec<f64>,
    #[serde(default)]
    solver: SolverCard,
    #[serde(default)]
    even_odd: Option<bool>,
    #[serde(default)]
    condensate: CondensateCard,
    #[serde(default = "yes")]
    pion_correlator: bool,
    #[serde(default)]
    determinant: Option<String>,
    #[serde(default)]
    gradient_flow: Option<FlowCard>,
    #[serde(default = "two")]
    nf: u32,
    #[serde(default)]
    rhmc: Option<RhmcCard>,
}

fn two() -> u32 {
    2
}

/// `rhmc = { lambda_min, lambda_max, degree, spectrum_check }`: the spectral range of D†D
/// (D̂†D̂ even–odd) that the rational approximation of Nf = 1 covers, its degree, and the
/// Lanczos steps of the check at every heat bath that the range holds the spectrum.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct RhmcCard {
    lambda_min: f64,
    #[serde(default)]
    lambda_max: Option<f64>,
    #[serde(default = "default_degree")]
    degree: usize,
    #[serde(default = "default_spectrum_check")]
    spectrum_check: usize,
}

fn default_degree() -> usize {
    16
}

fn default_spectrum_check() -> usize {
    20
}

/// The rational approximation of one flavour (`nf = 1`): R(x) ≈ x^{−1/2} of `degree` on
/// [`lambda_min`, `lambda_max`] (None: the bound ‖D‖² of [`Qcd::spectral_bound`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rhmc {
    /// The lower end of the range, below the smallest eigenvalue of D†D the chain visits.
    pub lambda_min: f64,
    /// The upper end (None: [`Qcd::spectral_bound`]).
    pub lambda_max: Option<f64>,
    /// The degree n of R (n poles).
    pub degree: usize,
    /// Lanczos steps of the spectral-range check at every heat bath (0: no check), see
    /// [`terms::RationalTerm`].
    pub spectrum_check: usize,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SolverCard {
    #[serde(default = "default_tol")]
    tol: f64,
    #[serde(default)]
    force_tol: Option<f64>,
    #[serde(default = "default_max_iter")]
    max_iter: u64,
    #[serde(default)]
    layout: Option<String>,
}

impl Default for SolverCard {
    fn default() -> Self {
        Self {
            tol: default_tol(),
            force_tol: None,
            max_iter: default_max_iter(),
            layout: None,
        }
    }
}

fn default_tol() -> f64 {
    1e-10
}

fn default_max_iter() -> u64 {
    10_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CondensateCard {
    #[serde(default = "default_sources")]
    sources: u32,
    #[serde(default)]
    exact: bool,
    #[serde(default = "default_seed")]
    seed: u64,
}

impl Default for CondensateCard {
    fn default() -> Self {
        Self {
            sources: default_sources(),
            exact: false,
            seed: default_seed(),
        }
    }
}

fn default_sources() -> u32 {
    4
}

fn default_seed() -> u64 {
    1
}

/// The most unit sources an exact condensate may solve for.
pub const MAX_EXACT_SOURCES: usize = 4096;

/// How the chiral condensate is estimated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Condensate {
    /// Noise vectors (ignored when exact).
    pub sources: u32,
    /// Sum over all unit sources instead.
    pub exact: bool,
    /// The noise stream's seed.
    pub seed: u64,
}

/// How the action treats the fermion determinant (card key `determinant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Determinant {
    /// Pseudofermions (stochastic action, HMC only).
    Pseudofermion,
    /// The dense −ln det(D†D) (exact action and gradient; small lattices only).
    Exact,
}

impl Determinant {
    fn parse(name: Option<&str>) -> Result<Self, PluginError> {
        match name {
            None | Some("pseudofermion") => Ok(Determinant::Pseudofermion),
            Some("exact") => Ok(Determinant::Exact),
            Some(other) => Err(config_err(
                "determinant",
                format!("unknown value '{other}' (expected \"pseudofermion\" or \"exact\")"),
            )),
        }
    }

    /// The card name.
    pub fn name(&self) -> &'static str {
        match self {
            Determinant::Pseudofermion => "pseudofermion",
            Determinant::Exact => "exact",
        }
    }
}

/// The seed of the reference pseudofermions that [`Physics::action`] evaluates outside HMC.
pub const REFERENCE_SEED: u64 = 0x5eed_f1e1d;

/// The theory.
pub struct Qcd {
    lattice: Lattice,
    group: Group,
    beta: f64,
    kappa: f64,
    mu: f64,
    csw: f64,
    hasenbusch: Vec<f64>,
    solvers: Solvers,
    even_odd: bool,
    condensate: Condensate,
    pion: bool,
    determinant: Determinant,
    /// SU(N) in 4D: the gradient flow before the clover topological charge is measured.
    flow: Option<FlowMeasurement>,
    /// Nf = 1 by rational HMC (None: Nf = 2).
    rhmc: Option<Rhmc>,
    /// The solvers' layout (`solver.layout`, [`WilsonDirac::with_layout`]).
    layout: SolverLayout,
}

fn config_err(key: &str, e: impl std::fmt::Display) -> PluginError {
    PluginError::config(format!("{key}: {e}"))
}

/// A [`FermionError`] of the card as a config error (its message names the key: kappa, mu, csw).
fn fermion_config(e: FermionError) -> PluginError {
    PluginError::config(e.to_string())
}

fn check_tol(key: &str, tol: f64) -> Result<f64, PluginError> {
    if !(tol.is_finite() && tol > 0.0) {
        return Err(config_err(
            key,
            format!("the solver tolerance must be a finite number > 0, got {tol}"),
        ));
    }
    Ok(tol)
}

impl Qcd {
    /// `solver.layout`: `"auto"` (default; the lanes layout where the fields stay in cache),
    /// `"sites"`, or `"lanes"` (wherever it applies, whatever the volume; an error where it
    /// cannot: not SU(3) in 4D, a clover term or twisted mass, a time extent that is not a
    /// multiple of 8). See [`SolverLayout`].
    /// Called once κ, μ and c_sw are checked.
    fn check_layout(cfg: &Config, lattice: &Lattice, group: Group) -> Result<SolverLayout, PluginError> {
        let layout = match cfg.solver.layout.as_deref() {
            None => SolverLayout::Auto,
            Some(name) => SolverLayout::parse(name).ok_or_else(|| {
                config_err("solver.layout", format!("unknown layout {name:?}: use one of {:?}", SolverLayout::NAMES))
            })?,
        };
        if layout == SolverLayout::Lanes {
            // the operator itself says why (an SU(3) one: other groups never take the layout)
            let params = WilsonParams { kappa: cfg.kappa, mu: cfg.mu, csw: cfg.csw };
            let why = match WilsonDirac::<latflow_core::gauge::Su3, 4>::new(lattice, params) {
                Ok(d) if group == Group::Su3 => d.lanes_unavailable(),
                _ => Some("it needs SU(3) in 4D".into()),
            };
            if let Some(why) = why {
                return Err(config_err("solver.layout", format!("\"lanes\" does not apply: {why}")));
            }
        }
        Ok(layout)
    }

    /// The lattice.
    pub fn lattice(&self) -> &Lattice {
        &self.lattice
    }

    /// The gauge group.
    pub fn group(&self) -> Group {
        self.group
    }

    /// The operator parameters at hopping parameter `kappa` (the card's μ and c_sw).
    pub fn wilson_params(&self, kappa: f64) -> WilsonParams {
        WilsonParams {
            kappa,
            mu: self.mu,
            csw: self.csw,
        }
    }

    /// This theory with the solvers' layout set to `layout` instead of the card's. Every
    /// layout samples the same distribution; solutions agree to the solver's tolerance, not
    /// bit for bit. For tests and benchmarks of the layouts.
    pub fn with_layout(mut self, layout: SolverLayout) -> Self {
        self.layout = layout;
        self
    }

    /// The solvers' layout (`solver.layout`).
    pub fn solver_layout(&self) -> SolverLayout {
        self.layout
    }

    /// The Wilson operator at hopping parameter `kappa` with the card's μ and c_sw, its
    /// solvers' layout (`solver.layout`, or as set by [`Self::with_layout`]).
    pub fn dirac<G: WilsonGroup, const NS: usize>(&self, kappa: f64) -> Result<WilsonDirac<G, NS>, FermionError> {
        Ok(WilsonDirac::new(&self.lattice, self.wilson_params(kappa))?.with_layout(self.layout))
    }

    /// κ followed by the Hasenbusch κ values.
    pub fn kappas(&self) -> Vec<f64> {
        std::iter::once(self.kappa)
            .chain(self.hasenbusch.iter().copied())
            .collect()
    }

    /// Whether the operators are even–odd preconditioned.
    pub fn even_odd(&self) -> bool {
        self.even_odd
    }

    /// The CG parameters.
    pub fn solvers(&self) -> Solvers {
        self.solvers
    }

    /// Whether the pion correlator is measured.
    pub fn pion(&self) -> bool {
        self.pion
    }

    /// How the condensate is measured.
    pub fn condensate(&self) -> Condensate {
        self.condensate
    }

    fn check_kappa(kappa: f64, hasenbusch: &[f64], mu: f64, csw: f64) -> Result<(), PluginError> {
        WilsonParams { kappa, mu, csw }
            .check()
            .map_err(fermion_config)?;
        let mut prev = kappa;
        for (i, &k) in hasenbusch.iter().enumerate() {
            if !(k.is_finite() && k > 0.0) {
                return Err(config_err(
                    &format!("hasenbusch[{i}]"),
                    format!("a Hasenbusch kappa must be a finite number > 0, got {k}"),
                ));
            }
            if k >= prev {
                return Err(config_err(
                    &format!("hasenbusch[{i}]"),
                    format!(
                        "Hasenbusch masses must be listed from light to heavy, kappa > hasenbusch[0] > hasenbusch[1] > ...; \
                         got {k} after {prev}"
                    ),
                ));
            }
            prev = k;
        }
        Ok(())
    }

    fn validate(cfg: Config) -> Result<Self, PluginError> {
        let group = Group::parse(&cfg.group)?;
        let lattice = Lattice::new(&cfg.lattice).map_err(|e| config_err("lattice", e))?;
        if lattice.dim() != 2 && lattice.dim() != 4 {
            return Err(config_err(
                "lattice",
                format!(
                    "Wilson fermions need a 2D or 4D lattice, got {}D",
                    lattice.dim()
                ),
            ));
        }
        if lattice.shape().iter().any(|&l| l < 2) {
            return Err(config_err("lattice", "every extent must be at least 2"));
        }
        let beta = check_beta(cfg.beta)?;
        if cfg.csw != 0.0 && lattice.dim() != 4 {
            return Err(config_err(
                "csw",
                format!(
                    "the clover term is supported in 4D only (this lattice is {}D), got {}",
                    lattice.dim(),
                    cfg.csw
                ),
            ));
        }
        Self::check_kappa(cfg.kappa, &cfg.hasenbusch, cfg.mu, cfg.csw)?;
        let tol = check_tol("solver.tol", cfg.solver.tol)?;
        let force_tol = check_tol("solver.force_tol", cfg.solver.force_tol.unwrap_or(tol))?;
        if cfg.solver.max_iter == 0 || cfg.solver.max_iter > u32::MAX as u64 {
            return Err(config_err(
                "solver.max_iter",
                format!("must lie in 1..=4294967295, got {}", cfg.solver.max_iter),
            ));
        }
        let max_iter = cfg.solver.max_iter as usize;
        let solvers = Solvers {
            action: CgParams::new(tol, max_iter).map_err(fermion_config)?,
            force: CgParams::new(force_tol, max_iter).map_err(fermion_config)?,
        };
        let layout = Self::check_layout(&cfg, &lattice, group)?;
        let even_odd = match cfg.even_odd {
            Some(true) => {
                lattice.require_even().map_err(|e| {
                    config_err(
                        "even_odd",
                        format!("even-odd preconditioning needs every extent even: {e}"),
                    )
                })?;
                true
            }
            Some(false) => false,
            None => lattice.require_even().is_ok(),
        };
        let c = &cfg.condensate;
        if c.sources == 0 {
            return Err(config_err(
                "condensate.sources",
                "at least 1 noise source is needed",
            ));
        }
        let units = lattice.volume() * lattice.dim() * group.nc();
        if c.exact && units > MAX_EXACT_SOURCES {
            return Err(config_err(
                "condensate.exact",
                format!("the exact trace needs {units} solves, more than the {MAX_EXACT_SOURCES} allowed; use noise sources"),
            ));
        }
        let condensate = Condensate {
            sources: c.sources,
            exact: c.exact,
            seed: c.seed,
        };
        let determinant = Determinant::parse(cfg.determinant.as_deref())?;
        if determinant == Determinant::Exact {
            Self::check_exact(&lattice, group, cfg.csw, &cfg.hasenbusch)?;
        }
        let flow = Self::check_flow(&lattice, group, cfg.gradient_flow.as_ref())?;
        let rhmc = Self::check_rhmc(&cfg, determinant)?;
        Ok(Self {
            lattice,
            group,
            beta,
            kappa: cfg.kappa,
            mu: cfg.mu,
            csw: cfg.csw,
            hasenbusch: cfg.hasenbusch,
            solvers,
            even_odd,
            condensate,
            pion: cfg.pion_correlator,
            determinant,
            flow,
            rhmc,
            layout,
        })
    }

    /// `nf` and `rhmc`: Nf = 2 (pseudofermions, Hasenbusch ratios, any μ and c_sw) or Nf = 1
    /// (rational HMC, which needs `rhmc.lambda_min`, and γ5-hermiticity: no twisted mass,
    /// no clover term (its even–odd determinant term is Nf = 2's), no Hasenbusch masses,
    /// pseudofermions).
    fn check_rhmc(cfg: &Config, determinant: Determinant) -> Result<Option<Rhmc>, PluginError> {
        match (cfg.nf, cfg.rhmc) {
            (2, None) => Ok(None),
            (2, Some(_)) => Err(config_err("rhmc", "the rational approximation is for one flavour: set nf = 1, or drop rhmc")),
            (1, None) => Err(config_err("rhmc", "nf = 1 needs rhmc = { lambda_min = ... }: the smallest eigenvalue of D^dag D it must cover")),
            (1, Some(r)) => {
                let refuse = |key: &str, why: &str| Err(config_err(key, format!("nf = 1 (rational HMC) {why}")));
                if !cfg.hasenbusch.is_empty() {
                    return refuse("hasenbusch", "takes no Hasenbusch masses");
                }
                if cfg.mu != 0.0 {
                    return refuse("mu", "needs gamma5-hermiticity of D: no twisted mass");
                }
                if cfg.csw != 0.0 {
                    return refuse("csw", "does not support the clover term");
                }
                if determinant == Determinant::Exact {
                    return refuse("determinant", "runs with pseudofermions only");
                }
                if !(r.lambda_min.is_finite() && r.lambda_min > 0.0) {
                    return Err(config_err("rhmc.lambda_min", format!("must be a finite number > 0, got {}", r.lambda_min)));
                }
                if let Some(hi) = r.lambda_max {
                    if !(hi.is_finite() && hi > r.lambda_min) {
                        return Err(config_err(
                            "rhmc.lambda_max",
                            format!("must be finite and larger than lambda_min = {}, got {hi}", r.lambda_min),
                        ));
                    }
                }
                if r.degree == 0 || r.degree > MAX_DEGREE {
                    return Err(config_err("rhmc.degree", format!("must lie in 1..={MAX_DEGREE}, got {}", r.degree)));
                }
                if r.spectrum_check > 10_000 {
                    return Err(config_err(
                        "rhmc.spectrum_check",
                        format!("Lanczos steps per heat bath: at most 10000 (0 turns the check off), got {}", r.spectrum_check),
                    ));
                }
                Ok(Some(Rhmc {
                    lambda_min: r.lambda_min,
                    lambda_max: r.lambda_max,
                    degree: r.degree,
                    spectrum_check: r.spectrum_check,
                }))
            }
            (n, _) => Err(config_err("nf", format!("the number of flavours must be 1 (rational HMC) or 2 (pseudofermions), got {n}"))),
        }
    }

    /// Nf = 1's rational approximation, if the card asks for one flavour.
    pub fn rhmc(&self) -> Option<Rhmc> {
        self.rhmc
    }

    /// An upper bound on the spectrum of D†D (D̂†D̂ even–odd) at hopping parameter `kappa`
    /// without clover term or twist: ‖H‖ ≤ 2d (each axis's hop has norm 2, since
    /// (1 ∓ γ_μ)/2 are orthogonal projectors), so ‖D‖ ≤ 1 + 2dκ and ‖D̂‖ ≤ 1 + (2dκ)².
    pub fn spectral_bound(&self, kappa: f64) -> f64 {
        let h = 2.0 * self.lattice.dim() as f64 * kappa;
        let norm = if self.even_odd { 1.0 + h * h } else { 1.0 + h };
        norm * norm
    }

    /// Nf = 1's approximation R(x) ≈ x^{−1/2} on [lambda_min, lambda_max or the bound].
    fn inverse_sqrt(&self, r: Rhmc) -> Result<InverseSqrt, PluginError> {
        let hi = r.lambda_max.unwrap_or_else(|| self.spectral_bound(self.kappa));
        InverseSqrt::zolotarev(r.degree, r.lambda_min, hi).map_err(|e| config_err("rhmc", e))
    }

    /// `gradient_flow` is for SU(N) in 4D, where the topological charge is measured after the
    /// flow; U(1) in 2D has the geometric charge without it, and other cases have none.
    fn check_flow(lattice: &Lattice, group: Group, card: Option<&FlowCard>) -> Result<Option<FlowMeasurement>, PluginError> {
        let Some(card) = card else { return Ok(None) };
        if group == Group::U1 || lattice.dim() != 4 {
            return Err(config_err(
                "gradient_flow",
                format!(
                    "the topological charge after gradient flow is measured for su2 and su3 in 4D; this theory is {} in {}D \
                     (U(1) in 2D measures the geometric charge without a flow)",
                    group.name(),
                    lattice.dim()
                ),
            ));
        }
        card.check().map(Some)
    }

    /// The gradient flow of the topological charge (SU(N) in 4D), if the card set one.
    pub fn flow(&self) -> Option<&FlowMeasurement> {
        self.flow.as_ref()
    }

    /// Whether the theory measures a topological charge: U(1) in 2D (geometric), SU(N) in 4D
    /// with `gradient_flow` (clover, after the flow).
    pub fn has_topology(&self) -> bool {
        (self.group == Group::U1 && self.lattice.dim() == 2) || self.flow.is_some()
    }

    /// The limits of `determinant = "exact"`: no clover term, no Hasenbusch masses, and a dense
    /// matrix of dimension at most [`exact_det::MAX_DENSE_DIM`].
    fn check_exact(
        lattice: &Lattice,
        group: Group,
        csw: f64,
        hasenbusch: &[f64],
    ) -> Result<(), PluginError> {
        if csw != 0.0 {
            return Err(config_err(
                "determinant",
                format!("the exact determinant does not support the clover term (csw = {csw}); use determinant = \"pseudofermion\""),
            ));
        }
        if !hasenbusch.is_empty() {
            return Err(config_err(
                "determinant",
                "Hasenbusch masses split the pseudofermion determinant; with determinant = \"exact\" leave hasenbusch out",
            ));
        }
        let n = exact_det::dense_dim(lattice, group.nc());
        if n > exact_det::MAX_DENSE_DIM {
            return Err(config_err(
                "determinant",
                format!(
                    "the exact determinant needs a dense matrix of dimension V·d·N = {n}, more than the {} allowed; \
                     use a smaller lattice or determinant = \"pseudofermion\"",
                    exact_det::MAX_DENSE_DIM
                ),
            ));
        }
        Ok(())
    }

    /// How the fermion determinant enters the action.
    pub fn determinant(&self) -> Determinant {
        self.determinant
    }

    /// The dense determinant of the card's operator (`determinant = "exact"` limits apply).
    pub fn exact_det<G: WilsonGroup, const NS: usize>(
        &self,
    ) -> Result<exact_det::ExactDet<G, NS>, PluginError> {
        let dirac = self.dirac::<G, NS>(self.kappa).map_err(fermion_config)?;
        exact_det::ExactDet::new(dirac).map_err(|e| config_err("determinant", e))
    }

    /// S = S_g − ln det(D†D) and its gradient (`determinant = "exact"`): in the angles for
    /// U(1), in the ambient (Re, Im) matrix entries for SU(N).
    fn exact_grad<G, const NS: usize>(
        &self,
        config: &[f64],
        grad: &mut [f64],
    ) -> Result<f64, PluginError>
    where
        G: WilsonGroup + bytemuck::Pod,
        G::Algebra: bytemuck::Pod,
    {
        let l = terms::links::<G>(config);
        let (s_f, mut m) = self
            .exact_det::<G, NS>()?
            .action_and_derivative(l)
            .map_err(PluginError::numerical)?;
        let (d, c) = (self.lattice.dim(), -self.beta / G::NC as f64);
        for (i, m) in m.iter_mut().enumerate() {
            let st = latflow_core::gauge::staple(&self.lattice, l, i / d, i % d);
            *m += G::mat_scale(&st, Complex::real(c));
        }
        if self.group == Group::U1 {
            for ((g, link), m) in grad.iter_mut().zip(l).zip(&m) {
                let f = link.re_trace_derivative(m);
                *g = bytemuck::cast_slice::<_, f64>(std::slice::from_ref(&f))[0];
            }
        } else {
            let per = 2 * G::NC * G::NC;
            for (g, m) in grad.chunks_exact_mut(per).zip(&m) {
                exact_det::ambient_gradient::<G>(m, g);
            }
        }
        Ok(s_f + terms::gauge_action::<G>(&self.lattice, l, self.beta))
    }

    fn n_links(&self) -> usize {
        self.lattice.volume() * self.lattice.dim()
    }

    fn link_reals(&self) -> usize {
        match self.group {
            Group::U1 => 1,
            g => 2 * g.nc() * g.nc(),
        }
    }

    fn operator<G: WilsonGroup, const NS: usize>(
        &self,
        kappa: f64,
    ) -> Result<Operator<G, NS>, PluginError> {
        let dirac = self.dirac::<G, NS>(kappa).map_err(fermion_config)?;
        Ok(Operator {
            dirac,
            even_odd: self.even_odd,
        })
    }

    /// The action's terms per level (see the module docs), CG iterations counted into
    /// `iterations`.
    pub fn levels_counted<G, const NS: usize>(
        &self,
        iterations: Rc<Cell<u64>>,
    ) -> Result<LeveledAction<'_, QcdSpace>, PluginError>
    where
        G: WilsonGroup + bytemuck::Pod,
        G::Algebra: bytemuck::Pod,
    {
        if self.determinant == Determinant::Exact {
            let det = exact_det::ExactDetTerm {
                det: self.exact_det::<G, NS>()?,
            };
            let gauge = GaugeTerm::<G> {
                lattice: &self.lattice,
                beta: self.beta,
                _g: std::marker::PhantomData,
            };
            return LeveledAction::new(vec![vec![Box::new(det)], vec![Box::new(gauge)]])
                .map_err(PluginError::config);
        }
        let kappas = self.kappas();
        let mut reference = Stream::new(REFERENCE_SEED, 0);
        let mut levels: Vec<Vec<Term<'_, QcdSpace>>> = Vec::new();
        if let Some(r) = self.rhmc {
            let approx = self.inverse_sqrt(r)?;
            let term = RationalTerm::<G, NS>::new(
                format!("rational(kappa={}, nf=1)", self.kappa),
                self.operator::<G, NS>(self.kappa)?,
                approx.partial_fractions(),
                approx.heat_bath(),
                SpectrumCheck { range: approx.range(), steps: r.spectrum_check },
                self.solvers,
                iterations.clone(),
                &mut reference,
            )
            .map_err(|e| PluginError::config(e.to_string()))?;
            levels.push(vec![Box::new(term)]);
        }
        for (i, &k) in kappas.iter().enumerate().filter(|_| self.rhmc.is_none()) {
            let heavy = kappas.get(i + 1).copied();
            let name = match heavy {
                Some(h) => format!("hasenbusch(kappa={k}/{h})"),
                None => format!("pseudofermion(kappa={k})"),
            };
            let d2 = heavy.map(|h| self.operator::<G, NS>(h)).transpose()?;
            let term = FermionTerm::<G, NS>::new(
                name,
                self.operator::<G, NS>(k)?,
                d2,
                self.solvers,
                iterations.clone(),
                &mut reference,
            )
            .map_err(|e| PluginError::config(e.to_string()))?;
            levels.push(vec![Box::new(term)]);
        }
        let mut inner: Vec<Term<'_, QcdSpace>> = vec![Box::new(GaugeTerm::<G> {
            lattice: &self.lattice,
            beta: self.beta,
            _g: std::marker::PhantomData,
        })];
        if self.even_odd && self.csw != 0.0 {
            let dirac = self.operator::<G, NS>(self.kappa)?.dirac;
            let clover = dirac.new_clover_field().map_err(fermion_config)?;
            inner.push(Box::new(CloverDetTerm {
                dirac,
                clover: RefCell::new(clover),
            }));
        }
        levels.push(inner);
        LeveledAction::new(levels).map_err(PluginError::config)
    }
}

fn no_such_parameter(name: &str) -> PluginError {
    PluginError::unsupported(format!(
        "qcd has no parameter '{name}' (it has beta, kappa, mu, csw)"
    ))
}

impl Physics for Qcd {
    const NAME: &'static str = "qcd";
    type Space = QcdSpace;

    fn from_config(json: &str) -> Result<Self, PluginError> {
        Self::validate(parse_config(json)?)
    }

    fn layout(&self) -> FieldLayout {
        let element = match self.group {
            Group::U1 => ElementKind::Angle,
            g => ElementKind::complex_matrix(g.nc() as u32),
        };
        FieldLayout::single(self.lattice.shape(), "links", Support::Link, element)
    }

    fn params_json(&self) -> serde_json::Value {
        serde_json::json!({
            "group": self.group.name(),
            "lattice": self.lattice.shape(),
            "beta": self.beta,
            "kappa": self.kappa,
            "mu": self.mu,
            "csw": self.csw,
            "hasenbusch": self.hasenbusch,
            "solver": { "tol": self.solvers.action.tol, "force_tol": self.solvers.force.tol, "max_iter": self.solvers.action.max_iter, "layout": self.layout.name() },
            "even_odd": self.even_odd,
            "condensate": { "sources": self.condensate.sources, "exact": self.condensate.exact, "seed": self.condensate.seed },
            "pion_correlator": self.pion,
            "determinant": self.determinant.name(),
            "nf": if self.rhmc.is_some() { 1 } else { 2 },
            "rhmc": self.rhmc.map(|r| serde_json::json!({
                "lambda_min": r.lambda_min,
                "lambda_max": r.lambda_max.unwrap_or_else(|| self.spectral_bound(self.kappa)),
                "degree": r.degree,
                "relative_error": self.inverse_sqrt(r).map(|a| a.error()).ok(),
                "spectrum_check": r.spectrum_check,
            })),
            "gradient_flow": self.flow.as_ref().map(|f| serde_json::json!({
                "time": f.time, "eps": f.options.eps, "scheme": f.options.scheme.name(), "integrator": "Luscher RK3",
            })),
            "convention": "weight exp(-S_g) det(D^dag D) (nf = 2; nf = 1: det R(D^dag D)^-1 with R(x) ~ x^-1/2, rhmc.relative_error per eigenvalue); S_g = -(beta/N) sum Re Tr U_P; D = 1 + i 2 kappa mu g5 + clover - kappa H \
                           (hopping normalisation, m0 = 1/(2 kappa) - d); last axis time, antiperiodic for fermions; \
                           links [site][mu]",
        })
    }

    fn parameter(&self, name: &str) -> Result<f64, PluginError> {
        match name {
            "beta" => Ok(self.beta),
            "kappa" => Ok(self.kappa),
            "mu" => Ok(self.mu),
            "csw" => Ok(self.csw),
            other => Err(no_such_parameter(other)),
        }
    }

    fn set_parameter(&mut self, name: &str, value: f64) -> Result<(), PluginError> {
        match name {
            "beta" => self.beta = check_beta(value)?,
            "kappa" => {
                Self::check_kappa(value, &self.hasenbusch, self.mu, self.csw)?;
                self.kappa = value;
            }
            "mu" => {
                if value != 0.0 && self.rhmc.is_some() {
                    return Err(config_err("mu", "nf = 1 (rational HMC) needs gamma5-hermiticity of D: no twisted mass"));
                }
                Self::check_kappa(self.kappa, &self.hasenbusch, value, self.csw)?;
                self.mu = value;
            }
            "csw" => {
                if value != 0.0 && self.lattice.dim() != 4 {
                    return Err(config_err("csw", "the clover term is supported in 4D only"));
                }
                if value != 0.0 && self.rhmc.is_some() {
                    return Err(config_err("csw", "nf = 1 (rational HMC) does not support the clover term"));
                }
                if value != 0.0 && self.determinant == Determinant::Exact {
                    return Err(config_err(
                        "csw",
                        "the exact determinant does not support the clover term",
                    ));
                }
                Self::check_kappa(self.kappa, &self.hasenbusch, self.mu, value)?;
                self.csw = value;
            }
            other => return Err(no_such_parameter(other)),
        }
        Ok(())
    }

    /// A CG iteration on an 8⁴ lattice is four half-lattice hopping terms of about 0.25 ms and
    /// three reductions and updates of tens of microseconds: a spinning team gains where
    /// rayon's sleeping workers lose the short regions (CG solve on 2 threads: 1.67× on rayon,
    /// 1.85× on a team; `cargo bench --bench dirac -- cg`).
    fn short_parallel_regions(&self) -> bool {
        true
    }

    fn observables(&self) -> Vec<ObservableSpec> {
        observables::specs(self)
    }

    fn measure(&self, config: &[f64], out: &mut Vec<f64>) -> Result<(), PluginError> {
        with_theory!(self, G, NS => observables::measure::<G, NS>(self, config, out))
    }

    /// With `determinant = "exact"`: S_g − ln det(D†D), the exact −ln of the weight (up to a
    /// constant). With pseudofermions: S_g plus the pseudofermion terms at their fixed
    /// reference fields (Gaussian noise from [`REFERENCE_SEED`]), a deterministic function of
    /// the configuration but not the exact −ln of the weight (see
    /// [`Physics::action_is_exact`]).
    fn action(&self, config: &[f64]) -> f64 {
        let levels =
            with_theory!(self, G, NS => self.levels_counted::<G, NS>(Rc::new(Cell::new(0))))
                .unwrap_or_else(|e| panic!("action terms: {e}"));
        levels
            .action(&config.to_vec())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// With `determinant = "exact"`: the exact gradient of S_g − ln det(D†D), in the angles for
    /// U(1) and in the ambient (Re, Im) matrix entries for SU(N) (see [`exact_det`]).
    /// With pseudofermions: for U(1) the gradient of the reference-field action in the angles;
    /// for SU(N) links it is not provided: the call panics with that reason, which the plugin
    /// boundary reports as an error.
    fn action_grad(&self, config: &[f64], grad: &mut [f64]) -> f64 {
        if self.determinant == Determinant::Exact {
            return with_theory!(self, G, NS => self.exact_grad::<G, NS>(config, grad))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        if self.group != Group::U1 {
            panic!("qcd: action_grad in the flat matrix coordinates is implemented for group = \"u1\" only");
        }
        let levels =
            with_theory!(self, G, NS => self.levels_counted::<G, NS>(Rc::new(Cell::new(0))))
                .unwrap_or_else(|e| panic!("action terms: {e}"));
        let (u, mut buf) = (config.to_vec(), vec![0.0; config.len()]);
        grad.fill(0.0);
        for term in levels.terms().iter().flatten() {
            term.force(&u, &mut buf).unwrap_or_else(|e| panic!("{e}"));
            grad.iter_mut().zip(&buf).for_each(|(g, f)| *g += f);
        }
        levels.action(&u).unwrap_or_else(|e| panic!("{e}"))
    }

    fn initial(&self, start: Start, rng: &mut Stream) -> Vec<f64> {
        let mut u = vec![0.0; self.n_links() * self.link_reals()];
        with_theory!(self, G, NS => {
            let _ = NS;
            let l: &mut [G] = view_mut(&mut u).unwrap_or_else(|e| panic!("{e}"));
            for link in l.iter_mut() {
                *link = if start == Start::Hot { G::random(rng) } else { G::identity() };
            }
        });
        u
    }

    fn space(&self) -> QcdSpace {
        let (d, v) = (self.lattice.dim(), self.lattice.volume());
        match self.group {
            Group::U1 => QcdSpace::U1(latflow_core::gauge::FlatLinkSpace::new(d, v)),
            Group::Su2 => QcdSpace::Su2(latflow_core::gauge::FlatLinkSpace::new(d, v)),
            Group::Su3 => QcdSpace::Su3(latflow_core::gauge::FlatLinkSpace::new(d, v)),
        }
    }

    fn action_levels(
        &self,
        _params: &HmcParams,
    ) -> Result<LeveledAction<'_, QcdSpace>, PluginError> {
        with_theory!(self, G, NS => self.levels_counted::<G, NS>(Rc::new(Cell::new(0))))
    }

    /// With `determinant = "exact"` (a gauge-invariant action): U_μ(x) → g(x) U_μ(x) g(x+μ̂)†
    /// with Haar-random g. `None` with pseudofermions, whose action at a fixed reference field
    /// is not gauge invariant.
    fn random_gauge_transform(&self, config: &[f64], rng: &mut Stream) -> Option<Vec<f64>> {
        if self.determinant != Determinant::Exact {
            return None;
        }
        let mut out = config.to_vec();
        with_theory!(self, G, NS => {
            let _ = NS;
            let g: Vec<G> = (0..self.lattice.volume()).map(|_| G::random(rng)).collect();
            let u: &mut [G] = view_mut(&mut out).ok()?;
            latflow_core::gauge::gauge_transform(&self.lattice, u, &g);
        });
        Some(out)
    }

    fn action_is_exact(&self) -> bool {
        self.determinant == Determinant::Exact
    }

    fn step_kinds(&self) -> Vec<&'static str> {
        steps::KINDS.to_vec()
    }

    fn step_columns(
        &self,
        kind: &str,
        options: &serde_json::Value,
    ) -> Result<Vec<String>, PluginError> {
        steps::columns(self, kind, options)
    }

    fn step(
        &self,
        kind: &str,
        options: &serde_json::Value,
        config: &mut [f64],
        rng: &mut Stream,
        out: &mut Vec<f64>,
    ) -> Result<(), PluginError> {
        steps::apply(self, kind, options, config, rng, out)
    }
}

latflow_core::export_theory!(Qcd,
description: "lattice gauge theory (U(1), SU(2), SU(3); 2D and 4D) with Nf = 2 Wilson pseudofermions: twisted mass, clover (4D), even-odd preconditioning, Hasenbusch masses, nested time scales",
provides: [
    "keys: group (u1 | su2 | su3), lattice (2D or 4D; last axis time, antiperiodic for fermions), beta, kappa, mu, csw (4D), hasenbusch (kappa list, light to heavy), solver = { tol, force_tol, max_iter, layout (auto | sites | lanes) }, even_odd, condensate = { sources, exact, seed }, pion_correlator, determinant (pseudofermion | exact: dense -ln det(D^dag D), exact action and gradient, V*d*N <= 2048), gradient_flow = { time, eps, scheme } (su2/su3 in 4D: topological charge after the flow), nf (2, or 1: rational HMC), rhmc = { lambda_min, lambda_max, degree, spectrum_check } (nf = 1)",
    "observables: plaquette chiral_condensate pion_correlator (T values) cg_iterations topological_charge topological_susceptibility (u1 2D; su2/su3 4D with gradient_flow)",
    "parameters: beta kappa mu csw",
    "hmc levels: one per fermion term (lightest outermost), gauge innermost; with determinant = exact: [exact_det] [gauge]",
    "step kinds: pf_hmc (HMC recording CG iterations per trajectory)",
]);

#[cfg(test)]
mod exact_det_tests;
#[cfg(test)]
mod reweight_tests;
#[cfg(test)]
mod tests;
