//! Conversions between host f64 buffers and candle tensors, and the generic (any-device)
//! formulation of the gather convolution.

use candle_core::{DType, Device, Shape, Tensor};

/// Creates a tensor of `dtype` (F32 or F64) from f64 values (rounded to nearest for f32).
pub fn tensor_from_f64<S: Into<Shape>>(
    data: &[f64],
    shape: S,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    match dtype {
        DType::F64 => Tensor::from_slice(data, shape, device),
        DType::F32 => {
            let v: Vec<f32> = data.iter().map(|&x| x as f32).collect();
            Tensor::from_vec(v, shape, device)
        }
        other => Err(candle_core::Error::Msg(format!("unsupported dtype {other:?}"))),
    }
}

/// All elements of a tensor as f64, in row-major order (exact for f32 and f64).
pub fn tensor_to_f64(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

/// The gather convolution written with candle ops (runs on every device; autograd derives its
/// backward pass): `bias + Σ_{o, c} in[b, idx[m·K + o], c] · w[o·C_in + c, :]` for `inp`
/// `[B, N_in, C_in]`, `idx` a U32 tensor of M·K entries ≤ N_in (N_in: the pad row), `w`
/// `[K·C_in, C_out]`, `bias` `[C_out]` → `[B, M, C_out]`, before any activation. The pad row is
/// zeros, or the constants `pad` (one per input channel, no gradient). It computes the same
/// function as [`crate::kernels::conv`] / [`crate::kernels::conv_padded`] with the matching
/// [`crate::kernels::Table`].
pub fn conv_generic(
    inp: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    idx: &Tensor,
    pad: Option<&[f64]>,
) -> candle_core::Result<Tensor> {
    let (b, _n_in, ci) = inp.dims3()?;
    let (kci, co) = w.dims2()?;
    let k = kci / ci;
    let m = idx.dim(0)? / k;
    let pad_row = match pad {
        Some(p) => tensor_from_f64(p, (1, 1, ci), inp.dtype(), inp.device())?.broadcast_as((b, 1, ci))?,
        None => Tensor::zeros((b, 1, ci), inp.dtype(), inp.device())?,
    };
    let x = Tensor::cat(&[inp, &pad_row], 1)?;
    let g = x.index_select(idx, 1)?.reshape((b * m, kci))?;
    g.matmul(w)?.broadcast_add(bias)?.reshape((b, m, co))
}

/// A named parameter.
#[derive(Debug)]
pub struct NamedVar {
    pub name: String,
    pub var: candle_core::Var,
}

/// The parameters of a stack of convolutions as a flow uses them: `vars` alternate weight,
/// bias, weight, bias, …, weight j (`vars[2j]`) shaped `[K, C_in, C_out]` (any shape of
/// `kvol · C_in · C_out` elements) with `(C_in, C_out) = channels[j % channels.len()]`, is
/// returned reshaped to `[kvol · C_in, C_out]`; biases are returned as they are. Tracked by
/// autograd when `track` is true, detached otherwise (no graph is recorded then).
pub fn conv_params(
    vars: &[NamedVar],
    channels: &[(usize, usize)],
    kvol: usize,
    track: bool,
) -> candle_core::Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(vars.len());
    for (i, nv) in vars.iter().enumerate() {
        let t: Tensor = if track { nv.var.as_tensor().clone() } else { nv.var.as_tensor().detach() };
        if i % 2 == 0 {
            let (cin, cout) = channels[(i / 2) % channels.len()];
            out.push(t.reshape((kvol * cin, cout))?);
        } else {
            out.push(t);
        }
    }
    Ok(out)
}

/// A candle error as a plugin error (kind `Internal`, message prefixed `candle:`).
pub fn candle_error(e: candle_core::Error) -> latflow_core::PluginError {
    latflow_core::PluginError::new(latflow_core::ErrorKind::Internal, format!("candle: {e}"))
}
