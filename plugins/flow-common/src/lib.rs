//! Shared pieces of latflow's candle model plugins (`flow-scalar`, `flow-u1`, …): a plain
//! library, linked statically into each plugin.
//!
//! * [`kernels`]: fused CPU periodic convolutions as candle custom ops with hand-written
//!   backward passes (gather [`kernels::Table`]s, activations fused, AVX2+FMA when available,
//!   with explicit-register f32 kernels for the flows' common shapes in `kernels/avx2.rs`,
//!   results independent of the thread count), plus the [`kernels::Real`] trait and helpers for
//!   a plugin's own element-wise custom ops.
//! * [`periodic`]: gather tables of periodic convolutions on the full lattice or on any subset
//!   of sites, in any dimension.
//! * [`tensor`]: f64 ↔ tensor conversions and the generic (any-device) convolution that the
//!   fused kernels are tested against.
//! * [`optim`]: Adam(W) on the host in f64 with serialisable state, learning-rate schedules,
//!   gradient clipping and validation of the host's `TrainSettings`.
//! * [`config`]: the `[model]` enums every plugin shares (activation, dtype, device).
//! * [`spline`]: the rational-quadratic spline core (knots, bin search, the bin map and its
//!   inverse) under both the interval splines and the circular ones; [`spline_op`] is the
//!   whole spline, from the conditioner's raw parameters, as one fused CPU op with a
//!   hand-written backward pass.
//! * [`plugin`]: [`impl_flow_model!`], the `Model` trait glue forwarding to a plugin's
//!   inherent methods.
//! * [`io`]: safetensors weights with latflow metadata, deterministic bytes, and parsing that
//!   refuses damaged files with clear errors.
//! * [`net`]: [`net::ConvNet`], a flow's conditioner parameters (initialisation, values and
//!   gradients as f64) and their convolution stacks in both formulations.
//! * [`model`]: [`model::ModelState`], the thread pool, optimiser and training batch of a
//!   model, with the training protocol's flow-independent steps.
//! * `testing` (feature `testing`, for the plugins' tests): shared test helpers and contract
//!   checks that drive a model through the `Model` trait.
//! * [`export`]: [`impl_flow_accessors!`] (a model's shared inherent methods) and
//!   [`export_flow_plugin!`] (the plugin's root module).

pub mod config;
pub mod export;
pub mod io;
pub mod kernels;
pub mod model;
pub mod net;
pub mod optim;
pub mod periodic;
pub mod plugin;
pub mod spline;
pub mod spline_op;
pub mod stripes;
pub mod tensor;
#[cfg(target_arch = "x86_64")]
pub mod vmath;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// Re-exported for the [`dispatch_float!`] macro.
pub use candle_core;

pub use tensor::{tensor_from_f64, tensor_to_f64};
