//! The flow's mathematics: inverse round trips, the log-determinant against a dense Jacobian in
//! Lie-algebra coordinates, gauge equivariance, the Haar prior and the surrogate gradient.

use latflow_core::gauge::{Complex, Matrix, SuAlg};
use latflow_core::Stream;
use latflow_flow_common::testing::log_abs_det;

use super::*;
use crate::eig;

/// A configuration near the identity: links exp(ε X) with X a random algebra element (as an
/// HMC configuration at large β has), as flat reals.
fn near_identity<const N: usize>(count: usize, eps: f64, seed: u64) -> Vec<f64> {
    let mut rng = Stream::new(seed, 9);
    let mut out = vec![0.0; count * 2 * N * N];
    for link in out.chunks_exact_mut(2 * N * N) {
        let x = Matrix::<N>::random_haar(&mut rng).traceless_antihermitian().scale(eps);
        x.exp_taylor().write_reals(link);
    }
    out
}

fn check_round_trip(n: usize, shape: &[usize], json: &str, x: &[f64]) {
    let m = model(json, shape, n as u32);
    randomize(&m, 0.5, 3);
    let (z, ld_inv) = m.pull_back(x).unwrap();
    let (back, ld) = m.push_forward(&z).unwrap();
    let d = max_diff(&back, x);
    let s = ld.iter().zip(&ld_inv).map(|(a, b)| (a + b).abs()).fold(0.0, f64::max);
    eprintln!("SU({n}) {shape:?} {json}: |f(f⁻¹(U)) − U| = {d:.1e}, |ln J + ln J⁻¹| = {s:.1e}, ln J = {:.3}", ld[0]);
    assert!(d < 1e-10, "round trip {d}");
    assert!(s < 1e-9, "log-det sum {s}");
    assert!(ld.iter().all(|l| l.abs() > 1e-2), "log-det too small to test: {ld:?}");
    // and the other way round, from the prior
    let (y, _) = m.push_forward(x).unwrap();
    let (zz, _) = m.pull_back(&y).unwrap();
    assert!(max_diff(&zz, x) < 1e-10);
}

/// Links per configuration on `shape`: D·V.
fn n_links(shape: &[usize]) -> usize {
    shape.len() * shape.iter().product::<usize>()
}

#[test]
fn round_trip_in_four_dimensions() {
    // 20 layers: past the first D·p = 16, so masks with the second partner direction run too
    let json = r#"{"dtype":"f64","layers":20,"hidden":[4]}"#;
    let shape = [4, 4, 4, 4];
    check_round_trip(2, &shape, json, &haar(2 * n_links(&shape), 2, 11));
    check_round_trip(3, &shape, json, &near_identity::<3>(2 * n_links(&shape), 0.4, 12));
}

#[test]
fn round_trip_from_the_prior_and_near_the_identity() {
    let json = r#"{"dtype":"f64","layers":8,"hidden":[8]}"#;
    for n in [2usize, 3] {
        let v = 8 * 8;
        check_round_trip(n, &[8, 8], json, &haar(3 * 2 * v, n, 1));
        let near = if n == 2 { near_identity::<2>(3 * 2 * v, 0.4, 2) } else { near_identity::<3>(3 * 2 * v, 0.4, 2) };
        check_round_trip(n, &[8, 8], json, &near);
    }
}

/// An orthonormal basis X_a = i T_a of su(N) (Tr(T_a T_b) = δ_ab/2).
fn basis<const N: usize>() -> Vec<Matrix<N>> {
    (0..N * N - 1).map(|a| SuAlg::<N>::generator(a).scale_c(Complex::I)).collect()
}

/// The dense Jacobian of the flow at one configuration in Lie-algebra coordinates: input link l
/// moved by exp(ε X_a), output link m read through 2 Re Tr((δU′ U′†) X_b†).
fn dense_log_det<const N: usize>(m: &FlowSun, z: &[f64]) -> f64 {
    let b = basis::<N>();
    let na = b.len();
    let links = z.len() / (2 * N * N);
    let dim = links * na;
    let h = 1e-5;
    let (y0, _) = m.push_forward(z).unwrap();
    let mut jac = vec![0.0; dim * dim];
    for l in 0..links {
        for (a, xa) in b.iter().enumerate() {
            let moved = |s: f64| {
                let step = xa.scale(s).exp_taylor();
                map_links::<N>(z, |i, u| if i == l { step * u } else { u })
            };
            let (yp, _) = m.push_forward(&moved(h)).unwrap();
            let (ym, _) = m.push_forward(&moved(-h)).unwrap();
            for k in 0..links {
                let r = k * 2 * N * N..(k + 1) * 2 * N * N;
                let u0 = Matrix::<N>::from_reals(&y0[r.clone()]);
                let d = Matrix::<N>::from_reals(&yp[r.clone()]).mul_dagger(&u0);
                let e = Matrix::<N>::from_reals(&ym[r]).mul_dagger(&u0);
                for (c, xc) in b.iter().enumerate() {
                    let diff = (d.re_trace_mul(&xc.dagger()) - e.re_trace_mul(&xc.dagger())) / (2.0 * h);
                    jac[(k * na + c) * dim + l * na + a] = 2.0 * diff;
                }
            }
        }
    }
    log_abs_det(jac, dim)
}

fn check_log_det<const N: usize>(shape: &[usize], json: &str) {
    let m = model(json, shape, N as u32);
    randomize(&m, 0.5, 4);
    let z = haar(n_links(shape), N, 5);
    let (_, ld) = m.push_forward(&z).unwrap();
    let dense = dense_log_det::<N>(&m, &z);
    eprintln!("SU({N}) {shape:?}: ln J = {:.8}, dense {dense:.8}, |Δ| = {:.1e}", ld[0], (dense - ld[0]).abs());
    assert!(ld[0].abs() > 0.1, "log-det {} too small to test", ld[0]);
    assert!((dense - ld[0]).abs() < 1e-6, "dense ln|det J| = {dense}, flow says {}", ld[0]);
}

#[test]
fn log_det_matches_dense_jacobian_on_2x2() {
    let json = r#"{"dtype":"f64","layers":4,"hidden":[4],"kernel":1,"mask_period":2}"#;
    check_log_det::<2>(&[2, 2], json);
    check_log_det::<3>(&[2, 2], json);
}

#[test]
fn log_det_matches_dense_jacobian_with_frozen_conditioning() {
    let json = r#"{"dtype":"f64","layers":4,"hidden":[4]}"#;
    check_log_det::<2>(&[4, 4], json);
    check_log_det::<3>(&[4, 4], json);
}

#[test]
fn log_det_matches_dense_jacobian_in_three_and_four_dimensions() {
    // 2⁴, p = 2: the conditioner reads the frozen plaquettes of the site's other planes; 12
    // layers include masks with the second partner direction (D·p = 8)
    let json = r#"{"dtype":"f64","layers":12,"hidden":[4],"kernel":1,"mask_period":2}"#;
    check_log_det::<2>(&[2, 2, 2, 2], json);
    check_log_det::<3>(&[2, 2, 2, 2], json);
    // 4³ with a 3³ kernel: the conditioner reads the neighbours' frozen plaquettes
    let json = r#"{"dtype":"f64","layers":14,"hidden":[4]}"#;
    check_log_det::<2>(&[4, 4, 4], json);
}

/// g·U: U_μ(x) → g(x) U_μ(x) g(x + μ̂)† on every configuration of a batch (`g`: V matrices per
/// configuration).
fn gauge_transform<const N: usize>(m: &FlowSun, x: &[f64], g: &[Matrix<N>]) -> Vec<f64> {
    let geom = &m.flow().geom;
    let d = geom.dim();
    map_links::<N>(x, |i, u| {
        let (site, mu) = ((i / d) % geom.volume, i % d);
        let next = geom.step(site, mu);
        let cfg = i / (d * geom.volume);
        let (gx, gy) = (g[cfg * geom.volume + site], g[cfg * geom.volume + next]);
        (gx * u).mul_dagger(&gy)
    })
}

fn check_equivariance<const N: usize>(shape: &[usize], json: &str) {
    let m = model(json, shape, N as u32);
    randomize(&m, 0.5, 6);
    let (batch, v) = (2, shape.iter().product::<usize>());
    let z = haar(batch * n_links(shape), N, 7);
    let g: Vec<Matrix<N>> = (0..batch * v)
        .map(|i| {
            let mut rng = Stream::new(8, i as u64);
            Matrix::<N>::random_haar(&mut rng)
        })
        .collect();
    let (y, ld) = m.push_forward(&z).unwrap();
    let (yg, ldg) = m.push_forward(&gauge_transform(&m, &z, &g)).unwrap();
    let d = max_diff(&gauge_transform(&m, &y, &g), &yg);
    let dl = max_diff(&ld, &ldg);
    eprintln!("SU({N}) {shape:?}: |F(gU) − gF(U)| = {d:.1e}, |Δ ln J| = {dl:.1e}");
    assert!(d < 1e-10 && dl < 1e-10);
    // the inverse and log q too
    let (zg, _) = m.pull_back(&yg).unwrap();
    assert!(max_diff(&zg, &gauge_transform(&m, &z, &g)) < 1e-10);
}

#[test]
fn flow_is_gauge_equivariant() {
    let json = r#"{"dtype":"f64","layers":8,"hidden":[8]}"#;
    check_equivariance::<2>(&[8, 8], json);
    check_equivariance::<3>(&[8, 8], json);
}

#[test]
fn flow_is_gauge_equivariant_in_four_dimensions() {
    let json = r#"{"dtype":"f64","layers":20,"hidden":[4]}"#;
    check_equivariance::<2>(&[4, 4, 4, 4], json);
    check_equivariance::<3>(&[4, 4, 4, 4], json);
}

/// Counts of (α, β) = ((θ_1 − θ_2)/2π, (θ_0 − θ_1)/2π) of Haar SU(3) draws in a grid of the
/// triangle α, β ≥ 0, α + β ≤ 1, against the Weyl density sin²(πα) sin²(πβ) sin²(π(α + β)).
#[test]
fn haar_prior_eigenphases_follow_the_weyl_density() {
    let m = model(r#"{"dtype":"f64","layers":1,"hidden":[]}"#, &[4, 4], 3);
    let draws = 1000; // configurations of 32 links
    let mut rng = Stream::new(10, 0);
    let x = m.draw_prior(draws, &mut rng);
    let k = 8usize;
    let mut counts = vec![0.0; k * k];
    let bin = |a: f64| ((a * k as f64) as usize).min(k - 1);
    for link in x.chunks_exact(18) {
        let (th, _) = eig::su3_phases(Matrix::<3>::from_reals(link).trace());
        let (a, b) = ((th[1] - th[2]) / (2.0 * std::f64::consts::PI), (th[0] - th[1]) / (2.0 * std::f64::consts::PI));
        counts[bin(a) * k + bin(b)] += 1.0;
    }
    // expected probabilities by a fine midpoint rule
    let fine = 400;
    let mut p = vec![0.0; k * k];
    let mut total = 0.0;
    for i in 0..fine {
        for j in 0..fine - i {
            let (a, b) = ((i as f64 + 0.5) / fine as f64, (j as f64 + 0.5) / fine as f64);
            if a + b > 1.0 {
                continue;
            }
            let s = |t: f64| (std::f64::consts::PI * t).sin().powi(2);
            let w = s(a) * s(b) * s(a + b);
            p[bin(a) * k + bin(b)] += w;
            total += w;
        }
    }
    let nlinks = x.len() / 18;
    let (mut chi2, mut dof) = (0.0, 0usize);
    for (c, q) in counts.iter().zip(&p) {
        let e = q / total * nlinks as f64;
        if e > 20.0 {
            chi2 += (c - e) * (c - e) / e;
            dof += 1;
        } else {
            assert!(e > 0.0 || *c == 0.0);
        }
    }
    let dof = dof - 1;
    let z = (chi2 - dof as f64) / (2.0 * dof as f64).sqrt();
    eprintln!("Haar SU(3) eigenphases: χ² = {chi2:.1} for {dof} degrees of freedom (z = {z:.2})");
    assert!(z.abs() < 4.0);
    // SU(2): φ/π in 10 bins against (2/π) sin²φ
    let m2 = model(r#"{"dtype":"f64","layers":1,"hidden":[]}"#, &[4, 4], 2);
    let x2 = m2.draw_prior(1000, &mut rng);
    let mut c2 = [0.0; 10];
    for link in x2.chunks_exact(8) {
        let u = Matrix::<2>::from_reals(link);
        let (th, _) = eig::su2_phases(u.0[0][0].re, (u.0[0][0].im.powi(2) + u.0[0][1].abs2()).sqrt());
        c2[((th[0] / std::f64::consts::PI * 10.0) as usize).min(9)] += 1.0;
    }
    let n2 = (x2.len() / 8) as f64;
    let cdf = |t: f64| (t - (2.0 * t).sin() / 2.0) / std::f64::consts::PI;
    let chi2: f64 = (0..10)
        .map(|i| {
            let pi = std::f64::consts::PI;
            let e = n2 * (cdf((i + 1) as f64 * pi / 10.0) - cdf(i as f64 * pi / 10.0));
            (c2[i] - e).powi(2) / e
        })
        .sum();
    let z2 = (chi2 - 9.0) / 18f64.sqrt();
    eprintln!("Haar SU(2) eigenphases: χ² = {chi2:.1} for 9 degrees of freedom (z = {z2:.2})");
    assert!(z2.abs() < 4.0);
}

#[test]
fn zero_parameters_are_the_identity_with_constant_log_q() {
    for n in [2u32, 3] {
        let m = model(r#"{"dtype":"f64","layers":4}"#, &[4, 4], n);
        latflow_flow_common::testing::randomize(&m.flow().net, 0.0, 1);
        let mut rng = Stream::new(11, 0);
        let (x, lq) = m.sample_with(5, &mut rng).unwrap();
        let mut rng = Stream::new(11, 0);
        let z = m.draw_prior(5, &mut rng);
        assert!(max_diff(&x, &z) < 1e-12);
        assert!(lq.iter().all(|l| l.abs() < 1e-10), "{lq:?}");
    }
}

/// The surrogate gradient of mean(log q + Σ U·G) equals the finite-difference gradient of the
/// reverse KL mean(log q + S) at fixed prior draws.
#[test]
fn surrogate_gradient_matches_finite_differences_of_the_reverse_kl() {
    for n in [2u32, 3] {
        let beta = 2.0;
        // tanh: a smooth network, so that finite differences never straddle a kink
        let mut m = model(r#"{"dtype":"f64","layers":4,"hidden":[4],"activation":"tanh"}"#, &[4, 4], n);
        randomize(&m, 0.3, 12);
        m.train_begin_with(&latflow_flow_common::testing::settings(4, 1e-3)).unwrap();
        let mut rng = Stream::new(13, 0);
        let (x, _) = m.train_sample_with(&mut rng).unwrap();
        let (_, grad) = wilson(&m, &x, beta);
        let pending = m.state.pending.take().unwrap();
        let grads = m.batch_gradients(&pending, &grad, false).unwrap();
        let mut rng = Stream::new(13, 0);
        let z = m.draw_prior(4, &mut rng);
        let kl = |m: &FlowSun| {
            let (y, ld) = m.push_forward(&z).unwrap();
            let (s, _) = wilson(m, &y, beta);
            s.iter().zip(&ld).map(|(s, l)| s - l).sum::<f64>() / s.len() as f64
        };
        let values = m.flow().net.values().unwrap();
        let mut checked = 0;
        for (p, vals) in values.iter().enumerate() {
            for i in [0, vals.len() / 2, vals.len() - 1] {
                let h = 1e-5;
                let mut v = values.clone();
                v[p][i] += h;
                m.flow().net.set_values(&v).unwrap();
                let up = kl(&m);
                v[p][i] -= 2.0 * h;
                m.flow().net.set_values(&v).unwrap();
                let down = kl(&m);
                m.flow().net.set_values(&values).unwrap();
                let fd = (up - down) / (2.0 * h);
                let g = grads[p][i];
                assert!((fd - g).abs() < 1e-6 * (1.0 + g.abs()), "SU({n}) parameter {p}[{i}]: autograd {g}, FD {fd}");
                checked += 1;
            }
        }
        eprintln!("SU({n}): {checked} surrogate gradient entries match finite differences");
    }
}

/// Path gradients: the estimator equals the finite-difference gradient of
/// mean(log q_θ₀(U_θ(z)) + S(U_θ(z))) at θ = θ₀ (the density's weights held fixed), at fixed
/// prior draws.
#[test]
fn path_gradient_matches_finite_differences_at_fixed_density() {
    for n in [2u32, 3] {
        let beta = 2.0;
        // tanh: a smooth network, so that finite differences never straddle a kink
        let mut m = model(r#"{"dtype":"f64","layers":3,"hidden":[4],"activation":"tanh"}"#, &[4, 4], n);
        randomize(&m, 0.3, 14);
        let mut s = latflow_flow_common::testing::settings(4, 1e-3);
        s.path_gradients = true;
        m.train_begin_with(&s).unwrap();
        let mut rng = Stream::new(15, 0);
        let (x, _) = m.train_sample_with(&mut rng).unwrap();
        let (_, grad) = wilson(&m, &x, beta);
        let pending = m.state.pending.take().unwrap();
        let grads = m.batch_gradients(&pending, &grad, true).unwrap();
        let mut rng = Stream::new(15, 0);
        let z = m.draw_prior(4, &mut rng);
        let values = m.flow().net.values().unwrap();
        let objective = |m: &FlowSun, v: &[Vec<f64>]| {
            m.flow().net.set_values(v).unwrap();
            let (y, _) = m.push_forward(&z).unwrap();
            m.flow().net.set_values(&values).unwrap();
            let lq = m.log_prob_vec(&y).unwrap();
            let (s, _) = wilson(m, &y, beta);
            s.iter().zip(&lq).map(|(s, l)| s + l).sum::<f64>() / s.len() as f64
        };
        for (p, vals) in values.iter().enumerate() {
            for i in [0, vals.len() / 2, vals.len() - 1] {
                let h = 1e-5;
                let mut v = values.clone();
                v[p][i] += h;
                let up = objective(&m, &v);
                v[p][i] -= 2.0 * h;
                let down = objective(&m, &v);
                let fd = (up - down) / (2.0 * h);
                let g = grads[p][i];
                assert!(
                    (fd - g).abs() < 1e-6 * (1.0 + g.abs()),
                    "SU({n}) parameter {p}[{i}]: path gradient {g}, FD {fd}"
                );
            }
        }
    }
}
