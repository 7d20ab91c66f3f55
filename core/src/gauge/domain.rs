//! A lattice split over the ranks of a job: each rank stores a slab of the lattice along axis 0
//! (its own sites and `width` halo slices on either side), and kernels reach neighbours only
//! through [`Neighbours`], so the loop functions of `gauge::field` run unchanged on a slab.
//!
//! # The split
//! The global lattice L₀ × L₁ × … is cut along axis 0 (the slowest index of the row-major site
//! order) into `size` slabs of L₀/size slices; rank r owns global slices
//! r·L₀/size … (r+1)·L₀/size − 1. Because axis 0 is the slowest index, a rank's sites are one
//! contiguous block of the global site order, in the same order: the owned part of a field on
//! rank r is the slice `[r·V_loc·k, (r+1)·V_loc·k)` of the global field with k values per site.
//! So gathering a field is an allgather in rank order, and per-site random draws
//! ([`fill_random_part`]) and per-chunk sums (`chunk_sums`) can be made to match one rank.
//!
//! # Storage
//! A field on a [`Domain`] stores [`Domain::stored`] sites: first the V_loc owned sites in the
//! global order, then the lower halo (the `width` slices just below the slab, lowest first),
//! then the upper halo (the `width` slices just above it). [`Domain::exchange`] fills both
//! halos from the neighbouring ranks (periodically: rank 0's lower halo comes from the last
//! rank; on one rank, from itself). [`Neighbours::up`] and [`Neighbours::dn`] work for every
//! stored site: a step that would leave the stored slices (possible only from a halo site, a
//! kernel reaching further than `width`) returns `u32::MAX as usize`, so indexing a field with
//! it panics instead of reading a wrong link.
//!
//! # Reductions
//! [`Domain::sum`] sums per-site terms over owned sites in [`CHUNK_SITES`](super::parallel::CHUNK_SITES) chunks and merges
//! every rank's chunk partials in rank order. When V_loc is a multiple of [`CHUNK_SITES`](super::parallel::CHUNK_SITES) the
//! chunks are those of one rank's [`sum_sites`](super::parallel::sum_sites) and the sum has
//! the same bits as on one rank; otherwise it equals it to rounding, and has the same bits on
//! every rank and for any thread count either way.
//!
//! # Decomposed HMC
//! [`DomainLinkSpace`] is `hmc::FieldSpace` for links on a domain: momenta on owned links
//! drawn as the matching part of one rank's draw, the field moved on owned links and its halos
//! refreshed after each drift, kinetic energy and projections reduced over ranks. With
//! [`DomainWilson`] (the Wilson plaquette action) core's integrators and `hmc_trajectory` run
//! unchanged on a domain and give the link field of one rank, bit for bit, trajectory after
//! trajectory.

use std::sync::atomic::{AtomicU64, Ordering};

use abi_stable::std_types::RSlice;
use bytemuck::Pod;

use super::field::{plaquette, planes, staple, Neighbours, Sites};
use super::group::{GaugeGroup, LieAlgebra};
use super::parallel::{chunk_sums_as, fill_random_part, fill_sites, fill_sites_as, SiteWork};
use crate::abi::PluginError;
use crate::comm::CommBox;
use crate::hmc::{ActionTerm, FieldSpace, TermError};
use crate::lattice::Lattice;
use crate::rng::Stream;
use crate::sum::CompensatedSum;

/// Why a lattice cannot be split, or a collective operation failed.
#[derive(Debug, Clone, PartialEq)]
pub enum DomainError {
    /// The lattice has fewer than 2 dimensions, or an extent below 2.
    Shape(String),
    /// L₀ is not a multiple of the number of ranks.
    NotDivisible { extent: usize, ranks: usize },
    /// A slab is thinner than the halo: a halo would need slices of ranks further away.
    TooThin { local: usize, width: usize, ranks: usize },
    /// `rank ≥ size`, or `size = 0`.
    Rank { rank: usize, size: usize },
    /// A halo exchange or a reduction failed.
    Comm(PluginError),
}

impl std::fmt::Display for DomainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DomainError::Shape(m) => write!(f, "cannot split the lattice: {m}"),
            DomainError::NotDivisible { extent, ranks } => write!(
                f,
                "the lattice extent {extent} along axis 0 is not divisible by the {ranks} ranks of the job \
                 (the lattice is split along axis 0 into equal slabs)"
            ),
            DomainError::TooThin { local, width, ranks } => write!(
                f,
                "split over {ranks} ranks, each rank holds {local} slice(s) along axis 0, fewer than the \
                 halo of {width} slice(s) the kernels need: use fewer ranks"
            ),
            DomainError::Rank { rank, size } => write!(f, "rank {rank} does not exist in a job of {size} ranks"),
            DomainError::Comm(e) => write!(f, "communication between ranks failed: {e}"),
        }
    }
}

impl std::error::Error for DomainError {}

impl From<PluginError> for DomainError {
    fn from(e: PluginError) -> Self {
        DomainError::Comm(e)
    }
}

/// One rank's slab of a lattice split along axis 0, with halos of `width` slices: see the
/// module docs for the storage order.
#[derive(Debug, Clone)]
pub struct Domain {
    shape: Vec<usize>,
    rank: usize,
    size: usize,
    width: usize,
    /// Slices owned (L₀ / size).
    local: usize,
    /// Sites per slice (L₁ · L₂ · …).
    slice: usize,
    /// Per stored site and direction: the stored index of x ± μ̂ (`u32::MAX`: off the slab).
    up: Vec<u32>,
    dn: Vec<u32>,
}

impl Domain {
    /// Rank `rank` of `size` ranks of the lattice `shape` (d ≥ 2, every extent ≥ 2), with halos
    /// of `width ≥ 1` slices. Errors if L₀ is not divisible by `size`, or a slab would be
    /// thinner than `width`.
    pub fn new(shape: &[usize], rank: usize, size: usize, width: usize) -> Result<Self, DomainError> {
        if shape.len() < 2 || shape.iter().any(|&l| l < 2) {
            return Err(DomainError::Shape(format!(
                "a decomposed lattice needs at least 2 dimensions of extent ≥ 2, got {shape:?}"
            )));
        }
        if size == 0 || rank >= size {
            return Err(DomainError::Rank { rank, size });
        }
        if width == 0 {
            return Err(DomainError::Shape("the halo width must be at least 1".into()));
        }
        if !shape[0].is_multiple_of(size) {
            return Err(DomainError::NotDivisible { extent: shape[0], ranks: size });
        }
        let local = shape[0] / size;
        if local < width {
            return Err(DomainError::TooThin { local, width, ranks: size });
        }
        let slice_lattice = Lattice::new(&shape[1..].iter().map(|&l| l as i64).collect::<Vec<_>>())
            .map_err(|e| DomainError::Shape(e.to_string()))?;
        let slice = slice_lattice.volume();
        let d = shape.len();
        let mut dom = Domain { shape: shape.to_vec(), rank, size, width, local, slice, up: Vec::new(), dn: Vec::new() };
        let stored = dom.stored();
        let (mut up, mut dn) = (vec![u32::MAX; stored * d], vec![u32::MAX; stored * d]);
        for s in 0..stored {
            let (e, rest) = dom.split(s);
            if let Some(t) = dom.join(e + 1, rest) {
                up[s * d] = t as u32;
            }
            if let Some(t) = dom.join(e - 1, rest) {
                dn[s * d] = t as u32;
            }
            for mu in 1..d {
                up[s * d + mu] = dom.join(e, slice_lattice.fwd(rest, mu - 1)).expect("same slice") as u32;
                dn[s * d + mu] = dom.join(e, slice_lattice.bwd(rest, mu - 1)).expect("same slice") as u32;
            }
        }
        dom.up = up;
        dom.dn = dn;
        Ok(dom)
    }

    /// The domain of the rank of `comm`, split over all its ranks.
    pub fn for_comm(shape: &[usize], comm: &CommBox, width: usize) -> Result<Self, DomainError> {
        Self::new(shape, comm.rank() as usize, comm.size() as usize, width)
    }

    /// (slice coordinate relative to the slab, −width ≤ e < local + width; site in the slice)
    fn split(&self, s: usize) -> (isize, usize) {
        let owned = self.local * self.slice;
        let halo = self.width * self.slice;
        let (e, r) = if s < owned {
            ((s / self.slice) as isize, s % self.slice)
        } else if s < owned + halo {
            (((s - owned) / self.slice) as isize - self.width as isize, (s - owned) % self.slice)
        } else {
            (self.local as isize + ((s - owned - halo) / self.slice) as isize, (s - owned - halo) % self.slice)
        };
        (e, r)
    }

    /// The stored index of (slice e, site in slice), if slice e is stored.
    fn join(&self, e: isize, rest: usize) -> Option<usize> {
        let (w, l) = (self.width as isize, self.local as isize);
        let owned = self.local * self.slice;
        if (0..l).contains(&e) {
            Some(e as usize * self.slice + rest)
        } else if (-w..0).contains(&e) {
            Some(owned + (e + w) as usize * self.slice + rest)
        } else if (l..l + w).contains(&e) {
            Some(owned + (self.width + (e - l) as usize) * self.slice + rest)
        } else {
            None
        }
    }

    /// The global lattice shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// This rank and the number of ranks.
    pub fn rank(&self) -> (usize, usize) {
        (self.rank, self.size)
    }

    /// The halo width in slices.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Sites of the whole lattice.
    pub fn global_sites(&self) -> usize {
        self.shape[0] * self.slice
    }

    /// Sites stored per field: owned sites and both halos.
    pub fn stored(&self) -> usize {
        (self.local + 2 * self.width) * self.slice
    }

    /// The global index of owned site 0 (owned site x is global site `first_site() + x`).
    pub fn first_site(&self) -> usize {
        self.rank * self.local * self.slice
    }

    /// Sites in one slice along axis 0: one halo slice, the unit of a halo message.
    pub fn slice_sites(&self) -> usize {
        self.slice
    }

    /// Reals sent by one halo exchange of a field with `reals_per_site` reals per site (both
    /// directions; the same number is received).
    pub fn halo_reals(&self, reals_per_site: usize) -> usize {
        2 * self.width * self.slice * reals_per_site
    }

    /// Fills the halos of `field` (`per_site` items per stored site) from the neighbouring
    /// ranks: two paired exchanges (top slab up, bottom slab down). Collective: every rank calls
    /// it with fields of the same shape. Items must be plain reals (`T`'s size a multiple of 8).
    pub fn exchange<T: Pod>(&self, comm: &CommBox, field: &mut [T], per_site: usize) -> Result<(), DomainError> {
        assert_eq!(field.len(), self.stored() * per_site, "a field of {} sites × {per_site}", self.stored());
        let slab = self.width * self.slice * per_site;
        let owned = self.local * self.slice * per_site;
        let (size, rank) = (self.size as u32, self.rank as u32);
        let (above, below) = ((rank + 1) % size, (rank + size - 1) % size);
        let reals = |items: &[T]| -> Vec<f64> { bytemuck::cast_slice::<T, f64>(items).to_vec() };
        let top = reals(&field[owned - slab..owned]);
        let recv_len = top.len() as u64;
        // my top slab goes up; from below comes the lower halo
        let lower = comm.sendrecv(RSlice::from_slice(&top), above, below, recv_len).into_result()?;
        let bottom = reals(&field[..slab]);
        // my bottom slab goes down; from above comes the upper halo
        let upper = comm.sendrecv(RSlice::from_slice(&bottom), below, above, recv_len).into_result()?;
        let halo: &mut [f64] = bytemuck::cast_slice_mut(&mut field[owned..]);
        let n = lower.len();
        halo[..n].copy_from_slice(&lower);
        halo[n..].copy_from_slice(&upper);
        Ok(())
    }

    /// This rank's stored field cut from a global field (`per_site` items per site, global
    /// site order), halos included: no communication.
    pub fn scatter<T: Copy>(&self, global: &[T], per_site: usize) -> Vec<T> {
        assert_eq!(global.len(), self.global_sites() * per_site, "a global field");
        let l0 = self.shape[0] as isize;
        let first_slice = (self.rank * self.local) as isize;
        let slice_items = self.slice * per_site;
        let take = |e: isize| {
            let g = (first_slice + e).rem_euclid(l0) as usize;
            &global[g * slice_items..(g + 1) * slice_items]
        };
        let mut out = Vec::with_capacity(self.stored() * per_site);
        let w = self.width as isize;
        let l = self.local as isize;
        for e in (0..l).chain(-w..0).chain(l..l + w) {
            out.extend_from_slice(take(e));
        }
        out
    }

    /// The global field (`per_site` items per site) gathered from every rank's owned sites, on
    /// every rank. Collective.
    pub fn gather<T: Pod>(&self, comm: &CommBox, field: &[T], per_site: usize) -> Result<Vec<T>, DomainError> {
        let owned = self.local * self.slice * per_site;
        let all = comm.allgather(RSlice::from_slice(bytemuck::cast_slice::<T, f64>(&field[..owned]))).into_result()?;
        Ok(bytemuck::cast_slice::<f64, T>(&all).to_vec())
    }

    /// Σ over owned sites of the terms `f(x, sum)` adds, over all ranks: per-rank chunk
    /// partials merged in rank order (see the module docs for when this has the bits of one
    /// rank). Collective; the same bits on every rank.
    pub fn sum(&self, comm: &CommBox, f: impl Fn(usize, &mut CompensatedSum) + Sync) -> Result<f64, DomainError> {
        let parts: Vec<f64> = chunk_sums_as(SiteWork::Heavy, self.sites(), f).iter().flat_map(|p| p.parts()).collect();
        let all = comm.allgather(RSlice::from_slice(&parts)).into_result()?;
        let mut total = CompensatedSum::new();
        for p in all.chunks_exact(2) {
            total.merge(CompensatedSum::from_parts([p[0], p[1]]));
        }
        Ok(total.value())
    }

    /// The largest of one value per rank, on every rank. Collective.
    pub fn max(&self, comm: &CommBox, value: f64) -> Result<f64, DomainError> {
        Ok(crate::comm::max_over_ranks(comm, value)?)
    }
}

impl Neighbours for Domain {
    fn dim(&self) -> usize {
        self.shape.len()
    }
    /// The owned sites (kernels loop over these; halo sites are only read).
    fn sites(&self) -> usize {
        self.local * self.slice
    }
    #[inline]
    fn up(&self, x: usize, mu: usize) -> usize {
        self.up[x * self.shape.len() + mu] as usize
    }
    #[inline]
    fn dn(&self, x: usize, mu: usize) -> usize {
        self.dn[x * self.shape.len() + mu] as usize
    }
}

/// One rank's slab as [`Sites`] for kernels written once for the whole lattice and a split
/// one: neighbours from the [`Domain`], sums as [`Domain::sum`]s through `comm` (counted in
/// `count`). A failed reduction panics with the reason (a kernel's sum cannot fail; the plugin
/// adapter's guard turns the panic into an error).
#[derive(Clone, Copy)]
pub struct DomainSites<'a> {
    pub domain: &'a Domain,
    pub comm: &'a CommBox,
    pub count: &'a CommCount,
}

impl DomainSites<'_> {
    /// Fills the halos of a stored field of `per_site` items per site (collective).
    pub fn exchange<T: Pod>(&self, field: &mut [T], per_site: usize) -> Result<(), DomainError> {
        self.count.exchange(self.domain.halo_reals(per_site * std::mem::size_of::<T>() / 8) / 2);
        self.domain.exchange(self.comm, field, per_site)
    }
}

impl Neighbours for DomainSites<'_> {
    #[inline]
    fn dim(&self) -> usize {
        self.domain.dim()
    }
    #[inline]
    fn sites(&self) -> usize {
        self.domain.sites()
    }
    #[inline]
    fn up(&self, x: usize, mu: usize) -> usize {
        self.domain.up(x, mu)
    }
    #[inline]
    fn dn(&self, x: usize, mu: usize) -> usize {
        self.domain.dn(x, mu)
    }
}

impl Sites for DomainSites<'_> {
    fn stored(&self) -> usize {
        self.domain.stored()
    }
    fn global_sites(&self) -> usize {
        self.domain.global_sites()
    }
    fn sum(&self, f: impl Fn(usize, &mut CompensatedSum) + Sync) -> f64 {
        self.count.reduction();
        self.domain.sum(self.comm, f).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Counts of the messages a [`DomainLinkSpace`] and [`DomainWilson`] sent: what the
/// communication-cost model of a trajectory is fitted to.
#[derive(Debug, Default)]
pub struct CommCount {
    /// Halo exchanges (each is two paired messages per rank).
    pub exchanges: AtomicU64,
    /// Reals sent in halo exchanges, by this rank.
    pub halo_reals: AtomicU64,
    /// Collective reductions (allgathers).
    pub reductions: AtomicU64,
}

impl CommCount {
    fn exchange(&self, reals: usize) {
        self.exchanges.fetch_add(1, Ordering::Relaxed);
        self.halo_reals.fetch_add(reals as u64, Ordering::Relaxed);
    }
    fn reduction(&self) {
        self.reductions.fetch_add(1, Ordering::Relaxed);
    }
    /// (exchanges, halo reals, reductions) so far.
    pub fn get(&self) -> (u64, u64, u64) {
        (
            self.exchanges.load(Ordering::Relaxed),
            self.halo_reals.load(Ordering::Relaxed),
            self.reductions.load(Ordering::Relaxed),
        )
    }
}

/// `hmc::FieldSpace` for links in a group G on a [`Domain`]: the field is the stored links
/// (`[site][μ]`, owned sites then halos), the momentum one algebra element per owned link.
///
/// Every method is collective (all ranks call it in the same order, as `hmc_trajectory` does).
/// Momenta are the part of one rank's [`fill_random`](super::parallel::fill_random) that this
/// rank's links get; the drift moves owned links and refreshes the halos; the kinetic energy
/// is a [`Domain::sum`] and the projection's deviation a [`Domain::max`]. `FieldSpace` methods
/// cannot fail, so a failed exchange panics with the reason (a driver turns that into an
/// error; a failed communication is not recoverable mid-trajectory).
pub struct DomainLinkSpace<'a, G> {
    domain: &'a Domain,
    comm: &'a CommBox,
    count: &'a CommCount,
    _group: std::marker::PhantomData<G>,
}

impl<'a, G: GaugeGroup + Pod> DomainLinkSpace<'a, G>
where
    G::Algebra: Pod,
{
    /// The space of links on `domain`, communicating through `comm` and counting in `count`.
    pub fn new(domain: &'a Domain, comm: &'a CommBox, count: &'a CommCount) -> Self {
        Self { domain, comm, count, _group: std::marker::PhantomData }
    }

    /// A hot start on the slab: this rank's links of the Haar-random field that one rank's
    /// [`LinkField::random`](super::LinkField::random) draws from `rng` (the same bits, and
    /// `rng` advances the same way), with the halos filled. Memory: the slab only.
    pub fn random(&self, rng: &mut Stream) -> Result<Vec<G>, DomainError> {
        let d = self.domain.dim();
        let mut u = vec![G::identity(); self.domain.stored() * d];
        let owned = self.owned_links();
        let (first, total) = (self.domain.first_site() * d, self.domain.global_sites() * d);
        fill_random_part(&mut u[..owned], first, total, rng, |s, x| *x = G::random(s))
            .map_err(|e| DomainError::Shape(format!("hot start: {e}")))?;
        self.exchange(&mut u)?;
        Ok(u)
    }

    /// Fills the halos of a stored link field (call once on a fresh field; the drift keeps
    /// them current afterwards).
    pub fn exchange(&self, u: &mut [G]) -> Result<(), DomainError> {
        let d = self.domain.dim();
        self.count.exchange(self.domain.halo_reals(d * G::REALS) / 2);
        self.domain.exchange(self.comm, u, d)
    }

    fn owned_links(&self) -> usize {
        self.domain.sites() * self.domain.dim()
    }

    fn reduce(&self, f: impl Fn(usize, &mut CompensatedSum) + Sync) -> f64 {
        self.count.reduction();
        self.domain.sum(self.comm, f).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl<G: GaugeGroup + Pod> FieldSpace for DomainLinkSpace<'_, G>
where
    G::Algebra: Pod,
{
    type Field = Vec<G>;
    type Momentum = Vec<G::Algebra>;

    fn sample_momentum(&self, _u: &Vec<G>, rng: &mut Stream) -> Vec<G::Algebra> {
        let mut p = self.zero_momentum();
        let d = self.domain.dim();
        let first = self.domain.first_site() * d;
        let total = self.domain.global_sites() * d;
        if let Err(e) = fill_random_part(&mut p, first, total, rng, |s, x| *x = G::Algebra::gaussian(s)) {
            panic!("momentum refresh: {e}");
        }
        p
    }

    fn zero_momentum(&self) -> Vec<G::Algebra> {
        vec![G::Algebra::zero(); self.owned_links()]
    }

    fn kinetic(&self, p: &Vec<G::Algebra>) -> f64 {
        let d = self.domain.dim();
        0.5 * self.reduce(|x, s| {
            for q in &p[x * d..(x + 1) * d] {
                s.add(q.norm2());
            }
        })
    }

    fn step_field(&self, u: &mut Vec<G>, p: &mut Vec<G::Algebra>, eps: f64) {
        let d = self.domain.dim();
        let owned = self.owned_links();
        fill_sites_as(SiteWork::of_group::<G>(), &mut u[..owned], d, |x, links, _| {
            G::exp_mul_into(links, &p[x * d..(x + 1) * d], eps)
        });
        self.exchange(u).unwrap_or_else(|e| panic!("halo exchange: {e}"));
    }

    fn kick(&self, p: &mut Vec<G::Algebra>, f: &Vec<G::Algebra>, eps: f64) {
        let d = self.domain.dim();
        fill_sites(p, d, |x, ps, _| {
            for (q, g) in ps.iter_mut().zip(&f[x * d..(x + 1) * d]) {
                q.axpy(-eps, g);
            }
        });
    }

    /// Reunitarises the owned links, refreshes the halos; returns the largest deviation before
    /// over all ranks.
    fn project(&self, u: &mut Vec<G>) -> f64 {
        let owned = self.owned_links();
        let local = u[..owned].iter_mut().map(|l| l.reunitarize()).fold(0.0, f64::max);
        self.exchange(u).unwrap_or_else(|e| panic!("halo exchange: {e}"));
        self.count.reduction();
        self.domain.max(self.comm, local).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The Wilson plaquette action S = −(β/N) Σ_x Σ_{μ<ν} Re Tr U_μν(x) on a [`Domain`], with its
/// force ∂S/∂ω^a for U → exp(ω^a X_a) U (core's coefficient convention). The force at an owned
/// link reads the links of the slab and one halo slice on either side (halo width 1), through
/// [`staple`]: the same kernel, with the same operation order, as on one domain.
pub struct DomainWilson<'a> {
    domain: &'a Domain,
    comm: &'a CommBox,
    count: &'a CommCount,
    beta: f64,
}

impl<'a> DomainWilson<'a> {
    /// The action at coupling `beta` on `domain` (halo width ≥ 1).
    pub fn new(domain: &'a Domain, comm: &'a CommBox, count: &'a CommCount, beta: f64) -> Self {
        Self { domain, comm, count, beta }
    }

    /// Σ_x Σ_{μ<ν} Re Tr U_μν(x) over the whole lattice (halos must be current). Collective.
    pub fn plaquette_sum<G: GaugeGroup>(&self, u: &[G]) -> Result<f64, DomainError> {
        let ps = planes(self.domain.dim());
        self.count.reduction();
        self.domain.sum(self.comm, |x, s| {
            for &(mu, nu) in &ps {
                s.add(plaquette(self.domain, u, x, mu, nu).re_trace());
            }
        })
    }

    /// ⟨Re Tr U_P⟩ / N over every plaquette of the lattice. Collective.
    pub fn mean_plaquette<G: GaugeGroup>(&self, u: &[G]) -> Result<f64, DomainError> {
        let d = self.domain.dim();
        let count = self.domain.global_sites() * d * (d - 1) / 2;
        Ok(self.plaquette_sum(u)? / (count * G::NC) as f64)
    }
}

impl<G: GaugeGroup + Pod> ActionTerm<DomainLinkSpace<'_, G>> for DomainWilson<'_>
where
    G::Algebra: Pod,
{
    fn name(&self) -> &str {
        "wilson (decomposed)"
    }

    fn action(&self, u: &Vec<G>) -> Result<f64, TermError> {
        let p = self.plaquette_sum(u).map_err(|e| TermError::new("wilson (decomposed)", e.to_string()))?;
        Ok(-(self.beta / G::NC as f64) * p)
    }

    fn force(&self, u: &Vec<G>, out: &mut Vec<G::Algebra>) -> Result<(), TermError> {
        let d = self.domain.dim();
        let w = self.beta / G::NC as f64;
        fill_sites_as(SiteWork::of_group::<G>(), out, d, |x, fs, _| {
            for (mu, f) in fs.iter_mut().enumerate() {
                *f = u[x * d + mu].re_trace_derivative(&staple(self.domain, &u[..], x, mu)).scale(-w);
            }
        });
        Ok(())
    }
}

#[cfg(test)]
#[path = "domain_tests.rs"]
mod tests;
