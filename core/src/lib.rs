//! `latflow-core`: the stable plugin interface of latflow and everything generic.
//!
//! * [`abi`]: the ABI-stable boundary (root module, theory trait object, plain-data types).
//! * [`layout`]: how a plugin's fields map onto flat `f64` buffers.
//! * [`gauge`]: complex numbers, SU(N) and U(1) links, exponential maps, staples, plaquettes,
//!   deterministic parallel fills, and the HMC field space of group-valued links.
//! * [`lattice`]: periodic hypercubic geometry with neighbour tables and parity.
//! * [`rng`]: counter-based, explicitly seeded random streams.
//! * [`streams`]: the one registry of random-stream purposes and their ids.
//! * [`sum`]: compensated summation for actions.
//! * [`hmc`]: field spaces, actions, nested integrators, HMC trajectories and the shared
//!   Metropolis test. Plugins monomorphise these generic pieces inside themselves.
//! * [`workers`]: a plugin's optional private thread pool.
//!
//! Nothing here opens shared libraries or files: that is the host's job.

pub mod abi;
pub mod gauge;
pub mod hmc;
pub mod lattice;
pub mod layout;
pub mod rng;
pub mod streams;
pub mod sum;
pub mod workers;

pub use abi::{PluginError, ErrorKind};
pub use lattice::Lattice;
pub use layout::FieldLayout;
pub use rng::{RngState, Stream};
pub use workers::Workers;
