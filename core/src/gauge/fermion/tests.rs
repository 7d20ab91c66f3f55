//! Tests of the Wilson operator: γ algebra, free-field determinant and spectrum,
//! γ5-hermiticity, gauge covariance, twisted mass, even–odd preconditioning, CG, the
//! pseudofermion force, thread-count independence and bad input.

use super::dense::{Dense, flatten};
use super::gamma::{gamma_rows, gamma5_diag};
use super::*;
use crate::gauge::complex::Complex;
use crate::gauge::group::U1Angle;
use crate::gauge::{LinkField, Su2, Su3, gauge_transform};
use crate::lattice::Lattice;
use crate::rng::Stream;

mod clover_tests;
mod lanes_tests;
mod multishift_tests;
mod solve_tests;

type Field<G, const NS: usize> = Vec<SpinorOf<G, NS>>;

pub(super) fn noise<G: WilsonGroup, const NS: usize>(sites: usize, seed: u64) -> Field<G, NS> {
    let mut f = vec![SpinorOf::<G, NS>::default(); sites];
    fill_gaussian(&mut f, &mut Stream::new(seed, 7)).unwrap();
    f
}

pub(super) fn hot<G: WilsonGroup>(lat: &Lattice, seed: u64) -> LinkField<G> {
    LinkField::<G>::random(lat.dim(), lat.volume(), &mut Stream::new(seed, 3)).unwrap()
}

pub(super) fn op<G: WilsonGroup, const NS: usize>(shape: &[i64], kappa: f64, mu: f64) -> WilsonDirac<G, NS> {
    op_sw(shape, kappa, mu, 0.0)
}

pub(super) fn op_sw<G: WilsonGroup, const NS: usize>(
    shape: &[i64],
    kappa: f64,
    mu: f64,
    csw: f64,
) -> WilsonDirac<G, NS> {
    WilsonDirac::new(&Lattice::new(shape).unwrap(), WilsonParams { kappa, mu, csw }).unwrap()
}

/// The dense NS×NS matrix of γ_μ.
fn gamma_dense(ns: usize, mu: usize) -> Vec<Vec<Complex>> {
    let rows = gamma_rows(ns, mu).unwrap();
    (0..ns)
        .map(|r| {
            (0..ns)
                .map(|c| if rows[r].col == c { super::spinor::phase(Complex::ONE, rows[r].k) } else { Complex::ZERO })
                .collect()
        })
        .collect()
}

fn mat_mul(a: &[Vec<Complex>], b: &[Vec<Complex>]) -> Vec<Vec<Complex>> {
    let n = a.len();
    (0..n).map(|i| (0..n).map(|j| (0..n).fold(Complex::ZERO, |s, k| s + a[i][k] * b[k][j])).collect()).collect()
}

#[test]
fn gamma_matrices_are_a_hermitian_clifford_basis_with_diagonal_gamma5() {
    for ns in [2, 4] {
        let g: Vec<_> = (0..ns).map(|mu| gamma_dense(ns, mu)).collect();
        for mu in 0..ns {
            for i in 0..ns {
                for j in 0..ns {
                    assert_eq!(g[mu][i][j], g[mu][j][i].conj(), "γ_{mu} Hermitian");
                }
            }
            for nu in 0..ns {
                let (a, b) = (mat_mul(&g[mu], &g[nu]), mat_mul(&g[nu], &g[mu]));
                for i in 0..ns {
                    for j in 0..ns {
                        let want = if mu == nu && i == j { 2.0 } else { 0.0 };
                        assert_eq!(a[i][j] + b[i][j], Complex::real(want), "{{γ_{mu}, γ_{nu}}}");
                    }
                }
            }
        }
        // γ5 = γ_0γ_1γ_2γ_3 in 4D, −iγ_0γ_1 = σ3 in 2D
        let mut p = g[0].clone();
        for m in &g[1..] {
            p = mat_mul(&p, m);
        }
        let g5 = gamma5_diag(ns).unwrap();
        for i in 0..ns {
            for j in 0..ns {
                let z = if ns == 2 { p[i][j] * Complex::new(0.0, -1.0) } else { p[i][j] };
                let want = if i == j { g5[i] } else { 0.0 };
                assert_eq!(z, Complex::real(want));
            }
        }
    }
}

/// The free-field log det D of the module docs' formula: Σ_p ln[(1 − 2κΣcos p)² + 4κ²Σsin² p].
fn free_log_det_formula(shape: &[usize], kappa: f64) -> f64 {
    let d = shape.len();
    let vol: usize = shape.iter().product();
    let mut total = 0.0;
    for n in 0..vol {
        let (mut rest, mut cos, mut sin2) = (n, 0.0, 0.0);
        for mu in (0..d).rev() {
            let k = rest % shape[mu];
            rest /= shape[mu];
            let shift = if mu == d - 1 { 0.5 } else { 0.0 };
            let p = std::f64::consts::TAU * (k as f64 + shift) / shape[mu] as f64;
            cos += p.cos();
            sin2 += p.sin() * p.sin();
        }
        total += ((1.0 - 2.0 * kappa * cos).powi(2) + 4.0 * kappa * kappa * sin2).ln();
    }
    total
}

/// ln |det D| and arg det D of the dense matrix of `d` at links `u`.
fn dense_log_det<G: WilsonGroup, const NS: usize>(d: &WilsonDirac<G, NS>, u: &[G]) -> (f64, f64) {
    Dense::of::<G::Colour, NS>(d.volume(), |v, out| d.apply(u, v, out).unwrap()).log_det()
}

#[test]
fn free_field_log_det_matches_the_formula_and_the_table() {
    for (shape, kappa, table) in
        [([4i64, 4], 0.25, 1.3478411184), ([8, 8], 0.25, 4.5113399914), ([16, 16], 0.276, 33.1493803706)]
    {
        let d = op::<U1Angle, 2>(&shape, kappa, 0.0);
        let u = LinkField::<U1Angle>::identity(2, d.volume());
        let (logdet, arg) = dense_log_det(&d, u.links());
        let ext: Vec<usize> = shape.iter().map(|&l| l as usize).collect();
        let formula = free_log_det_formula(&ext, kappa);
        assert!((formula - table).abs() < 1e-8, "{shape:?}: formula {formula} vs table {table}");
        assert!((logdet - table).abs() < 1e-8, "{shape:?}: dense {logdet} vs table {table}");
        assert!(arg.abs() < 1e-9, "{shape:?}: det D must be real and positive, arg {arg}");
    }
    // the smallest lattices (x ± μ̂ coincide), against the formula
    for (shape, kappa) in [([2i64, 2], 0.25), ([2, 4], 0.276), ([6, 2], 0.2)] {
        let d = op::<U1Angle, 2>(&shape, kappa, 0.0);
        let (logdet, arg) = dense_log_det(&d, LinkField::<U1Angle>::identity(2, d.volume()).links());
        let formula = free_log_det_formula(&[shape[0] as usize, shape[1] as usize], kappa);
        assert!((logdet - formula).abs() < 1e-10 && arg.abs() < 1e-10, "{shape:?}: {logdet} vs {formula}");
    }
    // SU(3) and 4D: the colour copies multiply the determinant, the 4D formula is the same sum
    let d = op::<Su3, 2>(&[4, 4], 0.25, 0.0);
    let (logdet, _) = dense_log_det(&d, LinkField::<Su3>::identity(2, 16).links());
    assert!((logdet - 3.0 * 1.3478411184).abs() < 1e-8);
    let d = op::<U1Angle, 4>(&[2, 2, 2, 4], 0.11, 0.0);
    let (logdet, arg) = dense_log_det(&d, LinkField::<U1Angle>::identity(4, 32).links());
    let formula = free_log_det_formula(&[2, 2, 2, 4], 0.11);
    // each 4D momentum's 4×4 spin block has the 2D-type factor twice
    assert!((logdet - 2.0 * formula).abs() < 1e-10, "4D free log det {logdet} vs {}", 2.0 * formula);
    assert!(arg.abs() < 1e-10);
}

/// Plane waves e^{ip·x} u ⊗ w with (Σ_μ γ_μ sin p_μ) u = |sin p| u are eigenvectors of the free
/// operator with eigenvalue 1 − 2κ Σ cos p_μ + 2iκ |sin p|.
fn check_plane_waves<G: WilsonGroup, const NS: usize>(shape: &[i64], kappa: f64) {
    let d = op::<G, NS>(shape, kappa, 0.0);
    let lat = d.lattice().clone();
    let u = LinkField::<G>::identity(NS, lat.volume());
    let w: Vec<Complex> = (0..G::NC).map(|c| Complex::new(1.0 - 0.3 * c as f64, 0.2 * c as f64)).collect();
    let w0: Vec<Complex> = (0..NS).map(|s| Complex::new(0.7 + 0.1 * s as f64, -0.4 + 0.3 * s as f64)).collect();
    let g: Vec<_> = (0..NS).map(|mu| gamma_dense(NS, mu)).collect();
    let mut out = vec![SpinorOf::<G, NS>::default(); lat.volume()];
    for n in 0..lat.volume() {
        let k = lat.coords(n);
        let p: Vec<f64> = (0..NS)
            .map(|mu| {
                let shift = if mu == NS - 1 { 0.5 } else { 0.0 };
                std::f64::consts::TAU * (k[mu] as f64 + shift) / lat.shape()[mu] as f64
            })
            .collect();
        let s_abs = p.iter().map(|q| q.sin().powi(2)).sum::<f64>().sqrt();
        // u = (|s| + B) w0 with B = Σ γ_μ sin p_μ
        let spin: Vec<Complex> = (0..NS)
            .map(|i| {
                let bw = (0..NS).fold(Complex::ZERO, |acc, j| {
                    acc + (0..NS).fold(Complex::ZERO, |b, mu| b + g[mu][i][j].scale(p[mu].sin())) * w0[j]
                });
                if s_abs < 1e-12 {
                    w0[i]
                } else {
                    w0[i].scale(s_abs) + bw
                }
            })
            .collect();
        let lambda = Complex::new(1.0 - 2.0 * kappa * p.iter().map(|q| q.cos()).sum::<f64>(), 2.0 * kappa * s_abs);
        let psi: Field<G, NS> = (0..lat.volume())
            .map(|x| {
                let c = lat.coords(x);
                let ph = Complex::cis((0..NS).map(|mu| p[mu] * c[mu] as f64).sum());
                let mut sp = SpinorOf::<G, NS>::default();
                for s in 0..NS {
                    for (col, z) in sp.0[s].components_mut().iter_mut().enumerate() {
                        *z = ph * spin[s] * w[col];
                    }
                }
                sp
            })
            .collect();
        d.apply(u.links(), &psi, &mut out).unwrap();
        for (a, b) in flatten(&out).iter().zip(flatten(&psi)) {
            assert!((*a - lambda * b).abs() < 1e-12, "momentum {k:?}: D ψ ≠ λ ψ with λ = {lambda:?}");
        }
    }
}

#[test]
fn free_plane_waves_are_eigenvectors_with_the_analytic_eigenvalue() {
    check_plane_waves::<U1Angle, 2>(&[4, 6], 0.2);
    check_plane_waves::<Su3, 2>(&[4, 4], 0.25);
    check_plane_waves::<Su2, 4>(&[2, 4, 2, 4], 0.13);
    check_plane_waves::<Su3, 4>(&[2, 2, 2, 4], 0.16);
}

/// ⟨χ, Dψ⟩ = ⟨γ5 D γ5 χ, ψ⟩ at μ = 0, ⟨χ, Dψ⟩ = ⟨D†χ, ψ⟩ at μ ≠ 0, and the same for D̂.
fn check_gamma5_hermiticity<G: WilsonGroup, const NS: usize>(shape: &[i64], seed: u64, csw: f64) {
    for mu in [0.0, 0.37] {
        let d = op_sw::<G, NS>(shape, 0.17, mu, csw);
        let v = d.volume();
        let u = hot::<G>(d.lattice(), seed);
        let mut cf = d.new_clover_field().unwrap();
        let ug = d.clover_gauge(u.links(), &mut cf).unwrap();
        let (chi, psi) = (noise::<G, NS>(v, seed + 1), noise::<G, NS>(v, seed + 2));
        let mut dpsi = vec![SpinorOf::<G, NS>::default(); v];
        d.apply(&ug, &psi, &mut dpsi).unwrap();
        let lhs = dot(&chi, &dpsi);
        let mut ddag_chi = vec![SpinorOf::<G, NS>::default(); v];
        d.apply_dagger(&ug, &chi, &mut ddag_chi).unwrap();
        let rhs = dot(&ddag_chi, &psi);
        assert!((lhs - rhs).abs() < 1e-11 * lhs.abs().max(1.0), "⟨χ,Dψ⟩ {lhs:?} vs ⟨D†χ,ψ⟩ {rhs:?}");
        if mu == 0.0 {
            let mut g5chi = chi.clone();
            d.gamma5(&mut g5chi);
            let mut t = vec![SpinorOf::<G, NS>::default(); v];
            d.apply(&ug, &g5chi, &mut t).unwrap();
            d.gamma5(&mut t);
            let rhs = dot(&t, &psi);
            assert!((lhs - rhs).abs() < 1e-11 * lhs.abs().max(1.0), "⟨χ,Dψ⟩ {lhs:?} vs ⟨γ5Dγ5χ,ψ⟩ {rhs:?}");
        }
        // the Schur complement
        let h = v / 2;
        let (ce, pe) = (&chi[..h], &psi[..h]);
        let (mut tmp, mut a, mut b) =
            (vec![SpinorOf::<G, NS>::default(); h], vec![Default::default(); h], vec![Default::default(); h]);
        d.apply_schur(&ug, pe, &mut tmp, &mut a).unwrap();
        d.apply_schur_dagger(&ug, ce, &mut tmp, &mut b).unwrap();
        let (l, r) = (dot(ce, &a), dot(&b, pe));
        assert!((l - r).abs() < 1e-11 * l.abs().max(1.0), "Schur: {l:?} vs {r:?}");
    }
}

#[test]
fn gamma5_hermiticity_on_random_fields() {
    for csw in [0.0, 1.3] {
        check_gamma5_hermiticity::<U1Angle, 2>(&[4, 6], 11, csw);
        check_gamma5_hermiticity::<Su2, 2>(&[4, 4], 12, csw);
        check_gamma5_hermiticity::<Su3, 2>(&[6, 4], 13, csw);
        check_gamma5_hermiticity::<U1Angle, 4>(&[2, 4, 2, 4], 14, csw);
        check_gamma5_hermiticity::<Su2, 4>(&[2, 2, 4, 4], 15, csw);
        check_gamma5_hermiticity::<Su3, 4>(&[2, 2, 2, 4], 16, csw);
        check_gamma5_hermiticity::<crate::gauge::SuN<4>, 2>(&[4, 4], 17, csw);
    }
}

/// D[U^g] (gψ) = g D[U] ψ with U^g_μ(x) = g(x) U_μ(x) g(x+μ̂)†.
fn check_gauge_covariance<G: WilsonGroup, const NS: usize>(shape: &[i64], seed: u64, csw: f64) {
    let d = op_sw::<G, NS>(shape, 0.19, 0.21, csw);
    let (lat, v) = (d.lattice().clone(), d.volume());
    let u = hot::<G>(&lat, seed);
    let g = hot::<G>(&lat, seed + 50).links().iter().step_by(NS).copied().collect::<Vec<G>>();
    let mut ug = u.links().to_vec();
    gauge_transform(&lat, &mut ug, &g);
    let psi = noise::<G, NS>(v, seed + 3);
    let rotate = |f: &[SpinorOf<G, NS>]| -> Field<G, NS> {
        f.iter().zip(&g).map(|(s, gx)| Spinor(std::array::from_fn(|k| gx.mul_vec(&s.0[k])))).collect()
    };
    let (mut a, mut b) = (vec![SpinorOf::<G, NS>::default(); v], vec![SpinorOf::<G, NS>::default(); v]);
    let (mut cf, mut cfg) = (d.new_clover_field().unwrap(), d.new_clover_field().unwrap());
    let gauge = d.clover_gauge(u.links(), &mut cf).unwrap();
    let gauge_g = d.clover_gauge(&ug, &mut cfg).unwrap();
    d.apply(&gauge_g, &rotate(&psi), &mut a).unwrap();
    d.apply(&gauge, &psi, &mut b).unwrap();
    for (x, y) in flatten(&a).iter().zip(flatten(&rotate(&b))) {
        assert!((*x - y).abs() < 1e-12, "gauge covariance: {x:?} vs {y:?}");
    }
}

#[test]
fn gauge_covariance() {
    for csw in [0.0, 1.7] {
        check_gauge_covariance::<U1Angle, 2>(&[4, 4], 21, csw);
        check_gauge_covariance::<Su2, 2>(&[4, 6], 22, csw);
        check_gauge_covariance::<Su3, 4>(&[2, 2, 2, 4], 23, csw);
    }
}

#[test]
fn det_d_is_real_on_random_u1_fields_and_the_twist_shifts_d_dagger_d() {
    for (shape, seed) in [([2i64, 2], 31), ([4, 4], 32)] {
        let d = op::<U1Angle, 2>(&shape, 0.26, 0.0);
        let u = hot::<U1Angle>(d.lattice(), seed);
        let (logabs, arg) = dense_log_det(&d, u.links());
        assert!(logabs.is_finite());
        // real: the phase is 0 or π
        assert!(arg.abs() < 1e-10 || (arg.abs() - std::f64::consts::PI).abs() < 1e-10, "{shape:?}: arg det D = {arg}");
    }
    // det(D_tm† D_tm) = det(D_W† D_W + (2κμ)²) on a random SU(2) 4D field
    let (kappa, mu) = (0.15, 0.4);
    let tm = op::<Su2, 4>(&[2, 2, 2, 2], kappa, mu);
    let w = op::<Su2, 4>(&[2, 2, 2, 2], kappa, 0.0);
    let u = hot::<Su2>(tm.lattice(), 33);
    let v = tm.volume();
    let mut tmp = vec![SpinorOf::<Su2, 4>::default(); v];
    let lhs = Dense::of::<_, 4>(v, |x, out| tm.apply_normal(u.links(), x, &mut tmp, out).unwrap()).log_det();
    let a2 = (2.0 * kappa * mu).powi(2);
    let rhs = Dense::of::<_, 4>(v, |x, out| {
        w.apply_normal(u.links(), x, &mut tmp, out).unwrap();
        for (o, i) in out.iter_mut().zip(x) {
            for s in 0..4 {
                o.0[s].axpy(a2, &i.0[s]);
            }
        }
    })
    .log_det();
    assert!((lhs.0 - rhs.0).abs() < 1e-10 && lhs.1.abs() < 1e-10, "{lhs:?} vs {rhs:?}");
    // and ln|det D_tm|² is that determinant
    assert!((2.0 * dense_log_det(&tm, u.links()).0 - lhs.0).abs() < 1e-10);
}

#[test]
fn bad_input_is_refused() {
    let lat = Lattice::new(&[4, 4]).unwrap();
    for kappa in [0.0, -0.1, f64::NAN, f64::INFINITY] {
        let e = WilsonDirac::<U1Angle, 2>::new(&lat, WilsonParams::wilson(kappa)).unwrap_err();
        assert!(matches!(e, FermionError::Kappa(_)), "{e}");
        assert!(e.to_string().contains("kappa"));
    }
    for mu in [-0.1, f64::NAN, f64::INFINITY] {
        let e = WilsonDirac::<U1Angle, 2>::new(&lat, WilsonParams::twisted(0.2, mu)).unwrap_err();
        assert!(matches!(e, FermionError::Mu(_)) && e.to_string().contains("mu"), "{e}");
    }
    for csw in [f64::NAN, f64::INFINITY] {
        let e = WilsonDirac::<U1Angle, 2>::new(&lat, WilsonParams { kappa: 0.2, mu: 0.0, csw }).unwrap_err();
        assert!(matches!(e, FermionError::Csw(_)) && e.to_string().contains("csw"), "{e}");
    }
    for tol in [0.0, -1e-8, f64::NAN] {
        assert!(matches!(CgParams::new(tol, 10).unwrap_err(), FermionError::Tolerance(_)));
    }
    assert!(matches!(CgParams::new(1e-8, 0).unwrap_err(), FermionError::MaxIter(0)));
    // wrong dimension for the spin count
    let e = WilsonDirac::<U1Angle, 4>::new(&lat, WilsonParams::wilson(0.1)).unwrap_err();
    assert_eq!(e, FermionError::Dimension { dim: 2, ns: 4 });
    assert!(WilsonDirac::<U1Angle, 3>::new(&Lattice::new(&[4, 4, 4]).unwrap(), WilsonParams::wilson(0.1)).is_err());
    // odd extent: the full operator works, even–odd refuses
    let d = op::<U1Angle, 2>(&[4, 5], 0.2, 0.0);
    let u = hot::<U1Angle>(d.lattice(), 41);
    let eta = noise::<U1Angle, 2>(20, 42);
    let mut psi = vec![SpinorOf::<U1Angle, 2>::default(); 20];
    d.apply(u.links(), &eta, &mut psi).unwrap();
    let mut work = SolverWork::new(20);
    let e = d.solve_eo(u.links(), &eta, &mut psi, &mut work, &CgParams::new(1e-10, 100).unwrap()).unwrap_err();
    assert_eq!(e, FermionError::OddExtent { axis: 1, extent: 5 });
    assert!(e.to_string().contains("odd"));
    assert!(d.half_volume().is_err());
    // wrong lengths are errors, not panics
    let short = vec![SpinorOf::<U1Angle, 2>::default(); 19];
    assert!(matches!(d.apply(u.links(), &short, &mut psi).unwrap_err(), FermionError::Length { .. }));
    assert!(matches!(d.apply(&u.links()[1..], &eta, &mut psi).unwrap_err(), FermionError::Length { .. }));
    let mut f = vec![0.0; 39];
    assert!(d.force(u.links(), &eta, &eta, &mut f).is_err());
    // a tolerance refused inside the solve too
    let bad = CgParams { tol: -1.0, max_iter: 10 };
    assert_eq!(d.solve(u.links(), &eta, &mut psi, &mut work, &bad).unwrap_err(), FermionError::Tolerance(-1.0));
}

#[test]
fn spinors_are_flat_reals() {
    let f = noise::<Su3, 4>(3, 5);
    let r = crate::gauge::flat::reals(&f);
    assert_eq!(r.len(), 3 * 4 * 3 * 2);
    // component (site 1, spin 2, colour 1) at ((1·4 + 2)·3 + 1)·2
    assert_eq!(r[((4 + 2) * 3 + 1) * 2], f[1].0[2].0[1].re);
    assert_eq!(r[((4 + 2) * 3 + 1) * 2 + 1], f[1].0[2].0[1].im);
    let back: &[SpinorOf<Su3, 4>] = crate::gauge::flat::view(r).unwrap();
    assert_eq!(back, &f[..]);
    // Gaussian noise: ⟨|η_i|²⟩ = 1 per complex component
    let big = noise::<Su3, 4>(2000, 6);
    let m = norm2(&big) / (2000.0 * 12.0);
    assert!((m - 1.0).abs() < 4.0 / (2000.0f64 * 12.0).sqrt(), "mean |η|² {m}");
}

/// The even–odd kernels find a neighbour's position in its half field as y/2; that is
/// `Lattice::eo_index` whenever every extent is even.
#[test]
fn half_lattice_position_is_half_the_site_index() {
    for shape in [vec![2i64, 2], vec![4, 6], vec![2, 2, 2, 4], vec![6, 4, 2, 8]] {
        let lat = Lattice::new(&shape).unwrap();
        assert!((0..lat.volume()).all(|y| lat.eo_index(y) == y / 2), "{shape:?}");
    }
}

/// Precomputed hopping factors ([`HopCached`]) change no bit: D, D† and the Schur complement on
/// random U(1) fields (whose factors are cached) and SU(3) fields (whose are not), with and
/// without twisted mass.
fn check_hop_cache<G: WilsonGroup, const NS: usize>(shape: &[i64], seed: u64) {
    for mu in [0.0, 0.21] {
        let d = op::<G, NS>(shape, 0.19, mu);
        let v = d.volume();
        let u = hot::<G>(d.lattice(), seed);
        let links = u.links().to_vec();
        let cached = HopCached::new(&links);
        assert_eq!(cached.hops().is_some(), G::CACHE_HOPS);
        let psi = noise::<G, NS>(v, seed + 1);
        let bits = |f: &[SpinorOf<G, NS>]| -> Vec<u64> {
            f.iter()
                .flat_map(|s| {
                    s.0.iter().flat_map(|c| c.components().iter().flat_map(|z| [z.re.to_bits(), z.im.to_bits()]))
                })
                .collect()
        };
        for dag in [false, true] {
            let (mut a, mut b) = (vec![SpinorOf::<G, NS>::default(); v], vec![SpinorOf::<G, NS>::default(); v]);
            if dag {
                d.apply_dagger(u.links(), &psi, &mut a).unwrap();
                d.apply_dagger(&cached, &psi, &mut b).unwrap();
            } else {
                d.apply(u.links(), &psi, &mut a).unwrap();
                d.apply(&cached, &psi, &mut b).unwrap();
            }
            assert_eq!(bits(&a), bits(&b), "D (dagger {dag}) with cached hopping factors");
        }
        let h = v / 2;
        let mut tmp = vec![SpinorOf::<G, NS>::default(); h];
        let (mut a, mut b) = (vec![SpinorOf::<G, NS>::default(); h], vec![SpinorOf::<G, NS>::default(); h]);
        d.apply_schur(u.links(), &psi[..h], &mut tmp, &mut a).unwrap();
        d.apply_schur(&cached, &psi[..h], &mut tmp, &mut b).unwrap();
        assert_eq!(bits(&a), bits(&b), "Schur complement with cached hopping factors");
    }
}

#[test]
fn cached_hopping_factors_change_no_bit() {
    check_hop_cache::<U1Angle, 2>(&[6, 4], 81);
    check_hop_cache::<Su3, 4>(&[4, 2, 2, 4], 82);
}

/// The hopping term H ψ (or H† ψ) at every site by the textbook loop: for each axis, forward
/// then backward, each projector pair's h = ψ_i + i^{ki} ψ_j through the link alone, with the
/// runtime projector table. The reference the operator's kernels must match bit for bit.
fn textbook_hop<G: WilsonGroup, const NS: usize>(
    lat: &Lattice,
    u: &[G],
    psi: &[SpinorOf<G, NS>],
    dag: bool,
) -> Field<G, NS> {
    use super::gamma::projector;
    let t_max = lat.time_extent() - 1;
    (0..lat.volume())
        .map(|x| {
            let t = lat.time(x);
            let mut acc = SpinorOf::<G, NS>::default();
            for mu in 0..NS {
                let time = mu == NS - 1;
                // D: forward (1 − γ), backward (1 + γ); D† swaps the signs
                for (back, plus) in [(false, dag), (true, !dag)] {
                    let (y, l) = if back { (lat.bwd(x, mu), lat.bwd(x, mu)) } else { (lat.fwd(x, mu), x) };
                    let link = &u[l * NS + mu];
                    let flip = time && if back { t == 0 } else { t == t_max };
                    for p in &projector(NS, mu, plus).unwrap()[..NS / 2] {
                        let h = psi[y].0[p.i].add(&psi[y].0[p.j].mul_phase(p.ki));
                        let mut h = if back { link.dagger_mul_vec(&h) } else { link.mul_vec(&h) };
                        if flip {
                            h = h.mul_phase(2);
                        }
                        acc.0[p.i].add_assign(&h);
                        acc.0[p.j].add_assign(&h.mul_phase(p.kj));
                    }
                }
            }
            acc
        })
        .collect()
}

/// Every hopping-kernel variant this CPU runs (the generic kernel, and the AVX2 one where
/// the CPU has it: for SU(3) in 4D the intrinsics kernel) gives the textbook loop's bits for
/// D ψ and D† ψ with μ = 0 (D ψ = ψ − κ H ψ), and all variants agree on D, D† and the Schur
/// complement with twisted mass and clover.
fn check_kernel_variants<G: WilsonGroup, const NS: usize>(shape: &[i64], seed: u64, csw: f64) {
    let bits = |f: &[SpinorOf<G, NS>]| -> Vec<u64> {
        f.iter()
            .flat_map(|s| s.0.iter().flat_map(|c| c.components().iter().flat_map(|z| [z.re.to_bits(), z.im.to_bits()])))
            .collect()
    };
    let plain = op::<G, NS>(shape, 0.19, 0.0);
    let v = plain.volume();
    let u = hot::<G>(plain.lattice(), seed);
    let psi = noise::<G, NS>(v, seed + 1);
    for level in 0..=wilson::hop_simd_level() {
        let d = plain.clone().with_simd_level(level);
        assert_eq!(d.simd_level(), level);
        for dag in [false, true] {
            let h = textbook_hop::<G, NS>(d.lattice(), u.links(), &psi, dag);
            let want: Field<G, NS> = psi
                .iter()
                .zip(&h)
                .map(|(p, h)| {
                    let mut r = *p;
                    for s in 0..NS {
                        r.0[s].axpy(-0.19, &h.0[s]);
                    }
                    r
                })
                .collect();
            let mut got = vec![SpinorOf::<G, NS>::default(); v];
            if dag {
                d.apply_dagger(u.links(), &psi, &mut got).unwrap();
            } else {
                d.apply(u.links(), &psi, &mut got).unwrap();
            }
            assert_eq!(bits(&got), bits(&want), "level {level}, dagger {dag}: the textbook loop's bits");
        }
    }
    // the Schur complement without twist or clover (where the SIMD kernel finishes each site in
    // registers): every variant gives the baseline's bits
    let schur = |d: &WilsonDirac<G, NS>, dag: bool| -> Vec<u64> {
        let (mut tmp, mut e) = (vec![SpinorOf::<G, NS>::default(); v / 2], vec![SpinorOf::<G, NS>::default(); v / 2]);
        if dag {
            d.apply_schur_dagger(u.links(), &psi[..v / 2], &mut tmp, &mut e).unwrap();
        } else {
            d.apply_schur(u.links(), &psi[..v / 2], &mut tmp, &mut e).unwrap();
        }
        bits(&e)
    };
    for dag in [false, true] {
        let want = schur(&plain.clone().with_simd_level(0), dag);
        for level in 1..=wilson::hop_simd_level() {
            assert_eq!(schur(&plain.clone().with_simd_level(level), dag), want, "Schur, level {level}, dagger {dag}");
        }
    }
    // twisted mass and clover: the variants agree with each other
    let d0 = op_sw::<G, NS>(shape, 0.19, 0.13, csw).with_simd_level(0);
    let mut field = d0.new_clover_field().unwrap();
    let gauge = if csw != 0.0 { Some(d0.clover_gauge(u.links(), &mut field).unwrap()) } else { None };
    let run = |d: &WilsonDirac<G, NS>| -> Vec<Vec<u64>> {
        let (mut a, mut b) = (vec![SpinorOf::<G, NS>::default(); v], vec![SpinorOf::<G, NS>::default(); v]);
        let (mut tmp, mut e) = (vec![SpinorOf::<G, NS>::default(); v / 2], vec![SpinorOf::<G, NS>::default(); v / 2]);
        match &gauge {
            Some(g) => {
                d.apply(g, &psi, &mut a).unwrap();
                d.apply_dagger(g, &psi, &mut b).unwrap();
                d.apply_schur(g, &psi[..v / 2], &mut tmp, &mut e).unwrap();
            }
            None => {
                d.apply(u.links(), &psi, &mut a).unwrap();
                d.apply_dagger(u.links(), &psi, &mut b).unwrap();
                d.apply_schur(u.links(), &psi[..v / 2], &mut tmp, &mut e).unwrap();
            }
        }
        vec![bits(&a), bits(&b), bits(&e)]
    };
    let want = run(&d0);
    for level in 1..=wilson::hop_simd_level() {
        assert_eq!(run(&d0.clone().with_simd_level(level)), want, "level {level} with μ and c_sw = {csw}");
    }
}

#[test]
fn hopping_kernels_give_the_textbook_bits() {
    check_kernel_variants::<U1Angle, 2>(&[6, 4], 91, 0.0);
    check_kernel_variants::<Su3, 2>(&[4, 6], 92, 0.0);
    check_kernel_variants::<Su2, 4>(&[2, 4, 2, 4], 93, 1.3);
    check_kernel_variants::<Su3, 4>(&[4, 2, 2, 4], 94, 0.0);
    check_kernel_variants::<Su3, 4>(&[2, 4, 4, 2], 95, 1.7);
}
