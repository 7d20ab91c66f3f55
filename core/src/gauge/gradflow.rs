//! The gradient flow of SU(N) gauge fields, clover observables, and scale setting (t0, w0).
//!
//! # The flow
//! The Wilson flow (M. Lüscher, JHEP 08 (2010) 071) is ∂_t V = Z(V) V with
//! Z(x, μ) = −g0² ∂_{x,μ} S(V), S the flow action. For S = (1/g0²) Σ_p c_p Re Tr(1 − U_p) over
//! oriented loops (the Wilson action: plaquettes with c0 = 1; the tree-level Symanzik action:
//! c0 = 5/3 plaquettes and c1 = −1/12 rectangles) this is
//!
//! Z(x, μ) = −c0 TA(U_μ(x) · P_μ(x)) − c1 TA(U_μ(x) · R_μ(x)),
//!
//! with TA the traceless anti-Hermitian part, P_μ(x) the plaquette [`staple`] sum and R_μ(x)
//! the [`rectangle_staple`] sum (Re Tr(U · P) is the sum of Re Tr U_P over the 2(d−1)
//! plaquettes through U). The flow decreases S monotonically. Flow time t is in lattice units
//! (t/a²).
//!
//! The integrator is Lüscher's third-order Runge–Kutta scheme (his eq. (C.1)–(C.4)), with
//! Z_i = ε Z(W_i):
//! W1 = exp(¼Z0) W0, W2 = exp(8/9 Z1 − 17/36 Z0) W1, V(t+ε) = exp(¾Z2 − 8/9 Z1 + 17/36 Z0) W2.
//! Its global error at fixed t is O(ε³). Every update multiplies by an exact exponential of
//! [`GaugeGroup::exp`], so the links stay in the group to rounding.
//!
//! With [`FlowOptions::adaptive`] the step size is controlled by the embedded second-order
//! solution Ṽ = exp(2Z1 − 5/4 Z0) W1 (first-order conditions Σb = 1, second Σbc = ½ with the
//! stage time c = ¼ of W1): a step is accepted when the distance
//! d = max over links and matrix entries of |V_ij − Ṽ_ij| is at most the tolerance, and the
//! next step is ε · min(3, max(0.2, 0.9 (tol/d)^{1/3})) (d is O(ε³)). A rejected step is
//! repeated from the saved field with the smaller ε.
//!
//! # Clover observables
//! * F_μν(x) = ¼ TA(Q_μν(x)), where Q_μν(x) is the sum of the four plaquettes in the (μ, ν)
//!   plane that start and end at x, all with the orientation μ → ν ([`clover_field`]). F is
//!   anti-Hermitian and traceless; F_νμ = −F_μν. For smooth fields F_μν = a² G_μν + O(a⁴).
//! * The clover energy density E(x) = −½ Σ_{μ,ν} Tr F_μν F_μν = −Σ_{μ<ν} Tr F_μν², i.e.
//!   ¼ Σ_{μ,ν} G^a_μν G^a_μν in the normalisation Tr(T^a T^b) = ½δ^{ab}. Reported per site
//!   (the mean over sites, lattice units a⁴E).
//! * The plaquette energy density E_plaq(x) = 2 Σ_{μ<ν} Re Tr(1 − U_P(x; μ, ν)) per site,
//!   equal to E to leading order in a.
//! * In 4D the clover topological charge
//!   Q = −(1/32π²) Σ_x ε_μνρσ Tr F_μν F_ρσ = −(1/4π²) Σ_x Tr(F01 F23 − F02 F13 + F03 F12),
//!   with ε_0123 = +1. With the Hermitian field strength F̂ = iF this is
//!   (1/32π²) Σ_x ε_μνρσ Tr F̂_μν F̂_ρσ, the standard charge (a self-dual field has Q > 0). An
//!   abelian field embedded as diag(e^{iθ}, e^{−iθ}, 1, …) with fluxes 2π n01 through the
//!   (0, 1) planes and 2π n23 through the (2, 3) planes has Q = 2 n01 n23 in the continuum.
//!
//! # Scale setting
//! [`t0_crossing`] solves t² E(t) = reference (0.3 for t0) and [`w0_crossing`] solves
//! W(t) = t d/dt[t² E(t)] = reference (0.3 for w0², w0 = √t) on a measured curve, by linear
//! interpolation between the two grid points that bracket the first upward crossing. The
//! derivative in W is the second-order three-point difference on the (possibly non-uniform)
//! grid. Both return the gradient of the solution with respect to the curve values, for error
//! propagation (the linearised Γ-method).
//!
//! Every loop over sites runs in the fixed chunks of [`super::parallel`], so results are
//! bit-identical for any number of threads.

use std::f64::consts::PI;
use std::fmt;

use super::algebra::SuAlg;
use super::field::{path, plaquette, rectangle_staple, staple, Neighbours, Step};
use super::group::{GaugeGroup, LieAlgebra};
use super::matrix::Matrix;
use super::parallel::{fill_sites, fill_sites_as, sum_sites, SiteWork};
use super::sun::SuN;

/// The reference value of t² E(t0) and of W(w0²) (Lüscher 2010; BMW 2012).
pub const SCALE_REFERENCE: f64 = 0.3;

/// The groups the flow and the clover observables work with: SU(N) matrices ([`super::Su2`],
/// [`super::Su3`], any `Matrix<N>` that is a [`GaugeGroup`], and [`SuN`]).
pub trait FlowGroup: GaugeGroup {
    /// TA(M) as an algebra element (the traceless anti-Hermitian part of M).
    fn ta(m: &Self::Mat) -> Self::Algebra;
    /// TA(U · M) for this link U.
    fn ta_mul(&self, m: &Self::Mat) -> Self::Algebra;
    /// Tr(A B) of two algebra elements in matrix form (real: both are anti-Hermitian).
    fn trace_mul(a: &Self::Algebra, b: &Self::Algebra) -> f64;
    /// max_ij |a_ij − b_ij|, the distance of the adaptive step control.
    fn max_entry_distance(a: &Self, b: &Self) -> f64;
}

fn max_entry<const N: usize>(a: &Matrix<N>, b: &Matrix<N>) -> f64 {
    let mut m = 0.0f64;
    for i in 0..N {
        for j in 0..N {
            let d = (a.0[i][j] - b.0[i][j]).abs();
            // a NaN entry makes the distance NaN (f64::max would drop it)
            m = if d.is_nan() || d > m { d } else { m };
        }
    }
    m
}

impl<const N: usize> FlowGroup for Matrix<N>
where
    Matrix<N>: GaugeGroup<Mat = Matrix<N>, Algebra = SuAlg<N>>,
{
    #[inline]
    fn ta(m: &Matrix<N>) -> SuAlg<N> {
        SuAlg(m.traceless_antihermitian())
    }
    #[inline]
    fn ta_mul(&self, m: &Matrix<N>) -> SuAlg<N> {
        SuAlg((*self * *m).traceless_antihermitian())
    }
    #[inline]
    fn trace_mul(a: &SuAlg<N>, b: &SuAlg<N>) -> f64 {
        a.0.re_trace_mul(&b.0)
    }
    #[inline]
    fn max_entry_distance(a: &Self, b: &Self) -> f64 {
        max_entry(a, b)
    }
}

impl<const N: usize> FlowGroup for SuN<N> {
    #[inline]
    fn ta(m: &Matrix<N>) -> SuAlg<N> {
        SuAlg(m.traceless_antihermitian())
    }
    #[inline]
    fn ta_mul(&self, m: &Matrix<N>) -> SuAlg<N> {
        SuAlg((self.0 * *m).traceless_antihermitian())
    }
    #[inline]
    fn trace_mul(a: &SuAlg<N>, b: &SuAlg<N>) -> f64 {
        a.0.re_trace_mul(&b.0)
    }
    #[inline]
    fn max_entry_distance(a: &Self, b: &Self) -> f64 {
        max_entry(&a.0, &b.0)
    }
}

/// The action whose gradient drives the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FlowScheme {
    /// The Wilson (plaquette) action: the Wilson flow.
    #[default]
    Wilson,
    /// The tree-level Symanzik (Lüscher–Weisz) action, c1 = −1/12, c0 = 1 − 8c1 = 5/3.
    Symanzik,
}

impl FlowScheme {
    /// The scheme's name as the command line and run cards spell it.
    pub fn name(self) -> &'static str {
        match self {
            FlowScheme::Wilson => "wilson",
            FlowScheme::Symanzik => "symanzik",
        }
    }

    /// The scheme named `name` (`wilson`, `symanzik`), or `None`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "wilson" => Some(FlowScheme::Wilson),
            "symanzik" => Some(FlowScheme::Symanzik),
            _ => None,
        }
    }

    /// (c0, c1): plaquette and rectangle weights, c0 + 8c1 = 1.
    fn coefficients(self) -> (f64, f64) {
        match self {
            FlowScheme::Wilson => (1.0, 0.0),
            FlowScheme::Symanzik => (5.0 / 3.0, -1.0 / 12.0),
        }
    }
}

/// How to integrate the flow.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlowOptions {
    /// The step size ε (lattice units, > 0); with `adaptive`, the first step's size.
    pub eps: f64,
    /// The flow action.
    pub scheme: FlowScheme,
    /// `Some(tol)`: adaptive steps with the local error (max entry distance to the embedded
    /// second-order solution) at most `tol` per step. `None`: fixed steps (see [`flow_to`]).
    pub adaptive: Option<f64>,
}

impl Default for FlowOptions {
    /// ε = 0.01, the Wilson flow, fixed steps.
    fn default() -> Self {
        Self {
            eps: 0.01,
            scheme: FlowScheme::Wilson,
            adaptive: None,
        }
    }
}

/// A theory card's `gradient_flow = { time = 1.0, eps = 0.01, scheme = "wilson" }`: flow each
/// measured configuration to `time` (t/a²) with fixed RK3 steps `eps` of the `scheme` flow
/// (`wilson` or `symanzik`) and measure there. Check it with [`FlowCard::check`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowCard {
    /// The flow time t/a² (> 0).
    pub time: f64,
    /// The RK3 step ε (0 < ε ≤ time); default 0.01.
    #[serde(default = "default_card_eps")]
    pub eps: f64,
    /// `wilson` (default) or `symanzik`.
    #[serde(default = "default_card_scheme")]
    pub scheme: String,
}

fn default_card_eps() -> f64 {
    0.01
}

fn default_card_scheme() -> String {
    "wilson".into()
}

/// A checked [`FlowCard`]: the flow time t/a² and the integrator's options.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowMeasurement {
    pub time: f64,
    pub options: FlowOptions,
}

impl FlowCard {
    /// Validates the card; errors are config errors naming the key (`gradient_flow.time` …).
    pub fn check(&self) -> Result<FlowMeasurement, crate::abi::PluginError> {
        use crate::abi::PluginError;
        let scheme = FlowScheme::from_name(&self.scheme).ok_or_else(|| {
            PluginError::config(format!("gradient_flow.scheme: unknown flow '{}' (expected wilson or symanzik)", self.scheme))
        })?;
        if !(self.time.is_finite() && self.time > 0.0) {
            return Err(PluginError::config(format!("gradient_flow.time: must be a finite flow time t/a^2 > 0, got {}", self.time)));
        }
        if !(self.eps.is_finite() && self.eps > 0.0 && self.eps <= self.time) {
            return Err(PluginError::config(format!(
                "gradient_flow.eps: must be a finite step with 0 < eps <= time, got {}",
                self.eps
            )));
        }
        let options = FlowOptions { eps: self.eps, scheme, adaptive: None };
        validate(&options, &[self.time]).map_err(|e| PluginError::config(format!("gradient_flow: {e}")))?;
        Ok(FlowMeasurement { time: self.time, options })
    }
}

/// What a flow did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlowStats {
    /// The flow time reached.
    pub t: f64,
    /// Accepted integration steps.
    pub steps: usize,
    /// Rejected adaptive steps (0 with fixed steps).
    pub rejected: usize,
    /// The smallest accepted step (+∞ when no step was taken).
    pub min_eps: f64,
    /// The largest accepted step (0 when no step was taken).
    pub max_eps: f64,
}

/// The measurements at one flow time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlowPoint {
    /// Flow time t/a².
    pub t: f64,
    /// The clover energy density a⁴E, mean over sites.
    pub e_clover: f64,
    /// The plaquette energy density a⁴E_plaq, mean over sites.
    pub e_plaq: f64,
    /// t² E with the clover E.
    pub t2e: f64,
    /// The clover topological charge (4D only; `None` otherwise).
    pub q: Option<f64>,
}

/// Why a flow or a scale could not be computed. Every message names the offending value.
#[derive(Clone, Debug, PartialEq)]
pub enum FlowError {
    /// The step size ε is not finite and positive.
    BadStep { eps: f64 },
    /// The adaptive tolerance is not finite and positive.
    BadTolerance { tol: f64 },
    /// A flow time is negative or not finite.
    BadTime { index: usize, t: f64 },
    /// Flow times do not increase strictly.
    NotIncreasing { index: usize, t: f64, previous: f64 },
    /// No flow times were given.
    NoTimes,
    /// The link buffer does not have `sites · d` links.
    Length { expected: usize, got: usize },
    /// The lattice has fewer than two dimensions.
    Dimension { d: usize },
    /// A link is not finite (NaN or infinite entries).
    NonFiniteLink { link: usize },
    /// The field became non-finite during the flow.
    Diverged { t: f64 },
    /// The adaptive step size fell below `eps` at flow time `t`.
    StepUnderflow { t: f64, eps: f64 },
    /// Two curve arrays differ in length, or a curve is too short.
    Curve { detail: String },
    /// The curve never crosses the reference upwards.
    NoCrossing {
        what: &'static str,
        reference: f64,
        max: f64,
        t_max: f64,
    },
}

impl fmt::Display for FlowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlowError::BadStep { eps } => write!(f, "flow step size eps = {eps}: must be finite and > 0"),
            FlowError::BadTolerance { tol } => {
                write!(f, "adaptive flow tolerance {tol}: must be finite and > 0")
            }
            FlowError::BadTime { index, t } => {
                write!(f, "flow time {t} (entry {index}): must be finite and >= 0")
            }
            FlowError::NotIncreasing { index, t, previous } => write!(
                f,
                "flow times must increase: entry {index} is {t}, not above the previous {previous}"
            ),
            FlowError::NoTimes => write!(f, "no flow times given"),
            FlowError::Length { expected, got } => {
                write!(f, "a link field on this lattice has {expected} links, got {got}")
            }
            FlowError::Dimension { d } => write!(f, "the gradient flow needs d >= 2 dimensions, got {d}"),
            FlowError::NonFiniteLink { link } => write!(f, "link {link} has non-finite entries"),
            FlowError::Diverged { t } => write!(f, "the flowed field became non-finite near flow time {t}"),
            FlowError::StepUnderflow { t, eps } => write!(
                f,
                "adaptive flow step fell to {eps:e} at flow time {t}: the tolerance cannot be met"
            ),
            FlowError::Curve { detail } => write!(f, "flow curve: {detail}"),
            FlowError::NoCrossing { what, reference, max, t_max } => write!(
                f,
                "{what} never rises through {reference} (its largest value is {max} up to t = {t_max}): \
                 flow to larger times"
            ),
        }
    }
}

impl std::error::Error for FlowError {}

/// Checks a step size, a tolerance, and a list of flow times (finite, ≥ 0, strictly
/// increasing; the first may be 0).
pub fn validate(opts: &FlowOptions, times: &[f64]) -> Result<(), FlowError> {
    if !(opts.eps.is_finite() && opts.eps > 0.0) {
        return Err(FlowError::BadStep { eps: opts.eps });
    }
    if let Some(tol) = opts.adaptive {
        if !(tol.is_finite() && tol > 0.0) {
            return Err(FlowError::BadTolerance { tol });
        }
    }
    for (index, &t) in times.iter().enumerate() {
        if !(t.is_finite() && t >= 0.0) {
            return Err(FlowError::BadTime { index, t });
        }
        if index > 0 && t <= times[index - 1] {
            return Err(FlowError::NotIncreasing {
                index,
                t,
                previous: times[index - 1],
            });
        }
    }
    Ok(())
}

fn check_field<G: FlowGroup, N: Neighbours + ?Sized>(nb: &N, links: &[G]) -> Result<(), FlowError> {
    let d = nb.dim();
    if d < 2 {
        return Err(FlowError::Dimension { d });
    }
    let expected = nb.sites() * d;
    if links.len() != expected {
        return Err(FlowError::Length {
            expected,
            got: links.len(),
        });
    }
    // a non-finite entry makes the deviation NaN or infinite
    match first_non_finite(links) {
        Some(link) => Err(FlowError::NonFiniteLink { link }),
        None => Ok(()),
    }
}

/// The index of the first link with a non-finite entry, searched in parallel chunks.
fn first_non_finite<G: GaugeGroup>(links: &[G]) -> Option<usize> {
    const CHUNK: usize = 4096;
    let found = crate::par::chunks(links, CHUNK, |c, part| {
        part.iter().position(|u| !u.deviation().is_finite()).map(|i| c * CHUNK + i)
    });
    found.into_iter().flatten().next()
}

/// The flow generator Z(x, μ) (without ε) of link (x, μ); see the module docs.
#[inline]
fn generator<G: FlowGroup, N: Neighbours + ?Sized>(
    nb: &N,
    u: &[G],
    x: usize,
    mu: usize,
    c: (f64, f64),
) -> G::Algebra {
    let link = &u[x * nb.dim() + mu];
    let mut z = link.ta_mul(&staple(nb, u, x, mu)).scale(-c.0);
    if c.1 != 0.0 {
        z.axpy(-c.1, &link.ta_mul(&rectangle_staple(nb, u, x, mu)));
    }
    z
}

/// NaN-propagating maximum (associative and commutative, so any reduction order gives the
/// same bits).
#[inline]
fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// The work buffers of the integrator, and the adaptive step size carried between segments.
struct Integrator<G: FlowGroup> {
    coeffs: (f64, f64),
    adaptive: Option<f64>,
    eps: f64,
    /// The accumulated exponent of the 2N-storage scheme.
    x: Vec<G::Algebra>,
    /// Adaptive only: εZ0, then the exponent of the second-order solution.
    low: Vec<G::Algebra>,
    /// Adaptive only: W1, then the second-order solution.
    w1: Vec<G>,
    /// Adaptive only: the field before the step (restored on rejection).
    start: Vec<G>,
    stats: FlowStats,
}

impl<G: FlowGroup> Integrator<G> {
    fn new(n_links: usize, opts: &FlowOptions) -> Self {
        let adaptive = opts.adaptive.is_some();
        let extra = if adaptive { n_links } else { 0 };
        Self {
            coeffs: opts.scheme.coefficients(),
            adaptive: opts.adaptive,
            eps: opts.eps,
            x: vec![G::Algebra::zero(); n_links],
            low: vec![G::Algebra::zero(); extra],
            w1: vec![G::identity(); extra],
            start: vec![G::identity(); extra],
            stats: FlowStats {
                t: 0.0,
                steps: 0,
                rejected: 0,
                min_eps: f64::INFINITY,
                max_eps: 0.0,
            },
        }
    }

    /// x ← a · Z(u) + b · x, link by link.
    fn stage<N: Neighbours + ?Sized>(&mut self, nb: &N, u: &[G], a: f64, b: f64) {
        let c = self.coeffs;
        fill_sites_as(SiteWork::of_group::<G>(), &mut self.x, nb.dim(), |x, site, _| {
            for (mu, v) in site.iter_mut().enumerate() {
                let mut next = v.scale(b);
                next.axpy(a, &generator(nb, u, x, mu, c));
                *v = next;
            }
        });
    }

    /// u ← exp(s · x) u for every link ([`GaugeGroup::exp_mul_into`]: the bits of link by link).
    fn apply(u: &mut [G], x: &[G::Algebra], s: f64, d: usize) {
        fill_sites_as(SiteWork::of_group::<G>(), u, d, |site, links, _| {
            G::exp_mul_into(links, &x[site * d..(site + 1) * d], s)
        });
    }

    /// One RK3 step of size h. With adaptive control, also builds the second-order solution
    /// in `w1` and returns the max entry distance to it (0 otherwise).
    fn step<N: Neighbours + ?Sized>(&mut self, nb: &N, u: &mut [G], h: f64) -> f64 {
        let d = nb.dim();
        self.stage(nb, u, h, 0.0); // x = εZ0
        if self.adaptive.is_some() {
            self.low.copy_from_slice(&self.x);
        }
        Self::apply(u, &self.x, 0.25, d); // W1
        if self.adaptive.is_some() {
            self.w1.copy_from_slice(u);
        }
        self.stage(nb, u, h * 8.0 / 9.0, -17.0 / 36.0); // x = 8/9 Z1 − 17/36 Z0
        Self::apply(u, &self.x, 1.0, d); // W2
        if self.adaptive.is_some() {
            // 2Z1 − 5/4 Z0 = 9/4 x − 3/16 Z0 with x = 8/9 Z1 − 17/36 Z0
            let x = &self.x;
            fill_sites(&mut self.low, d, |site, l, _| {
                for (mu, v) in l.iter_mut().enumerate() {
                    let mut next = v.scale(-3.0 / 16.0);
                    next.axpy(9.0 / 4.0, &x[site * d + mu]);
                    *v = next;
                }
            });
            Self::apply(&mut self.w1, &self.low, 1.0, d);
        }
        self.stage(nb, u, h * 0.75, -1.0); // x = ¾Z2 − 8/9 Z1 + 17/36 Z0
        Self::apply(u, &self.x, 1.0, d); // V(t + ε)
        if self.adaptive.is_some() {
            const CHUNK: usize = 4096;
            let w1 = &self.w1;
            let per_chunk = crate::par::chunks(u, CHUNK, |c, part| {
                part.iter().zip(&w1[c * CHUNK..]).map(|(a, b)| G::max_entry_distance(a, b)).fold(0.0, nan_max)
            });
            per_chunk.into_iter().fold(0.0, nan_max)
        } else {
            0.0
        }
    }

    fn accepted(&mut self, h: f64, t: f64) {
        self.stats.steps += 1;
        self.stats.t = t;
        self.stats.min_eps = self.stats.min_eps.min(h);
        self.stats.max_eps = self.stats.max_eps.max(h);
    }

    /// Flows from the current time to `t_to` > current time.
    fn advance<N: Neighbours + ?Sized>(
        &mut self,
        nb: &N,
        u: &mut [G],
        t_to: f64,
    ) -> Result<(), FlowError> {
        match self.adaptive {
            None => self.advance_fixed(nb, u, t_to),
            Some(tol) => self.advance_adaptive(nb, u, t_to, tol),
        }
    }

    /// n = ⌈Δt/ε⌉ equal steps of Δt/n ≤ ε (Δt/ε within 1e-9 of an integer counts as that
    /// integer, so times on the ε grid take steps of exactly ε up to rounding).
    fn advance_fixed<N: Neighbours + ?Sized>(
        &mut self,
        nb: &N,
        u: &mut [G],
        t_to: f64,
    ) -> Result<(), FlowError> {
        let t0 = self.stats.t;
        let span = t_to - t0;
        let ratio = span / self.eps;
        let n = if (ratio - ratio.round()).abs() < 1e-9 * ratio.max(1.0) {
            ratio.round()
        } else {
            ratio.ceil()
        };
        let n = (n as usize).max(1);
        let h = span / n as f64;
        for k in 1..=n {
            self.step(nb, u, h);
            let t = if k == n { t_to } else { t0 + h * k as f64 };
            self.accepted(h, t);
        }
        if first_non_finite(u).is_some() {
            return Err(FlowError::Diverged { t: t_to });
        }
        Ok(())
    }

    fn advance_adaptive<N: Neighbours + ?Sized>(
        &mut self,
        nb: &N,
        u: &mut [G],
        t_to: f64,
        tol: f64,
    ) -> Result<(), FlowError> {
        let floor = 1e-12 * t_to.max(1.0);
        while self.stats.t < t_to {
            let t = self.stats.t;
            let remaining = t_to - t;
            let truncated = self.eps >= remaining;
            let h = if truncated { remaining } else { self.eps };
            self.start.copy_from_slice(u);
            let dist = self.step(nb, u, h);
            if !dist.is_finite() {
                return Err(FlowError::Diverged { t });
            }
            let factor = if dist == 0.0 {
                3.0
            } else {
                (0.9 * (tol / dist).cbrt()).clamp(0.2, 3.0)
            };
            let proposal = h * factor;
            if dist <= tol {
                self.accepted(h, if truncated { t_to } else { t + h });
                self.eps = if truncated {
                    self.eps.min(proposal)
                } else {
                    proposal
                };
            } else {
                u.copy_from_slice(&self.start);
                self.stats.rejected += 1;
                self.eps = proposal;
            }
            if self.eps < floor {
                return Err(FlowError::StepUnderflow {
                    t: self.stats.t,
                    eps: self.eps,
                });
            }
        }
        Ok(())
    }
}

/// Flows `links` (a `[site][μ]` field on `nb`) from flow time 0 to `t` in place.
///
/// Fixed steps: ⌈t/ε⌉ equal steps of size t/⌈t/ε⌉ ≤ ε. Adaptive: steps as in the module docs,
/// the last one shortened to land on t. `t = 0` leaves the field unchanged.
///
/// # Errors
/// [`FlowError`] for ε or a tolerance that is not finite and positive, a negative or
/// non-finite `t`, d < 2, a buffer of the wrong length, non-finite links, a field that
/// diverges, or an adaptive step that cannot meet the tolerance.
pub fn flow_to<G: FlowGroup, N: Neighbours + ?Sized>(
    nb: &N,
    links: &mut [G],
    t: f64,
    opts: &FlowOptions,
) -> Result<FlowStats, FlowError> {
    validate(opts, &[t])?;
    check_field(nb, links)?;
    let mut integ = Integrator::<G>::new(links.len(), opts);
    if t > 0.0 {
        integ.advance(nb, links, t)?;
    }
    Ok(integ.stats)
}

/// Flows `links` in place through the flow times `times` (finite, ≥ 0, strictly increasing;
/// a first time of 0 measures the unflowed field) and measures at each ([`measure`]). The
/// field ends at the last time. The adaptive step size carries over from one time to the
/// next. Errors as [`flow_to`], plus [`FlowError::NoTimes`] and
/// [`FlowError::NotIncreasing`].
pub fn flow_measurements<G: FlowGroup, N: Neighbours + ?Sized>(
    nb: &N,
    links: &mut [G],
    times: &[f64],
    opts: &FlowOptions,
) -> Result<Vec<FlowPoint>, FlowError> {
    if times.is_empty() {
        return Err(FlowError::NoTimes);
    }
    validate(opts, times)?;
    check_field(nb, links)?;
    let mut integ = Integrator::<G>::new(links.len(), opts);
    let mut out = Vec::with_capacity(times.len());
    for &t in times {
        if t > integ.stats.t {
            integ.advance(nb, links, t)?;
        }
        out.push(measure(nb, links, t));
    }
    Ok(out)
}

/// The uniform grid of flow times 0, dt, 2dt, …, up to `t_max` for [`flow_measurements`]
/// (ending with `t_max` itself when it is not on the grid; a grid point within 1e-9·dt of it
/// is replaced by it). [`FlowError::BadTime`] (entry 0: `t_max`, entry 1: `dt`) for a value
/// that is not finite and positive.
pub fn flow_grid(t_max: f64, dt: f64) -> Result<Vec<f64>, FlowError> {
    if !(dt.is_finite() && dt > 0.0) {
        return Err(FlowError::BadTime { index: 1, t: dt });
    }
    if !(t_max.is_finite() && t_max > 0.0) {
        return Err(FlowError::BadTime { index: 0, t: t_max });
    }
    let mut times = vec![0.0];
    let mut k = 1usize;
    loop {
        let t = dt * k as f64;
        if t >= t_max - 1e-9 * dt {
            times.push(t_max);
            return Ok(times);
        }
        times.push(t);
        k += 1;
    }
}

/// The four-leaf clover F_μν(x) = ¼ TA(Q_μν(x)) (see the module docs), as an algebra element.
pub fn clover_field<G: FlowGroup, N: Neighbours + ?Sized>(
    nb: &N,
    u: &[G],
    x: usize,
    mu: usize,
    nu: usize,
) -> G::Algebra {
    let (f, b) = (
        |m| Step {
            mu: m,
            forward: true,
        },
        |m| Step {
            mu: m,
            forward: false,
        },
    );
    let leaves = [
        [f(mu), f(nu), b(mu), b(nu)],
        [f(nu), b(mu), b(nu), f(mu)],
        [b(mu), b(nu), f(mu), f(nu)],
        [b(nu), f(mu), f(nu), b(mu)],
    ];
    let mut q = G::Mat::default();
    for leaf in &leaves {
        q += path(nb, u, x, leaf).0.to_mat();
    }
    G::ta(&q).scale(0.25)
}

/// The clover energy density E(x) and, in 4D, the charge density q(x) at site x.
fn clover_site<G: FlowGroup, N: Neighbours + ?Sized>(nb: &N, u: &[G], x: usize) -> (f64, f64) {
    let d = nb.dim();
    if d == 4 {
        let planes = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)];
        let f = planes.map(|(mu, nu)| clover_field(nb, u, x, mu, nu));
        let e = -f.iter().map(|a| G::trace_mul(a, a)).sum::<f64>();
        let tr =
            G::trace_mul(&f[0], &f[5]) - G::trace_mul(&f[1], &f[4]) + G::trace_mul(&f[2], &f[3]);
        return (e, -tr / (4.0 * PI * PI));
    }
    let mut e = 0.0;
    for mu in 0..d {
        for nu in mu + 1..d {
            let a = clover_field(nb, u, x, mu, nu);
            e -= G::trace_mul(&a, &a);
        }
    }
    (e, 0.0)
}

/// The clover energy density a⁴E, averaged over sites (see the module docs).
pub fn clover_energy_density<G: FlowGroup, N: Neighbours + ?Sized>(nb: &N, u: &[G]) -> f64 {
    sum_sites(nb.sites(), |x, s| s.add(clover_site(nb, u, x).0)) / nb.sites() as f64
}

/// The plaquette energy density 2 Σ_{μ<ν} Re Tr(1 − U_P), averaged over sites.
pub fn plaquette_energy_density<G: FlowGroup, N: Neighbours + ?Sized>(nb: &N, u: &[G]) -> f64 {
    let d = nb.dim();
    let nc = G::NC as f64;
    let sum = sum_sites(nb.sites(), |x, s| {
        for mu in 0..d {
            for nu in mu + 1..d {
                s.add(2.0 * (nc - plaquette(nb, u, x, mu, nu).re_trace()));
            }
        }
    });
    sum / nb.sites() as f64
}

/// The clover topological charge Q (summed over sites; see the module docs for the sign), or
/// `None` unless d = 4.
pub fn topological_charge<G: FlowGroup, N: Neighbours + ?Sized>(nb: &N, u: &[G]) -> Option<f64> {
    (nb.dim() == 4).then(|| sum_sites(nb.sites(), |x, s| s.add(clover_site(nb, u, x).1)))
}

/// The measurements at flow time `t` of the field `u` (clover E and Q from one pass over the
/// sites; t only enters t²E).
pub fn measure<G: FlowGroup, N: Neighbours + ?Sized>(nb: &N, u: &[G], t: f64) -> FlowPoint {
    let v = nb.sites();
    let mut q_site = vec![0.0; v];
    let e_sum = fill_sites(&mut q_site, 1, |x, q, s| {
        let (e, qx) = clover_site(nb, u, x);
        s.add(e);
        q[0] = qx;
    });
    let e_clover = e_sum / v as f64;
    let q = (nb.dim() == 4).then(|| crate::sum::compensated_sum(q_site.iter().copied()));
    FlowPoint {
        t,
        e_clover,
        e_plaq: plaquette_energy_density(nb, u),
        t2e: t * t * e_clover,
        q,
    }
}

/// The solution of a scale condition on a measured curve, and its gradient.
#[derive(Clone, Debug, PartialEq)]
pub struct Crossing {
    /// The flow time t at which the condition holds (t0/a², or w0²/a² for [`w0_crossing`]).
    pub t: f64,
    /// ∂t/∂y_k for every curve value y_k = t_k² E(t_k) (zero outside the stencil), so that the
    /// linearised fluctuation of t is Σ_k gradient\[k\] δy_k.
    pub gradient: Vec<f64>,
}

fn check_curve(times: &[f64], values: &[f64], min: usize) -> Result<(), FlowError> {
    if times.len() != values.len() {
        return Err(FlowError::Curve {
            detail: format!("{} times but {} values", times.len(), values.len()),
        });
    }
    if times.len() < min {
        return Err(FlowError::Curve {
            detail: format!("{} points, at least {min} needed", times.len()),
        });
    }
    if let Some(k) = (1..times.len())
        .find(|&k| times[k].partial_cmp(&times[k - 1]) != Some(std::cmp::Ordering::Greater))
    {
        return Err(FlowError::NotIncreasing {
            index: k,
            t: times[k],
            previous: times[k - 1],
        });
    }
    if let Some(k) = values.iter().position(|v| !v.is_finite()) {
        return Err(FlowError::Curve {
            detail: format!("value {k} is not finite"),
        });
    }
    Ok(())
}

/// The first upward crossing of `y` through `r` (y_k < r ≤ y_{k+1}) by linear interpolation:
/// (t*, k, ∂t*/∂y_k, ∂t*/∂y_{k+1}).
fn crossing(
    times: &[f64],
    y: &[f64],
    r: f64,
    what: &'static str,
) -> Result<(f64, usize, f64, f64), FlowError> {
    for k in 0..y.len() - 1 {
        if y[k] < r && y[k + 1] >= r {
            let (s, tau) = (y[k + 1] - y[k], times[k + 1] - times[k]);
            let t = times[k] + (r - y[k]) * tau / s;
            return Ok((
                t,
                k,
                -tau * (y[k + 1] - r) / (s * s),
                -tau * (r - y[k]) / (s * s),
            ));
        }
    }
    let max = y.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Err(FlowError::NoCrossing {
        what,
        reference: r,
        max,
        t_max: times[times.len() - 1],
    })
}

/// t0: the first upward crossing of t²E(t) = `reference` (0.3 for t0, [`SCALE_REFERENCE`]) on
/// the curve (`times` strictly increasing, `t2e` the measured t²E at each), by linear
/// interpolation between the bracketing points. Errors for mismatched or short (< 2 points)
/// curves, non-finite values, and a curve that never reaches the reference.
pub fn t0_crossing(times: &[f64], t2e: &[f64], reference: f64) -> Result<Crossing, FlowError> {
    check_curve(times, t2e, 2)?;
    let (t, k, g0, g1) = crossing(times, t2e, reference, "t^2 E(t)")?;
    let mut gradient = vec![0.0; times.len()];
    gradient[k] = g0;
    gradient[k + 1] = g1;
    Ok(Crossing { t, gradient })
}

/// The three-point weights (c₋, c₀, c₊) of f'(t_k) on a non-uniform grid (exact for
/// quadratics).
fn derivative_weights(times: &[f64], k: usize) -> [f64; 3] {
    let (h1, h2) = (times[k] - times[k - 1], times[k + 1] - times[k]);
    [
        -h2 / (h1 * (h1 + h2)),
        (h2 - h1) / (h1 * h2),
        h1 / (h2 * (h1 + h2)),
    ]
}

/// W(t_k) = t_k d/dt\[t²E\] at the interior points k = 1 … n−2 of the curve (second-order
/// three-point differences): `(times[1..n−1], W)`. Errors as [`t0_crossing`] (at least 3 points).
pub fn w_curve(times: &[f64], t2e: &[f64]) -> Result<(Vec<f64>, Vec<f64>), FlowError> {
    check_curve(times, t2e, 3)?;
    let n = times.len();
    let w = (1..n - 1)
        .map(|k| {
            let c = derivative_weights(times, k);
            times[k] * (c[0] * t2e[k - 1] + c[1] * t2e[k] + c[2] * t2e[k + 1])
        })
        .collect();
    Ok((times[1..n - 1].to_vec(), w))
}

/// w0²: the first upward crossing of W(t) = t d/dt\[t²E\] = `reference` (0.3 for w0), W as in
/// [`w_curve`], by linear interpolation; `Crossing::t` is w0²/a² (w0/a is its square root)
/// and the gradient is with respect to the t²E values. Errors as [`w_curve`], and
/// [`FlowError::NoCrossing`].
pub fn w0_crossing(times: &[f64], t2e: &[f64], reference: f64) -> Result<Crossing, FlowError> {
    let (tw, w) = w_curve(times, t2e)?;
    let (t, j, g0, g1) = crossing(&tw, &w, reference, "W(t) = t d/dt[t^2 E]")?;
    let mut gradient = vec![0.0; times.len()];
    // W_j sits at curve point k = j + 1 and depends on points k−1, k, k+1
    for (gw, k) in [(g0, j + 1), (g1, j + 2)] {
        let c = derivative_weights(times, k);
        for (i, ci) in c.iter().enumerate() {
            gradient[k - 1 + i] += gw * times[k] * ci;
        }
    }
    Ok(Crossing { t, gradient })
}

#[cfg(test)]
#[path = "gradflow_tests.rs"]
mod tests;
