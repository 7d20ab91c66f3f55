//! Colour vectors, spinors, the groups a Wilson operator can act with, and the field-level
//! vector operations (inner products, norms, updates, Gaussian fills) the solvers need.
//!
//! Memory: a [`ColourVector<N>`] is `N` [`Complex`] numbers, a [`Spinor<C, NS>`] is `NS`
//! colour vectors (spin-major: component (s, c) at complex offset `s·N + c`), and a spinor field
//! is a slice with one spinor per site in the lattice's row-major site order (or, for a
//! half-lattice field, in the order of [`Lattice::sites_of_parity`](crate::lattice::Lattice::sites_of_parity)).
//! All are `bytemuck::Pod` made of `f64`s only, so a field is viewed as flat reals with
//! [`crate::gauge::flat::reals`] (re, im interleaved) without copying.

use std::fmt::Debug;

use bytemuck::{Pod, Zeroable};

use crate::gauge::complex::Complex;
use crate::gauge::group::{GaugeGroup, U1Angle};
use crate::gauge::matrix::Matrix;
use crate::gauge::parallel::{RngFillError, SiteWork, fill_random, sum_sites_as};
use crate::gauge::sun::SuN;
use crate::rng::Stream;
use crate::sum::CompensatedSum;

/// A colour vector: N complex components.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ColourVector<const N: usize>(pub [Complex; N]);

impl<const N: usize> Default for ColourVector<N> {
    fn default() -> Self {
        Self([Complex::ZERO; N])
    }
}

// SAFETY: `repr(transparent)` over `[Complex; N]`, i.e. `f64`s only: no padding, the alignment
// of `f64`, every bit pattern valid, all-zero valid.
unsafe impl<const N: usize> Zeroable for ColourVector<N> {}
unsafe impl<const N: usize> Pod for ColourVector<N> {}

/// The operations a spinor kernel needs on a colour vector (implemented by [`ColourVector`]).
pub trait Colour: Copy + Clone + Debug + Default + PartialEq + Pod + Send + Sync + 'static {
    /// The number of colours N.
    const NC: usize;
    /// self + o.
    fn add(&self, o: &Self) -> Self;
    /// self − o.
    fn sub(&self, o: &Self) -> Self;
    /// self += o.
    fn add_assign(&mut self, o: &Self);
    /// self·z for a phase z = i^k (k taken mod 4): exact, no rounding.
    fn mul_phase(&self, k: u8) -> Self;
    /// self·z for a complex z.
    fn mul_c(&self, z: Complex) -> Self;
    /// self·s for a real s.
    fn scale(&self, s: f64) -> Self;
    /// self += s·o for a real s.
    fn axpy(&mut self, s: f64, o: &Self);
    /// self ← x + s·self for a real s: bit for bit `{ let mut r = *x; r.axpy(s, self); r }`,
    /// without the copy.
    fn xpay(&mut self, x: &Self, s: f64);
    /// ⟨self, o⟩ = Σ_c conj(self_c) o_c.
    fn dot(&self, o: &Self) -> Complex;
    /// Σ_c |self_c|².
    fn norm2(&self) -> f64;
    /// The components.
    fn components(&self) -> &[Complex];
    /// The components, mutable.
    fn components_mut(&mut self) -> &mut [Complex];
    /// Two colour vectors held together so that one wide instruction serves both (the two
    /// half-spinor components of a projected 4-spinor): for [`ColourVector<N>`], N lanes of
    /// (a.re, a.im, b.re, b.im).
    type Pair: Copy + Send + Sync;
    /// The pair (a, b).
    fn pair(a: &Self, b: &Self) -> Self::Pair;
    /// The two vectors of a pair.
    fn unpair(p: &Self::Pair) -> (Self, Self);
    /// p += q, per vector as [`Colour::add_assign`].
    fn pair_add_assign(p: &mut Self::Pair, q: &Self::Pair);
    /// (i^k0·a, i^k1·b), exact as [`Colour::mul_phase`].
    fn pair_phase(p: &Self::Pair, k0: u8, k1: u8) -> Self::Pair;
    /// (b, a).
    fn pair_swap(p: &Self::Pair) -> Self::Pair;
}

/// Lanes (re, im, re, im) of one colour of a [`Colour::pair`], times (i^k0, i^k1): exact.
#[inline(always)]
fn lane_phase(l: [f64; 4], k0: u8, k1: u8) -> [f64; 4] {
    let [a, b] = [phase(Complex::new(l[0], l[1]), k0), phase(Complex::new(l[2], l[3]), k1)];
    [a.re, a.im, b.re, b.im]
}

/// z·i^k for k mod 4.
#[inline(always)]
pub(crate) fn phase(z: Complex, k: u8) -> Complex {
    match k & 3 {
        0 => z,
        1 => Complex::new(-z.im, z.re),
        2 => Complex::new(-z.re, -z.im),
        _ => Complex::new(z.im, -z.re),
    }
}

impl<const N: usize> Colour for ColourVector<N> {
    const NC: usize = N;
    #[inline(always)]
    fn add(&self, o: &Self) -> Self {
        Self(std::array::from_fn(|c| self.0[c] + o.0[c]))
    }
    #[inline(always)]
    fn sub(&self, o: &Self) -> Self {
        Self(std::array::from_fn(|c| self.0[c] - o.0[c]))
    }
    #[inline(always)]
    fn add_assign(&mut self, o: &Self) {
        for c in 0..N {
            self.0[c] += o.0[c];
        }
    }
    #[inline(always)]
    fn mul_phase(&self, k: u8) -> Self {
        Self(std::array::from_fn(|c| phase(self.0[c], k)))
    }
    #[inline(always)]
    fn mul_c(&self, z: Complex) -> Self {
        Self(std::array::from_fn(|c| self.0[c] * z))
    }
    #[inline(always)]
    fn scale(&self, s: f64) -> Self {
        Self(std::array::from_fn(|c| self.0[c].scale(s)))
    }
    #[inline(always)]
    fn axpy(&mut self, s: f64, o: &Self) {
        for c in 0..N {
            self.0[c].re += s * o.0[c].re;
            self.0[c].im += s * o.0[c].im;
        }
    }
    #[inline(always)]
    fn xpay(&mut self, x: &Self, s: f64) {
        for c in 0..N {
            self.0[c].re = x.0[c].re + s * self.0[c].re;
            self.0[c].im = x.0[c].im + s * self.0[c].im;
        }
    }
    #[inline(always)]
    fn dot(&self, o: &Self) -> Complex {
        let mut z = Complex::ZERO;
        for c in 0..N {
            z += self.0[c].conj_mul(o.0[c]);
        }
        z
    }
    #[inline(always)]
    fn norm2(&self) -> f64 {
        self.0.iter().map(|z| z.abs2()).sum()
    }
    fn components(&self) -> &[Complex] {
        &self.0
    }
    fn components_mut(&mut self) -> &mut [Complex] {
        &mut self.0
    }
    type Pair = [[f64; 4]; N];
    #[inline(always)]
    fn pair(a: &Self, b: &Self) -> [[f64; 4]; N] {
        std::array::from_fn(|c| [a.0[c].re, a.0[c].im, b.0[c].re, b.0[c].im])
    }
    #[inline(always)]
    fn unpair(p: &[[f64; 4]; N]) -> (Self, Self) {
        (
            Self(std::array::from_fn(|c| Complex::new(p[c][0], p[c][1]))),
            Self(std::array::from_fn(|c| Complex::new(p[c][2], p[c][3]))),
        )
    }
    #[inline(always)]
    fn pair_add_assign(p: &mut [[f64; 4]; N], q: &[[f64; 4]; N]) {
        for c in 0..N {
            for l in 0..4 {
                p[c][l] += q[c][l];
            }
        }
    }
    #[inline(always)]
    fn pair_phase(p: &[[f64; 4]; N], k0: u8, k1: u8) -> [[f64; 4]; N] {
        std::array::from_fn(|c| lane_phase(p[c], k0, k1))
    }
    #[inline(always)]
    fn pair_swap(p: &[[f64; 4]; N]) -> [[f64; 4]; N] {
        std::array::from_fn(|c| [p[c][2], p[c][3], p[c][0], p[c][1]])
    }
}

/// A gauge group whose links act on colour vectors in the fundamental representation: what
/// the Wilson operator and its force are generic over. Implemented by [`U1Angle`] (N = 1),
/// [`Matrix<N>`] (so [`crate::gauge::Su2`], [`crate::gauge::Su3`]) and [`SuN<N>`].
pub trait WilsonGroup: GaugeGroup + HopLink<<Self as WilsonGroup>::Colour> {
    /// The colour vector type, N = [`GaugeGroup::NC`] components.
    type Colour: Colour;
    /// The link in the form the hopping term multiplies by: for U(1) the phases e^{±iθ}
    /// ([`U1Phase`]), so that a solve takes each link's sine and cosine once
    /// ([`super::HopCached`]) instead of at every hop of every iteration; for SU(N) the link
    /// itself.
    type Hop: HopLink<Self::Colour>;
    /// Whether [`super::HopCached`] precomputes [`WilsonGroup::Hop`]s (false where they are
    /// the links themselves).
    const CACHE_HOPS: bool;
    /// This link as a [`WilsonGroup::Hop`]; its products equal the link's bit for bit.
    fn hop(&self) -> Self::Hop;
    /// U·v.
    fn mul_vec(&self, v: &Self::Colour) -> Self::Colour;
    /// U†·v.
    fn dagger_mul_vec(&self, v: &Self::Colour) -> Self::Colour;
    /// The outer product a ⊗ b† (the matrix with entries a_i conj(b_j)) in the linear span of
    /// the group, the argument of [`GaugeGroup::re_trace_derivative`] in fermion forces.
    fn outer(a: &Self::Colour, b: &Self::Colour) -> Self::Mat;
    /// The product a·b in the linear span (clover leaves with weights inserted).
    fn mat_mul(a: &Self::Mat, b: &Self::Mat) -> Self::Mat;
    /// The conjugate transpose m†.
    fn mat_dagger(m: &Self::Mat) -> Self::Mat;
    /// z·m for a complex z.
    fn mat_scale(m: &Self::Mat, z: Complex) -> Self::Mat;
    /// The entry m_ij (row i, column j; i, j < N).
    fn mat_entry(m: &Self::Mat, i: usize, j: usize) -> Complex;
}

/// What the hopping term multiplies colour vectors by: U·v and U†·v.
pub trait HopLink<C: Colour>: Copy + Send + Sync {
    /// U·v.
    fn hop_mul(&self, v: &C) -> C;
    /// U†·v.
    fn hop_dagger_mul(&self, v: &C) -> C;
    /// (U·a, U·b) for a pair ([`Colour::pair`]): the two half-spinor components of a
    /// projected 4-spinor through one link, each equal bit for bit to [`HopLink::hop_mul`].
    #[inline(always)]
    fn hop_mul_pair(&self, p: &C::Pair) -> C::Pair {
        let (a, b) = C::unpair(p);
        C::pair(&self.hop_mul(&a), &self.hop_mul(&b))
    }
    /// (U†·a, U†·b), each equal bit for bit to [`HopLink::hop_dagger_mul`].
    #[inline(always)]
    fn hop_dagger_mul_pair(&self, p: &C::Pair) -> C::Pair {
        let (a, b) = C::unpair(p);
        C::pair(&self.hop_dagger_mul(&a), &self.hop_dagger_mul(&b))
    }
    /// The links as 18 reals each (row-major 3×3, (re, im)) when they are 3×3 complex
    /// matrices, for the SIMD SU(3) hopping kernel; `None` otherwise.
    fn su3_reals(_links: &[Self]) -> Option<&[f64]> {
        None
    }
}

/// A U(1) link as its two phases e^{iθ} and e^{−iθ}, exactly the values [`U1Angle`]'s products
/// compute (`Complex::cis(±θ)`), so products agree bit for bit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct U1Phase {
    pub fwd: Complex,
    pub bwd: Complex,
}

impl HopLink<ColourVector<1>> for U1Phase {
    #[inline(always)]
    fn hop_mul(&self, v: &ColourVector<1>) -> ColourVector<1> {
        ColourVector([v.0[0] * self.fwd])
    }
    #[inline(always)]
    fn hop_dagger_mul(&self, v: &ColourVector<1>) -> ColourVector<1> {
        ColourVector([v.0[0] * self.bwd])
    }
}

impl HopLink<ColourVector<1>> for U1Angle {
    #[inline(always)]
    fn hop_mul(&self, v: &ColourVector<1>) -> ColourVector<1> {
        self.mul_vec(v)
    }
    #[inline(always)]
    fn hop_dagger_mul(&self, v: &ColourVector<1>) -> ColourVector<1> {
        self.dagger_mul_vec(v)
    }
}

impl WilsonGroup for U1Angle {
    type Colour = ColourVector<1>;
    type Hop = U1Phase;
    const CACHE_HOPS: bool = true;
    #[inline(always)]
    fn hop(&self) -> U1Phase {
        U1Phase { fwd: Complex::cis(self.0), bwd: Complex::cis(-self.0) }
    }
    #[inline(always)]
    fn mul_vec(&self, v: &ColourVector<1>) -> ColourVector<1> {
        ColourVector([v.0[0] * Complex::cis(self.0)])
    }
    #[inline(always)]
    fn dagger_mul_vec(&self, v: &ColourVector<1>) -> ColourVector<1> {
        ColourVector([v.0[0] * Complex::cis(-self.0)])
    }
    #[inline(always)]
    fn outer(a: &ColourVector<1>, b: &ColourVector<1>) -> Complex {
        a.0[0] * b.0[0].conj()
    }
    #[inline(always)]
    fn mat_mul(a: &Complex, b: &Complex) -> Complex {
        *a * *b
    }
    #[inline(always)]
    fn mat_dagger(m: &Complex) -> Complex {
        m.conj()
    }
    #[inline(always)]
    fn mat_scale(m: &Complex, z: Complex) -> Complex {
        *m * z
    }
    #[inline(always)]
    fn mat_entry(m: &Complex, _i: usize, _j: usize) -> Complex {
        *m
    }
}

#[inline(always)]
fn mat_vec<const N: usize>(m: &Matrix<N>, v: &ColourVector<N>) -> ColourVector<N> {
    let mut out = [Complex::ZERO; N];
    for (i, o) in out.iter_mut().enumerate() {
        for j in 0..N {
            let (a, b) = (m.0[i][j], v.0[j]);
            o.re += a.re * b.re - a.im * b.im;
            o.im += a.re * b.im + a.im * b.re;
        }
    }
    ColourVector(out)
}

#[inline(always)]
fn mat_dagger_vec<const N: usize>(m: &Matrix<N>, v: &ColourVector<N>) -> ColourVector<N> {
    let mut out = [Complex::ZERO; N];
    for (i, o) in out.iter_mut().enumerate() {
        for j in 0..N {
            // conj(m[j][i]) · v[j]
            let (a, b) = (m.0[j][i], v.0[j]);
            o.re += a.re * b.re + a.im * b.im;
            o.im += a.re * b.im - a.im * b.re;
        }
    }
    ColourVector(out)
}

/// m·p (or m†·p for `DAG`) for a pair p of colour vectors held as lanes (a.re, a.im, b.re,
/// b.im) per colour ([`Colour::pair`]), so that one wide instruction serves both vectors (the
/// compiler vectorises the lane loops). Every lane computes exactly what [`mat_vec`] or
/// [`mat_dagger_vec`] computes, in the same order, so the bits agree.
#[inline(always)]
fn mat_vec_pair<const N: usize, const DAG: bool>(m: &Matrix<N>, v: &[[f64; 4]; N]) -> [[f64; 4]; N] {
    let mut o = [[0.0f64; 4]; N];
    for (i, oi) in o.iter_mut().enumerate() {
        for (j, vj) in v.iter().enumerate() {
            let u = if DAG { m.0[j][i] } else { m.0[i][j] };
            let w = [vj[1], vj[0], vj[3], vj[2]];
            let mut t = [0.0f64; 4];
            for (l, tl) in t.iter_mut().enumerate() {
                let p = u.re * vj[l];
                let q = u.im * w[l];
                // U·v: (u.re v.re − u.im v.im, u.re v.im + u.im v.re); U†·v conjugates u
                *tl = if (l % 2 == 0) != DAG { p - q } else { p + q };
            }
            for l in 0..4 {
                oi[l] += t[l];
            }
        }
    }
    o
}

#[inline(always)]
fn mat_outer<const N: usize>(a: &ColourVector<N>, b: &ColourVector<N>) -> Matrix<N> {
    Matrix(std::array::from_fn(|i| std::array::from_fn(|j| a.0[i] * b.0[j].conj())))
}

impl<const N: usize> HopLink<ColourVector<N>> for Matrix<N> {
    #[inline(always)]
    fn hop_mul(&self, v: &ColourVector<N>) -> ColourVector<N> {
        mat_vec(self, v)
    }
    #[inline(always)]
    fn hop_dagger_mul(&self, v: &ColourVector<N>) -> ColourVector<N> {
        mat_dagger_vec(self, v)
    }
    #[inline(always)]
    fn hop_mul_pair(&self, p: &[[f64; 4]; N]) -> [[f64; 4]; N] {
        mat_vec_pair::<N, false>(self, p)
    }
    #[inline(always)]
    fn hop_dagger_mul_pair(&self, p: &[[f64; 4]; N]) -> [[f64; 4]; N] {
        mat_vec_pair::<N, true>(self, p)
    }
    fn su3_reals(links: &[Self]) -> Option<&[f64]> {
        (N == 3).then(|| bytemuck::cast_slice(links))
    }
}

impl<const N: usize> HopLink<ColourVector<N>> for SuN<N> {
    #[inline(always)]
    fn hop_mul(&self, v: &ColourVector<N>) -> ColourVector<N> {
        mat_vec(&self.0, v)
    }
    #[inline(always)]
    fn hop_dagger_mul(&self, v: &ColourVector<N>) -> ColourVector<N> {
        mat_dagger_vec(&self.0, v)
    }
    #[inline(always)]
    fn hop_mul_pair(&self, p: &[[f64; 4]; N]) -> [[f64; 4]; N] {
        mat_vec_pair::<N, false>(&self.0, p)
    }
    #[inline(always)]
    fn hop_dagger_mul_pair(&self, p: &[[f64; 4]; N]) -> [[f64; 4]; N] {
        mat_vec_pair::<N, true>(&self.0, p)
    }
}

impl<const N: usize> WilsonGroup for Matrix<N>
where
    Matrix<N>: GaugeGroup<Mat = Matrix<N>>,
{
    type Colour = ColourVector<N>;
    type Hop = Matrix<N>;
    const CACHE_HOPS: bool = false;
    #[inline(always)]
    fn hop(&self) -> Matrix<N> {
        *self
    }
    #[inline(always)]
    fn mul_vec(&self, v: &ColourVector<N>) -> ColourVector<N> {
        mat_vec(self, v)
    }
    #[inline(always)]
    fn dagger_mul_vec(&self, v: &ColourVector<N>) -> ColourVector<N> {
        mat_dagger_vec(self, v)
    }
    #[inline(always)]
    fn outer(a: &ColourVector<N>, b: &ColourVector<N>) -> Matrix<N> {
        mat_outer(a, b)
    }
    #[inline(always)]
    fn mat_mul(a: &Matrix<N>, b: &Matrix<N>) -> Matrix<N> {
        *a * *b
    }
    #[inline(always)]
    fn mat_dagger(m: &Matrix<N>) -> Matrix<N> {
        m.dagger()
    }
    #[inline(always)]
    fn mat_scale(m: &Matrix<N>, z: Complex) -> Matrix<N> {
        m.scale_c(z)
    }
    #[inline(always)]
    fn mat_entry(m: &Matrix<N>, i: usize, j: usize) -> Complex {
        m.0[i][j]
    }
}

impl<const N: usize> WilsonGroup for SuN<N> {
    type Colour = ColourVector<N>;
    type Hop = SuN<N>;
    const CACHE_HOPS: bool = false;
    #[inline(always)]
    fn hop(&self) -> SuN<N> {
        *self
    }
    #[inline(always)]
    fn mul_vec(&self, v: &ColourVector<N>) -> ColourVector<N> {
        mat_vec(&self.0, v)
    }
    #[inline(always)]
    fn dagger_mul_vec(&self, v: &ColourVector<N>) -> ColourVector<N> {
        mat_dagger_vec(&self.0, v)
    }
    #[inline(always)]
    fn outer(a: &ColourVector<N>, b: &ColourVector<N>) -> Matrix<N> {
        mat_outer(a, b)
    }
    #[inline(always)]
    fn mat_mul(a: &Matrix<N>, b: &Matrix<N>) -> Matrix<N> {
        *a * *b
    }
    #[inline(always)]
    fn mat_dagger(m: &Matrix<N>) -> Matrix<N> {
        m.dagger()
    }
    #[inline(always)]
    fn mat_scale(m: &Matrix<N>, z: Complex) -> Matrix<N> {
        m.scale_c(z)
    }
    #[inline(always)]
    fn mat_entry(m: &Matrix<N>, i: usize, j: usize) -> Complex {
        m.0[i][j]
    }
}

/// A Dirac spinor at one site: `NS` spin components (2 in 2D, 4 in 4D), each a colour vector.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spinor<C, const NS: usize>(pub [C; NS]);

impl<C: Colour, const NS: usize> Default for Spinor<C, NS> {
    fn default() -> Self {
        Self([C::default(); NS])
    }
}

// SAFETY: `repr(transparent)` over `[C; NS]` with `C: Pod`: no padding beyond C's (none), every
// bit pattern valid, all-zero valid.
unsafe impl<C: Pod, const NS: usize> Zeroable for Spinor<C, NS> {}
unsafe impl<C: Pod, const NS: usize> Pod for Spinor<C, NS> {}

/// The spinor type of group `G` with `NS` spin components.
pub type SpinorOf<G, const NS: usize> = Spinor<<G as WilsonGroup>::Colour, NS>;

impl<C: Colour, const NS: usize> Spinor<C, NS> {
    /// ⟨self, o⟩ = Σ_{s,c} conj(self) o.
    #[inline]
    pub fn dot(&self, o: &Self) -> Complex {
        let mut z = Complex::ZERO;
        for s in 0..NS {
            z += self.0[s].dot(&o.0[s]);
        }
        z
    }

    /// Σ_{s,c} |self|².
    #[inline]
    pub fn norm2(&self) -> f64 {
        self.0.iter().map(|c| c.norm2()).sum()
    }

    /// Whether every component is finite.
    pub fn is_finite(&self) -> bool {
        self.0.iter().all(|c| c.components().iter().all(|z| z.is_finite()))
    }
}

/// Spinors per chunk of a parallel site loop (independent of the thread count).
pub const SPINOR_CHUNK: usize = 128;
/// Below this many sites, spinor loops run on the calling thread.
pub const SPINOR_PARALLEL_MIN: usize = 512;

/// `out[i] = f(i)` for every i, in fixed chunks of [`SPINOR_CHUNK`], in parallel for long
/// slices. Each item is computed independently, so the bits do not depend on the threads.
/// Allocates nothing.
#[inline]
pub(crate) fn par_fill<T: Send>(out: &mut [T], f: impl Fn(usize, &mut T) + Sync) {
    let body = |(c, block): (usize, &mut [T])| {
        for (j, o) in block.iter_mut().enumerate() {
            f(c * SPINOR_CHUNK + j, o);
        }
    };
    let parallel = out.len() >= SPINOR_PARALLEL_MIN && crate::par::threads() > 1;
    crate::par::chunks_mut_when(parallel, out, SPINOR_CHUNK, |c, block| body((c, block)));
}

/// `f(i, block i)` for the consecutive blocks of `block` items of `out`, in fixed chunks of
/// [`SPINOR_CHUNK`] blocks, in parallel for many blocks (each block independently: the bits
/// do not depend on the threads). Allocates nothing.
pub(crate) fn par_fill_blocks<T: Send>(out: &mut [T], block: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let block = block.max(1);
    let body = |(c, chunk): (usize, &mut [T])| {
        for (j, o) in chunk.chunks_mut(block).enumerate() {
            f(c * SPINOR_CHUNK + j, o);
        }
    };
    let parallel = out.len() / block >= SPINOR_PARALLEL_MIN && crate::par::threads() > 1;
    crate::par::chunks_mut_when(parallel, out, SPINOR_CHUNK * block, |c, chunk| body((c, chunk)));
}

/// The work of one site of a spinor reduction, for [`sum_sites_as`]: it reads 2 × 192 bytes
/// (or 192), so a reduction over the V/2 = 2048 sites of an even–odd 8⁴ field (the CG's
/// `re_dot` and `norm2` between operator applications) is worth splitting over the threads.
const SPINOR_SUM_WORK: SiteWork = SiteWork::Heavy;

/// Re⟨a, b⟩ = Re Σ_x a(x)† b(x), a compensated sum in fixed chunks (bit-identical for any
/// thread count). Slices must have equal lengths (the shorter length is used otherwise).
pub fn re_dot<C: Colour, const NS: usize>(a: &[Spinor<C, NS>], b: &[Spinor<C, NS>]) -> f64 {
    let n = a.len().min(b.len());
    sum_sites_as(SPINOR_SUM_WORK, n, |x, s: &mut CompensatedSum| s.add(a[x].dot(&b[x]).re))
}

/// The complex ⟨a, b⟩ = Σ_x a(x)† b(x), compensated, in fixed chunks (bit-identical for any
/// thread count).
pub fn dot<C: Colour, const NS: usize>(a: &[Spinor<C, NS>], b: &[Spinor<C, NS>]) -> Complex {
    let n = a.len().min(b.len());
    let re = sum_sites_as(SPINOR_SUM_WORK, n, |x, s: &mut CompensatedSum| s.add(a[x].dot(&b[x]).re));
    let im = sum_sites_as(SPINOR_SUM_WORK, n, |x, s: &mut CompensatedSum| s.add(a[x].dot(&b[x]).im));
    Complex::new(re, im)
}

/// |a|² = Σ_x a(x)† a(x), compensated, in fixed chunks.
pub fn norm2<C: Colour, const NS: usize>(a: &[Spinor<C, NS>]) -> f64 {
    sum_sites_as(SPINOR_SUM_WORK, a.len(), |x, s: &mut CompensatedSum| s.add(a[x].norm2()))
}

/// y ← y + s·x (real s), site by site in parallel (no reduction: bit-identical).
pub fn axpy<C: Colour, const NS: usize>(s: f64, x: &[Spinor<C, NS>], y: &mut [Spinor<C, NS>]) {
    par_fill(y, |i, o| {
        for k in 0..NS {
            o.0[k].axpy(s, &x[i].0[k]);
        }
    });
}

/// y ← x + s·y (real s), site by site in parallel.
pub fn xpay<C: Colour, const NS: usize>(x: &[Spinor<C, NS>], s: f64, y: &mut [Spinor<C, NS>]) {
    par_fill(y, |i, o| {
        for k in 0..NS {
            let mut v = x[i].0[k];
            v.axpy(s, &o.0[k]);
            o.0[k] = v;
        }
    });
}

/// Fills `out` with Gaussian noise of density ∝ exp(−Σ_x η(x)†η(x)): every real and imaginary
/// part an independent N(0, ½), so that ⟨η η†⟩ = 1. This is the heat-bath draw of a
/// pseudofermion, φ = D†η. Parallel and bit-identical for any thread count; the stream advances
/// as [`fill_random`] documents.
pub fn fill_gaussian<C: Colour, const NS: usize>(
    out: &mut [Spinor<C, NS>],
    rng: &mut Stream,
) -> Result<(), RngFillError> {
    let sd = std::f64::consts::FRAC_1_SQRT_2;
    fill_random(out, rng, |s, sp| {
        for c in sp.0.iter_mut() {
            for z in c.components_mut() {
                z.re = sd * s.normal();
                z.im = sd * s.normal();
            }
        }
    })
}
