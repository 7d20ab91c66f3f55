//! The Wilson–Dirac operator with a twisted-mass term, and its even–odd Schur complement.
//!
//! See the [module docs](super) for the operator and its conventions. Fields are slices of
//! [`Spinor`]s: a full field has one spinor per lattice site (row-major site order); a
//! half-lattice field of parity p has one per site of
//! [`Lattice::sites_of_parity(p)`](Lattice::sites_of_parity), in that order (the position of
//! site x is [`Lattice::eo_index`]). Parity 0 ("even") is Σ coords even.

use std::marker::PhantomData;

use super::clover::{apply_blocks, CloverField, DiracGauge};
use super::gamma::{gamma5_diag, projector, ProjPair};
use super::spinor::{par_fill, Colour, HopLink, Spinor, WilsonGroup};
use super::FermionError;
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
            _g: PhantomData,
        })
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
    /// with antiperiodic time (upper signs for H, lower for H† = γ5 H γ5, `dag` = 1). `idx`
    /// maps a site to its position in `src`.
    #[inline(always)]
    /// The hopping term at site x through the links' hopping factors (`g.hops` when
    /// precomputed, else the links).
    pub(crate) fn hop_at(
        &self,
        g: &GaugeRef<'_, G>,
        src: &[Spinor<G::Colour, NS>],
        x: usize,
        dag: usize,
        idx: impl Fn(usize) -> usize,
    ) -> Spinor<G::Colour, NS> {
        match g.hops {
            Some(h) => self.hop_site(h, src, x, dag, idx),
            None => self.hop_site(g.links, src, x, dag, idx),
        }
    }

    pub(crate) fn hop_site<L: HopLink<G::Colour>>(
        &self,
        u: &[L],
        src: &[Spinor<G::Colour, NS>],
        x: usize,
        dag: usize,
        idx: impl Fn(usize) -> usize,
    ) -> Spinor<G::Colour, NS> {
        let lat = &self.lattice;
        let t = lat.time(x);
        let t_max = lat.time_extent() - 1;
        let mut acc = Spinor::<G::Colour, NS>::default();
        for mu in 0..NS {
            let time = mu == NS - 1;
            // forward: U_μ(x) ψ(x+μ̂)
            let y = lat.fwd(x, mu);
            let s = &src[idx(y)];
            let link = &u[x * NS + mu];
            let flip = time && t == t_max;
            for p in &self.proj[dag][0][mu][..NS / 2] {
                let h = s.0[p.i].add(&s.0[p.j].mul_phase(p.ki));
                let mut h = link.hop_mul(&h);
                if flip {
                    h = h.mul_phase(2);
                }
                acc.0[p.i].add_assign(&h);
                acc.0[p.j].add_assign(&h.mul_phase(p.kj));
            }
            // backward: U_μ(x−μ̂)† ψ(x−μ̂)
            let y = lat.bwd(x, mu);
            let s = &src[idx(y)];
            let link = &u[y * NS + mu];
            let flip = time && t == 0;
            for p in &self.proj[dag][1][mu][..NS / 2] {
                let h = s.0[p.i].add(&s.0[p.j].mul_phase(p.ki));
                let mut h = link.hop_dagger_mul(&h);
                if flip {
                    h = h.mul_phase(2);
                }
                acc.0[p.i].add_assign(&h);
                acc.0[p.j].add_assign(&h.mul_phase(p.kj));
            }
        }
        acc
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
        par_fill(out, |x, o| {
            let h = self.hop_at(&g, psi, x, usize::from(dag), |y| y);
            let mut r = self.diag(&g, x, Diag::A, dag, &psi[x]);
            for s in 0..NS {
                r.0[s].axpy(-k, &h.0[s]);
            }
            *o = r;
        });
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
    /// parity: out[i] = f(i, x, (H or H†) src at x), x the i-th site of that parity.
    pub(crate) fn hop_half(
        &self,
        g: GaugeRef<'_, G>,
        src: &[Spinor<G::Colour, NS>],
        out: &mut [Spinor<G::Colour, NS>],
        out_parity: usize,
        dag: bool,
        f: impl Fn(usize, usize, Spinor<G::Colour, NS>) -> Spinor<G::Colour, NS> + Sync,
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
            let h = self.hop_at(&g, src, x, usize::from(dag), |y| y >> 1);
            *o = f(i, x, h);
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
        self.hop_half(g, psi_e, tmp_o, 1, dag, |_, x, h| self.diag(&g, x, Diag::AInv, dag, &h))?;
        check_len("half-lattice source field", psi_e.len(), out_e.len())?;
        let k2 = self.params.kappa * self.params.kappa;
        self.hop_half(g, tmp_o, out_e, 0, dag, |i, x, h| {
            let mut r = self.diag(&g, x, Diag::A, dag, &psi_e[i]);
            for s in 0..NS {
                r.0[s].axpy(-k2, &h.0[s]);
            }
            r
        })
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
            let mut r = eta_e[i];
            for s in 0..NS {
                r.0[s].axpy(k, &h.0[s]);
            }
            r
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
            let mut r = eta_o[i];
            for s in 0..NS {
                r.0[s].axpy(k, &h.0[s]);
            }
            self.diag(&g, x, Diag::AInv, false, &r)
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
        self.hop_half(g, x_e, x_o, 1, false, |_, x, h| self.diag(&g, x, Diag::AInv, false, &h))?;
        self.hop_half(g, y_e, y_o, 1, true, |_, x, h| self.diag(&g, x, Diag::AInv, true, &h))
    }
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
