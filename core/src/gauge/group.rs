//! The group and algebra traits that the gauge fields and the HMC field space are generic over,
//! and U(1) in the angle representation.
//!
//! Conventions (shared by every group here):
//! * A link U is a group element; the trace normalisation is Re Tr 1 = [`GaugeGroup::NC`].
//! * The Lie algebra is spanned by X_a = i T^a with Hermitian generators T^a. For SU(N),
//!   Tr(T^a T^b) = ½ δ^{ab} (T^a = σ^a/2 for SU(2), λ^a/2 for SU(3)); for U(1), T = 1.
//! * An algebra element is X = Σ_a x^a X_a with real coefficients x^a. Its
//!   [`LieAlgebra::norm2`] is Σ_a (x^a)², so the HMC kinetic energy is
//!   K = ½ Σ_links Σ_a (p^a)², which for SU(N) equals −Σ_links Tr P², and momenta are drawn
//!   with every p^a an independent N(0, 1).
//! * Fields move by left multiplication, U ← exp(εP) U, and the force F of an action S is the
//!   algebra element with coefficients F^a = d/dt S(exp(t X_a) U)|_{t=0}; HMC then kicks
//!   P ← P − εF.

use std::fmt::Debug;
use std::ops::AddAssign;

use super::complex::Complex;
use crate::rng::Stream;

/// A real Lie algebra with a fixed basis (see the module docs for the normalisation).
pub trait LieAlgebra: Copy + Clone + Debug + PartialEq + Send + Sync + 'static {
    /// The number of generators (the dimension of the algebra).
    const N_GEN: usize;
    /// The zero element.
    fn zero() -> Self;
    /// self += s · other.
    fn axpy(&mut self, s: f64, other: &Self);
    /// s · self.
    fn scale(&self, s: f64) -> Self;
    /// Σ_a (x^a)², the squared length in the coefficient metric.
    fn norm2(&self) -> f64;
    /// An element with independent N(0, 1) coefficients, drawn in basis order (one normal per
    /// generator), so that its density is ∝ exp(−½ norm2).
    fn gaussian(rng: &mut Stream) -> Self;
    /// Writes the N_GEN real coefficients x^a to `out[..N_GEN]`.
    fn write_coeffs(&self, out: &mut [f64]);
    /// The element Σ_a c_a X_a from the coefficients `c[..N_GEN]`.
    fn from_coeffs(c: &[f64]) -> Self;
}

/// Validates the gauge coupling β of a run card: finite and ≥ 0 (β = 0 is the Haar measure);
/// the error names the key `beta`.
pub fn check_beta(beta: f64) -> Result<f64, crate::abi::PluginError> {
    if !beta.is_finite() {
        return Err(crate::abi::PluginError::config(format!("beta: must be a finite number, got {beta}")));
    }
    if beta < 0.0 {
        return Err(crate::abi::PluginError::config(format!("beta: must be ≥ 0 (β = 0 is the Haar measure), got {beta}")));
    }
    Ok(beta)
}

/// The lattice of a gauge theory's run card (`lattice`, extents from the outermost axis): a valid
/// [`crate::Lattice`] of at least 2 dimensions, else a config error naming the key.
pub fn gauge_lattice(extents: &[i64]) -> Result<crate::Lattice, crate::abi::PluginError> {
    let lattice = crate::Lattice::new(extents).map_err(|e| crate::abi::PluginError::config(format!("lattice: {e}")))?;
    if lattice.dim() < 2 {
        return Err(crate::abi::PluginError::config(format!(
            "lattice: a gauge theory needs at least 2 dimensions, got {}",
            lattice.dim()
        )));
    }
    Ok(lattice)
}

/// The one parameter of a pure-gauge theory, `beta`, as `Physics::parameter` reads it: `beta`
/// for `name = "beta"`, else an Unsupported error naming the plugin `theory` and its parameter.
pub fn beta_parameter(theory: &str, beta: f64, name: &str) -> Result<f64, crate::abi::PluginError> {
    match name {
        "beta" => Ok(beta),
        other => Err(no_beta_parameter(theory, other)),
    }
}

/// Sets a pure-gauge theory's `beta` (`Physics::set_parameter`): `value` validated by
/// [`check_beta`]; any other `name` is an Unsupported error naming the plugin `theory`. On an
/// error `beta` is unchanged.
pub fn set_beta_parameter(theory: &str, beta: &mut f64, name: &str, value: f64) -> Result<(), crate::abi::PluginError> {
    match name {
        "beta" => *beta = check_beta(value)?,
        other => return Err(no_beta_parameter(theory, other)),
    }
    Ok(())
}

fn no_beta_parameter(theory: &str, name: &str) -> crate::abi::PluginError {
    crate::abi::PluginError::unsupported(format!("{theory} has no parameter '{name}' (it has beta)"))
}

/// A compact matrix Lie group whose elements live on links.
pub trait GaugeGroup: Copy + Clone + Debug + PartialEq + Send + Sync + 'static {
    /// Its Lie algebra (momenta and forces).
    type Algebra: LieAlgebra;
    /// The linear span of the group (sums of paths such as staples): N×N complex matrices
    /// for SU(N), complex numbers for U(1).
    type Mat: Copy + Clone + Debug + Default + AddAssign + Send + Sync + 'static;
    /// The matrix size N, so that Re Tr 1 = N.
    const NC: usize;
    /// Reals per element in the flat configuration layout.
    const REALS: usize;

    /// The identity.
    fn identity() -> Self;
    /// self · other.
    fn mul(&self, other: &Self) -> Self;
    /// self · other†.
    fn mul_dagger(&self, other: &Self) -> Self;
    /// self† · other.
    fn dagger_mul(&self, other: &Self) -> Self;
    /// The inverse U†.
    fn dagger(&self) -> Self;
    /// Tr U.
    fn trace(&self) -> Complex;
    /// Re Tr U.
    fn re_trace(&self) -> f64 {
        self.trace().re
    }
    /// det U (1 for SU(N) up to rounding, e^{iθ} for U(1)).
    fn det(&self) -> Complex;
    /// The number of generators of the algebra (N² − 1 for SU(N), 1 for U(1)).
    fn n_gen() -> usize {
        Self::Algebra::N_GEN
    }
    /// A Haar-distributed element.
    fn random(rng: &mut Stream) -> Self;
    /// The exact exponential map exp(X).
    fn exp(x: &Self::Algebra) -> Self;
    /// `links[i] ← exp(s·x[i])·links[i]` for each i (with `x[i]` itself where s = 1): the drift
    /// of HMC and a gradient-flow stage, with the bits of [`exp`](Self::exp) and
    /// [`mul`](Self::mul) link by link. SU(3) overrides it to overlap several exponentials.
    #[inline]
    fn exp_mul_into(links: &mut [Self], x: &[Self::Algebra], s: f64) {
        for (l, q) in links.iter_mut().zip(x) {
            let e = if s == 1.0 { *q } else { q.scale(s) };
            *l = Self::exp(&e).mul(l);
        }
    }
    /// U as an element of the linear span.
    fn to_mat(&self) -> Self::Mat;
    /// Re Tr(U · M).
    fn re_trace_mul(&self, m: &Self::Mat) -> f64;
    /// The Lie derivative of Re Tr(U · M) along left multiplication: the algebra element with
    /// coefficients d/dt Re Tr(exp(t X_a) U M)|_{t=0}. For SU(N) this is −½ TA(U M) in matrix
    /// form (TA: traceless anti-Hermitian part); for U(1) it is −Im(U M).
    fn re_trace_derivative(&self, m: &Self::Mat) -> Self::Algebra;
    /// How far the element has drifted from the group (0 up to rounding for a group element).
    fn deviation(&self) -> f64;
    /// Projects back onto the group (reunitarisation) and returns the deviation it had before.
    fn reunitarize(&mut self) -> f64;
    /// Writes the `REALS` reals of the flat layout to `out[..REALS]`.
    fn write_reals(&self, out: &mut [f64]);
    /// Reads an element from `r[..REALS]` (the flat layout; no projection is applied).
    fn from_reals(r: &[f64]) -> Self;
}

/// A U(1) link in the angle representation U = e^{iθ}; the angle is the storage (any
/// representative, periodic with 2π), matching [`crate::layout::ElementKind::Angle`].
///
/// The group product is the sum of angles, so every path is a signed sum of link angles and
/// nothing is ever wrapped implicitly; [`GaugeGroup::reunitarize`] wraps into (−π, π].
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct U1Angle(pub f64);

/// wrap into (−π, π]; the identity on angles already there.
#[inline]
pub fn wrap_angle(x: f64) -> f64 {
    use std::f64::consts::{PI, TAU};
    if x > -PI && x <= PI {
        return x;
    }
    let y = x - TAU * ((x - PI) / TAU).ceil();
    if y <= -PI {
        y + TAU
    } else {
        y
    }
}

/// u(1) = ℝ: the coefficient of X = i·1.
impl LieAlgebra for f64 {
    const N_GEN: usize = 1;
    #[inline]
    fn zero() -> Self {
        0.0
    }
    #[inline]
    fn axpy(&mut self, s: f64, other: &Self) {
        *self += s * other;
    }
    #[inline]
    fn scale(&self, s: f64) -> Self {
        self * s
    }
    #[inline]
    fn norm2(&self) -> f64 {
        self * self
    }
    #[inline]
    fn gaussian(rng: &mut Stream) -> Self {
        rng.normal()
    }
    #[inline]
    fn write_coeffs(&self, out: &mut [f64]) {
        out[0] = *self;
    }
    #[inline]
    fn from_coeffs(c: &[f64]) -> Self {
        c[0]
    }
}

impl GaugeGroup for U1Angle {
    type Algebra = f64;
    type Mat = Complex;
    const NC: usize = 1;
    const REALS: usize = 1;

    #[inline]
    fn identity() -> Self {
        U1Angle(0.0)
    }
    #[inline]
    fn mul(&self, o: &Self) -> Self {
        U1Angle(self.0 + o.0)
    }
    #[inline]
    fn mul_dagger(&self, o: &Self) -> Self {
        U1Angle(self.0 - o.0)
    }
    #[inline]
    fn dagger_mul(&self, o: &Self) -> Self {
        U1Angle(-self.0 + o.0)
    }
    #[inline]
    fn dagger(&self) -> Self {
        U1Angle(-self.0)
    }
    #[inline]
    fn trace(&self) -> Complex {
        Complex::cis(self.0)
    }
    #[inline]
    fn re_trace(&self) -> f64 {
        self.0.cos()
    }
    #[inline]
    fn det(&self) -> Complex {
        Complex::cis(self.0)
    }
    /// θ = π − 2πu, uniform in (−π, π]: one uniform.
    #[inline]
    fn random(rng: &mut Stream) -> Self {
        U1Angle(std::f64::consts::PI - std::f64::consts::TAU * rng.uniform())
    }
    #[inline]
    fn exp(x: &f64) -> Self {
        U1Angle(*x)
    }
    #[inline]
    fn to_mat(&self) -> Complex {
        Complex::cis(self.0)
    }
    #[inline]
    fn re_trace_mul(&self, m: &Complex) -> f64 {
        (Complex::cis(self.0) * *m).re
    }
    #[inline]
    fn re_trace_derivative(&self, m: &Complex) -> f64 {
        -(Complex::cis(self.0) * *m).im
    }
    /// 0 for a finite angle (every real angle is a group element), +∞ otherwise.
    #[inline]
    fn deviation(&self) -> f64 {
        if self.0.is_finite() {
            0.0
        } else {
            f64::INFINITY
        }
    }
    #[inline]
    fn reunitarize(&mut self) -> f64 {
        let dev = self.deviation();
        self.0 = wrap_angle(self.0);
        dev
    }
    #[inline]
    fn write_reals(&self, out: &mut [f64]) {
        out[0] = self.0;
    }
    #[inline]
    fn from_reals(r: &[f64]) -> Self {
        U1Angle(r[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    #[test]
    fn wrap_angle_range_and_identity() {
        for &x in &[0.0, 1.0, PI, -PI, 3.0 * PI, -3.0 * PI, 7.5, -7.5, 1e3, -1e3] {
            let y = wrap_angle(x);
            assert!(y > -PI && y <= PI, "{x} -> {y}");
            assert!(((x - y) / std::f64::consts::TAU - ((x - y) / std::f64::consts::TAU).round()).abs() < 1e-12);
        }
        assert_eq!(wrap_angle(1.25), 1.25);
    }

    #[test]
    fn u1_derivative_matches_finite_difference() {
        let mut rng = Stream::new(8, 0);
        for _ in 0..20 {
            let u = U1Angle::random(&mut rng);
            let m = Complex::new(rng.normal(), rng.normal());
            let h = 1e-6;
            let fd =
                (U1Angle::exp(&h).mul(&u).re_trace_mul(&m) - U1Angle::exp(&-h).mul(&u).re_trace_mul(&m)) / (2.0 * h);
            assert!((fd - u.re_trace_derivative(&m)).abs() < 1e-8);
            assert_eq!(u.mul(&u.dagger()), U1Angle::identity());
            assert_eq!(u.det(), u.trace());
            assert_eq!(U1Angle::n_gen(), 1);
        }
    }

    #[test]
    fn beta_is_the_one_gauge_parameter() {
        assert_eq!(beta_parameter("u1", 2.5, "beta").unwrap(), 2.5);
        let e = beta_parameter("sun", 2.5, "mass").unwrap_err();
        assert!(e.message.contains("sun has no parameter 'mass' (it has beta)"), "{}", e.message);
        let mut beta = 1.0;
        set_beta_parameter("u1", &mut beta, "beta", 3.0).unwrap();
        assert_eq!(beta, 3.0);
        for bad in [f64::NAN, f64::INFINITY, -1.0] {
            let e = set_beta_parameter("u1", &mut beta, "beta", bad).unwrap_err();
            assert!(e.message.starts_with("beta: must"), "{}", e.message);
            assert_eq!(beta, 3.0, "a refused value leaves beta unchanged");
        }
        assert!(set_beta_parameter("u1", &mut beta, "kappa", 0.1).is_err());
        assert_eq!(beta, 3.0);
    }
}
