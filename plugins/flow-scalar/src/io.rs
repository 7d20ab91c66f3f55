//! Weights as safetensors bytes.
//!
//! Tensors: every parameter under its name (`layers.{ℓ}.conv{j}.weight|bias`, in the model's
//! dtype) and, when saved with the optimiser, `adam.m.<name>` and `adam.v.<name>` (f64).
//! Metadata: `latflow.format` = "1", `latflow.plugin` = "flow-scalar", `latflow.plugin_version`,
//! `latflow.architecture` (JSON of [`crate::config::Architecture`]) and, with the optimiser,
//! `latflow.adam.step` (completed steps).

use std::borrow::Cow;
use std::collections::HashMap;

use latflow_core::abi::PluginError;
use safetensors::tensor::{Dtype, SafeTensors, View};

pub const FORMAT: &str = "1";
pub const KEY_FORMAT: &str = "latflow.format";
pub const KEY_ARCH: &str = "latflow.architecture";
pub const KEY_PLUGIN: &str = "latflow.plugin";
pub const KEY_VERSION: &str = "latflow.plugin_version";
pub const KEY_STEP: &str = "latflow.adam.step";

/// One tensor to write: raw little-endian bytes.
pub struct RawTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl RawTensor {
    /// Values written as `dtype` (F32 rounds, F64 is exact).
    pub fn new(values: &[f64], shape: Vec<usize>, f64_storage: bool) -> Self {
        let data = if f64_storage {
            values.iter().flat_map(|x| x.to_le_bytes()).collect()
        } else {
            values.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect()
        };
        Self { dtype: if f64_storage { Dtype::F64 } else { Dtype::F32 }, shape, data }
    }
}

impl View for &RawTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Serialises named tensors with metadata. The header is rewritten with its keys sorted, so the
/// same model always gives the same bytes (safetensors writes the metadata map in hash order).
pub fn serialize(tensors: &[(String, RawTensor)], metadata: HashMap<String, String>) -> Result<Vec<u8>, PluginError> {
    let internal = |m: String| PluginError::new(latflow_core::ErrorKind::Internal, m);
    let mut bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata))
        .map_err(|e| internal(format!("writing safetensors: {e}")))?;
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8-byte header length")) as usize;
    let header: serde_json::Value =
        serde_json::from_slice(&bytes[8..8 + n]).map_err(|e| internal(format!("re-reading the header: {e}")))?;
    let mut canonical = String::with_capacity(n);
    write_sorted(&header, &mut canonical);
    if canonical.len() > n {
        return Err(internal("canonical safetensors header is longer than the original".into()));
    }
    bytes[8..8 + canonical.len()].copy_from_slice(canonical.as_bytes());
    bytes[8 + canonical.len()..8 + n].fill(b' ');
    Ok(bytes)
}

/// Compact JSON with object keys in sorted order.
fn write_sorted(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String((*k).clone()).to_string());
                out.push(':');
                write_sorted(&map[*k], out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_sorted(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A tensor read back: its dtype (F32 or F64), shape and values as f64.
#[derive(Debug, Clone)]
pub struct ReadTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

/// A parsed weights file.
#[derive(Debug)]
pub struct WeightsFile {
    pub metadata: HashMap<String, String>,
    pub tensors: HashMap<String, ReadTensor>,
}

/// Parses safetensors bytes. Truncated or garbage input is an error, never a panic; tensors of
/// a dtype other than F32/F64 are an error.
pub fn parse(bytes: &[u8]) -> Result<WeightsFile, PluginError> {
    let bad = |msg: String| PluginError::config(format!("weights: {msg}"));
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| bad(format!("not a readable safetensors file ({} bytes): {e}", bytes.len())))?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("unreadable header: {e}")))?;
    let metadata: HashMap<String, String> =
        meta.metadata().as_ref().map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default();
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let count: usize = shape.iter().product();
        let data = view.data();
        let values: Vec<f64> = match view.dtype() {
            Dtype::F32 if data.len() == 4 * count => {
                data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect()
            }
            Dtype::F64 if data.len() == 8 * count => data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
            Dtype::F32 | Dtype::F64 => {
                return Err(bad(format!("tensor '{name}' has {} bytes for shape {shape:?}", data.len())))
            }
            other => return Err(bad(format!("tensor '{name}' has dtype {other:?}; only F32 and F64 are used"))),
        };
        tensors.insert(name, ReadTensor { dtype: view.dtype(), shape, values });
    }
    Ok(WeightsFile { metadata, tensors })
}
