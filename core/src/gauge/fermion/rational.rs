//! Rational approximations of x^{−1/2}, for one flavour of pseudofermions (rational HMC):
//! det(D†D)^{1/2} = det(R(D†D))^{−1} with R(x) ≈ x^{−1/2} on the spectrum of D†D.
//!
//! # Zolotarev's approximation
//! The best uniform relative approximation of x^{−1/2} on [lo, hi] by a rational function
//! of degree (n, n) is Zolotarev's (see e.g. Chiu, Hsieh, Huang and Huang, hep-lat/0206007):
//! with b = hi/lo, k'² = 1 − 1/b, K' = K(k') and c_l = sn²(l K'/(2n+1); k') / cn²(…) for
//! l = 1..2n,
//!
//! R(x) = D₀ Π_{l=1}^{n} (x + ν_l²) / (x + μ_l²), ν_l² = lo·c_{2l}, μ_l² = lo·c_{2l−1},
//!
//! zeros and poles on the negative axis, interlaced: 0 < μ₁² < ν₁² < μ₂² < … . The relative
//! error 1 − √x R(x) equioscillates; D₀ centres it. Here D₀ and the error δ =
//! max |1 − √x R(x)| are measured on [lo, hi] (every extremum located and refined), not
//! taken from a formula. δ falls exponentially with n: about 2e−5 for n = 4 at b = 100,
//! 5e−9 for n = 12 at b = 10⁴, 1e−10 for n = 20 at b = 10⁶.
//!
//! # What the samplers use
//! - [`InverseSqrt::partial_fractions`]: R(x) = a₀ + Σ_l a_l / (x + μ_l²), the form whose
//!   action φ†R(A)φ and force a multi-shift solve ([`super::multishift`]) gives.
//! - [`InverseSqrt::heat_bath`]: with Q Hermitian and Q² = A (Q = γ5 D for Wilson fermions),
//!   R(Q²) = B B† for B = √D₀ Π (Q + iν_l)/(Q + iμ_l), so φ = (B†)⁻¹η with Gaussian η has
//!   exactly the density ∝ exp(−φ†R(Q²)φ), whatever δ: the heat bath and the action use the
//!   same R. (B†)⁻¹ = D₀^{−1/2} [1 + Σ_l c_l/(Q − iν_l)], c_l = i·γ_l real multiples of i,
//!   and (Q − iν)⁻¹ = (Q + iν)(Q² + ν²)⁻¹ is one more multi-shift solve, on the zeros ν_l².
//!
//! The sampled weight is then det R(D†D)^{−1}, which is det(D†D)^{1/2} to a relative
//! 1 ± δ per eigenvalue inside [lo, hi]; an eigenvalue outside the range makes it deviate.

use thiserror::Error;

/// Why an approximation could not be made.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum RationalError {
    /// The range must satisfy 0 < lo < hi, both finite.
    #[error("the spectral range must satisfy 0 < lo < hi, both finite; got [{lo}, {hi}]")]
    Range { lo: f64, hi: f64 },
    /// The degree must be 1..=MAX_DEGREE.
    #[error("the degree of the rational approximation must be between 1 and {max}, got {n}")]
    Degree { n: usize, max: usize },
}

/// The largest degree [`InverseSqrt::zolotarev`] makes (δ is at rounding level long before).
pub const MAX_DEGREE: usize = 64;

/// R(x) ≈ x^{−1/2} on [lo, hi] in product form (module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct InverseSqrt {
    lo: f64,
    hi: f64,
    /// D₀.
    scale: f64,
    /// ν_l², ascending.
    zeros: Vec<f64>,
    /// μ_l², ascending.
    poles: Vec<f64>,
    /// max |1 − √x R(x)| on [lo, hi].
    delta: f64,
}

/// R(x) = constant + Σ residue / (x + shift).
#[derive(Debug, Clone, PartialEq)]
pub struct PartialFractions {
    /// a₀.
    pub constant: f64,
    /// (a_l, μ_l²) per pole, the shifts ascending.
    pub terms: Vec<(f64, f64)>,
}

impl PartialFractions {
    /// The function's value at x (for x ≥ 0 or any x away from the poles −shift).
    pub fn eval(&self, x: f64) -> f64 {
        self.constant + self.terms.iter().map(|&(a, s)| a / (x + s)).sum::<f64>()
    }
}

/// (B†)⁻¹ = scale·[1 + Σ_l i·γ_l / (Q − iν_l)] (module docs), as `scale` and (γ_l, ν_l).
#[derive(Debug, Clone, PartialEq)]
pub struct HeatBathFractions {
    /// D₀^{−1/2}.
    pub scale: f64,
    /// (γ_l, ν_l) per zero of R, ν_l ascending.
    pub terms: Vec<(f64, f64)>,
}

impl HeatBathFractions {
    /// (B†)⁻¹ as a function of a real eigenvalue z of Q: (re, im).
    pub fn eval(&self, z: f64) -> (f64, f64) {
        // i·γ / (z − iν) = i·γ (z + iν) / (z² + ν²) = (−γν + iγz) / (z² + ν²)
        let (mut re, mut im) = (1.0, 0.0);
        for &(g, nu) in &self.terms {
            let d = z * z + nu * nu;
            re -= g * nu / d;
            im += g * z / d;
        }
        (self.scale * re, self.scale * im)
    }
}

impl InverseSqrt {
    /// Zolotarev's degree-`n` approximation of x^{−1/2} on [`lo`, `hi`] (module docs).
    pub fn zolotarev(n: usize, lo: f64, hi: f64) -> Result<Self, RationalError> {
        if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo < hi) {
            return Err(RationalError::Range { lo, hi });
        }
        if n == 0 || n > MAX_DEGREE {
            return Err(RationalError::Degree { n, max: MAX_DEGREE });
        }
        let mc = lo / hi; // 1 − k'²
        let kp = std::f64::consts::FRAC_PI_2 / agm(1.0, mc.sqrt());
        let c: Vec<f64> = (1..=2 * n)
            .map(|l| {
                let (sn, cn) = sn_cn(l as f64 * kp / (2 * n + 1) as f64, mc);
                lo * (sn / cn).powi(2)
            })
            .collect();
        let zeros: Vec<f64> = (0..n).map(|l| c[2 * l + 1]).collect();
        let poles: Vec<f64> = (0..n).map(|l| c[2 * l]).collect();
        let mut r = Self { lo, hi, scale: 1.0, zeros, poles, delta: 0.0 };
        let (min, max) = r.extrema();
        r.scale = 2.0 / (min + max);
        r.delta = (max - min) / (max + min);
        Ok(r)
    }

    /// The degree n.
    pub fn degree(&self) -> usize {
        self.poles.len()
    }

    /// The range [lo, hi] it approximates on.
    pub fn range(&self) -> (f64, f64) {
        (self.lo, self.hi)
    }

    /// δ = max |1 − √x R(x)| over [lo, hi], measured.
    pub fn error(&self) -> f64 {
        self.delta
    }

    /// R(x), from the product form.
    pub fn eval(&self, x: f64) -> f64 {
        self.scale * self.zeros.iter().zip(&self.poles).map(|(z, p)| (x + z) / (x + p)).product::<f64>()
    }

    /// R(x) = a₀ + Σ_l a_l/(x + μ_l²): a₀ = D₀, a_l = D₀ Π_j (ν_j² − μ_l²) / Π_{j≠l} (μ_j² − μ_l²).
    pub fn partial_fractions(&self) -> PartialFractions {
        let terms = (0..self.degree())
            .map(|l| {
                let p = self.poles[l];
                let num: f64 = self.zeros.iter().map(|z| z - p).product();
                let den: f64 = self.poles.iter().enumerate().filter(|&(j, _)| j != l).map(|(_, q)| q - p).product();
                (self.scale * num / den, p)
            })
            .collect();
        PartialFractions { constant: self.scale, terms }
    }

    /// (B†)⁻¹ of the heat bath (module docs): c_l = Π_j (iν_l − iμ_j) / Π_{j≠l} (iν_l − iν_j)
    /// = i·γ_l with γ_l = Π_j (ν_l − μ_j) / Π_{j≠l} (ν_l − ν_j).
    pub fn heat_bath(&self) -> HeatBathFractions {
        let nu: Vec<f64> = self.zeros.iter().map(|z| z.sqrt()).collect();
        let mu: Vec<f64> = self.poles.iter().map(|p| p.sqrt()).collect();
        let terms = (0..self.degree())
            .map(|l| {
                let num: f64 = mu.iter().map(|m| nu[l] - m).product();
                let den: f64 = nu.iter().enumerate().filter(|&(j, _)| j != l).map(|(_, v)| nu[l] - v).product();
                (num / den, nu[l])
            })
            .collect();
        HeatBathFractions { scale: 1.0 / self.scale.sqrt(), terms }
    }

    /// The smallest and largest √x·R(x)/D₀ on [lo, hi]: the endpoints and every interior
    /// extremum, located on a logarithmic grid (64 points per degree) and refined by golden
    /// sections to a relative 1e-12 in x.
    fn extrema(&self) -> (f64, f64) {
        let g = |t: f64| {
            let x = t.exp();
            x.sqrt() * self.eval(x) / self.scale
        };
        let (a, b) = (self.lo.ln(), self.hi.ln());
        let m = 64 * self.degree() + 2;
        let t = |i: usize| a + (b - a) * i as f64 / m as f64;
        let vals: Vec<f64> = (0..=m).map(|i| g(t(i))).collect();
        let (mut min, mut max) = (vals[0].min(vals[m]), vals[0].max(vals[m]));
        for i in 1..m {
            let (l, c, r) = (vals[i - 1], vals[i], vals[i + 1]);
            let sign = if c >= l && c >= r {
                1.0
            } else if c <= l && c <= r {
                -1.0
            } else {
                continue;
            };
            // golden-section search for the extremum of sign·g on [t(i−1), t(i+1)]
            let (mut lo, mut hi) = (t(i - 1), t(i + 1));
            let phi = 0.5 * (5f64.sqrt() - 1.0);
            while hi - lo > 1e-12 {
                let (x1, x2) = (hi - phi * (hi - lo), lo + phi * (hi - lo));
                if sign * g(x1) > sign * g(x2) {
                    hi = x2;
                } else {
                    lo = x1;
                }
            }
            let v = g(0.5 * (lo + hi));
            min = min.min(v.min(c));
            max = max.max(v.max(c));
        }
        (min, max)
    }
}

/// The arithmetic–geometric mean of a, b > 0.
fn agm(mut a: f64, mut b: f64) -> f64 {
    for _ in 0..64 {
        if (a - b).abs() <= 1e-16 * a {
            break;
        }
        (a, b) = (0.5 * (a + b), (a * b).sqrt());
    }
    a
}

/// The Jacobi elliptic functions sn(u; k) and cn(u; k), given the complementary parameter
/// mc = 1 − k² ∈ (0, 1], by the descending Landen transformation (Abramowitz and Stegun
/// 16.12; the arrangement of Numerical Recipes' `sncndn`), accurate for k close to 1 (mc
/// small), where Zolotarev's coefficients need them.
fn sn_cn(u: f64, mc: f64) -> (f64, f64) {
    const STEPS: usize = 16;
    let (mut em, mut en) = ([0.0; STEPS], [0.0; STEPS]);
    let (mut a, mut emc, mut c, mut last) = (1.0f64, mc, 1.0f64, 0);
    for i in 0..STEPS {
        last = i;
        em[i] = a;
        emc = emc.sqrt();
        en[i] = emc;
        c = 0.5 * (a + emc);
        if (a - emc).abs() <= 1e-9 * a {
            break;
        }
        emc *= a;
        a = c;
    }
    let (sn, cn) = (u * c).sin_cos();
    if sn == 0.0 {
        return (sn, cn);
    }
    // back through the Landen steps
    let (mut a, mut dn) = (cn / sn, 1.0);
    c *= a;
    for i in (0..=last).rev() {
        let b = em[i];
        a *= c;
        c *= dn;
        dn = (en[i] + a) / (b + a);
        a = c / b;
    }
    let a = 1.0 / (c * c + 1.0).sqrt();
    let sn = if sn >= 0.0 { a } else { -a };
    (sn, c * sn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_functions_satisfy_their_identities() {
        for mc in [1.0, 0.5, 1e-4, 1e-10] {
            let k = std::f64::consts::FRAC_PI_2 / agm(1.0, f64::sqrt(mc));
            for u in [0.0, 0.3, 1.1, 0.5 * k, k] {
                let (sn, cn) = sn_cn(u, mc);
                assert!((sn * sn + cn * cn - 1.0).abs() < 1e-13, "mc {mc} u {u}");
                if mc == 1.0 {
                    assert!((sn - u.sin()).abs() < 1e-14 && (cn - u.cos()).abs() < 1e-14);
                }
            }
            // sn(K) = 1, and sn(K/2)² = 1/(1 + k')
            let (sn, cn) = sn_cn(k, mc);
            assert!((sn - 1.0).abs() < 1e-12 && cn.abs() < 1e-6, "mc {mc}: sn(K) = {sn}, cn(K) = {cn}");
            let (sn, _) = sn_cn(0.5 * k, mc);
            assert!((sn * sn - 1.0 / (1.0 + mc.sqrt())).abs() < 1e-12, "mc {mc}");
        }
    }

    /// max |1 − √x R(x)| on 20 001 points spread logarithmically over [lo, hi].
    fn sampled_error(r: &InverseSqrt) -> f64 {
        let (lo, hi) = r.range();
        (0..=20_000)
            .map(|i| {
                let x = lo * (hi / lo).powf(i as f64 / 20_000.0);
                (1.0 - x.sqrt() * r.eval(x)).abs()
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn zolotarev_is_accurate_to_its_measured_error() {
        // (degree, range, the error it reaches)
        for (n, lo, hi, most) in [(4, 0.01, 1.0, 3e-5), (12, 1e-4, 1.0, 6e-9), (20, 3e-6, 3.0, 2e-10), (16, 0.02, 40.0, 2e-13)] {
            let r = InverseSqrt::zolotarev(n, lo, hi).unwrap();
            let (d, s) = (r.error(), sampled_error(&r));
            println!("n = {n}, [{lo}, {hi}]: δ = {d:.3e}, sampled {s:.3e}");
            assert!(d < most, "{d:e}");
            assert!(s <= d * (1.0 + 1e-6) + 1e-15 && s >= 0.98 * d, "δ {d:e}, sampled {s:e}");
            // zeros and poles interlace on the negative axis: 0 < μ₁² < ν₁² < μ₂² < …
            for l in 0..n {
                assert!(r.poles[l] > 0.0 && r.poles[l] < r.zeros[l]);
                if l + 1 < n {
                    assert!(r.zeros[l] < r.poles[l + 1]);
                }
            }
            // the same approximation on a scaled range, scaled
            let t = InverseSqrt::zolotarev(n, 7.0 * lo, 7.0 * hi).unwrap();
            assert!((t.error() - d).abs() <= 1e-3 * d + 1e-15);
            for x in [lo, (lo * hi).sqrt(), hi] {
                assert!((t.eval(7.0 * x) * 7f64.sqrt() / r.eval(x) - 1.0).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn partial_fractions_and_the_heat_bath_factor_are_the_same_function() {
        let r = InverseSqrt::zolotarev(12, 1e-3, 20.0).unwrap();
        let pf = r.partial_fractions();
        let hb = r.heat_bath();
        assert_eq!((pf.terms.len(), hb.terms.len()), (12, 12));
        for x in [1e-5, 1e-3, 0.02, 0.7, 5.0, 20.0, 400.0] {
            let (a, b) = (pf.eval(x), r.eval(x));
            assert!((a / b - 1.0).abs() < 1e-12, "x {x}: {a} vs {b}");
            // φ = (B†)⁻¹η: |(B†)⁻¹(z)|² R(z²) = 1 for every real eigenvalue z = ±√x of Q
            for z in [x.sqrt(), -x.sqrt()] {
                let (re, im) = hb.eval(z);
                let one = (re * re + im * im) * r.eval(z * z);
                assert!((one - 1.0).abs() < 1e-12, "z {z}: {one}");
            }
        }
    }

    #[test]
    fn bad_ranges_and_degrees_are_refused() {
        for (lo, hi) in [(0.0, 1.0), (-1.0, 1.0), (1.0, 1.0), (2.0, 1.0), (f64::NAN, 1.0), (1e-3, f64::INFINITY)] {
            let e = InverseSqrt::zolotarev(8, lo, hi).unwrap_err();
            assert!(matches!(e, RationalError::Range { .. }) && e.to_string().contains("range"), "{e}");
        }
        for n in [0, MAX_DEGREE + 1] {
            let e = InverseSqrt::zolotarev(n, 0.1, 1.0).unwrap_err();
            assert!(matches!(e, RationalError::Degree { .. }) && e.to_string().contains("degree"), "{e}");
        }
    }
}
