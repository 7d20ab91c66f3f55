//! Checks of the heat-bath and overrelaxation: the SU(2) draw and single-link updates against
//! exact one-link integrals (Bessel-function determinants), the overrelaxation's exact
//! properties, full sweeps against the exact 2D plaquettes and the 4D small-volume references,
//! bit-identity for any thread count, and the error cases.

use super::*;
use crate::gauge::{mean_plaquette, plaquette_sum, Su2, Su3};
use crate::testkit::batch_means;

// ---------------------------------------------------------------------------------------------
// Exact one-link integrals
// ---------------------------------------------------------------------------------------------

/// The modified Bessel function I_n(x), x ≥ 0, from its power series
/// Σ_k (x/2)^{2k+n} / (k! (k+n)!) (I_{−n} = I_n).
fn bessel_i(n: i64, x: f64) -> f64 {
    let n = n.unsigned_abs();
    let h = 0.5 * x;
    let mut term = 1.0;
    for k in 1..=n {
        term *= h / k as f64;
    }
    let mut sum = term;
    for k in 1..500u64 {
        term *= h * h / (k as f64 * (k + n) as f64);
        sum += term;
        if term < 1e-18 * sum {
            break;
        }
    }
    sum
}

/// Z(γ) = ∫ dU exp(γ Re Tr U) over SU(N) and dZ/dγ, from
/// Z = Σ_q det[I_{q+i−j}(γ)]_{i,j} and I_n' = (I_{n−1} + I_{n+1})/2.
fn one_link_z<const N: usize>(gamma: f64) -> (f64, f64) {
    let (mut z, mut dz) = (0.0, 0.0);
    for q in -40i64..=40 {
        let mut m = Matrix::<N>::zero();
        let mut dm = Matrix::<N>::zero();
        for i in 0..N {
            for j in 0..N {
                let n = q + i as i64 - j as i64;
                m.0[i][j] = Complex::real(bessel_i(n, gamma));
                dm.0[i][j] = Complex::real(0.5 * (bessel_i(n - 1, gamma) + bessel_i(n + 1, gamma)));
            }
        }
        z += m.det().re;
        // d det = Σ_c det(M with column c differentiated)
        for c in 0..N {
            let mut mc = m;
            for i in 0..N {
                mc.0[i][c] = dm.0[i][c];
            }
            dz += mc.det().re;
        }
    }
    (z, dz)
}

/// ⟨Re Tr U⟩/N under the weight exp(γ Re Tr U) on SU(N).
fn one_link_mean<const N: usize>(gamma: f64) -> f64 {
    let (z, dz) = one_link_z::<N>(gamma);
    dz / z / N as f64
}

#[test]
fn one_link_integrals_reproduce_the_2d_references() {
    // reference §4: u(β) = ⟨Re Tr U_P⟩/N of 2D SU(N) with weight exp((β/N) Re Tr U_P)
    let cases = [
        (2, 2.0, 0.4331274267),
        (2, 4.0, 0.6580472674),
        (3, 1.0, 0.06012655483),
        (3, 2.0, 0.1286277853),
        (3, 6.0, 0.4225317396),
    ];
    for (n, beta, want) in cases {
        let got = if n == 2 { one_link_mean::<2>(beta / 2.0) } else { one_link_mean::<3>(beta / 3.0) };
        assert!((got - want).abs() < 2e-10, "SU({n}) β = {beta}: {got} vs {want}");
    }
    // SU(2): ⟨x₀⟩ = I₂(α)/I₁(α) with α = 2γ
    let x = 2.0;
    assert!((bessel_i(2, x) / bessel_i(1, x) - 0.4331274267).abs() < 1e-10);
}

// ---------------------------------------------------------------------------------------------
// The SU(2) draw
// ---------------------------------------------------------------------------------------------

/// ∫_{−1}^{x} √(1 − t²) e^{α(t−1)} dt on a grid of x = cos θ (θ from π to 0), by the
/// trapezoidal rule in θ (smooth integrand sin²θ e^{α(cos θ − 1)}): returns (x, cdf) pairs,
/// normalised.
fn x0_cdf(alpha: f64, points: usize) -> Vec<(f64, f64)> {
    let h = std::f64::consts::PI / points as f64;
    let f = |theta: f64| theta.sin().powi(2) * (alpha * (theta.cos() - 1.0)).exp();
    let mut out = Vec::with_capacity(points + 1);
    let mut acc = 0.0;
    out.push((-1.0, 0.0));
    for k in 1..=points {
        let (t0, t1) = (std::f64::consts::PI - (k - 1) as f64 * h, std::f64::consts::PI - k as f64 * h);
        acc += 0.5 * h * (f(t0) + f(t1));
        out.push((t1.cos(), acc));
    }
    for p in &mut out {
        p.1 /= acc;
    }
    out
}

/// The χ² of `samples` in `bins` equiprobable bins of the exact x₀ distribution, as a z-score
/// (χ² − dof)/√(2 dof).
fn chi2_z(alpha: f64, samples: &[f64], bins: usize) -> f64 {
    let cdf = x0_cdf(alpha, 200_000);
    let prob = |x: f64| {
        let k = cdf.partition_point(|p| p.0 < x).clamp(1, cdf.len() - 1);
        let (a, b) = (cdf[k - 1], cdf[k]);
        let t = if b.0 > a.0 { (x - a.0) / (b.0 - a.0) } else { 0.0 };
        a.1 + t * (b.1 - a.1)
    };
    let mut counts = vec![0usize; bins];
    for &x in samples {
        counts[((prob(x) * bins as f64) as usize).min(bins - 1)] += 1;
    }
    let expect = samples.len() as f64 / bins as f64;
    let chi2: f64 = counts.iter().map(|&c| (c as f64 - expect).powi(2) / expect).sum();
    let dof = (bins - 1) as f64;
    (chi2 - dof) / (2.0 * dof).sqrt()
}

/// Mean and standard error of independent samples.
fn mean_err(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0);
    (m, (var / n).sqrt())
}

#[test]
fn su2_draw_matches_the_exact_distribution_with_kp_and_creutz() {
    let mut rng = Stream::new(2024, 1);
    // below KP_MIN_ALPHA: Creutz; from it on: Kennedy–Pendleton
    for alpha in [0.0, 0.3, 1.2, 1.99, 2.0, 3.5, 10.0, 45.0] {
        let n = 100_000;
        let xs: Vec<f64> = (0..n).map(|_| sample_x0(alpha, &mut rng).unwrap()).collect();
        assert!(xs.iter().all(|x| (-1.0..=1.0).contains(x)));
        let (m, e) = mean_err(&xs);
        let exact = if alpha == 0.0 { 0.0 } else { bessel_i(2, alpha) / bessel_i(1, alpha) };
        let z = (m - exact) / e;
        let zc = chi2_z(alpha, &xs, 40);
        println!("α = {alpha}: <x0> = {m:.6}({e:.6}) exact {exact:.6}, z = {z:.2}; chi2 z = {zc:.2}");
        assert!(z.abs() < 4.0, "α = {alpha}: <x0> z = {z}");
        assert!(zc.abs() < 4.0, "α = {alpha}: chi2 z = {zc}");
    }
}

#[test]
fn su2_link_heatbath_is_exact_given_its_staple() {
    let mut rng = Stream::new(7, 3);
    for target_alpha in [0.5, 1.8, 2.5, 12.0] {
        // a staple from six SU(2) matrices is k·V with V ∈ SU(2)
        let mut a = Su2::zero();
        for _ in 0..6 {
            a += Su2::random(&mut rng);
        }
        let k = a.det().re.sqrt();
        // α = 2βk/N = βk for SU(2)
        let beta = target_alpha / k;
        let mut u = Su2::random(&mut rng);
        let n = 40_000;
        let (mut x0, mut x1, mut x2, mut x3) = (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        for i in 0..n {
            assert!(u.heatbath_link(&a, beta, &mut rng));
            assert!(u.deviation() < 1e-14);
            // x = U·A/k, an SU(2) element: x₀ = Re Tr(U A)/(2k)
            let x = (u * a).scale(1.0 / k);
            (x0[i], x3[i], x2[i], x1[i]) = (x.0[0][0].re, x.0[0][0].im, x.0[0][1].re, x.0[0][1].im);
        }
        let exact = bessel_i(2, target_alpha) / bessel_i(1, target_alpha);
        let (m, e) = mean_err(&x0);
        let z = (m - exact) / e;
        println!("SU(2) link, α = {target_alpha}: <x0> = {m:.6}({e:.6}) exact {exact:.6}, z = {z:.2}");
        assert!(z.abs() < 4.0, "α = {target_alpha}: z = {z}");
        for (name, c) in [("x1", &x1), ("x2", &x2), ("x3", &x3)] {
            let (m, e) = mean_err(c);
            assert!((m / e).abs() < 4.0, "α = {target_alpha}: <{name}> = {m} ± {e}");
        }
    }
}

/// A Markov chain of single-link heat-bath updates with the fixed staple A = W (W Haar): its
/// ⟨Re Tr(U W)⟩/N is the one-link mean at γ = β/N.
fn single_link_chain<G: HeatbathGroup<Mat = Matrix<N>>, const N: usize>(
    beta: f64,
    seed: u64,
    to_mat: impl Fn(&G) -> Matrix<N>,
) -> (f64, f64) {
    let mut rng = Stream::new(seed, 0);
    let w = G::random(&mut rng).to_mat();
    let mut u = G::identity();
    let n = 40_000;
    let mut data = Vec::with_capacity(n);
    for i in 0..n + 200 {
        assert!(u.heatbath_link(&w, beta, &mut rng));
        if i >= 200 {
            data.push(to_mat(&u).re_trace_mul(&w) / N as f64);
        }
    }
    assert!(u.deviation() < 1e-13);
    batch_means(&data, 40)
}

#[test]
fn cabibbo_marinari_link_chain_matches_the_sun_one_link_integral() {
    let check = |name: &str, (m, e): (f64, f64), exact: f64| {
        let z = (m - exact) / e;
        println!("{name}: {m:.6}({e:.6}) exact {exact:.6}, z = {z:.2}");
        assert!(z.abs() < 4.0, "{name}: z = {z}");
        assert!(e < 5e-3, "{name}: error {e} too large to test anything");
    };
    // small coupling (Creutz draws dominate) to large (Kennedy–Pendleton)
    for beta in [1.0, 6.0, 18.0] {
        let got = single_link_chain::<Su3, 3>(beta, 11 + beta as u64, |u| *u);
        check(&format!("SU(3) β = {beta}"), got, one_link_mean::<3>(beta / 3.0));
    }
    let got = single_link_chain::<SuN<4>, 4>(8.0, 5, |u| u.0);
    check("SU(4) β = 8", got, one_link_mean::<4>(2.0));
    let got = single_link_chain::<Su2, 2>(3.0, 6, |u| *u);
    check("SU(2) β = 3", got, one_link_mean::<2>(1.5));
}

#[test]
fn generic_sun_agrees_with_su3() {
    let mut rng = Stream::new(99, 0);
    let mut a = Su3::zero();
    for _ in 0..6 {
        a += Su3::random(&mut rng);
    }
    let u = Su3::random(&mut rng);
    let (mut r1, mut r2) = (Stream::new(5, 5), Stream::new(5, 5));
    let (mut u1, mut u2) = (u, SuN::<3>(u));
    for _ in 0..10 {
        assert!(u1.heatbath_link(&a, 5.7, &mut r1));
        assert!(u2.heatbath_link(&a, 5.7, &mut r2));
        assert!(u1.overrelax_link(&a));
        assert!(u2.overrelax_link(&a));
    }
    // the same draws; the links differ only by the rounding of the two reunitarisations
    assert_eq!(r1.state(), r2.state());
    assert!((u1 - u2.0).norm2().sqrt() < 1e-13, "{:e}", (u1 - u2.0).norm2().sqrt());
}

// ---------------------------------------------------------------------------------------------
// Overrelaxation
// ---------------------------------------------------------------------------------------------

fn overrelax_link_properties<const N: usize>(seed: u64)
where
    Matrix<N>: HeatbathGroup<Mat = Matrix<N>>,
{
    let mut rng = Stream::new(seed, 0);
    for _ in 0..200 {
        let mut a = Matrix::<N>::zero();
        for _ in 0..6 {
            a += <Matrix<N> as GaugeGroup>::random(&mut rng).to_mat();
        }
        let u0 = <Matrix<N> as GaugeGroup>::random(&mut rng);
        let mut u = u0;
        assert!(u.overrelax_link(&a));
        let (before, after) = (u0.re_trace_mul(&a), u.re_trace_mul(&a));
        assert!((after - before).abs() < 1e-12 * before.abs().max(1.0), "Re Tr(U A): {before} -> {after}");
        assert!((u - u0).norm2().sqrt() > 1e-3, "the move must move the link");
        assert!(u.unitarity_deviation() < 1e-14);
        // undone by the subgroups in reverse order (for SU(2): the same move again)
        let mut back = u;
        if N == 2 {
            assert!(back.overrelax_link(&a));
        } else {
            assert!(overrelax_reversed(&mut back, &a));
        }
        assert!((back - u0).norm2().sqrt() < 1e-13, "{:e}", (back - u0).norm2().sqrt());
    }
}

#[test]
fn overrelaxation_keeps_the_local_action_and_is_reversible() {
    overrelax_link_properties::<2>(1);
    overrelax_link_properties::<3>(2);
}

fn overrelax_sweep_keeps_the_action<G: HeatbathGroup>(shape: &[i64], beta: f64) {
    let lat = Lattice::new(shape).unwrap();
    let mut rng = Stream::new(17, 0);
    let mut links = crate::gauge::LinkField::<G>::random(lat.dim(), lat.volume(), &mut rng).unwrap();
    for _ in 0..5 {
        heatbath_sweep(&lat, links.links_mut(), beta, &mut rng).unwrap();
    }
    let before = links.clone();
    let s0 = plaquette_sum(&lat, links.links());
    for _ in 0..3 {
        overrelax_sweep(&lat, links.links_mut(), beta).unwrap();
        let s = plaquette_sum(&lat, links.links());
        assert!((s - s0).abs() < 1e-12 * s0.abs(), "SU({}) {shape:?}: {s0} -> {s}", G::NC);
    }
    let moved = before.links().iter().zip(links.links()).filter(|(a, b)| a != b).count();
    assert_eq!(moved, links.links().len(), "every link moves");
}

#[test]
fn overrelaxation_sweeps_keep_the_wilson_action() {
    overrelax_sweep_keeps_the_action::<Su2>(&[4, 4, 4, 4], 2.3);
    overrelax_sweep_keeps_the_action::<Su3>(&[4, 4, 4, 4], 5.7);
    overrelax_sweep_keeps_the_action::<Su3>(&[6, 4, 2], 3.0);
}

// ---------------------------------------------------------------------------------------------
// Full sweeps against references
// ---------------------------------------------------------------------------------------------

/// `therm` then `meas` iterations of one heat-bath and `or` overrelaxation sweeps from a hot
/// start; returns the plaquette's batch mean and error and the largest link deviation from
/// SU(N) at the end.
fn plaquette_run<G: HeatbathGroup>(
    shape: &[i64],
    beta: f64,
    or: usize,
    therm: usize,
    meas: usize,
    seed: u64,
) -> (f64, f64, f64) {
    let lat = Lattice::new(shape).unwrap();
    let mut rng = Stream::new(seed, 0);
    let mut links = crate::gauge::LinkField::<G>::random(lat.dim(), lat.volume(), &mut rng).unwrap();
    let mut data = Vec::with_capacity(meas);
    for i in 0..therm + meas {
        heatbath_sweep(&lat, links.links_mut(), beta, &mut rng).unwrap();
        for _ in 0..or {
            overrelax_sweep(&lat, links.links_mut(), beta).unwrap();
        }
        if i >= therm {
            data.push(mean_plaquette(&lat, links.links()));
        }
    }
    let dev = links.links().iter().map(|u| u.deviation()).fold(0.0, f64::max);
    let (m, e) = batch_means(&data, 40);
    (m, e, dev)
}

fn check_reference(name: &str, (m, e, dev): (f64, f64, f64), reference: f64, ref_err: f64, max_err: f64) {
    let z = (m - reference) / (e * e + ref_err * ref_err).sqrt();
    println!("{name}: plaquette {m:.6}({e:.6}) reference {reference}({ref_err}), z = {z:.2}, max deviation {dev:.1e}");
    assert!(z.abs() < 4.0, "{name}: z = {z}");
    assert!(e < max_err, "{name}: error {e} above {max_err}");
    assert!(dev < 1e-12, "{name}: links off SU(N) by {dev:e}");
}

#[test]
fn sweeps_reproduce_the_exact_2d_plaquettes() {
    // reference §4, L = 8 torus (equal to infinite volume at this precision)
    check_reference(
        "2D SU(2) L=8 β=2",
        plaquette_run::<Su2>(&[8, 8], 2.0, 1, 100, 10_000, 21),
        0.4331274267,
        0.0,
        1e-3,
    );
    check_reference(
        "2D SU(3) L=8 β=2",
        plaquette_run::<Su3>(&[8, 8], 2.0, 1, 100, 10_000, 22),
        0.1286277853,
        0.0,
        1e-3,
    );
}

#[test]
fn sweeps_reproduce_the_4d_small_volume_references() {
    // reference §5: heat-bath values on 4⁴ (the plaquette fluctuates by σ ≈ 0.01 per
    // configuration here, so 1500 iterations resolve it to about 5e-4)
    check_reference(
        "4D SU(3) 4^4 β=5.7",
        plaquette_run::<Su3>(&[4, 4, 4, 4], 5.7, 2, 100, 1500, 31),
        0.560245,
        1.73e-4,
        1e-3,
    );
    check_reference(
        "4D SU(2) 4^4 β=2.3",
        plaquette_run::<Su2>(&[4, 4, 4, 4], 2.3, 2, 100, 1500, 32),
        0.609331,
        1.88e-4,
        1e-3,
    );
}

#[test]
fn sweeps_reproduce_the_4d_su3_references_at_beta_6_and_strong_coupling() {
    // reference §5; at β = 1 most SU(2) subgroup draws take the Creutz branch
    check_reference(
        "4D SU(3) 4^4 β=6.0",
        plaquette_run::<Su3>(&[4, 4, 4, 4], 6.0, 2, 100, 1000, 33),
        0.596878,
        0.94e-4,
        1e-3,
    );
    check_reference(
        "4D SU(3) 4^4 β=1.0",
        plaquette_run::<Su3>(&[4, 4, 4, 4], 1.0, 1, 50, 600, 34),
        0.060101,
        0.81e-4,
        1e-3,
    );
}

// ---------------------------------------------------------------------------------------------
// Reproducibility and bad input
// ---------------------------------------------------------------------------------------------

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
}

fn pos(s: &crate::rng::RngState) -> u128 {
    (u128::from(s.counter_hi) << 64) | u128::from(s.counter_lo)
}

/// `f` on a rayon pool of `threads` threads, or (`team`) on a spinning team of that size.
fn on_threads<R: Send>(threads: usize, team: bool, f: impl FnOnce() -> R + Send) -> R {
    if team {
        crate::par::Team::new(threads).unwrap().enter(f)
    } else {
        in_pool(threads, f)
    }
}

fn sweeps_on_threads<G: HeatbathGroup>(shape: &[i64], beta: f64) {
    let lat = Lattice::new(shape).unwrap();
    let run = |threads: usize, team: bool| {
        on_threads(threads, team, || {
            let mut rng = Stream::new(123, 4);
            let mut f = crate::gauge::LinkField::<G>::random(lat.dim(), lat.volume(), &mut rng).unwrap();
            let start = pos(&rng.state());
            for _ in 0..2 {
                heatbath_sweep(&lat, f.links_mut(), beta, &mut rng).unwrap();
                overrelax_sweep(&lat, f.links_mut(), beta).unwrap();
            }
            (f, pos(&rng.state()) - start)
        })
    };
    let (a, used) = run(1, false);
    // the stream advances by the reserved ranges only: one per link and sweep
    assert!(lat.volume() / 2 > crate::gauge::parallel::RNG_CHUNK, "the test needs several parallel tasks per pass");
    assert_eq!(used, 2 * (lat.dim() * lat.volume()) as u128 * HB_LINK_WORDS);
    let mut ra = vec![0.0; a.links().len() * G::REALS];
    a.write_reals(&mut ra).unwrap();
    for (threads, team) in [(2, false), (3, false), (2, true)] {
        let (b, used_b) = run(threads, team);
        assert_eq!(used_b, used);
        let mut rb = vec![0.0; ra.len()];
        b.write_reals(&mut rb).unwrap();
        assert!(ra.iter().zip(&rb).all(|(x, y)| x.to_bits() == y.to_bits()), "{threads} threads (team: {team}) differ");
    }
}

#[test]
fn sweeps_are_bit_identical_for_any_thread_count() {
    sweeps_on_threads::<Su3>(&[6, 6, 6, 6], 5.7);
    sweeps_on_threads::<Su2>(&[32, 32], 2.0);
    sweeps_on_threads::<SuN<4>>(&[8, 8, 12], 6.0);
    // passes of 2560 links (three chunks, the last one short): the parallel gather, update and
    // store of `SiteWork::Heavy` loops
    sweeps_on_threads::<Su2>(&[64, 80], 2.0);
}

/// A non-finite link in a parallel pass is an error naming it, and that pass stores nothing.
#[test]
fn a_bad_link_in_a_parallel_pass_is_reported_and_nothing_of_the_pass_is_stored() {
    let lat = Lattice::new(&[64, 80]).unwrap();
    let mut rng = Stream::new(5, 0);
    let mut links = crate::gauge::LinkField::<Su2>::random(2, lat.volume(), &mut rng).unwrap().links().to_vec();
    // the last even site's μ = 0 link: in the first pass (μ = 0, even), in its last chunk
    let x = *lat.sites_of_parity(0).last().unwrap() as usize;
    links[x * 2].0[0][0].re = f64::NAN;
    let before = links.clone();
    for team in [false, true] {
        let mut u = before.clone();
        let err = on_threads(2, team, || overrelax_sweep(&lat, &mut u, 2.0)).unwrap_err();
        assert!(matches!(err, HeatbathError::NotFinite { link } if link == x * 2), "{err:?}");
        let same = u.iter().zip(&before).all(|(a, b)| a.0.iter().flatten().zip(b.0.iter().flatten()).all(|(p, q)| p.re.to_bits() == q.re.to_bits() && p.im.to_bits() == q.im.to_bits()));
        assert!(same, "the failed pass stored links");
    }
}

#[test]
fn bad_input_is_an_error() {
    let mut rng = Stream::new(1, 1);
    let odd = Lattice::new(&[4, 5]).unwrap();
    let mut links = vec![Su3::identity(); odd.volume() * 2];
    assert_eq!(heatbath_sweep(&odd, &mut links, 5.7, &mut rng), Err(HeatbathError::OddExtent { axis: 1, extent: 5 }));
    assert_eq!(overrelax_sweep(&odd, &mut links, 5.7), Err(HeatbathError::OddExtent { axis: 1, extent: 5 }));
    assert!(heatbath_sweep(&odd, &mut links, 5.7, &mut rng).unwrap_err().to_string().contains("odd"));

    let lat = Lattice::new(&[4, 4]).unwrap();
    let mut links = vec![Su2::identity(); lat.volume() * 2];
    for beta in [f64::NAN, f64::INFINITY, -1.0] {
        let e = heatbath_sweep(&lat, &mut links, beta, &mut rng).unwrap_err();
        assert!(matches!(e, HeatbathError::Beta(_)), "{e}");
        assert!(e.to_string().contains("beta"));
        assert!(matches!(overrelax_sweep(&lat, &mut links, beta), Err(HeatbathError::Beta(_))));
    }
    assert!(links.iter().all(|u| *u == Su2::identity()), "refused sweeps change nothing");
    let mut short = vec![Su2::identity(); 5];
    assert_eq!(heatbath_sweep(&lat, &mut short, 2.0, &mut rng), Err(HeatbathError::Length { expected: 32, got: 5 }));

    // an exhausted stream is refused before anything changes, and the stream is kept
    let mut st = Stream::new(1, 1).state();
    let p = WORD_POS_LIMIT - 31 * HB_LINK_WORDS;
    (st.counter_lo, st.counter_hi) = (p as u64, (p >> 64) as u64);
    let mut end = Stream::from_state(&st);
    assert_eq!(heatbath_sweep(&lat, &mut links, 2.0, &mut end), Err(HeatbathError::StreamExhausted { chunks: 32 }));
    assert_eq!(end.state(), st);
    assert!(links.iter().all(|u| *u == Su2::identity()));

    // a corrupt link is reported, not looped on
    links[9].0[0][0].re = f64::NAN;
    assert!(matches!(heatbath_sweep(&lat, &mut links, 2.0, &mut rng), Err(HeatbathError::NotFinite { .. })));
    assert!(matches!(overrelax_sweep(&lat, &mut links, 2.0), Err(HeatbathError::NotFinite { .. })));

    // β = 0 is the Haar measure: allowed, and the links leave the identity
    let mut links = vec![Su2::identity(); lat.volume() * 2];
    heatbath_sweep(&lat, &mut links, 0.0, &mut rng).unwrap();
    assert!(links.iter().all(|u| *u != Su2::identity() && u.deviation() < 1e-14));
}

/// The link updates compiled for AVX2 give the bits of the plain ones (the same operations in
/// the same order), for every link of a random 4⁴ field: heat-bath from the same stream state,
/// and overrelaxation.
#[cfg(target_arch = "x86_64")]
fn wide_updates_match<G: HeatbathGroup>(beta: f64) {
    if !wide_vectors() {
        eprintln!("this CPU has no AVX2: nothing to compare");
        return;
    }
    let lat = Lattice::new(&[4, 4, 4, 4]).unwrap();
    let mut rng = Stream::new(23, 0);
    let links = crate::gauge::LinkField::<G>::random(lat.dim(), lat.volume(), &mut rng).unwrap();
    let field = links.links();
    for x in 0..lat.volume() {
        for mu in 0..lat.dim() {
            let start = Slot { x, u: field[x * lat.dim() + mu], ok: true };
            let (mut plain, mut wide_slot) = (start, start);
            let (mut r1, mut r2) = (rng.clone(), rng.clone());
            let ok = heatbath_link(&lat, field, &mut plain, mu, beta, &mut r1);
            // SAFETY: AVX2 was found above
            let ok_wide = unsafe { wide::heatbath_link(&lat, field, &mut wide_slot, mu, beta, &mut r2) };
            assert!(ok && ok_wide);
            assert!(plain.u == wide_slot.u, "heat-bath, SU({}), link ({x}, {mu})", G::NC);
            assert_eq!(r1.word_pos(), r2.word_pos());
            let (mut plain, mut wide_slot) = (start, start);
            overrelax_link(&lat, field, &mut plain, mu);
            // SAFETY: as above
            unsafe { wide::overrelax_link(&lat, field, &mut wide_slot, mu) };
            assert!(plain.u == wide_slot.u, "overrelaxation, SU({}), link ({x}, {mu})", G::NC);
            rng = r1;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn wide_link_updates_give_the_same_bits() {
    wide_updates_match::<Su2>(2.3);
    wide_updates_match::<Su3>(5.7);
}
