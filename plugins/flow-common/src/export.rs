//! The parts of a flow model plugin that do not depend on its flow: the inherent methods that
//! read the shared state ([`impl_flow_accessors!`](crate::impl_flow_accessors)) and the
//! plugin's root module ([`export_flow_plugin!`](crate::export_flow_plugin)).

#[doc(hidden)]
pub use abi_stable;
#[doc(hidden)]
pub use latflow_core;

/// Implements the inherent methods that every flow model has, for a type `$ty` with the fields
/// `cfg: ModelConfig<Architecture>` (flow-common's [`ModelConfig`](crate::config::ModelConfig)),
/// `flow` (whose field `net` is a [`ConvNet`](crate::net::ConvNet)) and `state`
/// ([`ModelState`](crate::model::ModelState)), named `$name` in saved weights:
///
/// * `into_box(self) -> ModelBox`: the ABI-stable trait object (needs `Model`, e.g. from
///   [`impl_flow_model!`](crate::impl_flow_model));
/// * `arch(&self) -> &$arch`: the architecture record (also in saved weights);
/// * `optimizer_steps(&self) -> u64`: completed optimiser steps;
/// * `parameter_names(&self) -> Vec<String>`, `parameter_count(&self) -> usize`: the
///   parameters' names in order, and the number of trainable reals;
/// * `set_thread_count(&mut self, u32)`: the model's own rayon pool (0: the global pool);
/// * `save_bytes(&self, with_optimizer: bool)`: the weights (and optionally Adam's state) as
///   deterministic safetensors bytes, with the plugin's name, crate version and architecture.
#[macro_export]
macro_rules! impl_flow_accessors {
    ($ty:ty, $name:expr, $arch:ty) => {
        impl $ty {
            /// Wraps the model as an ABI-stable trait object.
            pub fn into_box(self) -> $crate::export::latflow_core::abi::ModelBox {
                $crate::export::latflow_core::abi::Model_TO::from_value(
                    self,
                    $crate::export::abi_stable::sabi_trait::TD_Opaque,
                )
            }

            /// The architecture record (also in saved weights).
            pub fn arch(&self) -> &$arch {
                &self.cfg.arch
            }

            /// Completed optimiser steps.
            pub fn optimizer_steps(&self) -> u64 {
                self.state.adam.step
            }

            /// The parameters' names, in order.
            pub fn parameter_names(&self) -> Vec<String> {
                self.flow.net.names()
            }

            /// Number of trainable reals.
            pub fn parameter_count(&self) -> usize {
                self.flow.net.sizes().iter().sum()
            }

            /// Gives the model its own rayon pool of `threads` threads (0: the global pool).
            pub fn set_thread_count(&mut self, threads: u32) -> Result<(), $crate::export::latflow_core::PluginError> {
                self.state.set_threads(threads)
            }

            /// The weights (and optionally Adam's state) as safetensors bytes, deterministic.
            pub fn save_bytes(
                &self,
                with_optimizer: bool,
            ) -> Result<Vec<u8>, $crate::export::latflow_core::PluginError> {
                let net = &self.flow.net;
                let f64_storage = net.dtype == $crate::candle_core::DType::F64;
                let adam = if with_optimizer { Some(&self.state.adam) } else { None };
                $crate::io::save_weights(
                    &net.vars,
                    f64_storage,
                    adam,
                    $name,
                    env!("CARGO_PKG_VERSION"),
                    self.cfg.arch.to_json(),
                )
            }
        }
    };
}

/// Exports a model plugin's root module (`get_library`): its `info` (name `$name`, the crate's
/// version, kind `Model`, `$description`, and the provided `keys: …`, `layouts: …` and devices
/// (`cuda` with the crate's `cuda` feature)), a `new_theory` that refuses (a model plugin
/// provides no theory), and `new_model`, which builds `$ty` with
/// `$ty::from_json(&str, &FieldLayout) -> Result<$ty, PluginError>` and boxes it. Every entry
/// point runs under `guard`.
#[macro_export]
macro_rules! export_flow_plugin {
    ($ty:ty, $name:expr, $description:expr, keys: $keys:literal, layouts: $layouts:literal $(,)?) => {
        extern "C" fn info() -> $crate::export::latflow_core::abi::PluginInfo {
            use $crate::export::abi_stable::std_types::RString;
            $crate::export::latflow_core::abi::PluginInfo {
                name: $name.into(),
                version: env!("CARGO_PKG_VERSION").into(),
                kind: $crate::export::latflow_core::abi::PluginKind::Model,
                description: RString::from($description),
                provides: vec![
                    RString::from(concat!("keys: ", $keys)),
                    RString::from(concat!("layouts: ", $layouts)),
                    RString::from(if cfg!(feature = "cuda") { "devices: cpu cuda" } else { "devices: cpu" }),
                ]
                .into(),
            }
        }

        extern "C" fn new_theory(
            _config: $crate::export::abi_stable::std_types::RStr<'_>,
        ) -> $crate::export::abi_stable::std_types::RResult<
            $crate::export::latflow_core::abi::TheoryBox,
            $crate::export::latflow_core::abi::PluginError,
        > {
            $crate::export::latflow_core::abi::guard("new_theory", || {
                Err($crate::export::latflow_core::abi::PluginError::unsupported(format!(
                    "{} is a model plugin: it provides no theory (use it under [model])",
                    $name
                )))
            })
        }

        extern "C" fn new_model(
            config: $crate::export::abi_stable::std_types::RStr<'_>,
            layout: &$crate::export::latflow_core::layout::FieldLayout,
        ) -> $crate::export::abi_stable::std_types::RResult<
            $crate::export::latflow_core::abi::ModelBox,
            $crate::export::latflow_core::abi::PluginError,
        > {
            $crate::export::latflow_core::abi::guard("new_model", || {
                Ok(<$ty>::from_json(config.as_str(), layout)?.into_box())
            })
        }

        /// The plugin's root module.
        #[$crate::export::abi_stable::export_root_module]
        pub fn get_library() -> $crate::export::latflow_core::abi::PluginModRef {
            use $crate::export::abi_stable::prefix_type::PrefixTypeTrait;
            $crate::export::latflow_core::abi::PluginMod { info, new_theory, new_model: Some(new_model) }
                .leak_into_prefix()
        }
    };
}
