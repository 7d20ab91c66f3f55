//! `kind = "defect_snf"`: a stochastic normalizing flow over u1's defect (2D: one plaquette, or
//! several, each with its own sub-layer).
//!
//! The defect's coupling w goes from its value v to `to` (0: the plaquette is free and the
//! topological charge moves through it) and back in `stages` switches each way, as in the host's
//! `anneal` step, but every switch k is a trained flow layer T_k followed by HMC at the new
//! coupling λ_k (Caselle, Cellini, Nada and Panero, JHEP 07 (2022) 015; with a defect, Bonanno,
//! Nada and Vadacchino, JHEP 04 (2024) 126):
//!
//! ```text
//! λ_k = v + (to − v)·(1 − |k − n| / n),   k = 0 … 2n   (n = stages)
//! T_k = L_k for k ≤ n,   T_k = L_{2n+1−k}⁻¹ for k > n   (the return leg undoes the descent's layers)
//! x_0 = x;  for k = 1 … 2n:  y_k = T_k(x_{k−1});  W += S_{λ_k}(y_k) − S_{λ_{k−1}}(x_{k−1}) − ln|det ∂T_k/∂x|
//!                            x_k = K_{λ_k}(y_k) for k < 2n  (x_{2n} = y_{2n})
//! accept x_{2n} with probability min(1, e^{−W})
//! ```
//!
//! K_λ is `hmc.repeat` HMC trajectories at coupling λ (`repeat + hold` at k = n). The kernels and
//! the layers form a palindrome (K at k and 2n − k are the same, T_{2n+1−k} = T_k⁻¹), so the
//! reverse of a path is drawn by the same protocol and the step satisfies detailed balance with
//! e^{−S_v} whatever the layers are: their training changes the acceptance only.
//!
//! **The layer** ([`DefectGeometry::forward`]). With φ = θ_d the defect plaquette's angle (wrapped into
//! (−π, π]) and h a circle diffeomorphism, every link moves by a fixed pattern A scaled by
//! Δ = h(φ) − φ:
//!
//! ```text
//! θ_l ↦ θ_l + Δ(φ)·A_l,   curl A = 1 on the defect and −1/(V − 1) on every other plaquette
//! ```
//!
//! so the defect's angle becomes h(φ) and the flux that it gives up or takes is spread evenly
//! over the rest of the torus (A is the lattice Green's function's field, [`flux_field`]). The
//! map is gauge-equivariant (A is added to the links, and φ is gauge-invariant), invertible (h
//! is, and Δ is a function of the new angle too), and its Jacobian is
//! det(1 + A ⊗ ∇Δ) = 1 + Δ'(φ)·(curl A)_d = h'(φ). h is a convex mixture of `components`
//! non-compact projections g_α(φ) = 2 atan(α tan(φ/2)) (Rezende et al., ICML 2020), each odd and
//! fixing 0 and ±π, so h respects charge conjugation. Why this shape: the plaquettes of 2D U(1)
//! on a torus are independent but for their total flux, so given θ_d the other plaquettes'
//! distribution does not depend on w, and for Gaussian plaquettes a change of θ_d by Δ shifts
//! each of the others' conditional means by −Δ/(V − 1): the layer transports the conditional
//! law, and h the defect's own marginal. With several defect plaquettes (`defect_sites`, or a
//! box) the layer is one such sub-layer per plaquette, applied in order, each with its own A_i
//! (A translated to the plaquette) and the same h; its log-det is the sum of the sub-layers'.
//! Defects far apart move the charge in parallel at the cost of one HMC trajectory.
//!
//! **Training** (greedy, per layer): layer k minimises its share of ⟨W⟩,
//! E[S_{λ_k}(L_k x) − ln h_k'(φ)] over the descent's states x before it, which reduces to three
//! numbers per state and defect plaquette (φ, and Σ cos θ_P, Σ sin θ_P over the other
//! plaquettes; with several defects each one's share is taken as if it were alone, which
//! neglects the O(1/V) shift that a sub-layer gives the other defects: W keeps it); gradients are
//! analytic, the optimiser is Adam. The training chain is the step's own (cold start, seed
//! `flow.seed`, `flow.thermalization` trajectories at v), independent of the run's chain, so a
//! resumed run retrains to the same bits. The trained layers are kept on the theory object, one
//! set per (options, β, v).

use std::f64::consts::{PI, TAU};
use std::sync::{Arc, Mutex};

use latflow_core::abi::{parse_config, HmcParams, PluginError};
use latflow_core::gauge::Neighbours;
use latflow_core::hmc::{hmc_trajectory, metropolis_accept, palindrome_lambda, Angles, LeveledAction, Schedule};
use latflow_core::sdk::hmc_error;
use latflow_core::{Lattice, Stream};
use serde::{Deserialize, Serialize};

use crate::kernel::{wrap_angle, Kernel};
use crate::WilsonAction;

/// The step's card kind.
pub const KIND: &str = "defect_snf";

/// The values recorded per application: 1 if the protocol's end point was accepted, the work W
/// (dimensionless), the acceptance of the inner HMC trajectories.
pub const COLUMNS: [&str; 3] = ["protocol_accepted", "work", "inner_acceptance"];

/// The step's options (the `[[chain]]` entry's keys other than `kind` and `repeat`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Switches each way (n ≥ 1).
    #[serde(default = "one")]
    pub stages: u32,
    /// Extra HMC trajectories at the turning point.
    #[serde(default)]
    pub hold: u32,
    /// The defect's coupling at the turning point (finite, ≥ 0; 0 opens the defect).
    #[serde(default)]
    pub to: f64,
    /// The HMC kernel after each switch.
    #[serde(default)]
    pub hmc: InnerHmc,
    /// The layers and their training.
    #[serde(default)]
    pub flow: FlowOptions,
}

/// The HMC trajectories after each switch (Omelyan-2, one time scale).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InnerHmc {
    /// Omelyan steps per trajectory (≥ 1).
    pub md_steps: u32,
    /// Trajectory length τ (MD time units, finite, > 0).
    pub trajectory_length: f64,
    /// Trajectory-length jitter, in [0, 1).
    pub trajectory_jitter: f64,
    /// Trajectories after each switch (≥ 1).
    pub repeat: u32,
}

impl Default for InnerHmc {
    fn default() -> Self {
        Self { md_steps: 8, trajectory_length: 2.0, trajectory_jitter: 0.2, repeat: 1 }
    }
}

/// The circle maps and their training.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FlowOptions {
    /// Non-compact projections in each layer's mixture (1 ..= 64).
    pub components: u32,
    /// Adam steps (0: the untrained layers, close to the identity).
    pub train_steps: u32,
    /// Descents per Adam step (≥ 1).
    pub batch: u32,
    /// Adam's learning rate (finite, > 0).
    pub learning_rate: f64,
    /// Seed of the training chain.
    pub seed: u64,
    /// HMC trajectories at v before the training chain's first descent.
    pub thermalization: u32,
}

impl Default for FlowOptions {
    fn default() -> Self {
        Self { components: 4, train_steps: 200, batch: 32, learning_rate: 0.05, seed: 1, thermalization: 100 }
    }
}

fn one() -> u32 {
    1
}

impl Options {
    /// Parses and checks the card options; errors name the key.
    pub fn parse(options: &serde_json::Value) -> Result<Self, PluginError> {
        let o: Options = parse_config(&options.to_string())?;
        let err = |key: &str, msg: String| Err(PluginError::config(format!("{KIND}: {key}: {msg}")));
        if o.stages == 0 {
            return err("stages", "must be at least 1, got 0".into());
        }
        if !(o.to.is_finite() && o.to >= 0.0) {
            return err("to", format!("must be finite and ≥ 0, got {}", o.to));
        }
        o.schedule()?;
        if o.hmc.repeat == 0 {
            return err("hmc.repeat", "must be at least 1, got 0".into());
        }
        let f = &o.flow;
        if !(1..=64).contains(&f.components) {
            return err("flow.components", format!("must lie in 1..=64, got {}", f.components));
        }
        if f.batch == 0 {
            return err("flow.batch", "must be at least 1, got 0".into());
        }
        if !(f.learning_rate.is_finite() && f.learning_rate > 0.0) {
            return err("flow.learning_rate", format!("must be finite and > 0, got {}", f.learning_rate));
        }
        Ok(o)
    }

    /// The inner HMC trajectories' schedule; core's checks of `md_steps`, `trajectory_length`
    /// and `trajectory_jitter`, reported under `hmc.`.
    fn schedule(&self) -> Result<Schedule, PluginError> {
        let params = HmcParams {
            trajectory_length: self.hmc.trajectory_length,
            md_steps: self.hmc.md_steps,
            jitter: self.hmc.trajectory_jitter,
            ..HmcParams::default()
        };
        Schedule::from_params(&params, 1).map_err(|m| PluginError::config(format!("{KIND}: hmc.{m}")))
    }

    /// λ_k of the palindromic schedule from `v` (k = 0, 2n) to `to` (k = n).
    fn lambda(&self, v: f64, k: u32) -> f64 {
        palindrome_lambda(v, self.to, self.stages, k)
    }
}

/// The link field A (one value per link, `[site][μ]`) of a 2D torus whose curl is 1 on the
/// plaquette at site `defect` and −1/(V − 1) on every other one: A_0(x) = χ(x) − χ(x − 1̂),
/// A_1(x) = χ(x − 0̂) − χ(x), with −∇²χ the curl, solved by the lattice Green's function
/// χ(x) = (V − 1)⁻¹ Σ_{k≠0} cos(k·(x − x_d)) / Σ_μ (2 − 2 cos k_μ). O(V²) work, once per theory
/// (at the origin; [`DefectGeometry`] translates it to each defect plaquette).
pub fn flux_field(lattice: &Lattice, defect: usize) -> Vec<f64> {
    assert_eq!(lattice.dim(), 2, "the flux field is defined in 2D");
    let (shape, v) = (lattice.shape(), lattice.volume());
    let xd = lattice.coords(defect);
    let modes: Vec<(f64, f64, f64)> = (0..v)
        .skip(1)
        .map(|k| {
            let c = lattice.coords(k);
            let (k0, k1) = (TAU * c[0] as f64 / shape[0] as f64, TAU * c[1] as f64 / shape[1] as f64);
            (k0, k1, 1.0 / (4.0 - 2.0 * k0.cos() - 2.0 * k1.cos()))
        })
        .collect();
    let chi: Vec<f64> = (0..v)
        .map(|x| {
            let c = lattice.coords(x);
            let (r0, r1) = (c[0] as f64 - xd[0] as f64, c[1] as f64 - xd[1] as f64);
            modes.iter().map(|&(k0, k1, g)| (k0 * r0 + k1 * r1).cos() * g).sum::<f64>() / (v - 1) as f64
        })
        .collect();
    let mut a = vec![0.0; 2 * v];
    for x in 0..v {
        a[2 * x] = chi[x] - chi[lattice.dn(x, 1)];
        a[2 * x + 1] = chi[lattice.dn(x, 0)] - chi[x];
    }
    a
}

/// g_α(φ) = 2 atan(α tan(φ/2)) on (−π, π] and its derivatives: (g, ∂g/∂φ, ∂g/∂α, ∂²g/∂φ∂α).
fn ncp(phi: f64, alpha: f64) -> [f64; 4] {
    let (s, c) = (0.5 * phi).sin_cos();
    let (c2, as2) = (c * c, alpha * alpha * s * s);
    let den = c2 + as2;
    [2.0 * (alpha * s).atan2(c), alpha / den, 2.0 * s * c / den, (c2 - as2) / (den * den)]
}

/// A circle diffeomorphism h(φ) = Σ_j ρ_j g_{α_j}(φ), ρ = softmax(logits), α_j = e^{log_alpha_j}:
/// odd, increasing, h(±π) = ±π.
#[derive(Debug, Clone, PartialEq)]
pub struct CircleMap {
    logits: Vec<f64>,
    log_alpha: Vec<f64>,
}

/// The bound on |ln α| (keeps h' within [e^{−8}, e^{8}]).
const LOG_ALPHA_MAX: f64 = 8.0;

impl CircleMap {
    /// m components, equal weights, α spread over e^{±0.1}: close to the identity, and the
    /// components differ so that their gradients do.
    pub fn new(m: usize) -> Self {
        let spread = |j: usize| if m == 1 { 0.0 } else { 0.2 * (j as f64 / (m - 1) as f64 - 0.5) };
        Self { logits: vec![0.0; m], log_alpha: (0..m).map(spread).collect() }
    }

    /// From weights' logits and ln α (equal lengths, ≥ 1).
    pub fn from_parts(logits: Vec<f64>, log_alpha: Vec<f64>) -> Self {
        assert!(!logits.is_empty() && logits.len() == log_alpha.len(), "one logit and one ln α per component");
        Self { logits, log_alpha }
    }

    fn weights(&self) -> Vec<f64> {
        let top = self.logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = self.logits.iter().map(|&l| (l - top).exp()).collect();
        let z: f64 = e.iter().sum();
        e.into_iter().map(|x| x / z).collect()
    }

    /// (h(φ), h'(φ)) for φ in [−π, π].
    pub fn eval(&self, phi: f64) -> (f64, f64) {
        self.eval_weighted(&self.weights(), phi)
    }

    /// [`Self::eval`] with the mixture weights ρ = softmax(logits) given.
    fn eval_weighted(&self, rho: &[f64], phi: f64) -> (f64, f64) {
        let (mut h, mut dh) = (0.0, 0.0);
        for (r, &la) in rho.iter().zip(&self.log_alpha) {
            let g = ncp(phi, la.exp());
            h += r * g[0];
            dh += r * g[1];
        }
        (h, dh)
    }

    /// h⁻¹(y) for y in [−π, π], by bisection to the last bit (h is increasing).
    pub fn inverse(&self, y: f64) -> f64 {
        let rho = self.weights();
        let (mut lo, mut hi) = (-PI, PI);
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if mid <= lo || mid >= hi {
                break;
            }
            if self.eval_weighted(&rho, mid).0 < y {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        0.5 * (lo + hi)
    }

    /// Adds to `grad` (logits' then ln α's entries) the gradient of a loss with ∂ℓ/∂h = `dl_dh`
    /// and ∂ℓ/∂h' = `dl_ddh` at φ.
    fn accumulate(&self, phi: f64, dl_dh: f64, dl_ddh: f64, grad: &mut [f64]) {
        let m = self.logits.len();
        let rho = self.weights();
        let gs: Vec<[f64; 4]> = self.log_alpha.iter().map(|&la| ncp(phi, la.exp())).collect();
        let h: f64 = rho.iter().zip(&gs).map(|(r, g)| r * g[0]).sum();
        let dh: f64 = rho.iter().zip(&gs).map(|(r, g)| r * g[1]).sum();
        for j in 0..m {
            let (g, alpha) = (gs[j], self.log_alpha[j].exp());
            grad[j] += rho[j] * (dl_dh * (g[0] - h) + dl_ddh * (g[1] - dh));
            grad[m + j] += rho[j] * alpha * (dl_dh * g[2] + dl_ddh * g[3]);
        }
    }

    /// The parameters, logits then ln α.
    fn params(&self) -> Vec<f64> {
        self.logits.iter().chain(&self.log_alpha).cloned().collect()
    }

    fn set_params(&mut self, p: &[f64]) {
        let m = self.logits.len();
        self.logits.copy_from_slice(&p[..m]);
        for (la, &x) in self.log_alpha.iter_mut().zip(&p[m..]) {
            *la = x.clamp(-LOG_ALPHA_MAX, LOG_ALPHA_MAX);
        }
    }
}

/// The geometry the layers share: the defect plaquettes and their flux patterns.
#[derive(Debug, Clone)]
pub struct DefectGeometry {
    kernel: Kernel,
    /// The defect plaquettes, in increasing order (in 2D a plaquette's index is its site's).
    sites: Vec<usize>,
    /// A_i for each defect plaquette i: [`flux_field`] of a defect at the origin, translated.
    fluxes: Vec<Vec<f64>>,
}

impl DefectGeometry {
    /// For a 2D kernel with a defect (one plaquette or several); otherwise a config error.
    pub fn new(kernel: &Kernel, lattice: &Lattice) -> Result<Self, PluginError> {
        if lattice.dim() != 2 {
            return Err(PluginError::config(format!("{KIND}: needs a 2D lattice, got {:?}", lattice.shape())));
        }
        let sites = kernel.defect().plaquettes.clone();
        if sites.is_empty() {
            return Err(PluginError::config(format!(
                "{KIND}: needs a defect: [theory] defect = [1, 1] (one plaquette) or defect_sites = [[x, y], ...]"
            )));
        }
        let origin = flux_field(lattice, 0);
        let shape = lattice.shape();
        let fluxes = sites
            .iter()
            .map(|&d| {
                let xd = lattice.coords(d);
                let mut a = vec![0.0; origin.len()];
                for x in 0..lattice.volume() {
                    let c = lattice.coords(x);
                    let rel: Vec<usize> = (0..2).map(|mu| (c[mu] + shape[mu] - xd[mu]) % shape[mu]).collect();
                    let r = lattice.index(&rel);
                    a[2 * x..2 * x + 2].copy_from_slice(&origin[2 * r..2 * r + 2]);
                }
                a
            })
            .collect();
        Ok(Self { kernel: kernel.clone(), sites, fluxes })
    }

    /// The number of defect plaquettes.
    pub fn len(&self) -> usize {
        self.sites.len()
    }

    /// Whether there is no defect plaquette (never, once constructed).
    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    /// The angle of defect plaquette `i`, wrapped into (−π, π].
    pub fn defect_angle(&self, theta: &[f64], i: usize) -> f64 {
        wrap_angle(self.kernel.plaquette_angle(theta, self.sites[i]))
    }

    /// For each defect plaquette: its angle, and (Σ cos θ_P, Σ sin θ_P) over the other V − 1
    /// plaquettes.
    fn samples(&self, theta: &[f64], buf: &mut [f64]) -> Vec<(f64, f64, f64)> {
        self.kernel.plaquette_angles(theta, buf);
        let (c, s) = buf.iter().fold((0.0, 0.0), |(c, s), a| (c + a.cos(), s + a.sin()));
        self.sites.iter().map(|&d| (wrap_angle(buf[d]), c - buf[d].cos(), s - buf[d].sin())).collect()
    }

    /// S at defect coupling `w`: −β (Σ_P cos θ_P − (1 − w) Σ_d cos θ_d).
    fn action(&self, theta: &[f64], beta: f64, w: f64) -> f64 {
        let defect: f64 = self.sites.iter().map(|&d| self.kernel.plaquette_angle(theta, d).cos()).sum();
        -beta * (self.kernel.sum_cos(theta) - (1.0 - w) * defect)
    }

    /// θ ↦ θ + Δ·A_i.
    fn shift(&self, theta: &mut [f64], i: usize, delta: f64) {
        for (t, a) in theta.iter_mut().zip(&self.fluxes[i]) {
            *t += delta * a;
        }
    }

    /// The layer of `map` on `theta` in place: one sub-layer per defect plaquette, in order,
    /// each mapping that plaquette's current angle φ_i by h and spreading the difference;
    /// returns ln|det ∂T/∂θ| = Σ_i ln h'(φ_i).
    pub fn forward(&self, map: &CircleMap, theta: &mut [f64]) -> f64 {
        let mut log_det = 0.0;
        for i in 0..self.sites.len() {
            let phi = self.defect_angle(theta, i);
            let (h, dh) = map.eval(phi);
            self.shift(theta, i, h - phi);
            log_det += dh.ln();
        }
        log_det
    }

    /// The inverse layer in place (the sub-layers inverted, in reverse order); returns
    /// ln|det ∂T⁻¹/∂θ|.
    pub fn inverse(&self, map: &CircleMap, theta: &mut [f64]) -> f64 {
        let mut log_det = 0.0;
        for i in (0..self.sites.len()).rev() {
            let y = self.defect_angle(theta, i);
            let phi = map.inverse(y);
            self.shift(theta, i, phi - y);
            log_det -= map.eval(phi).1.ln();
        }
        log_det
    }
}

/// One training state of a layer, reduced to what its loss needs: the defect's angle φ, the
/// sums Σ cos θ_P and Σ sin θ_P over the `others` = V − 1 other plaquettes, β and the coupling w
/// that the layer maps to.
#[derive(Debug, Clone, Copy)]
struct Sample {
    phi: f64,
    cos_sum: f64,
    sin_sum: f64,
    others: f64,
    beta: f64,
    w: f64,
}

impl Sample {
    /// ℓ = S_w(L x) − ln h'(φ) up to a constant: −β Σ_P cos(θ_P − δ) − wβ cos h(φ) − ln h'(φ), with
    /// δ = (h(φ) − φ)/(V − 1) the shift of every other plaquette. With `grad`, adds ∂ℓ/∂(params).
    fn loss(&self, map: &CircleMap, grad: Option<&mut [f64]>) -> f64 {
        let (h, dh) = map.eval(self.phi);
        let (sd, cd) = ((h - self.phi) / self.others).sin_cos();
        let (b, c, s) = (self.beta, self.cos_sum, self.sin_sum);
        if let Some(grad) = grad {
            let dl_dh = b * (c * sd - s * cd) / self.others + self.w * b * h.sin();
            map.accumulate(self.phi, dl_dh, -1.0 / dh, grad);
        }
        -b * (c * cd + s * sd) - self.w * b * h.cos() - dh.ln()
    }
}

/// Adam on one parameter vector (β₁ = 0.9, β₂ = 0.999, ε = 1e-8).
struct Adam {
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl Adam {
    fn new(n: usize) -> Self {
        Self { m: vec![0.0; n], v: vec![0.0; n], t: 0 }
    }

    fn step(&mut self, params: &mut [f64], grad: &[f64], lr: f64) {
        self.t += 1;
        let (b1, b2) = (0.9f64, 0.999f64);
        let (c1, c2) = (1.0 - b1.powi(self.t), 1.0 - b2.powi(self.t));
        for i in 0..params.len() {
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * grad[i];
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * grad[i] * grad[i];
            params[i] -= lr * (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + 1e-8);
        }
    }
}

/// The trained layers of one (options, β, v).
#[derive(Debug, Clone)]
pub struct Trained {
    /// L_1 … L_n of the descent.
    pub layers: Vec<CircleMap>,
    /// ⟨ℓ_k⟩ of each layer over its last Adam step's batch (S_{λ_k}(L_k x) − ln h_k', for the record).
    pub final_loss: Vec<f64>,
}

/// The trained layers, kept per key (the options, β and v as text) on the theory object.
#[derive(Debug, Default)]
pub struct Cache {
    geometry: std::sync::OnceLock<DefectGeometry>,
    entries: Mutex<Vec<(String, Arc<Trained>)>>,
}

/// The protocol's machinery for one application: geometry, β, v, options, and the inner HMC
/// schedule.
pub struct Protocol<'a> {
    geometry: &'a DefectGeometry,
    beta: f64,
    v: f64,
    options: &'a Options,
    schedule: Schedule,
}

impl<'a> Protocol<'a> {
    /// The protocol of `options` at β and defect coupling `v` (its inner HMC schedule built once).
    pub fn new(geometry: &'a DefectGeometry, beta: f64, v: f64, options: &'a Options) -> Result<Self, PluginError> {
        Ok(Self { geometry, beta, v, options, schedule: options.schedule()? })
    }

    /// `n` HMC trajectories at defect coupling `w` on `x`; returns how many were accepted.
    fn hmc(&self, w: f64, x: &mut Vec<f64>, n: u32, rng: &mut Stream) -> Result<u32, PluginError> {
        let mut kernel = self.geometry.kernel.clone();
        kernel.set_defect_coupling(w);
        let mut action = LeveledAction::single(Box::new(WilsonAction { kernel: &kernel, beta: self.beta }));
        let space = Angles { len: x.len() };
        let mut accepted = 0;
        for _ in 0..n {
            accepted += u32::from(hmc_trajectory(&space, &mut action, x, &self.schedule, true, rng).map_err(hmc_error)?.accepted);
        }
        Ok(accepted)
    }

    /// Trains the descent's layers on the step's own chain (see the module docs).
    pub fn train(&self) -> Result<Trained, PluginError> {
        let (o, f) = (self.options, &self.options.flow);
        let n = o.stages as usize;
        let kernel = &self.geometry.kernel;
        let mut rng = Stream::new(f.seed, 0);
        let mut x = vec![0.0; kernel.n_links()];
        self.hmc(self.v, &mut x, f.thermalization, &mut rng)?;
        let mut layers = vec![CircleMap::new(f.components as usize); n];
        let np = 2 * f.components as usize;
        let mut adams: Vec<Adam> = (0..n).map(|_| Adam::new(np)).collect();
        let mut final_loss = vec![0.0; n];
        let mut buf = vec![0.0; kernel.n_plaquettes()];
        let others = (kernel.n_plaquettes() - 1) as f64;
        for _ in 0..f.train_steps {
            let mut grads = vec![vec![0.0; np]; n];
            let mut losses = vec![0.0; n];
            for _ in 0..f.batch {
                self.hmc(self.v, &mut x, o.hmc.repeat, &mut rng)?;
                let mut y = x.clone();
                for k in 0..n {
                    let w = o.lambda(self.v, k as u32 + 1);
                    for (phi, c, s) in self.geometry.samples(&y, &mut buf) {
                        let sample = Sample { phi, cos_sum: c, sin_sum: s, others, beta: self.beta, w };
                        losses[k] += sample.loss(&layers[k], Some(&mut grads[k]));
                    }
                    self.geometry.forward(&layers[k], &mut y);
                    if k + 1 < n {
                        self.hmc(w, &mut y, o.hmc.repeat, &mut rng)?;
                    }
                }
            }
            for k in 0..n {
                let scale = 1.0 / (f.batch as usize * self.geometry.len()) as f64;
                grads[k].iter_mut().for_each(|g| *g *= scale);
                if grads[k].iter().any(|g| !g.is_finite()) {
                    return Err(PluginError::numerical(format!(
                        "{KIND}: the training of layer {} diverged (a non-finite gradient); lower flow.learning_rate",
                        k + 1
                    )));
                }
                let mut p = layers[k].params();
                adams[k].step(&mut p, &grads[k], f.learning_rate);
                layers[k].set_params(&p);
                final_loss[k] = losses[k] * scale;
            }
        }
        Ok(Trained { layers, final_loss })
    }

    /// One protocol from `config` with the `trained` layers: the end point, W, and the inner
    /// HMC acceptance.
    pub fn run(&self, trained: &Trained, config: &[f64], rng: &mut Stream) -> Result<(Vec<f64>, f64, f64), PluginError> {
        let (o, n) = (self.options, self.options.stages);
        let mut x = config.to_vec();
        let mut s_prev = self.geometry.action(&x, self.beta, self.v);
        let (mut work, mut accepted, mut total) = (0.0, 0u32, 0u32);
        for k in 1..=2 * n {
            let log_det = if k <= n {
                self.geometry.forward(&trained.layers[k as usize - 1], &mut x)
            } else {
                self.geometry.inverse(&trained.layers[(2 * n - k) as usize], &mut x)
            };
            let w = o.lambda(self.v, k);
            work += self.geometry.action(&x, self.beta, w) - s_prev - log_det;
            if k == 2 * n {
                break;
            }
            let repeat = o.hmc.repeat + if k == n { o.hold } else { 0 };
            accepted += self.hmc(w, &mut x, repeat, rng)?;
            total += repeat;
            s_prev = self.geometry.action(&x, self.beta, w);
        }
        Ok((x, work, f64::from(accepted) / f64::from(total.max(1))))
    }
}

impl Cache {
    /// The defect geometry of `kernel` (computed once: the defect box and the lattice never
    /// change after construction).
    pub fn geometry(&self, kernel: &Kernel, lattice: &Lattice) -> Result<&DefectGeometry, PluginError> {
        if let Some(g) = self.geometry.get() {
            return Ok(g);
        }
        let g = DefectGeometry::new(kernel, lattice)?;
        Ok(self.geometry.get_or_init(|| g))
    }

    /// The trained layers for this protocol, training them on first use.
    pub fn get(&self, protocol: &Protocol<'_>) -> Result<Arc<Trained>, PluginError> {
        let key = format!(
            "{}|{:e}|{:e}",
            serde_json::to_string(protocol.options).unwrap_or_default(),
            protocol.beta,
            protocol.v
        );
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, t)) = entries.iter().find(|(k, _)| *k == key) {
            return Ok(t.clone());
        }
        let trained = Arc::new(protocol.train()?);
        entries.push((key, trained.clone()));
        Ok(trained)
    }
}

/// One application: a protocol and its Metropolis test; appends [`COLUMNS`] to `out` and
/// replaces `config` by the end point when accepted.
pub fn apply(protocol: &Protocol<'_>, cache: &Cache, config: &mut [f64], rng: &mut Stream, out: &mut Vec<f64>) -> Result<(), PluginError> {
    let trained = cache.get(protocol)?;
    let (x, work, inner) = protocol.run(&trained, config, rng)?;
    let accepted = metropolis_accept(-work, rng);
    if accepted {
        config.copy_from_slice(&x);
    }
    out.extend([f64::from(u8::from(accepted)), work, inner]);
    Ok(())
}

#[cfg(test)]
#[path = "defect_flow_tests.rs"]
mod tests;
