//! Sampling: reproducibility, threads, consistency with log_prob, the Z2 symmetrisation, the
//! free-field prior, and the ABI entry points.

use abi_stable::std_types::{RSlice, RStr};
use latflow_core::abi::PluginKind;
use latflow_core::ErrorKind;

use super::*;
use crate::config::Z2;
use crate::prior::Prior;

#[test]
fn sampling_is_reproducible_and_independent_of_threads() {
    let mut m = model(r#"{"layers":4}"#, &[8, 8]);
    randomize(&m, 2.0, 3);
    let after = testing::check_sampling_thread_independence(&mut m, 300);
    // the stream advanced by exactly the n·V normal deviates
    let mut s = Stream::new(11, 5);
    let mut skip = vec![0.0; 300 * 64];
    s.fill_normal(&mut skip);
    assert_eq!(after, s.state());
}

#[test]
fn sample_log_q_matches_log_prob_across_chunks() {
    let m = model(r#"{"dtype":"f64","layers":4}"#, &[4, 4]);
    randomize(&m, 2.0, 6);
    let n = crate::CHUNK + 300;
    let (c, lq) = m.sample_with(n, &mut Stream::new(1, 2)).unwrap();
    let lp = m.log_prob_vec(&c).unwrap();
    assert!(max_abs_diff(&lq, &lp) < ATOL, "{}", max_abs_diff(&lq, &lp));
    // the first chunk does not depend on how many follow
    let (c2, lq2) = m.sample_with(10, &mut Stream::new(1, 2)).unwrap();
    assert_eq!(&c[..10 * 16], &c2[..]);
    assert_eq!(&lq[..10], &lq2[..]);
    let f32m = model(r#"{"layers":4}"#, &[4, 4]);
    let (c, lq) = f32m.sample_with(100, &mut Stream::new(1, 2)).unwrap();
    let lp = f32m.log_prob_vec(&c).unwrap();
    assert!(max_abs_diff(&lq, &lp) < 1e-3, "f32: {}", max_abs_diff(&lq, &lp));
    assert_eq!(f32m.log_prob_vec(&[f64::NAN; 16]).unwrap_err().kind, ErrorKind::Numerical);
    assert_eq!(f32m.log_prob_vec(&[0.0; 15]).unwrap_err().kind, ErrorKind::Shape);
}

#[test]
fn z2_symmetrised_density_is_symmetric_and_exact() {
    let sym = model(r#"{"dtype":"f64","layers":4,"z2":"symmetrize","init_seed":3}"#, &[4, 4]);
    let plain = model(r#"{"dtype":"f64","layers":4,"init_seed":3}"#, &[4, 4]);
    assert_eq!(sym.arch().z2, Z2::Symmetrize);
    randomize(&sym, 2.0, 8);
    randomize(&plain, 2.0, 8);
    let (c, lq) = sym.sample_with(400, &mut Stream::new(4, 4)).unwrap();
    let neg: Vec<f64> = c.iter().map(|x| -x).collect();
    let a = sym.log_prob_vec(&c).unwrap();
    let b = sym.log_prob_vec(&neg).unwrap();
    assert_eq!(a, b, "log q_sym(φ) and log q_sym(−φ) differ");
    assert!(max_abs_diff(&a, &lq) < ATOL, "sample's log q disagrees with log_prob");
    // log q_sym = log(½ q(φ) + ½ q(−φ)) with q the unsymmetrised flow
    let p = plain.log_prob_vec(&c).unwrap();
    let q = plain.log_prob_vec(&neg).unwrap();
    for i in 0..400 {
        let expect = (0.5 * p[i].exp() + 0.5 * q[i].exp()).ln();
        assert!((a[i] - expect).abs() < ATOL * expect.abs().max(1.0), "{i}: {} vs {expect}", a[i]);
    }
    // about half of the draws are flipped: compare with the unsymmetrised flow's draws
    let (cp, _) = plain.sample_with(400, &mut Stream::new(4, 4)).unwrap();
    let flipped = (0..400).filter(|&i| c[i * 16] == -cp[i * 16]).count();
    assert!((150..250).contains(&flipped), "{flipped} of 400 flipped");
}

/// ∫ q dφ over a 2-site lattice by the midpoint rule on a fine grid (the integrand is smooth and
/// decays like a Gaussian, so the rule converges exponentially).
fn integrate_2d(m: &FlowScalar, half_width: f64, n: usize) -> f64 {
    let h = 2.0 * half_width / n as f64;
    let mut pts = Vec::with_capacity(2 * n * n);
    for i in 0..n {
        for j in 0..n {
            pts.push(-half_width + (i as f64 + 0.5) * h);
            pts.push(-half_width + (j as f64 + 0.5) * h);
        }
    }
    m.log_prob_vec(&pts).unwrap().iter().map(|l| l.exp()).sum::<f64>() * h * h
}

#[test]
fn densities_are_normalised_on_a_two_site_lattice() {
    for json in [
        r#"{"dtype":"f64","layers":4,"kernel":1,"hidden":[4],"init_seed":1}"#,
        r#"{"dtype":"f64","layers":4,"kernel":1,"hidden":[4],"init_seed":1,"z2":"symmetrize"}"#,
        r#"{"dtype":"f64","layers":3,"kernel":1,"hidden":[4],"init_seed":2,"prior":"free","prior_m2":0.7}"#,
    ] {
        let m = model(json, &[2]);
        randomize(&m, 0.5, 3);
        let total = integrate_2d(&m, 20.0, 2000);
        assert!((total - 1.0).abs() < ATOL_RELAXED, "{json}: ∫ q = {total}");
    }
}

#[test]
fn free_prior_draws_have_the_right_covariance_and_normalisation() {
    let shape = [4, 4];
    let m = model(r#"{"dtype":"f64","layers":1,"prior":"free","prior_m2":0.5}"#, &shape);
    let geom = &m.flow.geom;
    let v = geom.volume;
    let Prior::Free(_) = &m.flow.prior else { panic!("not the free prior") };
    // draws: log q₀ from ε equals −S₀(z) + log-normalisation evaluated on z (host and tensor)
    let eps = normals(5 * v, 3);
    let (z, lq0) = m.flow.prior.draw(&eps, candle_core::DType::F64, &candle_core::Device::Cpu).unwrap();
    let zh = tensor_to_f64(&z).unwrap();
    let host = m.flow.prior.log_prob_host(&zh);
    let tens = tensor_to_f64(&m.flow.prior.log_prob_tensor(&z).unwrap()).unwrap();
    assert!(max_abs_diff(&lq0, &host) < ATOL * 100.0, "{}", max_abs_diff(&lq0, &host));
    assert!(max_abs_diff(&host, &tens) < ATOL * 100.0);
    // z = C ε with C = (2K)^{-1/2}: C (2K) C = 1, from the unit vectors pushed through `draw`
    let mut eye = vec![0.0; v * v];
    for i in 0..v {
        eye[i * v + i] = 1.0;
    }
    let (cmat, _) = m.flow.prior.draw(&eye, candle_core::DType::F64, &candle_core::Device::Cpu).unwrap();
    let cmat = tensor_to_f64(&cmat).unwrap(); // row i = C e_i (C symmetric)
    let lat = &geom.lattice;
    let mut k2 = vec![0.0; v * v]; // 2K in checkerboard order
    for i in 0..v {
        let x = geom.perm[i];
        k2[i * v + i] += 2.0 * (2.0 * lat.dim() as f64 + 0.5);
        for mu in 0..lat.dim() {
            k2[i * v + geom.pos[lat.fwd(x, mu)]] -= 2.0;
            k2[i * v + geom.pos[lat.bwd(x, mu)]] -= 2.0;
        }
    }
    let mul = |a: &[f64], b: &[f64]| {
        let mut c = vec![0.0; v * v];
        for i in 0..v {
            for k in 0..v {
                for j in 0..v {
                    c[i * v + j] += a[i * v + k] * b[k * v + j];
                }
            }
        }
        c
    };
    let prod = mul(&mul(&cmat, &k2), &cmat);
    assert!(max_abs_diff(&prod, &eye) < 1e-12, "{}", max_abs_diff(&prod, &eye));
    // normalisation: log q₀(0) = ½ ln det(2K) − (V/2) ln 2π
    let lq_zero = m.flow.prior.log_prob_host(&vec![0.0; v])[0];
    let expect = 0.5 * log_abs_det(k2, v) - v as f64 * crate::prior::HALF_LN_2PI;
    assert!((lq_zero - expect).abs() < 1e-10, "{lq_zero} vs {expect}");
}

#[test]
fn root_module_and_abi_entry_points() {
    let lib = crate::get_library();
    let info = (lib.info())();
    assert_eq!(info.name.as_str(), "flow-scalar");
    assert_eq!(info.kind, PluginKind::Model);
    let e = (lib.new_theory())(RStr::from("{}")).into_result().err().expect("no theory");
    assert_eq!(e.kind, ErrorKind::Unsupported);
    let new_model = lib.new_model().flatten().expect("new_model is present");
    let e = new_model(RStr::from(r#"{"layers":0}"#), &layout(&[4, 4])).into_result().err().expect("layers 0");
    assert!(e.message.contains("layers"), "{}", e.message);
    let mut mb = new_model(RStr::from(r#"{"layers":2}"#), &layout(&[4, 4])).into_result().unwrap();
    assert_eq!(mb.name().as_str(), "flow-scalar");
    assert_eq!(mb.layout(), layout(&[4, 4]));
    assert!(mb.architecture().contains("\"layers\":2"));
    mb.set_threads(1).into_result().unwrap();
    let mut st = Stream::new(1, 1).state();
    let p = mb.sample(5, &mut st).into_result().unwrap();
    assert_eq!((p.configs.len(), p.log_q.len()), (80, 5));
    assert_ne!(st, Stream::new(1, 1).state());
    let lp = mb.log_prob(RSlice::from(p.configs.as_slice())).into_result().unwrap();
    assert!(max_abs_diff(&lp, &p.log_q) < 1e-3);
    let bytes = mb.save(true).into_result().unwrap();
    mb.load(RSlice::from(bytes.as_slice())).into_result().unwrap();
    mb.init_from(RSlice::from(bytes.as_slice())).into_result().unwrap();
    let e = mb.train_step(RSlice::from(&[0.0][..]), RSlice::from(&[0.0][..])).into_result().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    let s = settings(4, 1e-3);
    mb.train_begin(&s).into_result().unwrap();
    let p = mb.train_sample(&mut st).into_result().unwrap();
    let (a, g) = phi4_host(&Lattice::new(&[4, 4]).unwrap(), &p.configs, 1.0, 0.0);
    let met = mb.train_step(RSlice::from(a.as_slice()), RSlice::from(g.as_slice())).into_result().unwrap();
    assert!(met.loss.is_finite());
}
