//! SU(3): Cayley–Hamilton exponential, Haar elements and reunitarisation.
//!
//! The exponential follows Morningstar and Peardon (Phys. Rev. D 69 (2004) 054501, §III):
//! for a Hermitian traceless Q, exp(iQ) = f₀ + f₁ Q + f₂ Q², with the f_j computed from the
//! invariants c₀ = det Q and c₁ = ½ Tr Q².

use super::algebra::SuAlg;
use super::group::LieAlgebra;
use super::complex::Complex;
use super::matrix::Matrix;
use crate::rng::Stream;

/// An SU(3) link (also used for sums of SU(3) matrices such as staples).
pub type Su3 = Matrix<3>;

/// Below this c₁ = ½ Tr Q² (i.e. ‖X‖_F < 0.01) a 10-term Taylor series is used: its
/// remainder, ‖X‖¹¹/11! < 1e-29, is far below rounding, while the closed form divides by
/// 9u² − w² ∝ c₁.
const C1_TAYLOR: f64 = 5e-5;

/// (−1)^k/k! for even and odd k: `SERIES[k]` = ((−1)^k/(2k)!, (−1)^k/(2k+1)!), k = 0…11.
/// The factorials are exact in f64 up to 22!, so every entry used (up to 1/22!) is correctly
/// rounded.
const SERIES: [(f64, f64); 12] = {
    let mut t = [(0.0, 0.0); 12];
    let mut f = 1.0; // (2k)!
    let mut k = 0;
    while k < 12 {
        if k > 0 {
            f *= ((2 * k - 1) * (2 * k)) as f64;
        }
        let sign = if k % 2 == 0 { 1.0 } else { -1.0 };
        t[k] = (sign / f, sign / (f * (2 * k + 1) as f64));
        k += 1;
    }
    t
};

/// Arguments up to this size take the Taylor series in [`sin_cos_sinc`].
const SERIES_MAX: f64 = 1.0;

/// (sin x, cos x, sin x / x) for x ≥ 0. For x ≤ 1 from the Taylor series of cos x and
/// sin x / x in y = x² (through x²² and x²¹ for sin x; the first omitted terms are below 4e-23
/// relative), evaluated by Estrin's scheme (pairs of coefficients combined with y, y², y⁴, y⁸,
/// a dependency chain of five steps instead of Horner's eleven): accurate to about an ulp,
/// without cancellation in sin x / x at small x, and the same bits on every machine. Beyond,
/// from the platform's sin and cos.
#[inline]
fn sin_cos_sinc(x: f64) -> (f64, f64, f64) {
    if x > SERIES_MAX {
        let (s, c) = x.sin_cos();
        return (s, c, s / x);
    }
    series(x)
}

/// [`sin_cos_sinc`] of `N` arguments at once: the series of every lane (independent chains
/// that overlap, and vectorise), then the platform's sin and cos for lanes beyond
/// [`SERIES_MAX`]. Each lane has the bits of [`sin_cos_sinc`].
#[inline(always)]
fn sin_cos_sinc_many<const N: usize>(x: [f64; N]) -> ([f64; N], [f64; N], [f64; N]) {
    let mut out = (x, x, x);
    for l in 0..N {
        (out.0[l], out.1[l], out.2[l]) = series(x[l]);
    }
    for l in 0..N {
        if x[l] > SERIES_MAX {
            (out.0[l], out.1[l], out.2[l]) = sin_cos_sinc(x[l]);
        }
    }
    out
}

/// The Taylor series of [`sin_cos_sinc`] (for 0 ≤ x ≤ [`SERIES_MAX`]; any x gives a finite
/// result, meaningless beyond).
#[inline(always)]
fn series(x: f64) -> (f64, f64, f64) {
    let c = |k: usize| SERIES[k].0;
    let s = |k: usize| SERIES[k].1;
    let y = x * x;
    let (y2, y4, y8) = (y * y, y * y * (y * y), y * y * (y * y) * (y * y * (y * y)));
    let cos = ((c(0) + c(1) * y) + (c(2) + c(3) * y) * y2 + ((c(4) + c(5) * y) + (c(6) + c(7) * y) * y2) * y4)
        + ((c(8) + c(9) * y) + (c(10) + c(11) * y) * y2) * y8;
    let sinc = ((s(0) + s(1) * y) + (s(2) + s(3) * y) * y2 + ((s(4) + s(5) * y) + (s(6) + s(7) * y) * y2) * y4)
        + ((s(8) + s(9) * y) + s(10) * y2) * y8;
    (x * sinc, cos, sinc)
}

/// A 3×3 complex matrix as three rows of (re, im) pairs: the memory of [`Su3`] (and of
/// `SuAlg<3>`), for the row-wise products below.
pub type Rows = [[f64; 6]; 3];

/// The rows of `m` (no copy).
#[inline(always)]
pub fn rows(m: &Su3) -> &Rows {
    bytemuck::cast_ref(m)
}

/// i·r for a row r of three complex numbers: (re, im) → (−im, re).
#[inline(always)]
fn times_i(r: &[f64; 6]) -> [f64; 6] {
    [-r[1], r[0], -r[3], r[2], -r[5], r[4]]
}

/// A·B, row by row: row i is Σ_k A_ik · (row k of B), the complex scalar A_ik applied to the
/// whole row as Re(A_ik)·row + Im(A_ik)·(i·row), so that every operation is a multiply or an
/// add on six-real rows (packed instructions). Each entry is summed in k order with each
/// complex product rounded as (a.re b.re − a.im b.im, a.re b.im + a.im b.re): the bits of the
/// textbook sum. The sums start from −0.0, which adds nothing (−0.0 + x is x for every x, the
/// sign of a zero included), so the compiler drops that first addition. Inlined everywhere, so
/// that callers compiled for wider vector units use them.
#[inline(always)]
pub fn mul_rows(a: &Rows, b: &Rows) -> Rows {
    let bi = [times_i(&b[0]), times_i(&b[1]), times_i(&b[2])];
    let mut c = [[-0.0; 6]; 3];
    for i in 0..3 {
        for k in 0..3 {
            let (re, im) = (a[i][2 * k], a[i][2 * k + 1]);
            for j in 0..6 {
                c[i][j] += re * b[k][j] + im * bi[k][j];
            }
        }
    }
    c
}

/// B†.
#[inline(always)]
pub fn adj_rows(b: &Rows) -> Rows {
    let mut t = [[0.0; 6]; 3];
    for k in 0..3 {
        for j in 0..3 {
            t[k][2 * j] = b[j][2 * k];
            t[k][2 * j + 1] = -b[j][2 * k + 1];
        }
    }
    t
}

/// A·B† (the bits of [`Matrix::mul_dagger`]).
#[inline(always)]
pub fn mul_adj_rows(a: &Rows, b: &Rows) -> Rows {
    mul_rows(a, &adj_rows(b))
}

/// A†·B (the bits of [`Matrix::dagger_mul`]).
#[inline(always)]
pub fn adj_mul_rows(a: &Rows, b: &Rows) -> Rows {
    mul_rows(&adj_rows(a), b)
}

/// Re Tr(A·B†) = Σ_ij Re(A_ij conj(B_ij)), the dot product of the 18 reals (one partial sum
/// per row, added in row order).
#[inline(always)]
pub fn re_tr_mul_adj_rows(a: &Rows, b: &Rows) -> f64 {
    let mut s = [0.0; 3];
    for i in 0..3 {
        for j in 0..6 {
            s[i] += a[i][j] * b[i][j];
        }
    }
    (s[0] + s[1]) + s[2]
}

/// The f_j of Morningstar–Peardon eq. (29)–(34) for each lane's c₀ ≥ 0 and c₁ > 0 (a lane
/// with c₁ = 0 gives non-finite f_j, and no panic). Transcendental calls: one acos per lane;
/// the sines and cosines of θ/3, w and u come from [`sin_cos_sinc_many`], and e^{2iu} from
/// e^{iu} by the double-angle formulas. Every stage runs over all lanes before the next, so
/// that the lanes' long dependency chains (square roots, acos, the series) overlap; each
/// lane's operations are those of one lane alone.
#[inline(always)]
fn mp_coefficients<const N: usize>(c0: [f64; N], c1: [f64; N]) -> [[Complex; 3]; N] {
    // plain loops over lanes (`array::from_fn` left calls and copies in the loop)
    let (mut root_third, mut theta) = ([0.0; N], [0.0; N]);
    for l in 0..N {
        let third = c1[l] / 3.0;
        root_third[l] = third.sqrt();
        let c0max = 2.0 * third * root_third[l];
        theta[l] = (c0[l] / c0max).min(1.0).acos() / 3.0;
    }
    let (s3, c3, _) = sin_cos_sinc_many(theta);
    let (mut u, mut w) = ([0.0; N], [0.0; N]);
    for l in 0..N {
        u[l] = root_third[l] * c3[l];
        w[l] = c1[l].sqrt() * s3[l];
    }
    let (_, cw, xi0) = sin_cos_sinc_many(w);
    let (su, cu, _) = sin_cos_sinc_many(u);
    let mut f = [[Complex::ZERO; 3]; N];
    for l in 0..N {
        let (u, w, cw, xi0) = (u[l], w[l], cw[l], xi0[l]);
        let (u2, w2) = (u * u, w * w);
        let e2iu = Complex::new(cu[l] * cu[l] - su[l] * su[l], 2.0 * su[l] * cu[l]);
        let emiu = Complex::new(cu[l], -su[l]);
        let h0 = e2iu.scale(u2 - w2) + emiu * Complex::new(8.0 * u2 * cw, 2.0 * u * (3.0 * u2 + w2) * xi0);
        let h1 = e2iu.scale(2.0 * u) - emiu * Complex::new(2.0 * u * cw, -(3.0 * u2 - w2) * xi0);
        let h2 = e2iu - emiu * Complex::new(cw, 3.0 * u * xi0);
        let d = 1.0 / (9.0 * u2 - w2);
        f[l] = [h0.scale(d), h1.scale(d), h2.scale(d)];
    }
    f
}

/// exp(X) for X ∈ su(3): with Q = −iX, exp(X) = f₀ − i f₁ X − f₂ X². Inlinable, so that
/// callers compiled for wider vector units use them in it.
#[inline]
pub fn exp(x: &SuAlg<3>) -> Su3 {
    let [e] = exp_many(&[*x]);
    e
}

/// [`exp`] of `N` elements at once, each with the bits of [`exp`]: the stages of the closed
/// form run over all `N` before the next, so that their latency-bound chains (a square root, a
/// division, an acos and three series per element) overlap instead of running one after the
/// other. The HMC drift and the gradient flow take them four at a time ([`exp_mul_into`]).
#[inline(always)]
pub fn exp_many<const N: usize>(xs: &[SuAlg<3>; N]) -> [Su3; N] {
    let (mut c0, mut c1) = ([0.0; N], [0.0; N]);
    for l in 0..N {
        c1[l] = 0.5 * xs[l].0.norm2();
        // det Q = det(−iX) = i det X, real for traceless anti-Hermitian X.
        c0[l] = -xs[l].0.det().im;
    }
    let mut c0abs = c0;
    for c in &mut c0abs {
        *c = c.abs();
    }
    let f = mp_coefficients(c0abs, c1);
    let mut out = [Matrix::zero(); N];
    for l in 0..N {
        let x = &xs[l].0;
        out[l] = if c1[l] < C1_TAYLOR {
            let mut sum = Matrix::identity();
            for k in (1..=10).rev() {
                sum = Matrix::identity() + (*x * sum).scale(1.0 / f64::from(k));
            }
            sum
        } else {
            let mut f = f[l];
            if c0[l] < 0.0 {
                // f_j(−c₀) = (−1)^j f_j(c₀)*
                f = [f[0].conj(), -f[1].conj(), f[2].conj()];
            }
            let x2 = *x * *x;
            let mut m = x.scale_c(Complex::new(f[1].im, -f[1].re)) - x2.scale_c(f[2]);
            for i in 0..3 {
                m.0[i][i] += f[0];
            }
            m
        };
    }
    out
}

/// `links[i] ← exp(s·x[i])·links[i]` (with `x[i]` itself where s = 1), four exponentials at a
/// time ([`exp_many`]): the bits of [`exp`] and the product link by link
/// ([`GaugeGroup::exp_mul_into`](super::GaugeGroup::exp_mul_into)).
#[inline(always)]
pub fn exp_mul_into(links: &mut [Su3], x: &[SuAlg<3>], s: f64) {
    let scaled = |q: &SuAlg<3>| if s == 1.0 { *q } else { q.scale(s) };
    let mut links = links.chunks_mut(4);
    let mut x = x.chunks(4);
    for (ls, qs) in links.by_ref().zip(x.by_ref()) {
        if let (Ok(ls), Ok(qs)) = (<&mut [Su3; 4]>::try_from(&mut *ls), <&[SuAlg<3>; 4]>::try_from(qs)) {
            // a plain loop (`array::map` left calls and copies in the loop)
            let mut xs = *qs;
            for q in &mut xs {
                *q = scaled(q);
            }
            let es = exp_many(&xs);
            for (l, e) in ls.iter_mut().zip(&es) {
                *l = *e * *l;
            }
        } else {
            for (l, q) in ls.iter_mut().zip(qs) {
                *l = exp(&scaled(q)) * *l;
            }
        }
    }
}

/// The third row of an SU(3) matrix from its first two: (r₀ × r₁)*.
#[inline]
fn cross_conj(a: &[Complex; 3], b: &[Complex; 3]) -> [Complex; 3] {
    [(a[1] * b[2] - a[2] * b[1]).conj(), (a[2] * b[0] - a[0] * b[2]).conj(), (a[0] * b[1] - a[1] * b[0]).conj()]
}

/// Projects onto SU(3): normalise row 0, orthogonalise row 1 against it and normalise, and
/// build row 2 as the conjugate cross product (so det = 1 exactly up to rounding). Returns the
/// deviation ‖U†U − 1‖_F + |det U − 1| it had before.
#[inline]
pub fn reunitarize(u: &mut Su3) -> f64 {
    let dev = u.unitarity_deviation();
    project(u);
    dev
}

/// The projection of [`reunitarize`] without measuring the deviation first (for updates that
/// do not record it).
#[inline]
pub fn project(u: &mut Su3) {
    let n0 = 1.0 / u.0[0].iter().map(|z| z.abs2()).sum::<f64>().sqrt();
    for z in &mut u.0[0] {
        *z = z.scale(n0);
    }
    // project twice, so that row 1 is orthogonal to rounding even when nearly parallel
    for _ in 0..2 {
        let mut dot = Complex::ZERO;
        for j in 0..3 {
            dot += u.0[0][j].conj_mul(u.0[1][j]);
        }
        for j in 0..3 {
            let sub = u.0[0][j] * dot;
            u.0[1][j] -= sub;
        }
    }
    let n1 = 1.0 / u.0[1].iter().map(|z| z.abs2()).sum::<f64>().sqrt();
    for z in &mut u.0[1] {
        *z = z.scale(n1);
    }
    u.0[2] = cross_conj(&u.0[0], &u.0[1]);
}

/// A Haar element: two rows of complex normals (12 normals, row by row, re before im),
/// orthonormalised, third row (r₀ × r₁)*. The first two rows of a Haar U(3) matrix are so
/// distributed, and completing them to det = 1 gives Haar SU(3).
#[inline]
pub fn random(rng: &mut Stream) -> Su3 {
    let mut u = Matrix::zero();
    for row in u.0.iter_mut().take(2) {
        for z in row {
            *z = Complex::new(rng.normal(), rng.normal());
        }
    }
    project(&mut u);
    u
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gauge::group::LieAlgebra;

    #[test]
    fn series_sine_and_cosine_match_the_platform() {
        let mut worst: f64 = 0.0;
        for i in 0..=20_000 {
            let x = i as f64 * (1.5 / 20_000.0);
            let (s, c, sc) = sin_cos_sinc(x);
            worst = worst.max((s - x.sin()).abs()).max((c - x.cos()).abs());
            if x > 0.0 {
                worst = worst.max((sc - x.sin() / x).abs());
            }
        }
        assert!(worst < 4e-16, "{worst:e}");
        let (s, c, sc) = sin_cos_sinc(1e-9);
        assert!(s == 1e-9 && c == 1.0 && sc == 1.0);
        assert_eq!(sin_cos_sinc(0.0), (0.0, 1.0, 1.0));
    }

    /// The bits of every real of `m`, row by row.
    fn bits(m: &Su3) -> Vec<u64> {
        m.0.iter().flatten().flat_map(|z| [z.re.to_bits(), z.im.to_bits()]).collect()
    }

    #[test]
    fn exp_many_gives_the_bits_of_exp_in_every_lane() {
        // lanes of every branch side by side: the Taylor series (tiny X), the closed form with
        // series sines (‖X‖ < 1) and with the platform's (large X), both signs of det, zero
        let mut rng = Stream::new(32, 0);
        for _ in 0..50 {
            let xs: [SuAlg<3>; 8] = std::array::from_fn(|l| {
                let size = [1e-4, 0.05, 0.3, 0.9, 2.0, 5.0, 12.0, 0.0][l];
                SuAlg::<3>::gaussian(&mut rng).scale(size)
            });
            let xs = [xs[3], xs[0], xs[6], xs[7], xs[1], xs[5], xs[2], xs[4]];
            let many = exp_many(&xs);
            for (x, e) in xs.iter().zip(&many) {
                let one = exp(x);
                assert_eq!(bits(&one), bits(e), "‖X‖² = {}", x.0.norm2());
                if x.0.norm2() < 4.0 {
                    assert!((one - x.0.exp_taylor()).norm2().sqrt() < 1e-13);
                }
            }
            let three = exp_many(&[xs[0], xs[1], xs[2]]);
            for (x, e) in xs.iter().zip(&three) {
                assert_eq!(bits(&exp(x)), bits(e));
            }
        }
    }

    #[test]
    fn exp_mul_into_gives_the_bits_of_link_by_link() {
        // 4 + 3 links (a chunk of four and a remainder), a scaled and an unscaled step
        let mut rng = Stream::new(33, 0);
        let links: Vec<Su3> = (0..7).map(|_| random(&mut rng)).collect();
        let x: Vec<SuAlg<3>> = (0..7).map(|_| SuAlg::<3>::gaussian(&mut rng)).collect();
        for s in [0.07, 1.0, -0.3] {
            let mut got = links.clone();
            exp_mul_into(&mut got, &x, s);
            for ((u, q), g) in links.iter().zip(&x).zip(&got) {
                let e = if s == 1.0 { exp(q) } else { exp(&q.scale(s)) };
                assert_eq!(bits(&(e * *u)), bits(g), "s = {s}");
            }
        }
    }

    #[test]
    fn degenerate_and_negative_determinant_cases() {
        // Q ∝ λ₈ has two equal eigenvalues (θ = 0 or π in the closed form), both signs of c₀.
        for s in [-3.0, -0.4, 0.02, 0.4, 3.0] {
            let mut c = [0.0; 8];
            c[7] = s;
            let x = SuAlg::<3>::from_coeffs(&c);
            let e = exp(&x);
            let r = x.0.exp_taylor();
            assert!((e - r).norm2().sqrt() < 1e-14, "s = {s}: {}", (e - r).norm2().sqrt());
        }
    }

    #[test]
    fn reunitarize_restores_the_group() {
        let mut rng = Stream::new(31, 0);
        for _ in 0..100 {
            let u = random(&mut rng);
            assert!(u.unitarity_deviation() < 1e-14);
            let mut w = u;
            w.0[1][2].re += 1e-3;
            w.0[0][0].im -= 2e-3;
            let dev = reunitarize(&mut w);
            assert!(dev > 1e-3);
            assert!(w.unitarity_deviation() < 1e-14);
            assert!((w - u).norm2().sqrt() < 1e-2);
        }
    }
}
