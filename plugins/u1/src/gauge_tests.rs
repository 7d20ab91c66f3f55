//! The kernel against the gauge module's generic pieces for U(1): the gradient is the Wilson
//! force built from generic staples, and `LinkSpace<U1Angle>` moves angles exactly as the
//! plugin's flat `Angles` space does.

use std::f64::consts::{PI, TAU};

use latflow_core::gauge::{staple, GaugeGroup, LinkField, LinkSpace, U1Angle};
use latflow_core::hmc::FieldSpace;
use latflow_core::{Lattice, Stream};

use crate::{Angles, Kernel};

fn hot(n: usize, seed: u64) -> Vec<f64> {
    let mut s = Stream::new(seed, 0);
    (0..n).map(|_| 3.0 * PI - 3.0 * TAU * s.uniform()).collect()
}

/// ∂S/∂θ_μ(x) = −β · d/dt Re(e^{i(θ+t)} · staple) = β Im(e^{iθ_μ(x)} · staple(x, μ)).
#[test]
fn gradient_is_the_generic_wilson_force() {
    for shape in [&[6, 4][..], &[3, 4, 5][..], &[2, 3, 2, 3][..]] {
        let lat = Lattice::new(shape).unwrap();
        let k = Kernel::new(&lat);
        let d = lat.dim();
        let theta = hot(k.n_links(), 3);
        let beta = 1.7;
        let mut g = vec![0.0; k.n_links()];
        k.gradient(&theta, beta, &mut g);
        for x in 0..lat.volume() {
            for mu in 0..d {
                let s = staple::<U1Angle, _, _>(&lat, theta.as_slice(), x, mu);
                let f = -beta * U1Angle(theta[x * d + mu]).re_trace_derivative(&s);
                let want = g[x * d + mu];
                assert!((f - want).abs() < 1e-12 * (1.0 + want.abs()), "{shape:?} x={x} mu={mu}: {f} vs {want}");
            }
        }
    }
}

#[test]
fn link_space_moves_angles_like_the_flat_space() {
    let lat = Lattice::new(&[6, 4]).unwrap();
    let n = lat.volume() * lat.dim();
    let theta = hot(n, 5);
    let p = hot(n, 6);
    let f = hot(n, 7);
    let flat = Angles { len: n };
    let space = LinkSpace::<U1Angle>::new(lat.dim(), lat.volume());
    let (mut a, mut q) = (theta.clone(), p.clone());
    flat.step_field(&mut a, &mut p.clone(), 0.3);
    flat.kick(&mut q, &f, 0.2);
    flat.project(&mut a);
    let mut b = LinkField::from_links(lat.dim(), theta.iter().map(|&t| U1Angle(t)).collect());
    let mut r = p.clone();
    space.step_field(&mut b, &mut p.clone(), 0.3);
    space.kick(&mut r, &f, 0.2);
    space.project(&mut b);
    assert!(a.iter().zip(b.links()).all(|(x, y)| x.to_bits() == y.0.to_bits()));
    assert!(q.iter().zip(&r).all(|(x, y)| x.to_bits() == y.to_bits()));
    let (k1, k2) = (flat.kinetic(&p), space.kinetic(&p));
    assert!((k1 - k2).abs() <= 1e-14 * k1, "{k1} vs {k2}");
}
