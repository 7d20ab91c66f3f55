//! The `latflow` host: run cards, plugin loading, Markov chains, HDF5 ensembles, checkpoints
//! and analysis. The binary is a thin wrapper around [`cli::main`].

pub mod analyze;
pub mod bench;
pub mod card;
pub mod chain;
pub mod diagnostics;
pub mod checkpoint;
pub mod cli;
pub mod ensemble;
pub mod ildg;
pub mod flow_cmd;
pub mod fuzzing;
pub mod inspect;
pub mod job;
pub mod mpi;
pub mod plot;
pub mod plugin;
pub mod replica;
pub mod run;
pub mod sampler;
pub mod scaling;
pub mod setup;
pub mod steps;
pub mod streams;
pub mod train;
