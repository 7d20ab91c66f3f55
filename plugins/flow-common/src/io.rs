//! Weights as safetensors bytes, with latflow's metadata.
//!
//! Convention of the model plugins: every parameter under its name (e.g.
//! `layers.{ℓ}.conv{j}.weight|bias`, in the model's dtype) and, when saved with the optimiser,
//! `adam.m.<name>` and `adam.v.<name>` (f64). Metadata: [`KEY_FORMAT`] = [`FORMAT`],
//! [`KEY_PLUGIN`] (the plugin's name), [`KEY_VERSION`], [`KEY_ARCH`] (the plugin's architecture
//! record as JSON), [`KEY_DIGESTS`] (each tensor's SHA-256) and, with the optimiser,
//! [`KEY_STEP`] (completed steps).
//!
//! [`serialize`] writes deterministic bytes (sorted header); [`parse`] refuses truncated or
//! garbage input, non-float tensors, non-finite values and tensors whose bytes do not match
//! their recorded digest, with `Config` errors that start with `weights:` and name the tensor.

use std::borrow::Cow;
use std::collections::HashMap;

use latflow_core::abi::PluginError;
use safetensors::tensor::{Dtype, SafeTensors, View};

/// The weights format version written and read.
pub const FORMAT: &str = "1";
/// Metadata key of the format version.
pub const KEY_FORMAT: &str = "latflow.format";
/// Metadata key of the architecture record (JSON).
pub const KEY_ARCH: &str = "latflow.architecture";
/// Metadata key of the plugin name.
pub const KEY_PLUGIN: &str = "latflow.plugin";
/// Metadata key of the plugin version.
pub const KEY_VERSION: &str = "latflow.plugin_version";
/// Metadata key of Adam's completed step count (present when saved with the optimiser).
pub const KEY_STEP: &str = "latflow.adam.step";
/// Metadata key of the tensors' digests: a JSON object from each tensor's name to the lowercase
/// hex SHA-256 of its dtype name, shape and data ([`tensor_digest`]). Written by [`serialize`],
/// verified by [`parse`] when present (files written before it existed have none).
pub const KEY_DIGESTS: &str = "latflow.sha256";

/// SHA-256 of one tensor, as lowercase hex: over its dtype's name (e.g. `F32`), a zero byte,
/// each extent as u64 little-endian, and its raw little-endian data.
pub fn tensor_digest(dtype: Dtype, shape: &[usize], data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(format!("{dtype:?}").as_bytes());
    h.update([0u8]);
    for &n in shape {
        h.update((n as u64).to_le_bytes());
    }
    h.update(data);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

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
/// Adds [`KEY_DIGESTS`] to `metadata`.
pub fn serialize(tensors: &[(String, RawTensor)], mut metadata: HashMap<String, String>) -> Result<Vec<u8>, PluginError> {
    let internal = |m: String| PluginError::new(latflow_core::ErrorKind::Internal, m);
    let digests: serde_json::Map<String, serde_json::Value> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), tensor_digest(t.dtype, &t.shape, &t.data).into()))
        .collect();
    metadata.insert(KEY_DIGESTS.to_string(), serde_json::Value::Object(digests).to_string());
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

/// Parses safetensors bytes. Truncated or garbage input is an error, never a panic; so are
/// tensors of a dtype other than F32/F64, NaN or infinite values, and (when the file records
/// [`KEY_DIGESTS`]) a tensor whose digest differs or is missing. Errors name the tensor.
pub fn parse(bytes: &[u8]) -> Result<WeightsFile, PluginError> {
    let bad = |msg: String| PluginError::config(format!("weights: {msg}"));
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| bad(format!("not a readable safetensors file ({} bytes): {e}", bytes.len())))?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("unreadable header: {e}")))?;
    let metadata: HashMap<String, String> =
        meta.metadata().as_ref().map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default();
    let digests = match metadata.get(KEY_DIGESTS) {
        None => None,
        Some(d) => match serde_json::from_str::<serde_json::Value>(d) {
            Ok(serde_json::Value::Object(map)) => Some(map),
            _ => return Err(bad(format!("metadata '{KEY_DIGESTS}' is not a JSON object of digests: the file is damaged"))),
        },
    };
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
        if let Some(i) = values.iter().position(|x| !x.is_finite()) {
            return Err(bad(format!("tensor '{name}' holds {} at index {i}", values[i])));
        }
        if let Some(want) = digests.as_ref().map(|d| d.get(&name)) {
            let got = tensor_digest(view.dtype(), &shape, data);
            if want.and_then(|w| w.as_str()) != Some(got.as_str()) {
                return Err(bad(format!(
                    "tensor '{name}' does not match its recorded SHA-256 (metadata '{KEY_DIGESTS}'): the file is damaged"
                )));
            }
        }
        tensors.insert(name, ReadTensor { dtype: view.dtype(), shape, values });
    }
    if let Some(extra) = digests.as_ref().and_then(|d| d.keys().find(|k| !tensors.contains_key(*k))) {
        return Err(bad(format!("tensor '{extra}' is recorded in '{KEY_DIGESTS}' but missing from the file")));
    }
    Ok(WeightsFile { metadata, tensors })
}

/// A plugin's weights file: every parameter of `vars` under its name (F64 with `f64_storage`,
/// F32 otherwise), with `adam` also Adam's moments (`adam.m.{name}`, `adam.v.{name}`, F64,
/// after each parameter) and its step count ([`KEY_STEP`]), and the metadata [`KEY_FORMAT`],
/// [`KEY_PLUGIN`] (`plugin`), [`KEY_VERSION`] (`version`) and [`KEY_ARCH`] (`arch_json`, stored
/// as given). Deterministic bytes (see [`serialize`]).
pub fn save_weights(
    vars: &[crate::tensor::NamedVar],
    f64_storage: bool,
    adam: Option<&crate::optim::AdamState>,
    plugin: &str,
    version: &str,
    arch_json: String,
) -> Result<Vec<u8>, PluginError> {
    let ce = |e: candle_core::Error| PluginError::new(latflow_core::ErrorKind::Internal, format!("candle: {e}"));
    let mut tensors = Vec::new();
    for (i, nv) in vars.iter().enumerate() {
        let vals = crate::tensor_to_f64(nv.var.as_tensor()).map_err(ce)?;
        let shape = nv.var.dims().to_vec();
        tensors.push((nv.name.clone(), RawTensor::new(&vals, shape.clone(), f64_storage)));
        if let Some(adam) = adam {
            tensors.push((format!("adam.m.{}", nv.name), RawTensor::new(&adam.m[i], shape.clone(), true)));
            tensors.push((format!("adam.v.{}", nv.name), RawTensor::new(&adam.v[i], shape, true)));
        }
    }
    let mut meta = HashMap::new();
    meta.insert(KEY_FORMAT.to_string(), FORMAT.to_string());
    meta.insert(KEY_PLUGIN.to_string(), plugin.to_string());
    meta.insert(KEY_VERSION.to_string(), version.to_string());
    meta.insert(KEY_ARCH.to_string(), arch_json);
    if let Some(adam) = adam {
        meta.insert(KEY_STEP.to_string(), adam.step.to_string());
    }
    serialize(&tensors, meta)
}

/// Checks a file's architecture record ([`KEY_ARCH`], and [`KEY_FORMAT`] if present) against
/// `ours`, skipping the keys in `ignore`. Errors start with `what` (e.g. `weights`, `init_from`)
/// and name the first difference; `plugin` names the plugin that reads the file.
pub fn check_architecture(
    file: &WeightsFile,
    what: &str,
    plugin: &str,
    ours: &serde_json::Value,
    ignore: &[&str],
) -> Result<(), PluginError> {
    let arch = file.metadata.get(KEY_ARCH).ok_or_else(|| {
        PluginError::config(format!("{what}: no '{KEY_ARCH}' metadata, so the weights were not saved by {plugin}"))
    })?;
    if let Some(f) = file.metadata.get(KEY_FORMAT) {
        if f != FORMAT {
            return Err(PluginError::config(format!(
                "{what}: format version {f}, this {plugin} reads version {FORMAT}"
            )));
        }
    }
    let theirs: serde_json::Value = serde_json::from_str(arch)
        .map_err(|e| PluginError::config(format!("{what}: architecture metadata is not JSON: {e}")))?;
    match crate::config::describe_difference(&theirs, ours, ignore) {
        Some(diff) => Err(PluginError::config(format!("{what}: {diff}"))),
        None => Ok(()),
    }
}

/// One tensor of a weights file with the expected shape (and dtype, if given), as f64.
pub fn fetch(
    file: &WeightsFile,
    what: &str,
    name: &str,
    dims: &[usize],
    dtype: Option<Dtype>,
) -> Result<Vec<f64>, PluginError> {
    let t = file.tensors.get(name).ok_or_else(|| PluginError::config(format!("{what}: tensor '{name}' is missing")))?;
    if t.shape != dims || dtype.is_some_and(|d| d != t.dtype) {
        return Err(PluginError::config(format!(
            "{what}: tensor '{name}' is {:?} {:?}, expected {} {dims:?}",
            t.dtype,
            t.shape,
            dtype.map_or("F32/F64".to_string(), |d| format!("{d:?}"))
        )));
    }
    Ok(t.values.clone())
}

/// Every parameter of `vars` from the file, as f64; `dtype` = None accepts F32 and F64.
pub fn fetch_params(
    file: &WeightsFile,
    what: &str,
    vars: &[crate::tensor::NamedVar],
    dtype: Option<Dtype>,
) -> Result<Vec<Vec<f64>>, PluginError> {
    vars.iter().map(|nv| fetch(file, what, &nv.name, nv.var.dims(), dtype)).collect()
}

/// Adam's state for `vars` from the file: its moments (F64) and step count when [`KEY_STEP`]
/// is present, zero moments otherwise.
pub fn fetch_adam(
    file: &WeightsFile,
    what: &str,
    vars: &[crate::tensor::NamedVar],
) -> Result<crate::optim::AdamState, PluginError> {
    let Some(step) = file.metadata.get(KEY_STEP) else {
        return Ok(crate::optim::AdamState::zeros(&vars.iter().map(|v| v.var.elem_count()).collect::<Vec<_>>()));
    };
    let step: u64 = step
        .parse()
        .map_err(|_| PluginError::config(format!("{what}: '{KEY_STEP}' = '{step}' is not a step count")))?;
    let mut m = Vec::new();
    let mut v = Vec::new();
    for nv in vars {
        m.push(fetch(file, what, &format!("adam.m.{}", nv.name), nv.var.dims(), Some(Dtype::F64))?);
        v.push(fetch(file, what, &format!("adam.v.{}", nv.name), nv.var.dims(), Some(Dtype::F64))?);
    }
    Ok(crate::optim::AdamState { m, v, step })
}

#[cfg(test)]
mod tests {
    use super::*;
    use latflow_core::ErrorKind;

    fn sample_file() -> Vec<u8> {
        let mut meta = HashMap::new();
        meta.insert(KEY_FORMAT.to_string(), FORMAT.to_string());
        meta.insert(KEY_ARCH.to_string(), r#"{"layers":2}"#.to_string());
        meta.insert("z.last".to_string(), "1".to_string());
        let tensors = vec![
            ("b".to_string(), RawTensor::new(&[0.1, -2.5, 3.0e-30], vec![3], false)),
            ("a".to_string(), RawTensor::new(&[std::f64::consts::PI, -0.0, 1e300, 5e-324], vec![2, 2], true)),
        ];
        serialize(&tensors, meta).unwrap()
    }

    #[test]
    fn round_trip_is_exact_and_bytes_are_deterministic() {
        let bytes = sample_file();
        for _ in 0..5 {
            assert_eq!(bytes, sample_file(), "serialisation depends on hash order");
        }
        let f = parse(&bytes).unwrap();
        assert_eq!(f.metadata[KEY_ARCH], r#"{"layers":2}"#);
        assert_eq!(f.metadata.len(), 4, "format, architecture, z.last and the digests");
        let a = &f.tensors["a"];
        assert_eq!((a.dtype, a.shape.clone()), (Dtype::F64, vec![2, 2]));
        let bits: Vec<u64> = a.values.iter().map(|x| x.to_bits()).collect();
        let want: Vec<u64> = [std::f64::consts::PI, -0.0, 1e300, 5e-324].iter().map(|x| x.to_bits()).collect();
        assert_eq!(bits, want, "f64 tensors are stored bit for bit");
        let b = &f.tensors["b"];
        assert_eq!(b.dtype, Dtype::F32);
        assert_eq!(b.values, vec![0.1f32 as f64, -2.5, 3.0e-30f32 as f64], "f32 tensors round to nearest");
        // the header is sorted: "a" comes before "b", and the metadata before both
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
        let (ia, ib, im) =
            (header.find("\"a\"").unwrap(), header.find("\"b\"").unwrap(), header.find("__metadata__").unwrap());
        assert!(im < ia && ia < ib, "{header}");
    }

    #[test]
    fn damaged_files_are_refused_with_clear_errors() {
        for (what, bytes) in crate::testing::damaged_files(&sample_file()) {
            let e = parse(&bytes).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Config, "{what}");
            assert!(e.message.starts_with("weights: ") && e.message.contains("safetensors"), "{what}: {}", e.message);
        }
    }

    #[test]
    fn flipped_data_bytes_and_non_finite_values_name_the_tensor() {
        let bytes = sample_file();
        let pi = std::f64::consts::PI.to_le_bytes();
        let at = bytes.windows(8).position(|w| w == pi).unwrap();
        let mut damaged = bytes.clone();
        damaged[at + 3] ^= 0x04;
        let e = parse(&damaged).unwrap_err();
        assert!(e.message.contains("tensor 'a'") && e.message.contains("SHA-256"), "{}", e.message);

        // a NaN written by a buggy trainer: refused even though its digest is consistent
        let mut meta = HashMap::new();
        meta.insert(KEY_FORMAT.to_string(), FORMAT.to_string());
        let nan = vec![("w".to_string(), RawTensor::new(&[1.0, f64::NAN], vec![2], true))];
        let e = parse(&serialize(&nan, meta.clone()).unwrap()).unwrap_err();
        assert!(e.message.contains("tensor 'w' holds NaN at index 1"), "{}", e.message);
        let inf = vec![("v".to_string(), RawTensor::new(&[f64::INFINITY], vec![1], false))];
        let e = parse(&serialize(&inf, meta).unwrap()).unwrap_err();
        assert!(e.message.contains("tensor 'v' holds inf at index 0"), "{}", e.message);

        // files written before digests existed still load
        let plain = [("a".to_string(), RawTensor::new(&[1.0], vec![1], true))];
        let old = safetensors::serialize(plain.iter().map(|(n, t)| (n.as_str(), t)), None).unwrap();
        assert_eq!(parse(&old).unwrap().tensors["a"].values, vec![1.0]);
    }

    /// The `weights` fuzz target's smoke run: its seeds and regression inputs under `fuzz/`,
    /// plus deterministic mutations of each, parse to weights or a clear error.
    #[test]
    fn fuzz_inputs_and_their_mutations_never_panic() {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
        let mut n = 0;
        for dir in ["seeds/weights", "regressions/weights"] {
            for e in std::fs::read_dir(root.join(dir)).into_iter().flatten().flatten() {
                let bytes = std::fs::read(e.path()).unwrap();
                for m in std::iter::once(bytes.clone()).chain(latflow_core::testkit::mutations(&bytes, 3000, 7 + n)) {
                    if let Err(e) = parse(&m) {
                        assert!(e.message.starts_with("weights: "), "{}", e.message);
                    }
                }
                n += 1;
            }
        }
        assert!(n > 0, "no seeds in fuzz/seeds/weights");
    }

    #[test]
    fn non_float_tensors_are_refused() {
        struct I32;
        impl View for &I32 {
            fn dtype(&self) -> Dtype {
                Dtype::I32
            }
            fn shape(&self) -> &[usize] {
                &[1]
            }
            fn data(&self) -> Cow<'_, [u8]> {
                Cow::Borrowed(&[1, 0, 0, 0])
            }
            fn data_len(&self) -> usize {
                4
            }
        }
        let bytes = safetensors::serialize([("n", &I32)], None).unwrap();
        let e = parse(&bytes).unwrap_err();
        assert!(e.message.contains("'n' has dtype I32"), "{}", e.message);
    }
}
