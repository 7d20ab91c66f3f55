//! `latflow-core`: the stable plugin interface of latflow and everything generic.
//!
//! * [`abi`]: the ABI-stable boundary (root module, theory trait object, plain-data types).
//! * [`layout`]: how a plugin's fields map onto flat `f64` buffers.
//! * [`gauge`]: complex numbers, SU(N) and U(1) links, exponential maps, staples, plaquettes,
//!   deterministic parallel fills, and the HMC field space of group-valued links.
//! * [`comm`]: the communicator between the ranks of a job (ABI-stable; one rank, threads
//!   for tests, MPI in the host).
//! * [`lattice`]: periodic hypercubic geometry with neighbour tables and parity.
//! * [`rng`]: counter-based, explicitly seeded random streams.
//! * [`streams`]: the one registry of random-stream purposes and their ids.
//! * [`simd`]: which SIMD instruction sets the CPU runs (for kernels with several variants).
//! * [`sum`]: compensated summation for actions.
//! * [`hmc`]: field spaces, composable fallible actions (terms per time-scale level), nested
//!   integrators with a scheme per level, HMC trajectories and the shared Metropolis test.
//!   Plugins monomorphise these generic pieces inside themselves.
//! * [`sdk`]: the theory SDK — the [`sdk::Physics`] trait a plugin implements, the guarded
//!   adapter to the ABI, and [`export_theory!`].
//! * [`testkit`]: contract checks of a [`sdk::Physics`] in one line each (force against finite
//!   differences, gauge invariance, reversibility, ⟨e^{−ΔH}⟩ = 1, observables).
//! * [`open_enum`]: the extensible code enums of the ABI.
//! * [`workers`]: a plugin's optional private thread pool.
//!
//! Nothing here opens shared libraries or files: that is the host's job.

pub mod abi;
pub mod comm;
pub mod gauge;
pub mod hmc;
pub mod lattice;
pub mod layout;
pub mod open_enum;
pub mod par;
pub mod rng;
pub mod sdk;
pub mod simd;
pub mod streams;
pub mod sum;
pub mod testkit;
pub mod workers;

/// abi_stable, re-exported so that plugins use exactly core's version without pinning it.
pub use abi_stable;

pub use abi::{ErrorKind, PluginError};
pub use lattice::Lattice;
pub use layout::FieldLayout;
pub use rng::{RngState, Stream};
pub use workers::Workers;

/// The version of latflow-core (the plugin interface version) this crate was built as. A
/// plugin built against another minor version (0.x) is incompatible: the host's message is
/// "rebuild the plugin against latflow-core {CORE_VERSION}".
pub const CORE_VERSION: &str = env!("CARGO_PKG_VERSION");
