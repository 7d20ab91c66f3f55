//! The Wilson–Dirac operator with a twisted-mass term, and its even–odd Schur complement.
//!
//! See the [module docs](super) for the operator and its conventions. Fields are slices of
//! [`Spinor`]s: a full field has one spinor per lattice site (row-major site order); a
//! half-lattice field of parity p has one per site of
//! [`Lattice::sites_of_parity(p)`](Lattice::sites_of_parity), in that order (the position of
//! site x is [`Lattice::eo_index`]). Parity 0 ("even") is Σ coords even.

use std::marker::PhantomData;

use super::FermionError;
use super::clover::{CloverField, DiracGauge, apply_blocks};
use super::gamma::{ProjPair, gamma5_diag, hop_projectors, projector};
use super::lanes::LaneLayout;
use super::spinor::{Colour, HopLink, Spinor, WilsonGroup, par_fill};
use crate::gauge::complex::Complex;
use crate::lattice::Lattice;

/// The parameters of a Wilson operator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WilsonParams {
    /// The hopping parameter κ (finite, > 0); m₀ = 1/(2κ) − d.
    pub kappa: f64,
    /// The twisted mass μ (finite, ≥ 0) in lattice units; the operator gains i·2κμ·γ5.
    pub mu: f64,
    /// The clover coefficient c_sw (finite; 0 for none), see [`super::clover`].
    pub csw: f64,
}

impl WilsonParams {
    /// Plain Wilson fermions (μ = 0).
    pub fn wilson(kappa: f64) -> Self {
        Self { kappa, mu: 0.0, csw: 0.0 }
    }

    /// Wilson fermions with twisted mass μ (no clover term).
    pub fn twisted(kappa: f64, mu: f64) -> Self {
        Self { kappa, mu, csw: 0.0 }
    }

    /// Validates κ (finite, > 0), μ (finite, ≥ 0) and c_sw (finite).
    pub fn check(&self) -> Result<(), FermionError> {
        if !(self.kappa.is_finite() && self.kappa > 0.0) {
            return Err(FermionError::Kappa(self.kappa));
        }
        if !(self.mu.is_finite() && self.mu >= 0.0) {
            return Err(FermionError::Mu(self.mu));
        }
        if !self.csw.is_finite() {
            return Err(FermionError::Csw(self.csw));
        }
        Ok(())
    }
}

/// The Wilson–Dirac operator of group `G` with `NS` spin components (NS = d = 2 or 4) on one
/// lattice. It holds the geometry and parameters, not the links: every application takes the
/// links `u` (`[site][μ]`, as [`crate::gauge::LinkField::links`]), so one operator serves a
/// whole HMC trajectory.
#[derive(Debug, Clone)]
pub struct WilsonDirac<G: WilsonGroup, const NS: usize> {
    lattice: Lattice,
    params: WilsonParams,
    /// `proj[dag][dir][μ]`: dir 0 is the forward hop (1 − γ_μ for D, 1 + γ_μ for D†), dir 1
    /// the backward hop.
    proj: [[[[ProjPair; 2]; NS]; 2]; 2],
    g5: [f64; NS],
    even: bool,
    /// The hopping-kernel variant: 0 baseline, 1 AVX2 (only where the CPU runs it).
    simd: u8,
    /// The lanes layout of this lattice, where it exists (SU(3), 4D, time extent a multiple
    /// of 8; see [`super::lanes`]), and the solvers' choice of layout.
    lanes: Option<LaneLayout>,
    layout: SolverLayout,
    _g: PhantomData<G>,
}

/// The links and, with c_sw ≠ 0, their clover field, checked against the operator.
#[derive(Clone, Copy)]
pub(crate) struct GaugeRef<'a, G: WilsonGroup> {
    pub(crate) links: &'a [G],
    pub(crate) clover: Option<&'a CloverField>,
    /// The links' hopping factors, when precomputed ([`super::HopCached`]).
    pub(crate) hops: Option<&'a [G::Hop]>,
}

/// Which site-diagonal factor a kernel applies.
#[derive(Clone, Copy)]
pub(crate) enum Diag {
    /// A = 1 + i a γ5.
    A,
    /// A⁻¹ = (1 − i a γ5)/(1 + a²).
    AInv,
}

impl<G: WilsonGroup, const NS: usize> WilsonDirac<G, NS> {
    /// An operator on `lattice` with `params`. Errors if κ or μ is invalid, or unless the
    /// lattice is 2D with NS = 2 or 4D with NS = 4. Odd extents are allowed here; the
    /// even–odd functions then refuse with [`FermionError::OddExtent`].
    pub fn new(lattice: &Lattice, params: WilsonParams) -> Result<Self, FermionError> {
        params.check()?;
        let (dim, g5) = (lattice.dim(), gamma5_diag(NS));
        let g5 = match g5 {
            Some(g5) if dim == NS => g5,
            _ => return Err(FermionError::Dimension { dim, ns: NS }),
        };
        let mut proj = [[[[ProjPair::default(); 2]; NS]; 2]; 2];
        for (dag, p) in proj.iter_mut().enumerate() {
            for mu in 0..NS {
                // D: forward (1 − γ), backward (1 + γ); D† = γ5 D γ5 swaps the signs.
                let fwd_plus = dag == 1;
                p[0][mu] = projector(NS, mu, fwd_plus).ok_or(FermionError::Dimension { dim, ns: NS })?;
                p[1][mu] = projector(NS, mu, !fwd_plus).ok_or(FermionError::Dimension { dim, ns: NS })?;
            }
        }
        Ok(Self {
            lattice: lattice.clone(),
            params,
            proj,
            g5: std::array::from_fn(|s| g5[s]),
            even: lattice.require_even().is_ok(),
            simd: hop_simd_level(),
            lanes: if NS == 4 && <G::Colour as Colour>::NC == 3 { LaneLayout::new(lattice) } else { None },
            layout: SolverLayout::Auto,
            _g: PhantomData,
        })
    }

    /// This operator with the hopping kernel's variant set to `level` (0 baseline, 1 AVX2),
    /// capped at what the CPU runs ([`hop_simd_level`]). Every variant gives the same bits;
    /// this exists to test and benchmark them. New operators use the widest.
    pub fn with_simd_level(mut self, level: u8) -> Self {
        self.simd = level.min(hop_simd_level());
        self
    }

    /// This operator with its solvers' layout set to `layout` (default
    /// [`SolverLayout::Auto`]). Both layouts give the same operator bits; a solve's reductions
    /// sum in another order, so the solutions agree to the solver's tolerance, not bit for
    /// bit. Where the lanes layout does not apply ([`Self::lanes_apply`]), every layout
    /// solves in the site layout.
    pub fn with_layout(mut self, layout: SolverLayout) -> Self {
        self.layout = layout;
        self
    }

    /// The solvers' layout as set ([`Self::with_layout`]).
    pub fn layout(&self) -> SolverLayout {
        self.layout
    }

    /// Whether the lanes layout applies to this operator at all: SU(3) in 4D, time extent a
    /// multiple of 8, no clover term, no twisted mass ([`Self::lanes_unavailable`]).
    pub fn lanes_apply(&self) -> bool {
        self.lanes_unavailable().is_none()
    }

    /// Why the lanes layout cannot apply to this operator (None where it can): it covers SU(3)
    /// in 4D with a time extent that is a multiple of 2·[`super::lanes::LANES`], and the plain
    /// Wilson operator only.
    pub fn lanes_unavailable(&self) -> Option<String> {
        if NS != 4 || <G::Colour as Colour>::NC != 3 {
            return Some("it needs SU(3) in 4D".into());
        }
        if self.lanes.is_none() {
            let t = self.lattice.shape()[NS - 1];
            return Some(format!("it needs a time extent that is a multiple of {}, got {t}", 2 * super::lanes::LANES));
        }
        if self.params.csw != 0.0 || self.twist() != 0.0 {
            return Some("it covers the plain Wilson operator only (no csw, no mu)".into());
        }
        None
    }

    /// Whether the layout setting picks the lanes layout on this lattice (before the
    /// operator's terms are considered): [`SolverLayout::Auto`] where the fields stay in
    /// cache ([`fields_stay_cached`]).
    fn lanes_chosen(&self) -> bool {
        match self.layout {
            SolverLayout::Auto => fields_stay_cached(self.lattice.volume()),
            SolverLayout::Lanes => true,
            SolverLayout::Sites => false,
        }
    }

    /// The lanes layout the solvers use for the plain Wilson operator on links `g`, if any:
    /// where [`Self::solves_in_lanes`] and `g` carries no clover field. With it, the links as
    /// reals.
    pub(crate) fn lanes_for<'a>(&self, g: &GaugeRef<'a, G>) -> Option<(&LaneLayout, &'a [f64])> {
        if !self.lanes_chosen() || g.clover.is_some() || self.twist() != 0.0 {
            return None;
        }
        Some((self.lanes.as_ref()?, <G as HopLink<G::Colour>>::su3_reals(g.links)?))
    }

    /// Whether this operator's solvers run in the lanes layout on plain links (no clover
    /// field): where the layout applies ([`Self::lanes_apply`]) and the setting picks it
    /// ([`Self::with_layout`]; by default, where the fields stay in cache).
    pub fn solves_in_lanes(&self) -> bool {
        self.lanes_chosen() && self.lanes_apply()
    }

    /// The lanes-kernel variant the solvers run: the widest the CPU runs, or the baseline
    /// where this operator is set to the baseline hopping kernel ([`Self::with_simd_level`]).
    pub(crate) fn lanes_level(&self) -> u8 {
        if self.simd == 0 { 0 } else { super::lanes::lanes_simd_level() }
    }

    /// The hopping kernel's variant (0 baseline, 1 AVX2).
    pub fn simd_level(&self) -> u8 {
        self.simd
    }

    /// The lattice.
    pub fn lattice(&self) -> &Lattice {
        &self.lattice
    }

    /// κ and μ.
    pub fn params(&self) -> WilsonParams {
        self.params
    }

    /// The hopping parameter κ.
    pub fn kappa(&self) -> f64 {
        self.params.kappa
    }

    /// The twist a = 2κμ of A = 1 + i a γ5.
    pub fn twist(&self) -> f64 {
        2.0 * self.params.kappa * self.params.mu
    }

    /// Number of sites V (the length of a full spinor field).
    pub fn volume(&self) -> usize {
        self.lattice.volume()
    }

    /// Number of sites of one parity, V/2 (the length of a half-lattice field); requires
    /// even extents.
    pub fn half_volume(&self) -> Result<usize, FermionError> {
        self.require_even()?;
        Ok(self.lattice.volume() / 2)
    }

    /// Errors with [`FermionError::OddExtent`] unless every extent is even.
    pub fn require_even(&self) -> Result<(), FermionError> {
        if self.even {
            return Ok(());
        }
        let (axis, &extent) = self.lattice.shape().iter().enumerate().find(|(_, &l)| l % 2 != 0).unwrap_or((0, &0));
        Err(FermionError::OddExtent { axis, extent })
    }

    pub(crate) fn check_links(&self, u: &[G]) -> Result<(), FermionError> {
        check_len("links", u.len(), self.lattice.volume() * NS)
    }

    /// The checked gauge data of an application: V·d links, and the clover field of the same
    /// parameters when c_sw ≠ 0 (ignored when c_sw = 0).
    pub(crate) fn gauge<'a>(&self, u: &'a (impl DiracGauge<G> + ?Sized)) -> Result<GaugeRef<'a, G>, FermionError> {
        let links = u.links();
        self.check_links(links)?;
        let hops = u.hops();
        if let Some(h) = hops {
            check_len("hopping factors", h.len(), links.len())?;
        }
        if self.params.csw == 0.0 {
            return Ok(GaugeRef { links, clover: None, hops });
        }
        match u.clover() {
            None => Err(FermionError::MissingClover),
            Some(c) if c.params() != self.params || c.len() != self.lattice.volume() => {
                Err(FermionError::CloverMismatch)
            }
            Some(c) => Ok(GaugeRef { links, clover: Some(c), hops }),
        }
    }

    pub(crate) fn proj(&self, dag: usize, dir: usize, mu: usize) -> &[ProjPair; 2] {
        &self.proj[dag][dir][mu]
    }

    /// The site-diagonal factor A, A†, A⁻¹ or A†⁻¹ applied to one spinor (`dag` flips the
    /// sign of the twist).
    #[inline(always)]
    pub(crate) fn diag(
        &self,
        g: &GaugeRef<'_, G>,
        x: usize,
        which: Diag,
        dag: bool,
        s: &Spinor<G::Colour, NS>,
    ) -> Spinor<G::Colour, NS> {
        if let Some(c) = g.clover {
            return apply_blocks(c, x, matches!(which, Diag::AInv), dag, s);
        }
        let a = if dag { -self.twist() } else { self.twist() };
        if a == 0.0 {
            return *s;
        }
        let (z, norm) = match which {
            Diag::A => (Complex::new(1.0, a), 1.0),
            Diag::AInv => (Complex::new(1.0, -a), 1.0 / (1.0 + a * a)),
        };
        Spinor(std::array::from_fn(|k| {
            let zk = if self.g5[k] > 0.0 { z } else { z.conj() };
            s.0[k].mul_c(zk.scale(norm))
        }))
    }

    /// The hopping term at site x: Σ_μ [(1 ∓ γ_μ) U_μ(x) ψ(x+μ̂) + (1 ± γ_μ) U_μ(x−μ̂)† ψ(x−μ̂)]
    /// with antiperiodic time (upper signs for H, lower for H† = γ5 H γ5, `dag` = 1), through
    /// the links' hopping factors (`g.hops` when precomputed, else the links), written to
    /// `out`. `idx` maps a site to its position in `src`. Runs the kernel variant this
    /// operator was set to ([`Self::simd_level`]); every variant gives the same bits.
    #[inline(always)]
    pub(crate) fn hop_into(
        &self,
        g: &GaugeRef<'_, G>,
        src: &[Spinor<G::Colour, NS>],
        x: usize,
        dag: usize,
        idx: impl Fn(usize) -> usize,
        out: &mut Spinor<G::Colour, NS>,
    ) {
        self.hop_links(g, src, x, dag, idx, None, out);
    }

    /// out ← diag(s) + coef·(H or H†) src at x, diag the site factor `which` (see
    /// [`Self::diag`]): one operator site, bit for bit `{ let mut r = diag(s); r.axpy(coef,
    /// hop); r }` per spin. Where the factor is 1 the hop kernel adds s itself (the SIMD SU(3)
    /// kernel in registers).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn hop_site_xpay(
        &self,
        g: &GaugeRef<'_, G>,
        src: &[Spinor<G::Colour, NS>],
        x: usize,
        dag: usize,
        idx: impl Fn(usize) -> usize,
        which: Diag,
        s: &Spinor<G::Colour, NS>,
        coef: f64,
        out: &mut Spinor<G::Colour, NS>,
    ) {
        if g.clover.is_none() && self.twist() == 0.0 {
            self.hop_links(g, src, x, dag, idx, Some((s, coef)), out);
            return;
        }
        self.hop_links(g, src, x, dag, idx, None, out);
        let d = self.diag(g, x, which, dag == 1, s);
        for k in 0..NS {
            out.0[k].xpay(&d.0[k], coef);
        }
    }

    /// The hop through `g`'s hopping factors when precomputed, else its links (see
    /// [`Self::hop_dispatch`]).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn hop_links(
        &self,
        g: &GaugeRef<'_, G>,
        src: &[Spinor<G::Colour, NS>],
        x: usize,
        dag: usize,
        idx: impl Fn(usize) -> usize,
        xpay: Option<(&Spinor<G::Colour, NS>, f64)>,
        out: &mut Spinor<G::Colour, NS>,
    ) {
        match g.hops {
            Some(h) => self.hop_dispatch(h, src, x, dag, idx, xpay, out),
            None => self.hop_dispatch(g.links, src, x, dag, idx, xpay, out),
        }
    }

    /// The hop through links `u`, written to `out`; with `xpay = Some((ψ, s))`, ψ + s·hop.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn hop_dispatch<L: HopLink<G::Colour>>(
        &self,
        u: &[L],
        src: &[Spinor<G::Colour, NS>],
        x: usize,
        dag: usize,
        idx: impl Fn(usize) -> usize,
        xpay: Option<(&Spinor<G::Colour, NS>, f64)>,
        out: &mut Spinor<G::Colour, NS>,
    ) {
        #[cfg(target_arch = "x86_64")]
        if self.simd == 1 && NS == 4 && <G::Colour as Colour>::NC == 3 {
            if let Some(links) = L::su3_reals(u) {
                let o: &mut [f64] = bytemuck::cast_slice_mut(std::slice::from_mut(out));
                let xp = xpay.and_then(|(p, c)| {
                    let p: &[f64] = bytemuck::cast_slice(std::slice::from_ref(p));
                    <&[f64; super::hop_su3::SPINOR_REALS]>::try_from(p).ok().map(|p| (p, c))
                });
                let o = <&mut [f64; super::hop_su3::SPINOR_REALS]>::try_from(o);
                if let (Ok(o), true) = (o, xp.is_some() == xpay.is_some()) {
                    let src: &[f64] = bytemuck::cast_slice(src);
                    // SAFETY: `simd` is 1 only where the CPU runs AVX2.
                    unsafe {
                        match dag {
                            0 => super::hop_su3::hop_site::<0>(&self.lattice, links, src, x, idx, xp, o),
                            _ => super::hop_su3::hop_site::<1>(&self.lattice, links, src, x, idx, xp, o),
                        }
                    }
                    return;
                }
            }
        }
        *out = match dag {
            0 => self.hop_generic::<L, 0>(u, src, x, idx),
            _ => self.hop_generic::<L, 1>(u, src, x, idx),
        };
        if let Some((p, c)) = xpay {
            for k in 0..NS {
                out.0[k].xpay(&p.0[k], c);
            }
        }
    }

    /// The generic hopping kernel ([`Self::hop_site`]), in its AVX2 build where this operator
    /// is set to it.
    #[inline(always)]
    fn hop_generic<L: HopLink<G::Colour>, const DAG: usize>(
        &self,
        u: &[L],
        src: &[Spinor<G::Colour, NS>],
        x: usize,
        idx: impl Fn(usize) -> usize,
    ) -> Spinor<G::Colour, NS> {
        #[cfg(target_arch = "x86_64")]
        if self.simd == 1 {
            // SAFETY: `simd` is 1 only where the CPU runs AVX2 (`Self::new`, `with_simd_level`).
            return unsafe { hop_avx2::hop_site::<G, L, NS, DAG>(self, u, src, x, idx) };
        }
        self.hop_site::<L, DAG>(u, src, x, idx)
    }

    /// The hopping term at site x (see [`Self::hop_into`]) for `DAG` = 0 (H) or 1 (H†). The
    /// projectors are compile-time constants, so the phases i^k fold away. With four spin
    /// components the two half-spinor components of every hop travel as one
    /// [`Colour::pair`] (the chiral basis pairs spins 0 and 1 with 2 and 3 in every
    /// projector), through the link together ([`HopLink::hop_mul_pair`]) and into
    /// accumulators for spins (0, 1) and (2, 3); the arithmetic per component is that of the
    /// textbook loop, in the same order, so the bits are the same.
    #[inline(always)]
    pub(crate) fn hop_site<L: HopLink<G::Colour>, const DAG: usize>(
        &self,
        u: &[L],
        src: &[Spinor<G::Colour, NS>],
        x: usize,
        idx: impl Fn(usize) -> usize,
    ) -> Spinor<G::Colour, NS> {
        let t = self.lattice.time(x);
        let zero = G::Colour::default();
        let z = <G::Colour as Colour>::pair(&zero, &zero);
        let mut acc = [z, z];
        self.hop_mu::<L, DAG, 0>(u, src, x, t, &idx, &mut acc);
        self.hop_mu::<L, DAG, 1>(u, src, x, t, &idx, &mut acc);
        self.hop_mu::<L, DAG, 2>(u, src, x, t, &idx, &mut acc);
        self.hop_mu::<L, DAG, 3>(u, src, x, t, &idx, &mut acc);
        let (s0, s1) = <G::Colour as Colour>::unpair(&acc[0]);
        let (s2, s3) = <G::Colour as Colour>::unpair(&acc[1]);
        let s = [s0, s1, s2, s3];
        Spinor(std::array::from_fn(|k| s[k]))
    }

    /// The forward and backward hops along axis `MU` (nothing for MU ≥ NS), added to the
    /// accumulators (spins (0, 1) and (2, 3) with NS = 4; spins (0, 1) in `acc[0]` with NS = 2).
    #[inline(always)]
    fn hop_mu<L: HopLink<G::Colour>, const DAG: usize, const MU: usize>(
        &self,
        u: &[L],
        src: &[Spinor<G::Colour, NS>],
        x: usize,
        t: usize,
        idx: &impl Fn(usize) -> usize,
        acc: &mut [<G::Colour as Colour>::Pair; 2],
    ) {
        if MU >= NS {
            return;
        }
        let lat = &self.lattice;
        let time = MU == NS - 1;
        // forward: U_μ(x) ψ(x+μ̂)
        let y = lat.fwd(x, MU);
        let p = const { hop_projectors::<NS>()[DAG][0][MU] };
        hop_term::<G::Colour, L, NS, false>(
            &u[x * NS + MU],
            &src[idx(y)].0,
            p,
            time && t + 1 == lat.time_extent(),
            acc,
        );
        // backward: U_μ(x−μ̂)† ψ(x−μ̂)
        let y = lat.bwd(x, MU);
        let p = const { hop_projectors::<NS>()[DAG][1][MU] };
        hop_term::<G::Colour, L, NS, true>(&u[y * NS + MU], &src[idx(y)].0, p, time && t == 0, acc);
    }

    /// The full-lattice operator: out = D ψ (`dag` = false) or D† ψ (`dag` = true).
    fn apply_full(
        &self,
        g: GaugeRef<'_, G>,
        psi: &[Spinor<G::Colour, NS>],
        out: &mut [Spinor<G::Colour, NS>],
        dag: bool,
    ) -> Result<(), FermionError> {
        let v = self.lattice.volume();
        check_len("source field", psi.len(), v)?;
        check_len("output field", out.len(), v)?;
        let k = self.params.kappa;
        par_fill(out, |x, o| self.hop_site_xpay(&g, psi, x, usize::from(dag), |y| y, Diag::A, &psi[x], -k, o));
        Ok(())
    }

    /// out = D ψ on the full lattice. `u`: V·d links; `psi`, `out`: V spinors. No allocation.
    pub fn apply(
        &self,
        u: &(impl DiracGauge<G> + ?Sized),
        psi: &[Spinor<G::Colour, NS>],
        out: &mut [Spinor<G::Colour, NS>],
    ) -> Result<(), FermionError> {
        self.apply_full(self.gauge(u)?, psi, out, false)
    }

    /// out = D† ψ = γ5 D(−μ) γ5 ψ on the full lattice (D(−μ): the twist reversed).
    pub fn apply_dagger(
        &self,
        u: &(impl DiracGauge<G> + ?Sized),
        psi: &[Spinor<G::Colour, NS>],
        out: &mut [Spinor<G::Colour, NS>],
    ) -> Result<(), FermionError> {
        self.apply_full(self.gauge(u)?, psi, out, true)
    }

    /// out = D†D ψ, using `tmp` (V spinors) for D ψ.
    pub fn apply_normal(
        &self,
        u: &(impl DiracGauge<G> + ?Sized),
        psi: &[Spinor<G::Colour, NS>],
        tmp: &mut [Spinor<G::Colour, NS>],
        out: &mut [Spinor<G::Colour, NS>],
    ) -> Result<(), FermionError> {
        let g = self.gauge(u)?;
        self.apply_full(g, psi, tmp, false)?;
        self.apply_full(g, tmp, out, true)
    }

    /// ψ ← γ5 ψ in place (any field, full or half).
    pub fn gamma5(&self, psi: &mut [Spinor<G::Colour, NS>]) {
        par_fill(psi, |_, s| {
            for k in 0..NS {
                if self.g5[k] < 0.0 {
                    s.0[k] = s.0[k].mul_phase(2);
                }
            }
        });
    }

    /// A hopping kernel onto the sites of parity `out_parity` from a half field of the other
    /// parity: out[i] = (H or H†) src at x, then f(i, x, &mut out[i]) transforms it in place
    /// (x the i-th site of that parity).
    pub(crate) fn hop_half(
        &self,
        g: GaugeRef<'_, G>,
        src: &[Spinor<G::Colour, NS>],
        out: &mut [Spinor<G::Colour, NS>],
        out_parity: usize,
        dag: bool,
        f: impl Fn(usize, usize, &mut Spinor<G::Colour, NS>) + Sync,
    ) -> Result<(), FermionError> {
        self.require_even()?;
        let half = self.lattice.volume() / 2;
        check_len("half-lattice source field", src.len(), half)?;
        check_len("half-lattice output field", out.len(), half)?;
        let sites = self.lattice.sites_of_parity(out_parity);
        par_fill(out, |i, o| {
            let x = sites[i] as usize;
            // with every extent even, the sites 2k and 2k+1 share a row of the last axis and have
            // opposite parities, so the position of y among the sites of its parity is y/2
            // (Lattice::eo_index, without the table load)
            self.hop_into(&g, src, x, usize::from(dag), |y| y >> 1, o);
            f(i, x, o);
        });
        Ok(())
    }

    /// The Schur complement on the even sites, out_e = D̂ ψ_e (`dag` false) or D̂† ψ_e, with
    /// D̂ = A_ee − κ² H_eo A_oo⁻¹ H_oe. `tmp_o`: V/2 spinors of scratch.
    fn schur(
        &self,
        g: GaugeRef<'_, G>,
        psi_e: &[Spinor<G::Colour, NS>],
        tmp_o: &mut [Spinor<G::Colour, NS>],
        out_e: &mut [Spinor<G::Colour, NS>],
        dag: bool,
    ) -> Result<(), FermionError> {
        self.hop_half(g, psi_e, tmp_o, 1, dag, |_, x, h| *h = self.diag(&g, x, Diag::AInv, dag, h))?;
        check_len("half-lattice source field", psi_e.len(), out_e.len())?;
        let k2 = self.params.kappa * self.params.kappa;
        self.require_even()?;
        check_len("half-lattice source field", tmp_o.len(), out_e.len())?;
        let even = self.lattice.sites_of_parity(0);
        par_fill(out_e, |i, o| {
            // the position of y among the sites of its parity is y/2 (see `hop_half`)
            self.hop_site_xpay(&g, tmp_o, even[i] as usize, usize::from(dag), |y| y >> 1, Diag::A, &psi_e[i], -k2, o)
        });
        Ok(())
    }

    /// out_e = D̂ ψ_e, the even–odd preconditioned operator D̂ = A_ee − κ² H_eo A_oo⁻¹ H_oe on
    /// half-lattice fields (V/2 spinors each; `tmp_o` is scratch). Requires even extents.
    pub fn apply_schur(
        &self,
        u: &(impl DiracGauge<G> + ?Sized),
        psi_e: &[Spinor<G::Colour, NS>],
        tmp_o: &mut [Spinor<G::Colour, NS>],
        out_e: &mut [Spinor<G::Colour, NS>],
    ) -> Result<(), FermionError> {
        self.schur(self.gauge(u)?, psi_e, tmp_o, out_e, false)
    }

    /// out_e = D̂† ψ_e = γ5 D̂(−μ) γ5 ψ_e (half-lattice fields; `tmp_o` is scratch).
    pub fn apply_schur_dagger(
        &self,
        u: &(impl DiracGauge<G> + ?Sized),
        psi_e: &[Spinor<G::Colour, NS>],
        tmp_o: &mut [Spinor<G::Colour, NS>],
        out_e: &mut [Spinor<G::Colour, NS>],
    ) -> Result<(), FermionError> {
        self.schur(self.gauge(u)?, psi_e, tmp_o, out_e, true)
    }

    /// out_e = D̂†D̂ ψ_e, with scratch `tmp_o` and `tmp_e` (V/2 spinors each).
    pub fn apply_schur_normal(
        &self,
        u: &(impl DiracGauge<G> + ?Sized),
        psi_e: &[Spinor<G::Colour, NS>],
        tmp_o: &mut [Spinor<G::Colour, NS>],
        tmp_e: &mut [Spinor<G::Colour, NS>],
        out_e: &mut [Spinor<G::Colour, NS>],
    ) -> Result<(), FermionError> {
        let g = self.gauge(u)?;
        self.schur(g, psi_e, tmp_o, tmp_e, false)?;
        self.schur(g, tmp_e, tmp_o, out_e, true)
    }

    /// Splits a full field into its even and odd halves (V/2 spinors each).
    pub fn split_eo(
        &self,
        full: &[Spinor<G::Colour, NS>],
        even: &mut [Spinor<G::Colour, NS>],
        odd: &mut [Spinor<G::Colour, NS>],
    ) -> Result<(), FermionError> {
        self.require_even()?;
        let half = self.lattice.volume() / 2;
        check_len("full field", full.len(), 2 * half)?;
        check_len("even half field", even.len(), half)?;
        check_len("odd half field", odd.len(), half)?;
        for (p, h) in [(0, even), (1, odd)] {
            let sites = self.lattice.sites_of_parity(p);
            par_fill(h, |i, o| *o = full[sites[i] as usize]);
        }
        Ok(())
    }

    /// Merges even and odd halves into a full field (the inverse of [`Self::split_eo`]).
    pub fn merge_eo(
        &self,
        even: &[Spinor<G::Colour, NS>],
        odd: &[Spinor<G::Colour, NS>],
        full: &mut [Spinor<G::Colour, NS>],
    ) -> Result<(), FermionError> {
        self.require_even()?;
        let half = self.lattice.volume() / 2;
        check_len("full field", full.len(), 2 * half)?;
        check_len("even half field", even.len(), half)?;
        check_len("odd half field", odd.len(), half)?;
        let lat = &self.lattice;
        par_fill(full, |x, o| {
            let i = lat.eo_index(x);
            *o = if lat.site_parity(x) == 0 { even[i] } else { odd[i] };
        });
        Ok(())
    }

    /// The even source of the Schur system for D ψ = η: b_e = η_e + κ H_eo A_oo⁻¹ η_o, so that
    /// D̂ ψ_e = b_e. `tmp_o` is scratch (V/2 spinors).
    pub fn eo_prepare(
        &self,
        u: &(impl DiracGauge<G> + ?Sized),
        eta_e: &[Spinor<G::Colour, NS>],
        eta_o: &[Spinor<G::Colour, NS>],
        tmp_o: &mut [Spinor<G::Colour, NS>],
        b_e: &mut [Spinor<G::Colour, NS>],
    ) -> Result<(), FermionError> {
        self.require_even()?;
        check_len("odd source field", eta_o.len(), tmp_o.len())?;
        check_len("even source field", eta_e.len(), b_e.len())?;
        let g = self.gauge(u)?;
        check_len("odd source field", eta_o.len(), self.lattice.volume() / 2)?;
        let odd = self.lattice.sites_of_parity(1);
        par_fill(tmp_o, |i, o| *o = self.diag(&g, odd[i] as usize, Diag::AInv, false, &eta_o[i]));
        let k = self.params.kappa;
        self.hop_half(g, tmp_o, b_e, 0, false, |i, _, h| {
            for s in 0..NS {
                h.0[s].xpay(&eta_e[i].0[s], k);
            }
        })
    }

    /// The odd half of the solution of D ψ = η from its even half:
    /// ψ_o = A_oo⁻¹ (η_o + κ H_oe ψ_e).
    pub fn eo_reconstruct(
        &self,
        u: &(impl DiracGauge<G> + ?Sized),
        psi_e: &[Spinor<G::Colour, NS>],
        eta_o: &[Spinor<G::Colour, NS>],
        psi_o: &mut [Spinor<G::Colour, NS>],
    ) -> Result<(), FermionError> {
        check_len("odd source field", eta_o.len(), psi_o.len())?;
        let k = self.params.kappa;
        let g = self.gauge(u)?;
        self.hop_half(g, psi_e, psi_o, 1, false, |i, x, h| {
            for s in 0..NS {
                h.0[s].xpay(&eta_o[i].0[s], k);
            }
            *h = self.diag(&g, x, Diag::AInv, false, h);
        })
    }

    /// The odd-site partners of the even–odd force: x_o = A_oo⁻¹ H_oe x_e and
    /// y_o = A_oo⁻† H_oe† y_e (H† = γ5 H γ5), each V/2 spinors.
    pub(crate) fn eo_force_partners(
        &self,
        g: GaugeRef<'_, G>,
        x_e: &[Spinor<G::Colour, NS>],
        y_e: &[Spinor<G::Colour, NS>],
        x_o: &mut [Spinor<G::Colour, NS>],
        y_o: &mut [Spinor<G::Colour, NS>],
    ) -> Result<(), FermionError> {
        self.hop_half(g, x_e, x_o, 1, false, |_, x, h| *h = self.diag(&g, x, Diag::AInv, false, h))?;
        self.hop_half(g, y_e, y_o, 1, true, |_, x, h| *h = self.diag(&g, x, Diag::AInv, true, h))
    }
}

/// One hop: acc += (1 + σγ) U ψ (or U† for `BACK`), the projector given by its pairs, negated
/// across the antiperiodic time boundary (`flip`). With the pairs constant the phases fold.
/// NS = 4: `acc` holds spins (0, 1) and (2, 3), and every pair joins spin 0 or 1 (its `i`)
/// with spin 2 or 3 (its `j`), as [`hop_projectors`] asserts. NS = 2: `acc[0]` holds spins
/// (0, 1) and the one pair's projected component goes through the link alone.
#[inline(always)]
fn hop_term<C: Colour, L: HopLink<C>, const NS: usize, const BACK: bool>(
    link: &L,
    s: &[C],
    p: [ProjPair; 2],
    flip: bool,
    acc: &mut [C::Pair; 2],
) {
    let [p0, p1] = p;
    if NS == 4 {
        let mut h = C::pair(&s[p0.i], &s[p1.i]);
        C::pair_add_assign(&mut h, &C::pair_phase(&C::pair(&s[p0.j], &s[p1.j]), p0.ki, p1.ki));
        let mut r = if BACK { link.hop_dagger_mul_pair(&h) } else { link.hop_mul_pair(&h) };
        if flip {
            r = C::pair_phase(&r, 2, 2);
        }
        C::pair_add_assign(&mut acc[0], &r);
        let rj = C::pair_phase(&r, p0.kj, p1.kj);
        C::pair_add_assign(&mut acc[1], &if p0.j == 2 { rj } else { C::pair_swap(&rj) });
    } else {
        let h = s[p0.i].add(&s[p0.j].mul_phase(p0.ki));
        let mut r = if BACK { link.hop_dagger_mul(&h) } else { link.hop_mul(&h) };
        if flip {
            r = r.mul_phase(2);
        }
        // spins (0, 1) = (i, j) of the one pair
        C::pair_add_assign(&mut acc[0], &C::pair(&r, &r.mul_phase(p0.kj)));
    }
}

/// The hopping kernel compiled with AVX2 enabled: the same operations in the same order (no
/// fused multiply-add: Rust never contracts), wider instructions.
#[cfg(target_arch = "x86_64")]
mod hop_avx2 {
    use super::*;

    /// [`WilsonDirac::hop_site`] with AVX2.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn hop_site<G: WilsonGroup, L: HopLink<G::Colour>, const NS: usize, const DAG: usize>(
        d: &WilsonDirac<G, NS>,
        u: &[L],
        src: &[Spinor<G::Colour, NS>],
        x: usize,
        idx: impl Fn(usize) -> usize,
    ) -> Spinor<G::Colour, NS> {
        d.hop_site::<L, DAG>(u, src, x, idx)
    }
}

/// The widest hopping-kernel variant this CPU runs: 0 baseline, 1 AVX2 ([`crate::simd`]).
pub fn hop_simd_level() -> u8 {
    crate::simd::level().min(crate::simd::AVX2)
}

pub(crate) fn check_len(what: &'static str, got: usize, expected: usize) -> Result<(), FermionError> {
    if got == expected {
        Ok(())
    } else {
        Err(FermionError::Length { what, expected, got })
    }
}

/// Flops of one application of the 4D SU(3) Wilson hopping term per site, the customary
/// count for GFLOP/s figures.
pub const WILSON_FLOPS_PER_SITE_SU3_4D: f64 = 1320.0;

/// Compulsory memory traffic of one application of the 4D SU(3) Wilson operator per site: four
/// links (144 bytes each; the backward hops reuse the neighbours') and the source and result
/// spinors (192 bytes each), each moved once.
pub const WILSON_BYTES_PER_SITE_SU3_4D: usize = 4 * 144 + 2 * 192;

/// The layout the solvers of a 4D SU(3) Wilson operator run in ([`WilsonDirac::with_layout`]).
/// The choice never depends on timing or on the machine, so a seed gives the same bits
/// everywhere: the layouts differ in the order of the solvers' reductions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SolverLayout {
    /// The lanes layout where the fields stay in cache ([`fields_stay_cached`], 16 MiB:
    /// there it was the faster on every machine measured), else the site layout.
    #[default]
    Auto,
    /// The site layout always.
    Sites,
    /// The lanes layout wherever it applies, whatever the volume: the faster on machines
    /// whose last-level cache holds the fields (measured on a Xeon with 480 MiB of L3: 16⁴,
    /// one thread, 5.8 against 7.9 ms per D ψ), the slower where they stream from memory.
    Lanes,
}

impl SolverLayout {
    /// Every layout, in the order of [`Self::NAMES`].
    pub const ALL: [SolverLayout; 3] = [SolverLayout::Auto, SolverLayout::Sites, SolverLayout::Lanes];
    /// The names of run cards: "auto", "sites", "lanes".
    pub const NAMES: [&'static str; 3] = ["auto", "sites", "lanes"];

    /// The layout of `name` (one of [`Self::NAMES`]), or None.
    pub fn parse(name: &str) -> Option<Self> {
        Self::NAMES.iter().position(|n| *n == name).map(|i| Self::ALL[i])
    }

    /// This layout's name (see [`Self::parse`]).
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// Whether one 4D SU(3) application's compulsory bytes on `volume` sites fit 16 MiB, so that
/// the fields stay in the last-level cache between applications. Measured on a 2-core EPYC
/// (32 MiB L3): there the per-site kernel does not prefetch (it cost 8% at 8⁴, 64 → 70 ns per
/// site) and the solvers use the lanes layout (8⁴, one thread: 45 against 64 ns per site);
/// above, the fields stream from memory, the per-site kernel prefetches (16⁴: 122 → 82 ns per
/// site) and the lanes kernel is slower (107–133 ns per site, with or without prefetching).
pub(crate) fn fields_stay_cached(volume: usize) -> bool {
    volume * WILSON_BYTES_PER_SITE_SU3_4D <= 16 << 20
}
