//! The pseudofermion force.
//!
//! For S_pf = φ†(D†D)⁻¹φ with X = (D†D)⁻¹φ and Y = D X, moving one link by
//! U_μ(x) → exp(t X_a) U_μ(x) changes the action by dS/dt = −2 Re(Y† (dD/dt) X) =
//! 2κ Re(Y† (dH/dt) X) (the twist does not depend on the links). With
//! ```text
//! M_μ(x) = Σ_s [ X(x+μ̂)_s ⊗ ((1 − γ_μ) Y(x))_s† + ((1 + γ_μ) Y(x+μ̂))_s ⊗ X(x)_s† ]
//! ```
//! (colour outer products, times −1 on links that cross the antiperiodic time boundary) this
//! is F^a_μ(x) = 2κ · d/dt Re Tr(exp(t X_a) U_μ(x) M_μ(x)), which
//! [`GaugeGroup::re_trace_derivative`] gives in
//! the coefficient convention of [`crate::gauge::group`].
//!
//! For the even–odd action S = φ_e†(D̂†D̂)⁻¹φ_e with X̂ = (D̂†D̂)⁻¹φ_e and Ŷ = D̂X̂, the same
//! kernel applies with coefficient 2κ² to the full fields X = (X̂, A_oo⁻¹ H_oe X̂) and
//! Y = (Ŷ, A_oo⁻† H_oe† Ŷ), since δD̂ = −κ²(δH_eo A_oo⁻¹ H_oe + H_eo A_oo⁻¹ δH_oe).

use super::cg::SolverWork;
use super::clover::DiracGauge;
use super::spinor::{par_fill, Colour, Spinor, WilsonGroup};
use super::wilson::GaugeRef;
use super::wilson::{check_len, WilsonDirac};
use super::FermionError;
use crate::gauge::group::{GaugeGroup, LieAlgebra};

impl<G: WilsonGroup, const NS: usize> WilsonDirac<G, NS> {
    /// (1 + σγ_μ) ψ for the projector pairs `p` (σ encoded in the pairs).
    #[inline(always)]
    fn project(pairs: &[super::gamma::ProjPair; 2], s: &Spinor<G::Colour, NS>) -> Spinor<G::Colour, NS> {
        let mut out = Spinor::<G::Colour, NS>::default();
        for p in &pairs[..NS / 2] {
            let h = s.0[p.i].add(&s.0[p.j].mul_phase(p.ki));
            out.0[p.j] = h.mul_phase(p.kj);
            out.0[p.i] = h;
        }
        out
    }

    /// out[x·d + μ] (+)= coef · d/dt Re(Y† H[exp(t X_a) U_μ(x)] X) for every link, adding when
    /// `add`, overwriting otherwise (V·d algebra elements, `[site][μ]`).
    fn hop_force(
        &self,
        g: GaugeRef<'_, G>,
        x: &[Spinor<G::Colour, NS>],
        y: &[Spinor<G::Colour, NS>],
        coef: f64,
        add: bool,
        out: &mut [G::Algebra],
    ) -> Result<(), FermionError> {
        let u = g.links;
        let lat = self.lattice();
        let v = lat.volume();
        check_len("X field", x.len(), v)?;
        check_len("Y field", y.len(), v)?;
        check_len("force", out.len(), v * NS)?;
        let t_max = lat.time_extent() - 1;
        par_fill(out, |l, f| {
            let (site, mu) = (l / NS, l % NS);
            let up = lat.fwd(site, mu);
            // D's forward hop carries (1 − γ_μ), its backward hop (1 + γ_μ)
            let py = Self::project(self.proj(0, 0, mu), &y[site]);
            let py_up = Self::project(self.proj(0, 1, mu), &y[up]);
            let mut m = <G as GaugeGroup>::Mat::default();
            for s in 0..NS {
                m += G::outer(&x[up].0[s], &py.0[s]);
                m += G::outer(&py_up.0[s], &x[site].0[s]);
            }
            let sign = if mu == NS - 1 && lat.time(site) == t_max { -coef } else { coef };
            let d = u[l].re_trace_derivative(&m);
            if add {
                f.axpy(sign, &d);
            } else {
                *f = d.scale(sign);
            }
        });
        Ok(())
    }

    /// The force of S_pf = φ†(D†D)⁻¹φ on every link, from X = (D†D)⁻¹φ (see
    /// [`Self::solve_normal`]) and Y = D X (see [`Self::apply`]): writes F^a_μ(x) =
    /// dS/dt at U_μ(x) → exp(t X_a) U_μ(x) into `out[x·d + μ]` (V·d algebra elements, the layout
    /// of a [`crate::gauge::LinkField`]), overwriting it. HMC kicks P ← P − ε F.
    ///
    /// For any fields X, Y this is the derivative of −2 Re(Y† D X) at fixed X, Y; so for a
    /// Hasenbusch ratio S = φ†D₂(D₁†D₁)⁻¹D₂†φ, with X = (D₁†D₁)⁻¹D₂†φ and Y = D₁X, the force is
    /// `D₁.force(X, Y)` minus `D₂.force(X, φ)` (see [`Self::add_force`]).
    pub fn force(
        &self,
        u: &(impl DiracGauge<G> + ?Sized),
        x: &[Spinor<G::Colour, NS>],
        y: &[Spinor<G::Colour, NS>],
        out: &mut [G::Algebra],
    ) -> Result<(), FermionError> {
        let g = self.gauge(u)?;
        self.hop_force(g, x, y, 2.0 * self.kappa(), false, out)?;
        self.clover_pf_force_add(g, x, y, [1.0, 1.0], 1.0, out);
        Ok(())
    }

    /// out += scale · (the force of [`Self::force`] for X, Y): accumulates several
    /// pseudofermion terms (e.g. Hasenbusch ratios) into one buffer.
    pub fn add_force(
        &self,
        u: &(impl DiracGauge<G> + ?Sized),
        x: &[Spinor<G::Colour, NS>],
        y: &[Spinor<G::Colour, NS>],
        scale: f64,
        out: &mut [G::Algebra],
    ) -> Result<(), FermionError> {
        let g = self.gauge(u)?;
        self.hop_force(g, x, y, 2.0 * self.kappa() * scale, true, out)?;
        self.clover_pf_force_add(g, x, y, [1.0, 1.0], scale, out);
        Ok(())
    }

    /// The force of the even–odd action S = φ_e†(D̂†D̂)⁻¹φ_e from X̂ = (D̂†D̂)⁻¹φ_e (see
    /// [`Self::solve_schur_normal`]) and Ŷ = D̂X̂ (see [`Self::apply_schur`]), both half-lattice
    /// fields (V/2 spinors): for any X̂, Ŷ the derivative of −2 Re(Ŷ† D̂ X̂). Uses `work` for the
    /// full fields of the module docs (so `work` must not hold `x_e` or `y_e`). Writes the V·d
    /// algebra elements into `out` as [`Self::force`] does. With c_sw ≠ 0 the action needs the
    /// clover determinant term too ([`Self::clover_log_det_force`]).
    pub fn force_eo(
        &self,
        u: &(impl DiracGauge<G> + ?Sized),
        x_e: &[Spinor<G::Colour, NS>],
        y_e: &[Spinor<G::Colour, NS>],
        work: &mut SolverWork<Spinor<G::Colour, NS>>,
        out: &mut [G::Algebra],
    ) -> Result<(), FermionError> {
        self.eo_force(u, x_e, y_e, work, None, out)
    }

    /// out += scale · (the force of [`Self::force_eo`] for X̂, Ŷ).
    pub fn add_force_eo(
        &self,
        u: &(impl DiracGauge<G> + ?Sized),
        x_e: &[Spinor<G::Colour, NS>],
        y_e: &[Spinor<G::Colour, NS>],
        scale: f64,
        work: &mut SolverWork<Spinor<G::Colour, NS>>,
        out: &mut [G::Algebra],
    ) -> Result<(), FermionError> {
        self.eo_force(u, x_e, y_e, work, Some(scale), out)
    }

    /// [`Self::force_eo`] (`scale` None) or [`Self::add_force_eo`].
    fn eo_force(
        &self,
        u: &(impl DiracGauge<G> + ?Sized),
        x_e: &[Spinor<G::Colour, NS>],
        y_e: &[Spinor<G::Colour, NS>],
        work: &mut SolverWork<Spinor<G::Colour, NS>>,
        scale: Option<f64>,
        out: &mut [G::Algebra],
    ) -> Result<(), FermionError> {
        let half = self.half_volume()?;
        check_len("even X field", x_e.len(), half)?;
        check_len("even Y field", y_e.len(), half)?;
        work.check(self.volume())?;
        let [x_full, y_full, partners, ..] = &mut work.t;
        let (x_o, y_o) = partners.split_at_mut(half);
        let g = self.gauge(u)?;
        self.eo_force_partners(g, x_e, y_e, x_o, y_o)?;
        self.merge_eo(x_e, x_o, x_full)?;
        self.merge_eo(y_e, y_o, y_full)?;
        let (k, s) = (self.kappa(), scale.unwrap_or(1.0));
        self.hop_force(g, x_full, y_full, 2.0 * k * k * s, scale.is_some(), out)?;
        self.clover_pf_force_add(g, x_full, y_full, [1.0, k * k], s, out);
        Ok(())
    }
}
