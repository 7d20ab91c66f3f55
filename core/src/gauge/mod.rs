//! Gauge fields for any plugin with link variables: complex numbers, SU(N) and U(1) groups,
//! their Lie algebras and exact exponential maps, link fields with plaquettes, staples and
//! rectangles, deterministic parallel loops and random fills, and the HMC field space of
//! group-valued links.
//!
//! # Pieces
//! * [`Complex`]: a `#[repr(C)]` (re, im) pair.
//! * [`Matrix<N>`]: N×N complex matrices, row-major, whose memory is the flat layout of
//!   `ElementKind::ComplexMatrix { n: N }` (2N² reals, row-major, (re, im) interleaved).
//!   [`Su2`] and [`Su3`] are `Matrix<2>` and `Matrix<3>`.
//! * [`GaugeGroup`] and [`LieAlgebra`]: what fields, loops and HMC are generic over. Implemented
//!   by [`Su2`] (closed-form exponential), [`Su3`] (Cayley–Hamilton exponential after
//!   Morningstar–Peardon), and [`U1Angle`] (U(1) with the angle as storage). The algebra of
//!   SU(N) is [`SuAlg<N>`] with generators T^a, Tr(T^a T^b) = ½δ^{ab} (Pauli/Gell-Mann order);
//!   momenta have N(0, 1) coefficients and kinetic energy ½ Σ_a (p^a)² = −Tr P².
//!   [`SuN<N>`] is SU(N) for any N, with [`Matrix::exp_taylor`] (scaling and squaring) as its
//!   exponential.
//! * [`LinkField`] and the loop functions [`plaquette`], [`staple`], [`rectangle`],
//!   [`rectangle_staple`], [`plaquette_sum`], [`mean_plaquette`], [`rectangle_sum`],
//!   [`gauge_transform`], all generic over the group and over [`Neighbours`].
//! * [`parallel`]: fixed-chunk fills and compensated reductions, and [`fill_random`], a
//!   parallel random fill that gives the same bits for any thread count.
//! * [`LinkSpace`]: `hmc::FieldSpace` for links in any [`GaugeGroup`]; [`FlatLinkSpace`], the
//!   same on a plugin's flat configuration buffer, viewed as links through [`flat`] (the
//!   gauge types are `bytemuck::Pod`: their memory is the flat layout).
//! * [`heatbath`]: the Cabibbo–Marinari heat-bath ([`heatbath_sweep`], Kennedy–Pendleton
//!   SU(2) draws) and overrelaxation ([`overrelax_sweep`]) of the Wilson action, for every
//!   [`HeatbathGroup`] (SU(2), SU(3), SU(N)).
//! * [`gradflow`]: the Wilson (and Symanzik) gradient flow with Lüscher's RK3 integrator,
//!   clover E and Q, and the t0 / w0 scale conditions.
//! * [`domain`]: a lattice split over ranks (slabs with halos), and the HMC field space and
//!   Wilson action on it; see the next section.
//! * [`fermion`]: Wilson fermions (twisted mass, clover, even–odd preconditioning, CG, the
//!   pseudofermion forces) for every [`fermion::WilsonGroup`], in 2D and 4D; it follows the
//!   plan of the next section.
//!
//! # Neighbour access and domain decomposition
//! Physics kernels never compute global site indices. They reach x ± μ̂ through the
//! [`Neighbours`] trait (a storage index for a site's neighbour), and whole fields move with
//! [`Lattice::shift_field`](crate::lattice::Lattice::shift_field) (Grid's `Cshift`:
//! `out[x] = src[x ± μ̂]`). On one rank a [`Lattice`](crate::lattice::Lattice) is the domain and
//! its periodic tables are the neighbours. [`domain::Domain`] splits a lattice along axis 0
//! over the ranks of a job: it implements [`Neighbours`] for its owned sites and for the halo
//! slices stored after them, [`domain::Domain::exchange`] fills the halos from the neighbouring
//! ranks (two paired messages through [`crate::comm`]), and [`domain::Domain::sum`] reduces in
//! rank order. So [`plaquette`], [`staple`] and the rest run unchanged on a slab, and
//! [`domain::DomainLinkSpace`] with [`domain::DomainWilson`] runs core's HMC on it with the
//! link fields of one rank, bit for bit. Splitting further axes needs only a `Domain` with
//! more halo faces (and the edges that a staple's diagonal step x + μ̂ − ν̂ reaches): kernels
//! do not change.
//!
//! # What a fermion operator needs on a decomposed lattice
//! The Wilson operator below reads ψ(x ± μ̂) and U_μ(x − μ̂) through [`Neighbours`] already, so on
//! a [`domain::Domain`] it needs: spinor fields stored with the same halo slices, a halo
//! exchange of ψ before every application (in even/odd preconditioning, of one parity only:
//! half the bytes), the gauge halo once per trajectory step (the drift already refreshes it),
//! the CG's inner products as [`domain::Domain::sum`] (one reduction per iteration, whose
//! latency then bounds the solver at many ranks), and pseudofermion refreshes drawn with
//! [`parallel::fill_random_part`]. Overlapping the exchange with the interior sites is the next
//! step for speed, not for correctness.
//!
//! # What a fermion operator needs next
//! A Wilson (or clover) operator D ψ(x) = ψ(x) − κ Σ_μ [(1 − γ_μ) U_μ(x) ψ(x+μ̂) +
//! (1 + γ_μ) U_μ(x−μ̂)† ψ(x−μ̂)] needs: a spinor site type (`[Complex; 4N]` or spin × colour
//! arrays, the flat layout of `ElementKind::ComplexVector`), colour matrix × vector products
//! ([`Matrix`] has the pieces), the γ-matrix projections, the same [`Neighbours`] access for
//! ψ(x ± μ̂) (halo of spinors on a decomposed lattice), the even/odd site lists of
//! [`Lattice::sites_of_parity`](crate::lattice::Lattice::sites_of_parity) and
//! [`Lattice::eo_index`](crate::lattice::Lattice::eo_index) for even/odd preconditioning, and
//! [`fill_random`] for Gaussian pseudofermion refreshes. Its force is the outer product
//! ψ ⊗ χ† projected with [`Matrix::traceless_antihermitian`], in the coefficient convention
//! of [`group`].

mod algebra;
pub mod domain;
mod complex;
mod field;
pub mod fermion;
pub mod flat;
pub mod gradflow;
pub mod group;
pub mod heatbath;
mod matrix;
pub mod parallel;
mod space;
pub mod su2;
pub mod su3;
mod sun;

pub use algebra::SuAlg;
pub use complex::Complex;
pub use field::{
    gauge_transform, link_index, mean_plaquette, path, planes, plaquette, plaquette_sum, rectangle, rectangle_staple,
    rectangle_sum, staple, u1_geometric_charge, FieldError, LinkField, Links, Neighbours, Sites, Step,
};
pub use gradflow::{FlowGroup, FlowOptions, FlowPoint, FlowScheme};
pub use group::{beta_parameter, check_beta, gauge_lattice, set_beta_parameter, wrap_angle, GaugeGroup, LieAlgebra, U1Angle};
pub use heatbath::{heatbath_sweep, heatbath_sweep_split, overrelax_sweep, overrelax_sweep_split, HeatbathError, HeatbathGroup};
pub use matrix::Matrix;
pub use parallel::{fill_random, RngFillError};
pub use flat::FlatViewError;
pub use space::{FlatLinkSpace, LinkSpace};
pub use su2::Su2;
pub use su3::Su3;
pub use sun::SuN;

#[cfg(test)]
mod tests;
