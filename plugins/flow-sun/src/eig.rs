//! Closed-form eigenphases of SU(2) and SU(3) matrices, sorted into the Weyl alcove, with their
//! derivatives, and the candle op that applies them to a batch (autograd included).
//!
//! **The alcove.** The eigenvalues of W ∈ SU(N) are e^{iθ_k} with Σ θ_k ≡ 0 (mod 2π). Each
//! conjugacy class has exactly one representative with
//!
//! ```text
//! θ_0 ≥ θ_1 ≥ … ≥ θ_{N−1},   Σ_k θ_k = 0,   θ_0 − θ_{N−1} ≤ 2π
//! ```
//!
//! (the fundamental alcove of the affine Weyl group); its walls θ_k = θ_{k+1} and
//! θ_0 − θ_{N−1} = 2π are where two eigenvalues coincide. The identity is the vertex θ = 0.
//!
//! * **SU(2)** (W = [[a, b], [−b̄, ā]]): θ = (φ, −φ) with φ = atan2(s, Re a) ∈ [0, π] and
//!   s = √((Im a)² + |b|²). The op's input is (c, s) = (Re a, s), which keeps φ accurate near
//!   0 and π (unlike arccos of the trace); ∂φ/∂c = −s/(c² + s²), ∂φ/∂s = c/(c² + s²).
//! * **SU(3)**: the eigenvalues are the roots of p(λ) = λ³ − t λ² + t̄ λ − 1, t = Tr W, found
//!   by Cardano's formula on the depressed cubic and polished by Newton steps on p; the
//!   phases are then moved into the alcove (multiples of 2π, a sort, and the affine reflection
//!   θ_0 → θ_0 − 2π, θ_2 → θ_2 + 2π while θ_0 − θ_2 > 2π). Implicit differentiation of
//!   p(λ_k) = 0 gives dλ_k = (λ_k² dt − λ_k dt̄)/p′(λ_k) with p′(λ_k) = Π_{j≠k} (λ_k − λ_j), so
//!   with t = r + i m:
//!
//!   ```text
//!   ∂θ_k/∂r = Im((λ_k − 1)/p′(λ_k)),     ∂θ_k/∂m = Re((λ_k + 1)/p′(λ_k)).
//!   ```
//!
//! The derivatives diverge on the walls (degenerate eigenvalues), a set of Haar measure zero
//! whose neighbourhood the Weyl density ∏|λ_i − λ_j|² suppresses. From the trace, an SU(3)
//! phase is determined to about ε/|p′(λ)| (ε the f64 rounding unit, p′(λ_k) the product of the
//! distances to the other two eigenvalues): 1e-14 for distances of 0.1, 1e-10 for 1e-3.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use latflow_core::gauge::Complex;

use rayon::prelude::*;
use std::f64::consts::PI;

/// Rows per parallel task of the op.
const ROWS: usize = 256;

/// The SU(2) phases (φ, −φ) from (c, s) = (Re a, √((Im a)² + |b|²)), and the derivatives
/// ∂θ_k/∂(c, s).
pub fn su2_phases(c: f64, s: f64) -> ([f64; 2], [[f64; 2]; 2]) {
    let phi = s.atan2(c);
    let r2 = c * c + s * s;
    let d = [-s / r2, c / r2];
    ([phi, -phi], [d, [-d[0], -d[1]]])
}

/// Principal complex cube root.
fn cbrt(z: Complex) -> Complex {
    if z.abs2() == 0.0 {
        return Complex::ZERO;
    }
    Complex::cis(z.arg() / 3.0).scale(z.abs().cbrt())
}

/// Principal complex square root.
fn csqrt(z: Complex) -> Complex {
    if z.abs2() == 0.0 {
        return Complex::ZERO;
    }
    Complex::cis(z.arg() / 2.0).scale(z.abs().sqrt())
}

/// Most Newton steps that polish a Cardano root (Cardano's rounding error grows to about ε^{1/3}
/// near a triple root; each step squares the relative error until the conditioning limit).
const NEWTON_STEPS: usize = 8;

/// The three roots of λ³ − t λ² + t̄ λ − 1 (Cardano, then Newton steps on p until they stop
/// moving).
fn su3_roots(t: Complex) -> [Complex; 3] {
    let p = t.conj() - t * t * (1.0 / 3.0);
    let q = t * t * t * (-2.0 / 27.0) + Complex::real(t.abs2() / 3.0 - 1.0);
    let sq = csqrt(q * q * 0.25 + p * p * p * (1.0 / 27.0));
    // the larger of −q/2 ± √D avoids cancellation
    let (a1, a2) = (q * (-0.5) + sq, q * (-0.5) - sq);
    let a = cbrt(if a1.abs2() >= a2.abs2() { a1 } else { a2 });
    let b = if a.abs2() > 0.0 { p * (-1.0 / 3.0) / a } else { Complex::ZERO };
    let w = Complex::cis(2.0 * PI / 3.0);
    let shift = t * (1.0 / 3.0);
    let mut roots = [a + b + shift, w * a + w.conj() * b + shift, w.conj() * a + w * b + shift];
    let poly = |l: Complex| ((l - t) * l + t.conj()) * l - Complex::ONE;
    let dpoly = |l: Complex| (l * 3.0 - t * 2.0) * l + t.conj();
    for r in &mut roots {
        for _ in 0..NEWTON_STEPS {
            let d = dpoly(*r);
            if d.abs2() == 0.0 {
                break;
            }
            let step = poly(*r) / d;
            if !step.is_finite() {
                break;
            }
            *r -= step;
            if step.abs() < 1e-15 {
                break;
            }
        }
        *r = r.scale(1.0 / r.abs());
    }
    roots
}

/// The SU(3) phases in the alcove from t = Tr W, and the derivatives ∂θ_k/∂(Re t, Im t).
pub fn su3_phases(t: Complex) -> ([f64; 3], [[f64; 2]; 3]) {
    let roots = su3_roots(t);
    let mut th = roots.map(|l| l.arg());
    // Σθ ∈ {−2π, 0, 2π} up to rounding: move one phase by 2π
    let turns = ((th[0] + th[1] + th[2]) / (2.0 * PI)).round();
    let mut order = [0usize, 1, 2];
    order.sort_by(|&i, &j| th[j].total_cmp(&th[i]));
    if turns >= 1.0 {
        th[order[0]] -= 2.0 * PI;
    } else if turns <= -1.0 {
        th[order[2]] += 2.0 * PI;
    }
    for _ in 0..3 {
        order.sort_by(|&i, &j| th[j].total_cmp(&th[i]));
        if th[order[0]] - th[order[2]] <= 2.0 * PI {
            break;
        }
        th[order[0]] -= 2.0 * PI;
        th[order[2]] += 2.0 * PI;
    }
    order.sort_by(|&i, &j| th[j].total_cmp(&th[i]));
    let l = order.map(|k| roots[k]);
    let mut phases = order.map(|k| th[k]);
    // Σθ = 0 to rounding (the roots satisfy it up to rounding; a common shift keeps the order)
    let mean = (phases[0] + phases[1] + phases[2]) / 3.0;
    phases = phases.map(|p| p - mean);
    let grads = std::array::from_fn(|k| {
        let dp = (0..3).filter(|&j| j != k).fold(Complex::ONE, |acc, j| acc * (l[k] - l[j]));
        let r = (l[k] - Complex::ONE) / dp;
        let m = (l[k] + Complex::ONE) / dp;
        [r.im, m.re]
    });
    (phases, grads)
}

/// The phases and derivatives for N = 2 ((c, s) input) or N = 3 ((Re t, Im t) input).
fn phases_of(n: usize, x: [f64; 2]) -> (Vec<f64>, Vec<[f64; 2]>) {
    if n == 2 {
        let (p, g) = su2_phases(x[0], x[1]);
        (p.to_vec(), g.to_vec())
    } else {
        let (p, g) = su3_phases(Complex::new(x[0], x[1]));
        (p.to_vec(), g.to_vec())
    }
}

/// The candle op: input `[M, 2]` (SU(2): (c, s); SU(3): (Re Tr W, Im Tr W)) → the alcove
/// phases `[M, N]`, in the input's dtype (computed in f64). CPU only; differentiable (its
/// backward applies the derivatives above).
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    pub n: usize,
}

fn rows(s: &CpuStorage, l: &Layout) -> Result<Vec<f64>> {
    use latflow_flow_common::kernels::cpu_slice;
    Ok(match s.dtype() {
        DType::F64 => cpu_slice::<f64>(s, l)?.to_vec(),
        DType::F32 => cpu_slice::<f32>(s, l)?.iter().map(|&x| x as f64).collect(),
        other => candle_core::bail!("eigenphases: f32 or f64 input expected, got {other:?}"),
    })
}

fn storage(v: Vec<f64>, dtype: DType) -> CpuStorage {
    match dtype {
        DType::F32 => CpuStorage::F32(v.into_iter().map(|x| x as f32).collect()),
        _ => CpuStorage::F64(v),
    }
}

impl CustomOp1 for Phases {
    fn name(&self) -> &'static str {
        "su_n_eigenphases"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        if !l.is_contiguous() || l.dims().len() != 2 || l.dims()[1] != 2 {
            candle_core::bail!("eigenphases: contiguous [M, 2] input expected, got {:?}", l.dims());
        }
        let x = rows(s, l)?;
        let (m, n) = (l.dims()[0], self.n);
        let mut out = vec![0.0; m * n];
        // rows are independent: any split gives the same bits
        out.par_chunks_mut(n * ROWS).zip(x.par_chunks(2 * ROWS)).for_each(|(o, r)| {
            for (o, r) in o.chunks_exact_mut(n).zip(r.chunks_exact(2)) {
                o.copy_from_slice(&phases_of(n, [r[0], r[1]]).0);
            }
        });
        Ok((storage(out, s.dtype()), Shape::from((m, n))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let x: Vec<f64> = arg.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let g: Vec<f64> = grad.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let n = self.n;
        let mut out = Vec::with_capacity(x.len());
        for (r, gr) in x.chunks_exact(2).zip(g.chunks_exact(n)) {
            let (_, d) = phases_of(n, [r[0], r[1]]);
            let (mut a, mut b) = (0.0, 0.0);
            for k in 0..n {
                a += gr[k] * d[k][0];
                b += gr[k] * d[k][1];
            }
            out.extend([a, b]);
        }
        Ok(Some(Tensor::from_vec(out, arg.shape(), arg.device())?.to_dtype(arg.dtype())?))
    }
}

/// The alcove phases of a batch `[M, 2]` (see [`Phases`]): `[M, N]`.
pub fn phases(x: &Tensor, n: usize) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Phases { n })
}

#[cfg(test)]
mod tests {
    use super::*;
    use latflow_core::gauge::Matrix;
    use latflow_core::Stream;

    fn eig_check(w: &Matrix<3>) {
        let t = w.trace();
        let (th, _) = su3_phases(t);
        assert!(th[0] >= th[1] && th[1] >= th[2] && th[0] - th[2] <= 2.0 * PI + 1e-12, "{th:?}");
        assert!((th.iter().sum::<f64>()).abs() < 1e-12);
        // each e^{iθ} is an eigenvalue: det(W − λ) = 0
        for &p in &th {
            let l = Complex::cis(p);
            let mut m = *w;
            for i in 0..3 {
                m.0[i][i] -= l;
            }
            assert!(m.det().abs() < 1e-12, "det(W − λ) = {:?}", m.det());
        }
    }

    #[test]
    fn su3_phases_are_eigenphases_in_the_alcove() {
        let mut rng = Stream::new(3, 0);
        for _ in 0..2000 {
            eig_check(&Matrix::<3>::random_haar(&mut rng));
        }
        // near the identity and near the centre elements
        for eps in [1e-1, 1e-2, 1e-3] {
            for _ in 0..50 {
                let a = Matrix::<3>::random_haar(&mut rng).traceless_antihermitian().scale(eps);
                let near = a.exp_taylor();
                eig_check(&near);
                // and near the centre element e^{2πi/3}·1
                eig_check(&near.scale_c(Complex::cis(2.0 * PI / 3.0)));
            }
        }
    }

    #[test]
    fn derivatives_match_finite_differences() {
        let mut rng = Stream::new(4, 0);
        for _ in 0..200 {
            let t = Matrix::<3>::random_haar(&mut rng).trace();
            let (_, d) = su3_phases(t);
            let h = 1e-6;
            for (c, dt) in [(0, Complex::new(h, 0.0)), (1, Complex::new(0.0, h))] {
                let (a, _) = su3_phases(t + dt);
                let (b, _) = su3_phases(t - dt);
                for k in 0..3 {
                    let fd = (a[k] - b[k]) / (2.0 * h);
                    assert!((fd - d[k][c]).abs() < 1e-5 * (1.0 + d[k][c].abs()), "k {k} c {c}: {fd} vs {}", d[k][c]);
                }
            }
        }
        let (c, s) = (0.3, 0.8);
        let (_, d) = su2_phases(c, s);
        let h = 1e-6;
        let fd_c = (su2_phases(c + h, s).0[0] - su2_phases(c - h, s).0[0]) / (2.0 * h);
        let fd_s = (su2_phases(c, s + h).0[0] - su2_phases(c, s - h).0[0]) / (2.0 * h);
        assert!((fd_c - d[0][0]).abs() < 1e-8 && (fd_s - d[0][1]).abs() < 1e-8);
    }
}
