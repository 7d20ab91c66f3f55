//! latflow theory plugin: SU(N) lattice gauge theory, N = 2 or 3, in any dimension d ≥ 2.
//!
//! The field is one SU(N) matrix U_μ(x) per link, stored `[site][μ]` with sites row-major
//! (last axis fastest; the last axis is "time"), each link as its N×N complex matrix row-major
//! with (re, im) interleaved (`ElementKind::complex_matrix(n)`, 2N² reals). The action is
//!
//! ```text
//! S[U] = −(β/N) Σ_x [ c0 Σ_{μ<ν} Re Tr U_P(x; μ, ν) + c1 Σ_{μ≠ν} Re Tr U_R(x; μ, ν) ],  c0 = 1 − 8 c1
//! ```
//!
//! with U_P the plaquette and U_R the 2×1 rectangle (long side along μ, so each rectangle
//! appears once per orientation), and the Haar measure on every link. `action` names c1:
//! `wilson` 0, `symanzik` −1/12 (tree-level Lüscher–Weisz), `iwasaki` −0.331, `dbw2` −1.4088.
//!
//! Run-card keys (`[theory]`): `lattice` (every extent ≥ 2, d ≥ 2), `n` (2 or 3), `beta`
//! (finite, ≥ 0; β = 0 is the Haar measure), `action` (default `wilson`), `wilson_loops` (a list
//! of [R, T], default `[[1, 1], [2, 2]]`). Parameter for `parameter`/`set_parameter`: `beta`.
//!
//! Markov steps: `kind = "hmc"` (momenta in su(N), U ← exp(εP) U with the exact exponential
//! map, links reunitarised at the end of every trajectory and the largest correction recorded
//! as the step's `projection` column), and the theory's own `kind = "heatbath"`
//! (Cabibbo–Marinari over the SU(2) subgroups with Kennedy–Pendleton) and `kind = "overrelax"`,
//! for the Wilson action (an improved action is refused with a clear error).
//!
//! On a job of several ranks (`mpirun -np R latflow run CARD` with one chain) the lattice is
//! split along axis 0 and every entry point runs on the rank's slab with the arithmetic of one
//! rank: see [`split`].

pub mod blocked;
pub mod fast;
mod kernel;
pub mod space;
mod steps;

use latflow_core::abi::{parse_config, HmcParams, ObservableSpec, PluginError, Start};
use latflow_core::gauge::flat::{view, view_mut};
use latflow_core::gauge::gradflow::FlowCard;
pub use latflow_core::gauge::gradflow::FlowMeasurement;
use latflow_core::gauge::{gauge_transform, GaugeGroup, Su2, Su3};
use latflow_core::hmc::{ActionTerm, LeveledAction, TermError};
use latflow_core::layout::{ElementKind, FieldLayout, Support};
use latflow_core::sdk::Physics;

/// β of a gauge card: finite and ≥ 0 (shared by the gauge plugins, in core).
pub use latflow_core::gauge::check_beta;
use latflow_core::{Lattice, Stream};
use serde::Deserialize;

pub use kernel::{Coefficients, SunGroup, MAX_LOOP_SIDE};
pub use space::{PackedSpace, SunSpace};
use blocked::Packed;

/// Runs `$body` with `$g` the group type of `$n` (2 → `Su2`, 3 → `Su3`); `$n` is validated
/// when the theory is built.
macro_rules! with_group {
    ($n:expr, $g:ident => $body:expr) => {
        match $n {
            2 => {
                type $g = Su2;
                $body
            }
            _ => {
                type $g = Su3;
                $body
            }
        }
    };
}

/// The gauge actions by name, with their rectangle coefficient c1.
pub const ACTIONS: [(&str, f64); 4] =
    [("wilson", 0.0), ("symanzik", -1.0 / 12.0), ("iwasaki", -0.331), ("dbw2", -1.4088)];

/// The run card's `[theory]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    lattice: Vec<i64>,
    n: i64,
    beta: f64,
    #[serde(default = "default_action")]
    action: String,
    #[serde(default = "default_loops")]
    wilson_loops: Vec<[i64; 2]>,
    #[serde(default)]
    gradient_flow: Option<FlowCard>,
}

fn default_action() -> String {
    "wilson".into()
}

fn default_loops() -> Vec<[i64; 2]> {
    vec![[1, 1], [2, 2]]
}

/// The rectangle coefficient c1 of a named action.
pub fn action_c1(name: &str) -> Result<f64, PluginError> {
    ACTIONS.iter().find(|(a, _)| *a == name).map(|&(_, c1)| c1).ok_or_else(|| {
        let names: Vec<&str> = ACTIONS.iter().map(|(a, _)| *a).collect();
        PluginError::config(format!("action: unknown gauge action '{name}' (expected one of {})", names.join(", ")))
    })
}

/// The SU(N) theory.
pub struct Sun {
    lattice: Lattice,
    n: usize,
    beta: f64,
    action: String,
    c1: f64,
    loops: Vec<(usize, usize)>,
    flow: Option<FlowMeasurement>,
    /// This rank's slab when the lattice is split over the ranks of a job (see [`split`]);
    /// `lattice` stays the global lattice.
    split: Option<split::Split>,
}

impl Sun {
    /// The lattice.
    pub fn lattice(&self) -> &Lattice {
        &self.lattice
    }

    /// N.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The action's coefficients at the current β.
    pub fn coefficients(&self) -> Coefficients {
        Coefficients { beta: self.beta, c0: 1.0 - 8.0 * self.c1, c1: self.c1 }
    }

    /// The gradient-flow measurement of the card, if any.
    pub fn flow(&self) -> Option<&FlowMeasurement> {
        self.flow.as_ref()
    }

    /// The action's name (`wilson`, `symanzik`, `iwasaki`, `dbw2`).
    pub fn action_name(&self) -> &str {
        &self.action
    }

    /// Reals per link, 2N².
    pub fn link_reals(&self) -> usize {
        2 * self.n * self.n
    }

    fn n_links(&self) -> usize {
        self.lattice.volume() * self.lattice.dim()
    }

    /// The site-blocked HMC space where the force takes the blocked kernels: SU(3), the Wilson
    /// action, the lattice not split over ranks (see [`fast::blocked_layout`]).
    pub fn packed_space(&self) -> Option<PackedSpace> {
        if self.n != 3 || self.c1 != 0.0 || self.split.is_some() {
            return None;
        }
        fast::blocked_layout(&self.lattice).map(PackedSpace::new)
    }

    /// `n_traj` HMC trajectories with the fields in `space`'s blocked layout: `field` is packed
    /// once and unpacked once (also after a failed trajectory, so that it holds the last
    /// accepted links), with the bits of [`latflow_core::sdk::hmc_trajectories`].
    pub fn packed_hmc(
        &self,
        space: &PackedSpace,
        field: &mut [f64],
        params: &HmcParams,
        n_traj: u32,
        rng: &mut Stream,
    ) -> Result<Vec<latflow_core::abi::TrajectoryRecord>, PluginError> {
        self.check_options(params)?;
        let schedule = self.schedule(params, 1)?;
        let mut action = LeveledAction::single(Box::new(PackedGaugeTerm { theory: self, space }));
        let mut u = space.layout.pack(field);
        let records =
            latflow_core::sdk::run_trajectories(space, &mut action, &mut u, &schedule, params.accept_reject, n_traj, rng);
        space.layout.unpack(&u, field);
        records
    }

    fn check_loops(lattice: &Lattice, sizes: &[[i64; 2]]) -> Result<Vec<(usize, usize)>, PluginError> {
        let min_extent = *lattice.shape().iter().min().unwrap_or(&0);
        let mut loops: Vec<(usize, usize)> = Vec::with_capacity(sizes.len());
        for (i, &[r, t]) in sizes.iter().enumerate() {
            let key = format!("wilson_loops[{i}]");
            let max = MAX_LOOP_SIDE.min(min_extent) as i64;
            if r < 1 || t < 1 || r > max || t > max {
                return Err(PluginError::config(format!(
                    "{key}: loop sides must be between 1 and {max} (the smallest extent, at most {MAX_LOOP_SIDE}), got [{r}, {t}]"
                )));
            }
            let (r, t) = (r as usize, t as usize);
            if loops.contains(&(r, t)) {
                return Err(PluginError::config(format!("{key}: {r}x{t} is listed twice")));
            }
            loops.push((r, t));
        }
        Ok(loops)
    }
}

/// The gauge action as the one HMC term.
pub struct GaugeTerm<'a> {
    pub theory: &'a Sun,
}

impl ActionTerm<SunSpace> for GaugeTerm<'_> {
    fn name(&self) -> &str {
        "gauge"
    }

    fn action(&self, u: &Vec<f64>) -> Result<f64, TermError> {
        Ok(self.theory.action(u))
    }

    fn force(&self, u: &Vec<f64>, out: &mut Vec<f64>) -> Result<(), TermError> {
        let (lat, k) = (&self.theory.lattice, self.theory.coefficients());
        with_group!(self.theory.n, G => kernel::force::<G, _>(lat, links::<G>(u), k, algebra_mut::<G>(out)));
        Ok(())
    }
}

/// The SU(3) Wilson action as the one HMC term on site-blocked fields ([`PackedSpace`]): the
/// force in the blocked layout, the action (twice a trajectory) from the flat links, so both
/// have the bits of [`GaugeTerm`]'s.
pub struct PackedGaugeTerm<'a> {
    pub theory: &'a Sun,
    pub space: &'a PackedSpace,
}

impl ActionTerm<PackedSpace> for PackedGaugeTerm<'_> {
    fn name(&self) -> &str {
        "gauge"
    }

    fn action(&self, u: &Packed) -> Result<f64, TermError> {
        Ok(self.theory.action(&self.space.flat(u)))
    }

    fn force(&self, u: &Packed, out: &mut Packed) -> Result<(), TermError> {
        let (w0, _) = self.theory.coefficients().weights(3);
        self.space.layout.force(u, w0, out);
        Ok(())
    }
}

/// The links of a configuration buffer (its length is checked by the SDK before any call).
fn links<G: SunGroup>(u: &[f64]) -> &[G] {
    view(u).unwrap_or_else(|e| panic!("configuration: {e}"))
}

fn algebra_mut<G: SunGroup>(f: &mut [f64]) -> &mut [G::Algebra] {
    view_mut(f).unwrap_or_else(|e| panic!("force buffer: {e}"))
}

impl Physics for Sun {
    const NAME: &'static str = "sun";
    type Space = SunSpace;

    fn from_config(json: &str) -> Result<Self, PluginError> {
        let cfg: Config = parse_config(json)?;
        let lattice = latflow_core::gauge::gauge_lattice(&cfg.lattice)?;
        if cfg.n != 2 && cfg.n != 3 {
            return Err(PluginError::config(format!("n: SU(N) is supported for n = 2 and n = 3, got {}", cfg.n)));
        }
        let beta = check_beta(cfg.beta)?;
        let c1 = action_c1(&cfg.action)?;
        let loops = Self::check_loops(&lattice, &cfg.wilson_loops)?;
        let flow = cfg.gradient_flow.as_ref().map(FlowCard::check).transpose()?;
        Ok(Self { lattice, n: cfg.n as usize, beta, action: cfg.action, c1, loops, flow, split: None })
    }

    fn layout(&self) -> FieldLayout {
        let shape = match &self.split {
            Some(s) => s.local_shape(),
            None => self.lattice.shape().to_vec(),
        };
        FieldLayout::single(&shape, "links", Support::Link, ElementKind::complex_matrix(self.n as u32))
    }

    /// Splits the lattice along axis 0 over the ranks of `comm`, with halos of one slice for
    /// the Wilson action and two for an action with rectangles (see [`split`]).
    fn set_communicator(&mut self, comm: latflow_core::comm::CommBox) -> Result<(), PluginError> {
        if comm.size() == 1 {
            return Ok(());
        }
        let width = if self.c1 != 0.0 { 2 } else { 1 };
        self.split = Some(split::Split::new(self.lattice.shape(), comm, width)?);
        Ok(())
    }

    fn hmc(
        &self,
        field: &mut Vec<f64>,
        params: &HmcParams,
        n_traj: u32,
        rng: &mut Stream,
    ) -> Result<Vec<latflow_core::abi::TrajectoryRecord>, PluginError> {
        if self.split.is_some() {
            return self.split_hmc(field, params, n_traj, rng);
        }
        if let Some(space) = self.packed_space() {
            return self.packed_hmc(&space, field, params, n_traj, rng);
        }
        latflow_core::sdk::hmc_trajectories(self, field, params, n_traj, rng)
    }

    fn params_json(&self) -> serde_json::Value {
        let loops: Vec<[usize; 2]> = self.loops.iter().map(|&(r, t)| [r, t]).collect();
        let k = self.coefficients();
        serde_json::json!({
            "lattice": self.lattice.shape(),
            "n": self.n,
            "beta": self.beta,
            "action": self.action,
            "c0": k.c0,
            "c1": k.c1,
            "wilson_loops": loops,
            "gradient_flow": self.flow.as_ref().map(|f| serde_json::json!({
                "time": f.time, "eps": f.options.eps, "scheme": f.options.scheme.name(), "integrator": "Luscher RK3",
            })),
            "convention": "S = -(beta/N) sum_x [c0 sum_{mu<nu} Re Tr U_P + c1 sum_{mu!=nu} Re Tr U_R(2x1)], c0 = 1 - 8 c1; \
                           links [site][mu], N x N row-major (re, im); last axis = time",
        })
    }

    fn parameter(&self, name: &str) -> Result<f64, PluginError> {
        latflow_core::gauge::beta_parameter(Self::NAME, self.beta, name)
    }

    fn set_parameter(&mut self, name: &str, value: f64) -> Result<(), PluginError> {
        latflow_core::gauge::set_beta_parameter(Self::NAME, &mut self.beta, name, value)
    }

    /// The heat-bath and overrelaxation sweeps are eight passes of V/2 links (2048 on 8⁴, a
    /// millisecond each) that read what the previous pass wrote: on a team each member keeps
    /// its share of the links in its cache from pass to pass (two threads: heat-bath 1.90×,
    /// overrelaxation 1.84× at 8⁴, against 1.65× and 1.52× on rayon; `cargo bench --bench sun --
    /// sun3_threads`); HMC gains a little too (1.88× against 1.78×).
    fn short_parallel_regions(&self) -> bool {
        true
    }

    fn observables(&self) -> Vec<ObservableSpec> {
        observables::specs(self)
    }

    fn measure(&self, config: &[f64], out: &mut Vec<f64>) -> Result<(), PluginError> {
        if self.split.is_some() {
            return self.split_measure(config, out);
        }
        with_group!(self.n, G => observables::measure::<G>(self, links::<G>(config), out))
    }

    fn action(&self, config: &[f64]) -> f64 {
        if self.split.is_some() {
            // a failed exchange cannot be returned here: the adapter's guard reports the panic
            return self.split_action(config).unwrap_or_else(|e| panic!("{}", e.message));
        }
        with_group!(self.n, G => kernel::action::<G, _>(&self.lattice, links::<G>(config), self.coefficients()))
    }

    fn action_grad(&self, config: &[f64], grad: &mut [f64]) -> f64 {
        let k = self.coefficients();
        with_group!(self.n, G => kernel::action_grad::<G>(&self.lattice, links::<G>(config), k, grad))
    }

    fn initial(&self, start: Start, rng: &mut Stream) -> Vec<f64> {
        if self.split.is_some() {
            return self.split_initial(start, rng);
        }
        self.global_initial(start, rng)
    }

    fn space(&self) -> SunSpace {
        SunSpace::new(self.n, self.lattice.dim(), self.lattice.volume())
    }

    fn action_levels(&self, _params: &HmcParams) -> Result<LeveledAction<'_, SunSpace>, PluginError> {
        Ok(LeveledAction::single(Box::new(GaugeTerm { theory: self })))
    }

    fn random_gauge_transform(&self, config: &[f64], rng: &mut Stream) -> Option<Vec<f64>> {
        if self.split.is_some() {
            return None;
        }
        let mut out = config.to_vec();
        with_group!(self.n, G => {
            let g: Vec<G> = (0..self.lattice.volume()).map(|_| G::random(rng)).collect();
            let u: &mut [G] = view_mut(&mut out).ok()?;
            gauge_transform(&self.lattice, u, &g);
        });
        Some(out)
    }

    fn step_kinds(&self) -> Vec<&'static str> {
        steps::KINDS.to_vec()
    }

    fn step_columns(&self, kind: &str, options: &serde_json::Value) -> Result<Vec<String>, PluginError> {
        steps::columns(self, kind, options)
    }

    fn step(
        &self,
        kind: &str,
        _options: &serde_json::Value,
        config: &mut [f64],
        rng: &mut Stream,
        out: &mut Vec<f64>,
    ) -> Result<(), PluginError> {
        with_group!(self.n, G => steps::apply::<G>(self, kind, config, rng))?;
        out.push(self.action(config));
        Ok(())
    }
}

impl Sun {
    /// The start of the whole (global) lattice: identity links (cold) or Haar-random links
    /// drawn one after the other from `rng` (hot).
    fn global_initial(&self, start: Start, rng: &mut Stream) -> Vec<f64> {
        let mut u = vec![0.0; self.n_links() * self.link_reals()];
        with_group!(self.n, G => {
            let l: &mut [G] = view_mut(&mut u).unwrap_or_else(|e| panic!("{e}"));
            for link in l.iter_mut() {
                *link = if start == Start::Hot { G::random(rng) } else { G::identity() };
            }
        });
        u
    }
}

mod observables;
mod split;

latflow_core::export_theory!(Sun,
description: "SU(N) lattice gauge theory (N = 2, 3), any dimension >= 2: Wilson, Symanzik, Iwasaki and DBW2 actions; HMC, heat-bath, overrelaxation",
provides: [
    "keys: lattice, n (2 or 3), beta, action (wilson | symanzik | iwasaki | dbw2), wilson_loops (default [[1, 1], [2, 2]]), gradient_flow = { time, eps, scheme }",
    "observables: plaquette plaquette_spatial plaquette_temporal (d > 2) rectangle action_density polyakov_loop (re, im) wilson_loop_RxT; with gradient_flow: energy_density t2_energy_density, topological_charge topological_susceptibility (4D)",
    "parameters: beta",
    "hmc levels: 1",
    "step kinds: heatbath, overrelax (Wilson action, even extents)",
]);

#[cfg(test)]
mod tests;
