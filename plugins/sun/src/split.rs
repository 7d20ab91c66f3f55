//! The SU(N) theory on a lattice split over the ranks of a job (domain decomposition along
//! axis 0, core's [`Domain`]).
//!
//! Each rank holds a slab of the global lattice: its configuration is the slice
//! `[first_site·d·2N², (first_site + sites)·d·2N²)` of the global flat configuration (axis 0 is
//! the slowest, so the slabs concatenated in rank order are the global field). Inside a call the
//! slab is copied into core's stored order (owned sites, then one halo slice below and one
//! above) and the halos are filled by [`Domain::exchange`]; the kernels then read neighbours
//! through the domain's tables, never through global indices.
//!
//! What gives the bits of one rank:
//! - the force is the same per-link arithmetic as on the whole lattice: the fast SU(3)
//!   kernels (generic over [`Neighbours`], corner products shared as the *global* volume
//!   decides) and core's `staple` for SU(2);
//! - momenta are this rank's part of the global draw (core's `fill_random_part`);
//! - sums (action, kinetic energy, plaquettes) are [`Domain::sum`]s: chunk partials combined in
//!   rank order, the bits of one rank whenever the local volume is a multiple of core's chunk
//!   of 1024 sites, and equal to rounding otherwise.
//!
//! So the links, and with them every accept decision, follow the single-rank chain bit for bit.
//!
//! Observables: the plaquettes (all, spatial, temporal, and the action density) are halo sums;
//! the rectangle, Polyakov and Wilson loops and the gradient-flow measurements are measured on
//! the gathered configuration (an allgather per measurement: the memory of the whole lattice on
//! every rank while measuring, which a production volume would replace by wider halos and a
//! distributed flow).
//!
//! Not decomposed yet, refused with a clear error: improved actions (the rectangle force needs
//! halos of width 2), the theory's `heatbath` and `overrelax` steps (a checkerboard update with
//! a halo exchange per colour), and anything that needs whole configurations on one rank (models,
//! `action_grad`).

use bytemuck::Pod;
use latflow_core::abi::{HmcParams, PluginError, Start, TrajectoryRecord};
use latflow_core::comm::CommBox;
use latflow_core::gauge::domain::{CommCount, Domain, DomainLinkSpace};
use latflow_core::gauge::flat::{reals, view};
use latflow_core::gauge::{plaquette, planes, staple, LieAlgebra, Neighbours, Su2, Su3};
use latflow_core::gauge::parallel::fill_sites;
use latflow_core::hmc::{hmc_trajectory, ActionTerm, LeveledAction, TermError};
use latflow_core::sdk::{hmc_error, Physics};
use latflow_core::{ErrorKind, Stream};
use latflow_core::abi_stable::std_types::RSlice;

use crate::fast;
use crate::kernel::SunGroup;
use crate::Sun;

/// This rank's place in a split lattice.
pub struct Split {
    comm: CommBox,
    domain: Domain,
    count: CommCount,
}

impl Split {
    /// The slab of this rank of `comm` for the global lattice `shape`, with halos of one slice.
    pub fn new(shape: &[usize], comm: CommBox) -> Result<Self, PluginError> {
        let domain = Domain::for_comm(shape, &comm, 1).map_err(|e| PluginError::config(format!("lattice: {e}")))?;
        Ok(Self { comm, domain, count: CommCount::default() })
    }

    /// The local shape: the global one with axis 0 cut to the slab's slices.
    pub fn local_shape(&self) -> Vec<usize> {
        let mut shape = self.domain.shape().to_vec();
        shape[0] /= self.domain.rank().1;
        shape
    }

    /// (first owned site, owned sites) in global site order.
    fn owned(&self) -> (usize, usize) {
        (self.domain.first_site(), self.domain.sites())
    }

    /// This rank's slab of a global flat configuration of `per_site` reals per site.
    pub fn slab(&self, global: &[f64], per_site: usize) -> Vec<f64> {
        let (first, n) = self.owned();
        global[first * per_site..(first + n) * per_site].to_vec()
    }

    /// The global configuration from every rank's slab (collective: an allgather).
    pub fn gather(&self, local: &[f64]) -> Result<Vec<f64>, PluginError> {
        Ok(self.comm.allgather(RSlice::from_slice(local)).into_result()?.into_vec())
    }

    /// The stored links (owned, then halos) of a slab of `d` links per site, halos filled.
    fn stored<G: SunGroup>(&self, local: &[f64]) -> Result<Vec<G>, PluginError> {
        let d = self.domain.dim();
        let owned: &[G] = view(local).map_err(|e| PluginError::shape(format!("configuration: {e}")))?;
        let mut u = vec![G::identity(); self.domain.stored() * d];
        u[..owned.len()].copy_from_slice(owned);
        DomainLinkSpace::<G>::new(&self.domain, &self.comm, &self.count).exchange(&mut u).map_err(comm_failed)?;
        Ok(u)
    }

    /// [all, spatial, temporal] plaquette sums Σ Re Tr U_P over the global lattice, added in the
    /// single-rank order of the theory's own kernels (halos of `u` current). Collective.
    fn plaquette_sums<G: SunGroup>(&self, u: &[G]) -> Result<[f64; 3], PluginError> {
        let (dom, comm) = (&self.domain, &self.comm);
        let d = dom.dim();
        if G::NC == 3 && d <= fast::MAX_DIM {
            // as `kernel::action`: the fast kernel's one sum over all planes
            let u3: &[Su3] = bytemuck::cast_slice(u);
            let level = fast::plaquette_level();
            let all = dom.sum(comm, |x, s| fast::plaquettes_at(dom, u3, x, s, level)).map_err(comm_failed)?;
            return Ok([all, f64::NAN, f64::NAN]);
        }
        // as `kernel::plaquette_sums`: spatial and temporal planes summed apart, then added
        self.plaquette_sums_by_plane(u)
    }

    /// [all, spatial, temporal] plaquette sums as `kernel::plaquette_sums` adds them (for the
    /// observables), whatever the group.
    fn plaquette_sums_by_plane<G: SunGroup>(&self, u: &[G]) -> Result<[f64; 3], PluginError> {
        let (dom, comm) = (&self.domain, &self.comm);
        let d = dom.dim();
        let ps = planes(d);
        let spatial = dom
            .sum(comm, |x, s| {
                for &(mu, nu) in ps.iter().filter(|p| p.1 != d - 1) {
                    s.add(plaquette(dom, u, x, mu, nu).re_trace());
                }
            })
            .map_err(comm_failed)?;
        let temporal = dom
            .sum(comm, |x, s| {
                for mu in 0..d - 1 {
                    s.add(plaquette(dom, u, x, mu, d - 1).re_trace());
                }
            })
            .map_err(comm_failed)?;
        Ok([spatial + temporal, spatial, temporal])
    }
}

fn comm_failed(e: impl std::fmt::Display) -> PluginError {
    PluginError::new(ErrorKind::Internal, format!("split lattice: {e}"))
}

/// The Wilson gauge action on a split lattice as the one HMC term: w0 = β c0/N.
struct SplitGauge<'a> {
    split: &'a Split,
    w0: f64,
}

impl<G: SunGroup> ActionTerm<DomainLinkSpace<'_, G>> for SplitGauge<'_>
where
    G::Algebra: Pod,
{
    fn name(&self) -> &str {
        "gauge"
    }

    fn action(&self, u: &Vec<G>) -> Result<f64, TermError> {
        let p = self.split.plaquette_sums(u).map_err(|e| TermError::new("gauge", e.message.to_string()))?[0];
        // the single-rank expression −(w0 P + w1 R) with w1 R = 0
        Ok(-(self.w0 * p + 0.0 * 0.0))
    }

    fn force(&self, u: &Vec<G>, out: &mut Vec<G::Algebra>) -> Result<(), TermError> {
        let dom = &self.split.domain;
        let d = dom.dim();
        let w = self.w0;
        if G::NC == 3 && d <= fast::MAX_DIM {
            let (u3, f3) = (bytemuck::cast_slice(&u[..]), bytemuck::cast_slice_mut(&mut out[..]));
            fast::wilson_force_on(dom, dom.stored(), dom.global_sites(), u3, w, f3, fast::force_level());
            return Ok(());
        }
        fill_sites(out, d, |x, fs, _| {
            for (mu, f) in fs.iter_mut().enumerate() {
                *f = u[x * d + mu].re_trace_derivative(&staple(dom, &u[..], x, mu)).scale(-w);
            }
        });
        Ok(())
    }
}

impl Sun {
    fn split_ref(&self) -> &Split {
        self.split.as_ref().expect("called on a split theory only")
    }

    /// The local part of the global start (every rank draws the whole start, as one rank
    /// would, and keeps its slab; `rng` advances as on one rank).
    pub(crate) fn split_initial(&self, start: Start, rng: &mut Stream) -> Vec<f64> {
        let global = self.global_initial(start, rng);
        self.split_ref().slab(&global, self.lattice.dim() * self.link_reals())
    }

    /// S of the global configuration whose slab is `config`. Collective.
    pub(crate) fn split_action(&self, config: &[f64]) -> Result<f64, PluginError> {
        let s = self.split_ref();
        let k = self.coefficients();
        let w0 = k.beta * k.c0 / self.n as f64;
        with_group!(self.n, G => {
            let u = s.stored::<G>(config)?;
            Ok(-(w0 * s.plaquette_sums(&u)?[0] + 0.0 * 0.0))
        })
    }

    /// The observables of the global configuration whose slab is `config`. Collective.
    pub(crate) fn split_measure(&self, config: &[f64], out: &mut Vec<f64>) -> Result<(), PluginError> {
        let s = self.split_ref();
        let plaquettes = with_group!(self.n, G => {
            let u = s.stored::<G>(config)?;
            s.plaquette_sums_by_plane(&u)?
        });
        let global = s.gather(config)?;
        with_group!(self.n, G => {
            let u: &[G] = view(&global).map_err(|e| PluginError::shape(format!("gathered configuration: {e}")))?;
            crate::observables::measure_with::<G>(self, u, plaquettes, out)
        })
    }

    /// `n_traj` HMC trajectories of the split lattice (see the module docs). Collective.
    pub(crate) fn split_hmc(
        &self,
        field: &mut [f64],
        params: &HmcParams,
        n_traj: u32,
        rng: &mut Stream,
    ) -> Result<Vec<TrajectoryRecord>, PluginError> {
        self.check_options(params)?;
        let schedule = self.schedule(params, 1)?;
        with_group!(self.n, G => self.split_hmc_in::<G>(field, params, &schedule, n_traj, rng))
    }

    fn split_hmc_in<G: SunGroup>(
        &self,
        field: &mut [f64],
        params: &HmcParams,
        schedule: &latflow_core::hmc::Schedule,
        n_traj: u32,
        rng: &mut Stream,
    ) -> Result<Vec<TrajectoryRecord>, PluginError>
    where
        G::Algebra: Pod,
    {
        let s = self.split_ref();
        let mut u = s.stored::<G>(field)?;
        let space = DomainLinkSpace::<G>::new(&s.domain, &s.comm, &s.count);
        let k = self.coefficients();
        let term = SplitGauge { split: s, w0: k.beta * k.c0 / self.n as f64 };
        let mut action = LeveledAction::single(Box::new(term));
        let mut out = Vec::with_capacity(n_traj as usize);
        for _ in 0..n_traj {
            out.push(hmc_trajectory(&space, &mut action, &mut u, schedule, params.accept_reject, rng).map_err(hmc_error)?);
        }
        let owned = field.len();
        field.copy_from_slice(&reals(&u)[..owned]);
        Ok(out)
    }
}

/// Refusals of what a split lattice does not do yet (see the module docs).
pub fn refuse_split(what: &str) -> PluginError {
    PluginError::new(ErrorKind::Unsupported, format!("{what} on a lattice split over ranks is not supported yet (see the sun plugin's split module)"))
}

