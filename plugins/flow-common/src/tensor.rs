//! Conversions between host f64 buffers and candle tensors, the generic (any-device)
//! formulation of the gather convolution, and the column gather it is built on.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Storage, Tensor};

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

/// A fixed gather along dimension 1, `y[b, j, …] = x[b, idx[j], …]`, for `x` `[B, N, …]` and
/// `y` `[B, M, …]`, whose backward pass is itself a gather.
///
/// Why not `index_select`: its backward is `index_add`, which candle's CUDA kernel runs with one
/// thread per (b, trailing element) looping over all M indices, so a batch of 64 U(1) fields
/// gets 64 threads. Here the table is known in advance, so its transpose is one too: `inv`
/// lists, for every source column n, the R positions j with `idx[j] = n` (R the largest such
/// count), padded with M, which points at a zero column appended to the incoming gradient.
/// Then `dx[b, n, …] = Σ_r dy'[b, inv[n·R + r], …]`: a gather and a sum over R, both parallel
/// over every output element. The sum runs over positions in increasing j, the order in which
/// `index_add` accumulates.
#[derive(Debug, Clone)]
pub struct ColumnGather {
    idx: Tensor,
    inv: Tensor,
    m: usize,
    n: usize,
    r: usize,
}

impl ColumnGather {
    /// The gather of columns `idx` (each < `n`) of a tensor `[B, n, …]`, with its tables on
    /// `device`. An index ≥ `n` is refused.
    pub fn new(idx: &[u32], n: usize, device: &Device) -> candle_core::Result<Self> {
        let m = idx.len();
        let mut count = vec![0usize; n];
        for &i in idx {
            let i = i as usize;
            if i >= n {
                candle_core::bail!("column gather: index {i} out of range for {n} columns");
            }
            count[i] += 1;
        }
        let r = count.iter().copied().max().unwrap_or(0).max(1);
        let mut inv = vec![m as u32; n * r];
        let mut fill = vec![0usize; n];
        for (j, &i) in idx.iter().enumerate() {
            let i = i as usize;
            inv[i * r + fill[i]] = j as u32;
            fill[i] += 1;
        }
        Ok(Self { idx: Tensor::from_slice(idx, m, device)?, inv: Tensor::from_vec(inv, n * r, device)?, m, n, r })
    }

    /// The number of gathered columns M.
    pub fn len(&self) -> usize {
        self.m
    }

    /// Whether no column is gathered.
    pub fn is_empty(&self) -> bool {
        self.m == 0
    }

    /// `x` `[B, n, …]` → `[B, M, …]` (differentiable).
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if x.rank() < 2 || x.dim(1)? != self.n {
            candle_core::bail!("column gather: {:?} is not [B, {}, …]", x.dims(), self.n);
        }
        if x.track_op() {
            x.apply_op1(self.clone())
        } else {
            x.apply_op1_no_bwd(self)
        }
    }

    fn out_shape(&self, l: &Layout) -> Shape {
        let mut dims = l.dims().to_vec();
        dims[1] = self.m;
        Shape::from(dims)
    }
}

impl CustomOp1 for ColumnGather {
    fn name(&self) -> &'static str {
        "column-gather"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (ids, ids_l) = self.idx.storage_and_layout();
        let Storage::Cpu(ids) = &*ids else { candle_core::bail!("column gather: the table is not on the CPU") };
        Ok((s.index_select(ids, l, ids_l, 1)?, self.out_shape(l)))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (ids, ids_l) = self.idx.storage_and_layout();
        let Storage::Cuda(ids) = &*ids else { candle_core::bail!("column gather: the table is not on the GPU") };
        Ok((s.index_select(ids, l, ids_l, 1)?, self.out_shape(l)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let mut pad = grad.dims().to_vec();
        pad[1] = 1;
        let g = Tensor::cat(&[grad, &Tensor::zeros(pad, grad.dtype(), grad.device())?], 1)?;
        let picked = g.index_select(&self.inv, 1)?;
        if self.r == 1 {
            return Ok(Some(picked));
        }
        let mut dims = arg.dims().to_vec();
        dims.insert(2, self.r);
        Ok(Some(picked.reshape(dims)?.sum(2)?))
    }
}

/// The gather convolution written with candle ops (runs on every device; autograd derives its
/// backward pass): `bias + Σ_{o, c} in[b, idx[m·K + o], c] · w[o·C_in + c, :]` for `inp`
/// `[B, N_in, C_in]`, `idx` the [`ColumnGather`] of M·K columns of N_in + 1 (N_in: the pad row), `w`
/// `[K·C_in, C_out]`, `bias` `[C_out]` → `[B, M, C_out]`, before any activation. The pad row is
/// zeros, or the constants `pad` (one per input channel, no gradient). It computes the same
/// function as [`crate::kernels::conv`] / [`crate::kernels::conv_padded`] with the matching
/// [`crate::kernels::Table`].
pub fn conv_generic(
    inp: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    idx: &ColumnGather,
    pad: Option<&[f64]>,
) -> candle_core::Result<Tensor> {
    let (b, _n_in, ci) = inp.dims3()?;
    let (kci, co) = w.dims2()?;
    let k = kci / ci;
    let m = idx.len() / k;
    let pad_row = match pad {
        Some(p) => tensor_from_f64(p, (1, 1, ci), inp.dtype(), inp.device())?.broadcast_as((b, 1, ci))?,
        None => Tensor::zeros((b, 1, ci), inp.dtype(), inp.device())?,
    };
    let x = Tensor::cat(&[inp, &pad_row], 1)?;
    let g = idx.apply(&x)?.reshape((b * m, kci))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    /// The column gather gives `index_select`'s values and, through its own backward pass,
    /// `index_select`'s gradient (an `index_add`), bit for bit, with repeated, missing and
    /// single indices, on rank 2 and rank 3 tensors in f32 and f64.
    #[test]
    fn column_gather_matches_index_select_and_its_gradient() {
        let dev = Device::Cpu;
        let idx: Vec<u32> = vec![3, 0, 3, 5, 1, 3, 0, 6, 2];
        for dtype in [DType::F64, DType::F32] {
            for trailing in [None, Some(3)] {
                let (b, n) = (4, 7);
                let dims: Vec<usize> = match trailing {
                    None => vec![b, n],
                    Some(c) => vec![b, n, c],
                };
                let len: usize = dims.iter().product();
                let vals: Vec<f64> = (0..len).map(|i| ((i * 37 % 23) as f64 - 11.0) / 7.0).collect();
                let x = Var::from_tensor(&tensor_from_f64(&vals, dims.clone(), dtype, &dev).unwrap()).unwrap();
                let ids = Tensor::from_slice(&idx, idx.len(), &dev).unwrap();
                let mut out_dims = dims.clone();
                out_dims[1] = idx.len();
                let w: Vec<f64> = (0..out_dims.iter().product()).map(|i| ((i * 13 % 17) as f64 - 8.0) / 5.0).collect();
                let w = tensor_from_f64(&w, out_dims, dtype, &dev).unwrap();
                let run = |y: Tensor| {
                    let grad = y.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
                    (tensor_to_f64(&y).unwrap(), tensor_to_f64(grad.get(x.as_tensor()).unwrap()).unwrap())
                };
                let want = run(x.as_tensor().index_select(&ids, 1).unwrap());
                let got = run(ColumnGather::new(&idx, n, &dev).unwrap().apply(x.as_tensor()).unwrap());
                assert_eq!(testing_bits(&want.0), testing_bits(&got.0), "{dtype:?} {dims:?}: values");
                assert_eq!(testing_bits(&want.1), testing_bits(&got.1), "{dtype:?} {dims:?}: gradient");
            }
        }
        assert!(ColumnGather::new(&[0, 7], 7, &dev).is_err(), "an index out of range is refused");
        let g = ColumnGather::new(&[1], 7, &dev).unwrap();
        assert!(g.apply(&Tensor::zeros((2, 6), DType::F64, &dev).unwrap()).is_err(), "a wrong width is refused");
    }

    fn testing_bits(x: &[f64]) -> Vec<u64> {
        x.iter().map(|v| v.to_bits()).collect()
    }
}
