//! Gather tables of periodic convolutions on the full lattice (any dimension, any subset of
//! sites).
//!
//! Sites are numbered row-major (last axis fastest), as in `latflow_core::Lattice`. A
//! convolution with odd kernel size k = 2r + 1 in d dimensions has K = k^d offsets
//! o ∈ [−r, r]^d, enumerated row-major ([`kernel_offsets`]), which is also the order of a
//! weight tensor's leading axes `[k, …, k, C_in, C_out]` (torch's `Conv{d}d` weight
//! `W[c_out, c_in, k_0, …]` permuted). It computes the cross-correlation (as torch's)
//!
//! ```text
//! out[b, x, :] = bias + Σ_{o, c} in[b, row(x + o), c] · W[o, c, :]
//! ```
//!
//! for the output sites x of a list, where `row(y)` is the input row that holds site y, or
//! padding for sites that are not stored (masked inputs: zeros or a constant row). Restricting
//! outputs to the sites a later layer reads ([`dilate`]) computes the same function with less
//! work; the tables then satisfy [`Table`]'s contract automatically (translations are
//! injective).

use crate::kernels::Table;

/// The K = k^d kernel offsets, row-major over [−r, r]^d (r = k/2, k odd).
pub fn kernel_offsets(dim: usize, kernel: usize) -> Vec<Vec<i64>> {
    assert!(kernel % 2 == 1, "kernel size must be odd, got {kernel}");
    let r = (kernel / 2) as i64;
    let kvol = kernel.pow(dim as u32);
    (0..kvol)
        .map(|mut k| {
            let mut o = vec![0i64; dim];
            for mu in (0..dim).rev() {
                o[mu] = (k % kernel) as i64 - r;
                k /= kernel;
            }
            o
        })
        .collect()
}

/// The site x + o on the periodic lattice `shape` (row-major, last axis fastest). Allocation
/// free: tables of 4D kernels call it V·k⁴ times per convolution.
pub fn shift(shape: &[usize], x: usize, o: &[i64]) -> usize {
    let (mut rest, mut idx, mut stride) = (x, 0usize, 1usize);
    for mu in (0..shape.len()).rev() {
        let c = rest % shape[mu];
        rest /= shape[mu];
        idx += (c as i64 + o[mu]).rem_euclid(shape[mu] as i64) as usize * stride;
        stride *= shape[mu];
    }
    idx
}

/// The sites within the kernel's reach of `sites`: {x + o}, sorted. These are the outputs a
/// convolution must compute so that a following convolution (same kernel) can produce `sites`.
pub fn dilate(shape: &[usize], kernel: usize, sites: &[usize]) -> Vec<usize> {
    let v: usize = shape.iter().product();
    let mut hit = vec![false; v];
    for o in kernel_offsets(shape.len(), kernel) {
        for &x in sites {
            hit[shift(shape, x, &o)] = true;
        }
    }
    (0..v).filter(|&x| hit[x]).collect()
}

/// The flat gather indices `idx[m·K + o] = row(x_m + o)` for the output sites `outputs`, where
/// `row_of[y]` is the input row holding site y, or `None` for a site that is not stored, which
/// gets `n_in` (padding).
pub fn gather_indices(
    shape: &[usize],
    kernel: usize,
    outputs: &[usize],
    row_of: &[Option<u32>],
    n_in: usize,
) -> Vec<u32> {
    let v: usize = shape.iter().product();
    assert_eq!(row_of.len(), v, "row_of must have one entry per site");
    let offsets = kernel_offsets(shape.len(), kernel);
    let mut idx = Vec::with_capacity(outputs.len() * offsets.len());
    for &x in outputs {
        for o in &offsets {
            let r = row_of[shift(shape, x, o)].unwrap_or(n_in as u32);
            debug_assert!(r as usize <= n_in);
            idx.push(r);
        }
    }
    idx
}

/// The input rows of a list of stored sites: `row_of[sites[i]] = Some(i)`, other sites `None`.
pub fn rows_of(volume: usize, sites: &[usize]) -> Vec<Option<u32>> {
    let mut r = vec![None; volume];
    for (i, &x) in sites.iter().enumerate() {
        r[x] = Some(i as u32);
    }
    r
}

/// The fused-kernel [`Table`] of a periodic convolution from the stored sites `inputs` (input
/// row i holds site `inputs[i]`; other sites read padding) to the sites `outputs`.
pub fn table(shape: &[usize], kernel: usize, outputs: &[usize], inputs: &[usize]) -> Table {
    let v: usize = shape.iter().product();
    let idx = gather_indices(shape, kernel, outputs, &rows_of(v, inputs), inputs.len());
    Table::new(idx, outputs.len(), kernel.pow(shape.len() as u32), inputs.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_row_major_and_centred() {
        let o = kernel_offsets(2, 3);
        assert_eq!(o.len(), 9);
        assert_eq!(o[0], vec![-1, -1]);
        assert_eq!(o[1], vec![-1, 0]);
        assert_eq!(o[4], vec![0, 0]);
        assert_eq!(o[8], vec![1, 1]);
        assert_eq!(kernel_offsets(3, 1), vec![vec![0, 0, 0]]);
    }

    #[test]
    fn shift_is_periodic_row_major() {
        let shape = [4, 6];
        // site (1, 5) = 11; +(0, 1) wraps to (1, 0) = 6; +(−2, 0) wraps to (3, 5) = 23
        assert_eq!(shift(&shape, 11, &[0, 1]), 6);
        assert_eq!(shift(&shape, 11, &[-2, 0]), 23);
        assert_eq!(shift(&shape, 11, &[4, -6]), 11);
    }

    #[test]
    fn dilation_of_a_stripe() {
        // the column x1 = 2 of an 8×8 lattice, dilated by a 3×3 kernel: columns 1, 2, 3
        let shape = [8, 8];
        let stripe: Vec<usize> = (0..64).filter(|x| x % 8 == 2).collect();
        let d = dilate(&shape, 3, &stripe);
        assert_eq!(d, (0..64).filter(|x| (1..=3).contains(&(x % 8))).collect::<Vec<_>>());
        assert_eq!(dilate(&shape, 5, &d).len(), 56, "columns −1 … 5: all but column 6");
        assert_eq!(dilate(&shape, 3, &d).len(), 40);
        assert_eq!(dilate(&shape, 1, &stripe), stripe);
    }

    #[test]
    fn table_reads_the_right_rows_and_pads_the_rest() {
        let shape = [4, 4];
        let inputs: Vec<usize> = (0..16).filter(|x| x % 2 == 0).collect(); // even x1 stored
        let outputs = vec![5usize, 10];
        let t = table(&shape, 3, &outputs, &inputs);
        assert_eq!((t.m, t.k, t.n_in), (2, 9, 8));
        assert!(t.has_pad);
        // output site 5 = (1, 1), offset (−1, −1) → (0, 0) = site 0 = row 0; offset (−1, 0) → site 1: padding
        assert_eq!(t.idx[0], 0);
        assert_eq!(t.idx[1], 8);
        // offset (1, 1) → (2, 2) = site 10 = row 5
        assert_eq!(t.idx[8], 5);
        let inv = t.inv.as_ref().unwrap();
        assert_eq!(inv.idx[5 * 9 + 8], 0, "row 5 at offset (1, 1) is read by output 0");
        assert_eq!(inv.idx[5 * 9 + 4], 1, "row 5 at offset (0, 0) is read by output 1 (site 10)");
        assert_eq!(inv.idx[7], 2, "row 0 at offset (1, 0) is read by no output: the zero row");
    }
}
