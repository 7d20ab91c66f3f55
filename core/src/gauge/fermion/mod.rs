//! Wilson fermions for every gauge group of [`crate::gauge`] (U(1), SU(2), SU(3), SU(N)) in
//! 2D and 4D: spinor fields, the Wilson–Dirac operator with twisted-mass and clover terms,
//! even–odd preconditioning, conjugate-gradient solvers and the pseudofermion forces.
//!
//! # Conventions
//! * The operator, in the hopping-parameter normalisation,
//!   ```text
//!   D ψ(x) = A(x) ψ(x) − κ Σ_μ [ (1 − γ_μ) U_μ(x) ψ(x+μ̂) + (1 + γ_μ) U_μ(x−μ̂)† ψ(x−μ̂) ],
//!   A(x)   = 1 + i·2κμ γ5 + i κ c_sw Σ_{μ<ν} σ_μν F̂_μν(x),
//!   ```
//!   with hopping parameter κ > 0 (bare mass m₀ = 1/(2κ) − d), twisted mass μ ≥ 0 in
//!   lattice units, and clover coefficient c_sw (0 for plain Wilson fermions; see
//!   [`clover`] for σ_μν and F̂_μν). D = A − κH with the hopping term H. The μ = 0 operator
//!   D_0 is γ5-hermitian (γ5 D_0 γ5 = D_0†), so det D_0 is real and D†D = D_0†D_0 + (2κμ)²:
//!   det(D†D) = det(D_0†D_0 + (2κμ)²) is the Nf = 2 twisted-mass weight.
//! * The **last axis is time**, with antiperiodic boundary conditions for the fermions: a hop
//!   across the time boundary (t = T−1 → 0 forward, 0 → T−1 backward) carries a factor −1.
//!   All other axes are periodic. Free-field momenta are p_μ = 2πn/L_μ in space and
//!   p_t = 2π(n + ½)/T in time.
//! * γ matrices: see [`gamma`]. 2D: γ_0 = σ1 (axis 0 = x), γ_1 = σ2 (axis 1 = t), γ5 = σ3.
//!   4D: the DeGrand–Rossi chiral basis with γ5 = γ_0γ_1γ_2γ_3 = diag(1, 1, −1, −1).
//!   The number of spin components NS equals the dimension (2 or 4).
//! * Links are those of a [`crate::gauge::LinkField`], `[site][μ]`, U_μ(x) at `x·d + μ`. An
//!   operator reads them through [`DiracGauge`]: a plain `&[G]` when c_sw = 0, or the
//!   [`CloverGauge`] that [`WilsonDirac::clover_gauge`] computes from them.
//! * The pseudofermion action is S_pf = φ†(D†D)⁻¹φ (or φ_e†(D̂†D̂)⁻¹φ_e even–odd, plus the
//!   clover determinant term −ln det(A_oo†A_oo) when c_sw ≠ 0); forces follow the
//!   coefficient convention of [`crate::gauge::group`]: F^a = d/dt S(exp(t X_a) U)|_{t=0}.
//!
//! # Pieces
//! * [`spinor`]: [`ColourVector`], [`Spinor`], the [`WilsonGroup`] trait, field inner
//!   products, updates and the Gaussian heat-bath fill.
//! * [`gamma`]: the γ matrices and spin projectors.
//! * [`wilson`]: [`WilsonDirac`], the operator D, D†, D†D, γ5, the even–odd Schur complement
//!   D̂ = A_ee − κ² H_eo A_oo⁻¹ H_oe and its source preparation and reconstruction.
//! * [`clover`]: the clover blocks A(x) and their inverses ([`CloverField`]), the determinant
//!   term ln det(A†A) on a parity and its force.
//! * [`mod@cg`]: conjugate gradient with a relative residual target and an iteration cap
//!   ([`CgParams`]), and the operator-level solves in [`WilsonDirac`].
//! * [`lanes`]: the SU(3) 4D hopping term with SIMD across sites (four sites per vector), on
//!   packed fields; the plain Wilson solves run in it where the time extent is a multiple
//!   of 8 (the same operator bits as the site layout).
//! * [`force`]: the pseudofermion force from X = (D†D)⁻¹φ and Y = DX (full lattice), or from
//!   the even–odd solution.
//!
//! No operator application allocates: temporaries are passed in, and solvers take a
//! [`SolverWork`]. Site loops run in fixed chunks, and reductions are compensated and merged
//! in chunk order, so every result is bit-identical for any thread count.
//!
//! # Example: one pseudofermion's action and force
//! ```
//! use latflow_core::gauge::fermion::*;
//! use latflow_core::gauge::{LieAlgebra, LinkField, Su3};
//! use latflow_core::{Lattice, Stream};
//!
//! let lat = Lattice::new(&[4, 4, 4, 4]).unwrap();
//! let d = WilsonDirac::<Su3, 4>::new(&lat, WilsonParams { kappa: 0.12, mu: 0.0, csw: 1.0 }).unwrap();
//! let (v, h) = (lat.volume(), lat.volume() / 2);
//! let u = LinkField::<Su3>::random(4, v, &mut Stream::new(1, 0)).unwrap();
//! // once per gauge field (after every link update)
//! let mut clover = d.new_clover_field().unwrap();
//! let g = d.clover_gauge(u.links(), &mut clover).unwrap();
//! let mut work = SolverWork::new(v);
//! // heat bath: φ_e = D̂† η_e with Gaussian η_e
//! let zero = vec![SpinorOf::<Su3, 4>::default(); h];
//! let (mut eta, mut phi, mut tmp) = (zero.clone(), zero.clone(), zero.clone());
//! fill_gaussian(&mut eta, &mut Stream::new(2, 0)).unwrap();
//! d.apply_schur_dagger(&g, &eta, &mut tmp, &mut phi).unwrap();
//! // action φ_e†(D̂†D̂)⁻¹φ_e − ln det(A_oo†A_oo) and its force
//! let mut x = zero.clone();
//! let params = CgParams::new(1e-10, 1000).unwrap();
//! let report = d.solve_schur_normal(&g, &phi, &mut x, &mut work, &params).unwrap();
//! assert!(report.residual <= 1e-10);
//! let action = re_dot(&phi, &x) - d.clover_log_det(&g, Some(1)).unwrap();
//! let mut y = zero.clone();
//! d.apply_schur(&g, &x, &mut tmp, &mut y).unwrap();
//! let mut force = vec![LieAlgebra::zero(); v * 4];
//! let mut det_force = force.clone();
//! d.force_eo(&g, &x, &y, &mut work, &mut force).unwrap();
//! d.clover_log_det_force(&g, Some(1), &mut det_force).unwrap();
//! for (f, df) in force.iter_mut().zip(&det_force) {
//!     f.axpy(1.0, df);
//! }
//! assert!(action.is_finite());
//! ```

pub mod cg;
pub mod clover;
pub mod force;
pub mod gamma;
mod hop_su3;
pub mod lanczos;
pub mod lanes;
pub mod multishift;
pub mod rational;
pub mod spinor;
pub mod wilson;

pub use cg::{cg, CgParams, CgReport, CgWork, SolverWork};
pub use multishift::{multi_shift_cg, MultiShiftWork};
pub use clover::{CloverField, CloverGauge, DiracGauge, HopCached};
pub use spinor::{
    axpy, dot, fill_gaussian, norm2, re_dot, xpay, Colour, ColourVector, HopLink, Spinor, SpinorOf, U1Phase, WilsonGroup,
};
pub use wilson::{SolverLayout, WilsonDirac, WilsonParams};

/// Why a fermion operator could not be built or applied, or a solve failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FermionError {
    /// κ must be finite and > 0.
    #[error("kappa: the hopping parameter must be a finite number > 0, got {0}")]
    Kappa(f64),
    /// μ must be finite and ≥ 0.
    #[error("mu: the twisted mass must be a finite number ≥ 0, got {0}")]
    Mu(f64),
    /// The solver tolerance must be finite and > 0.
    #[error("solver tolerance must be a finite number > 0, got {0}")]
    Tolerance(f64),
    /// The iteration cap must be ≥ 1.
    #[error("solver iteration cap must be at least 1, got {0}")]
    MaxIter(usize),
    /// Wilson fermions are implemented in 2D (2 spin components) and 4D (4).
    #[error("Wilson fermions need a 2D lattice with 2 spin components or a 4D lattice with 4; got a {dim}D lattice and {ns} spin components")]
    Dimension { dim: usize, ns: usize },
    /// Even–odd preconditioning needs every extent even.
    #[error("even-odd preconditioning needs every lattice extent even, but extent {extent} along axis {axis} is odd")]
    OddExtent { axis: usize, extent: usize },
    /// A field has the wrong length.
    #[error("{what}: expected {expected} elements, got {got}")]
    Length { what: &'static str, expected: usize, got: usize },
    /// c_sw must be finite.
    #[error("csw: the clover coefficient must be a finite number, got {0}")]
    Csw(f64),
    /// The clover blocks (NS/2)·N are larger than supported.
    #[error("a clover term with chirality blocks of {block}×{block} is not supported (at most {max}×{max})")]
    CloverBlock { block: usize, max: usize },
    /// An operator with c_sw ≠ 0 was applied without the clover field of its links.
    #[error("this operator has a clover term (csw ≠ 0): apply it to the CloverGauge of the links (WilsonDirac::clover_gauge), not to the bare links")]
    MissingClover,
    /// A clover field made for other parameters or another lattice.
    #[error(
        "the clover field was computed for other parameters (kappa, mu, csw) or another lattice than this operator's"
    )]
    CloverMismatch,
    /// A(x) has no inverse.
    #[error("the clover term is singular at site {site}: A(x) has no inverse")]
    SingularClover { site: usize },
    /// A shift of a multi-shift solve must be finite and ≥ 0.
    #[error("shift: the shifts of a multi-shift solve must be finite numbers ≥ 0, got {0}")]
    Shift(f64),
    /// A Lanczos eigenvalue estimate could not run (a zero or non-finite start, a non-finite
    /// operator).
    #[error("Lanczos: {0}")]
    Lanczos(String),
    /// CG did not reach its target within the iteration cap (or broke down).
    #[error("CG did not converge: relative residual {residual:e} after {iterations} iterations, target {target:e}")]
    NotConverged { iterations: usize, residual: f64, target: f64 },
}

#[cfg(test)]
mod dense;
#[cfg(test)]
mod tests;
