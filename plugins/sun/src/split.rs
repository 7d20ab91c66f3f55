//! The SU(N) theory on a lattice split over the ranks of a job (domain decomposition along
//! axis 0, core's [`Domain`]).
//!
//! Each rank holds a slab of the global lattice: its configuration is the slice
//! `[first_site·d·2N², (first_site + sites)·d·2N²)` of the global flat configuration (axis 0 is
//! the slowest, so the slabs concatenated in rank order are the global field). Inside a call the
//! slab is copied into core's stored order (owned sites, then the halo slices below and above:
//! one for the Wilson action, two when a rectangle term reaches x ± 2μ̂) and the halos are
//! filled by a halo exchange; the kernels then read neighbours through the domain's tables
//! ([`DomainSites`]), never through global indices.
//!
//! The kernels are the theory's own ([`crate::kernel`], [`crate::fast`]), generic over core's
//! `Sites`, so a split lattice runs the same per-link arithmetic:
//! - the force: the fast SU(3) Wilson kernel (its corner products shared as the *global*
//!   volume decides) or the generic staples and rectangle staples;
//! - momenta: this rank's part of the global draw (core's `fill_random_part`);
//! - heat-bath and overrelaxation: core's split sweeps, each link with its part of the pass's
//!   random fill and a halo refresh after every pass;
//! - sums (action, kinetic energy, plaquettes): chunk partials combined in rank order, the bits
//!   of one rank whenever the local volume is a multiple of core's chunk of 1024 sites, and
//!   equal to rounding otherwise.
//!
//! So the links, and with them every accept decision, follow the single-rank chain bit for bit.
//!
//! Observables: the plaquettes (all, spatial, temporal) are sums over the slabs with halos; the
//! rectangle, Polyakov and Wilson loops and the gradient-flow measurements are measured on the
//! gathered configuration (an allgather per measurement: the whole lattice in
//! every rank's memory while measuring, which a production volume would replace by wider halos
//! and a distributed flow). Anything that needs whole configurations on one rank (models,
//! `action_grad`) is refused by the host and the SDK.

use bytemuck::Pod;
use latflow_core::abi::{HmcParams, PluginError, Start, TrajectoryRecord};
use latflow_core::abi_stable::std_types::RSlice;
use latflow_core::comm::CommBox;
use latflow_core::gauge::domain::{CommCount, Domain, DomainLinkSpace, DomainSites};
use latflow_core::gauge::flat::{reals, view};
use latflow_core::gauge::{Neighbours, Su2, Su3};
use latflow_core::hmc::{ActionTerm, LeveledAction, Schedule, TermError};
use latflow_core::sdk::{run_trajectories, Physics};
use latflow_core::{ErrorKind, Stream};

use crate::kernel::{self, Coefficients, SunGroup};
use crate::Sun;

/// This rank's place in a split lattice.
pub struct Split {
    comm: CommBox,
    domain: Domain,
    count: CommCount,
}

impl Split {
    /// The slab of this rank of `comm` for the global lattice `shape`, with halos of `width`
    /// slices.
    pub fn new(shape: &[usize], comm: CommBox, width: usize) -> Result<Self, PluginError> {
        let domain = Domain::for_comm(shape, &comm, width).map_err(|e| PluginError::config(format!("lattice: {e}")))?;
        Ok(Self { comm, domain, count: CommCount::default() })
    }

    /// The local shape: the global one with axis 0 cut to the slab's slices.
    pub fn local_shape(&self) -> Vec<usize> {
        let mut shape = self.domain.shape().to_vec();
        shape[0] /= self.domain.rank().1;
        shape
    }

    /// The slab as kernels' sites.
    pub fn sites(&self) -> DomainSites<'_> {
        DomainSites { domain: &self.domain, comm: &self.comm, count: &self.count }
    }

    /// This rank's slab of a global flat configuration of `per_site` reals per site.
    pub fn slab(&self, global: &[f64], per_site: usize) -> Vec<f64> {
        let (first, n) = (self.domain.first_site(), self.domain.sites());
        global[first * per_site..(first + n) * per_site].to_vec()
    }

    /// The global configuration from every rank's slab (collective: an allgather).
    pub fn gather(&self, local: &[f64]) -> Result<Vec<f64>, PluginError> {
        Ok(self.comm.allgather(RSlice::from_slice(local)).into_result()?.into_vec())
    }

    /// The stored links (owned, then halos) of a slab, halos filled. Collective.
    pub fn stored<G: SunGroup>(&self, local: &[f64]) -> Result<Vec<G>, PluginError> {
        let d = self.domain.dim();
        let owned: &[G] = view(local).map_err(|e| PluginError::shape(format!("configuration: {e}")))?;
        let mut u = vec![G::identity(); self.domain.stored() * d];
        u[..owned.len()].copy_from_slice(owned);
        self.sites().exchange(&mut u, d).map_err(comm_failed)?;
        Ok(u)
    }

    /// `f` on the stored links of the slab `config` (halos filled); the owned links it leaves
    /// are written back to `config`. Collective.
    pub fn with_stored<G: SunGroup, T>(
        &self,
        config: &mut [f64],
        f: impl FnOnce(DomainSites<'_>, &mut Vec<G>) -> T,
    ) -> Result<T, PluginError> {
        let mut u = self.stored::<G>(config)?;
        let out = f(self.sites(), &mut u);
        let owned = config.len();
        config.copy_from_slice(&reals(&u)[..owned]);
        Ok(out)
    }
}

fn comm_failed(e: impl std::fmt::Display) -> PluginError {
    PluginError::new(ErrorKind::Internal, format!("split lattice: {e}"))
}

/// The gauge action on a split lattice as the one HMC term.
struct SplitGauge<'a> {
    sites: DomainSites<'a>,
    k: Coefficients,
}

impl<G: SunGroup> ActionTerm<DomainLinkSpace<'_, G>> for SplitGauge<'_>
where
    G::Algebra: Pod,
{
    fn name(&self) -> &str {
        "gauge"
    }

    fn action(&self, u: &Vec<G>) -> Result<f64, TermError> {
        Ok(kernel::action(&self.sites, u, self.k))
    }

    fn force(&self, u: &Vec<G>, out: &mut Vec<G::Algebra>) -> Result<(), TermError> {
        kernel::force(&self.sites, u, self.k, out);
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
        with_group!(self.n, G => Ok(kernel::action(&s.sites(), &s.stored::<G>(config)?, k)))
    }

    /// The observables of the global configuration whose slab is `config`. Collective.
    pub(crate) fn split_measure(&self, config: &[f64], out: &mut Vec<f64>) -> Result<(), PluginError> {
        let s = self.split_ref();
        let plaquettes = with_group!(self.n, G => kernel::plaquette_sums(&s.sites(), &s.stored::<G>(config)?));
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
        schedule: &Schedule,
        n_traj: u32,
        rng: &mut Stream,
    ) -> Result<Vec<TrajectoryRecord>, PluginError>
    where
        G::Algebra: Pod,
    {
        let s = self.split_ref();
        let k = self.coefficients();
        s.with_stored::<G, _>(field, |sites, u| {
            let space = DomainLinkSpace::<G>::new(sites.domain, sites.comm, sites.count);
            let mut action = LeveledAction::single(Box::new(SplitGauge { sites, k }));
            run_trajectories(&space, &mut action, u, schedule, params.accept_reject, n_traj, rng)
        })?
    }
}
