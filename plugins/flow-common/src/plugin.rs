//! The `latflow_core::abi::Model` glue that every candle flow plugin writes the same way.
//!
//! [`impl_flow_model!`](crate::impl_flow_model) implements `Model` for a plugin's model type
//! by forwarding each call, under `latflow_core::abi::guard` (named after the trait method),
//! to inherent methods of the type that work on plain slices and `Vec`s:
//!
//! | `Model` method | inherent method it calls |
//! | --- | --- |
//! | `name` | — (the `$name` expression) |
//! | `layout` | — (clones the field `layout`) |
//! | `architecture` | — (`self.cfg.arch.to_json()`) |
//! | `set_threads` | `set_thread_count(u32) -> Result<(), PluginError>` |
//! | `sample` | `sample_with(usize, &mut Stream) -> Result<(Vec<f64>, Vec<f64>), PluginError>` |
//! | `log_prob` | `log_prob_vec(&[f64]) -> Result<Vec<f64>, PluginError>` |
//! | `train_begin` | `train_begin_with(&TrainSettings) -> Result<(), PluginError>` |
//! | `train_sample` | `train_sample_with(&mut Stream) -> Result<(Vec<f64>, Vec<f64>), PluginError>` |
//! | `train_step` | `train_step_with(&[f64], &[f64]) -> Result<TrainMetrics, PluginError>` |
//! | `save` | `save_bytes(bool) -> Result<Vec<u8>, PluginError>` |
//! | `load` | `load_bytes(&[u8]) -> Result<(), PluginError>` |
//! | `init_from` | `init_from_bytes(&[u8]) -> Result<usize, PluginError>` (the count is dropped) |
//! | `to_latent` | `to_latent_with(&[f64]) -> Result<(Vec<f64>, Vec<f64>), PluginError>` |
//! | `from_latent` | `from_latent_with(&[f64]) -> Result<(Vec<f64>, Vec<f64>), PluginError>` |
//!
//! The random streams are the host's: `sample` and `train_sample` resume the caller's
//! `RngState` and write the advanced state back, so draws continue exactly where they left off.

#[doc(hidden)]
pub use abi_stable;
#[doc(hidden)]
pub use latflow_core;

/// Implements `latflow_core::abi::Model` for `$ty` (named `$name`, an expression convertible to
/// `RString`) by forwarding to its inherent methods; see [the module](crate::plugin) for the
/// methods and fields `$ty` must have.
#[macro_export]
macro_rules! impl_flow_model {
    ($ty:ty, $name:expr) => {
        impl $crate::plugin::latflow_core::abi::Model for $ty {
            fn name(&self) -> $crate::plugin::abi_stable::std_types::RString {
                $name.into()
            }

            fn layout(&self) -> $crate::plugin::latflow_core::layout::FieldLayout {
                self.layout.clone()
            }

            fn architecture(&self) -> $crate::plugin::abi_stable::std_types::RString {
                self.cfg.arch.to_json().into()
            }

            fn set_threads(
                &mut self,
                threads: u32,
            ) -> $crate::plugin::abi_stable::std_types::RResult<(), $crate::plugin::latflow_core::abi::PluginError> {
                $crate::plugin::latflow_core::abi::guard("set_threads", || self.set_thread_count(threads))
            }

            fn sample(
                &self,
                n: u32,
                rng: &mut $crate::plugin::latflow_core::RngState,
            ) -> $crate::plugin::abi_stable::std_types::RResult<
                $crate::plugin::latflow_core::abi::Proposals,
                $crate::plugin::latflow_core::abi::PluginError,
            > {
                $crate::plugin::latflow_core::abi::guard("sample", || {
                    let mut s = $crate::plugin::latflow_core::Stream::from_state(rng);
                    let (configs, log_q) = self.sample_with(n as usize, &mut s)?;
                    *rng = s.state();
                    Ok($crate::plugin::latflow_core::abi::Proposals { configs: configs.into(), log_q: log_q.into() })
                })
            }

            fn log_prob(
                &self,
                configs: $crate::plugin::abi_stable::std_types::RSlice<'_, f64>,
            ) -> $crate::plugin::abi_stable::std_types::RResult<
                $crate::plugin::abi_stable::std_types::RVec<f64>,
                $crate::plugin::latflow_core::abi::PluginError,
            > {
                $crate::plugin::latflow_core::abi::guard("log_prob", || Ok(self.log_prob_vec(configs.as_slice())?.into()))
            }

            fn train_begin(
                &mut self,
                settings: &$crate::plugin::latflow_core::abi::TrainSettings,
            ) -> $crate::plugin::abi_stable::std_types::RResult<(), $crate::plugin::latflow_core::abi::PluginError> {
                $crate::plugin::latflow_core::abi::guard("train_begin", || self.train_begin_with(settings))
            }

            fn train_sample(
                &mut self,
                rng: &mut $crate::plugin::latflow_core::RngState,
            ) -> $crate::plugin::abi_stable::std_types::RResult<
                $crate::plugin::latflow_core::abi::Proposals,
                $crate::plugin::latflow_core::abi::PluginError,
            > {
                $crate::plugin::latflow_core::abi::guard("train_sample", || {
                    let mut s = $crate::plugin::latflow_core::Stream::from_state(rng);
                    let (configs, log_q) = self.train_sample_with(&mut s)?;
                    *rng = s.state();
                    Ok($crate::plugin::latflow_core::abi::Proposals { configs: configs.into(), log_q: log_q.into() })
                })
            }

            fn train_step(
                &mut self,
                actions: $crate::plugin::abi_stable::std_types::RSlice<'_, f64>,
                grad: $crate::plugin::abi_stable::std_types::RSlice<'_, f64>,
            ) -> $crate::plugin::abi_stable::std_types::RResult<
                $crate::plugin::latflow_core::abi::TrainMetrics,
                $crate::plugin::latflow_core::abi::PluginError,
            > {
                $crate::plugin::latflow_core::abi::guard("train_step", || {
                    self.train_step_with(actions.as_slice(), grad.as_slice())
                })
            }

            fn save(
                &self,
                with_optimizer: bool,
            ) -> $crate::plugin::abi_stable::std_types::RResult<
                $crate::plugin::abi_stable::std_types::RVec<u8>,
                $crate::plugin::latflow_core::abi::PluginError,
            > {
                $crate::plugin::latflow_core::abi::guard("save", || Ok(self.save_bytes(with_optimizer)?.into()))
            }

            fn load(
                &mut self,
                bytes: $crate::plugin::abi_stable::std_types::RSlice<'_, u8>,
            ) -> $crate::plugin::abi_stable::std_types::RResult<(), $crate::plugin::latflow_core::abi::PluginError> {
                $crate::plugin::latflow_core::abi::guard("load", || self.load_bytes(bytes.as_slice()))
            }

            fn init_from(
                &mut self,
                bytes: $crate::plugin::abi_stable::std_types::RSlice<'_, u8>,
            ) -> $crate::plugin::abi_stable::std_types::RResult<(), $crate::plugin::latflow_core::abi::PluginError> {
                $crate::plugin::latflow_core::abi::guard("init_from", || {
                    self.init_from_bytes(bytes.as_slice()).map(|_| ())
                })
            }

            fn to_latent(
                &self,
                configs: $crate::plugin::abi_stable::std_types::RSlice<'_, f64>,
            ) -> $crate::plugin::abi_stable::std_types::RResult<
                $crate::plugin::latflow_core::abi::Proposals,
                $crate::plugin::latflow_core::abi::PluginError,
            > {
                $crate::plugin::latflow_core::abi::guard("to_latent", || {
                    let (latent, log_q) = self.to_latent_with(configs.as_slice())?;
                    Ok($crate::plugin::latflow_core::abi::Proposals { configs: latent.into(), log_q: log_q.into() })
                })
            }

            fn from_latent(
                &self,
                latent: $crate::plugin::abi_stable::std_types::RSlice<'_, f64>,
            ) -> $crate::plugin::abi_stable::std_types::RResult<
                $crate::plugin::latflow_core::abi::Proposals,
                $crate::plugin::latflow_core::abi::PluginError,
            > {
                $crate::plugin::latflow_core::abi::guard("from_latent", || {
                    let (configs, log_q) = self.from_latent_with(latent.as_slice())?;
                    Ok($crate::plugin::latflow_core::abi::Proposals { configs: configs.into(), log_q: log_q.into() })
                })
            }

            fn train_gradient(
                &mut self,
                actions: $crate::plugin::abi_stable::std_types::RSlice<'_, f64>,
                grad: $crate::plugin::abi_stable::std_types::RSlice<'_, f64>,
            ) -> $crate::plugin::abi_stable::std_types::RResult<
                $crate::plugin::latflow_core::abi::TrainGradient,
                $crate::plugin::latflow_core::abi::PluginError,
            > {
                $crate::plugin::latflow_core::abi::guard("train_gradient", || {
                    self.train_gradient_with(actions.as_slice(), grad.as_slice())
                })
            }

            fn train_apply(
                &mut self,
                gradient: $crate::plugin::abi_stable::std_types::RSlice<'_, f64>,
                loss: f64,
            ) -> $crate::plugin::abi_stable::std_types::RResult<
                $crate::plugin::latflow_core::abi::TrainMetrics,
                $crate::plugin::latflow_core::abi::PluginError,
            > {
                $crate::plugin::latflow_core::abi::guard("train_apply", || {
                    self.train_apply_with(gradient.as_slice(), loss)
                })
            }
        }
    };
}
