//! The SU(N) kernels, generic over the group: the gauge action with plaquette and rectangle
//! terms, its force in the Lie algebra, its Euclidean gradient in the flat (Re, Im) coordinates,
//! and the observables. Every loop runs in fixed chunks of sites (core's `fill_sites` and
//! `sum_sites`), so results are bit-identical for any thread count; nothing allocates per site.

use bytemuck::Pod;
use latflow_core::gauge::parallel::{fill_sites_as, sum_sites, sum_sites_as, SiteWork};
use latflow_core::gauge::gradflow::FlowGroup;
use latflow_core::gauge::{
    path, plaquette, planes, rectangle, rectangle_staple, staple, GaugeGroup, HeatbathGroup, LieAlgebra, Sites, Step, Su2,
    Su3,
};
use latflow_core::Lattice;

use crate::fast;

/// A group the plugin runs on: SU(2) or SU(3), whose elements, algebra elements and matrices
/// are plain reals (their memory is the flat configuration layout).
pub trait SunGroup: GaugeGroup<Algebra: Pod, Mat: Pod> + HeatbathGroup + FlowGroup + Pod {}
impl SunGroup for Su2 {}
impl SunGroup for Su3 {}

/// The coefficients of S = −(β/N) Σ [c0 Re Tr U_P + c1 Re Tr U_R], with the plaquettes
/// P over x and μ < ν and the rectangles R over x and μ ≠ ν (each 2×1 rectangle once per
/// orientation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coefficients {
    pub beta: f64,
    pub c0: f64,
    pub c1: f64,
}

impl Coefficients {
    /// β c0/N and β c1/N, the weights of Re Tr U_P and Re Tr U_R in −S.
    pub(crate) fn weights(&self, n: usize) -> (f64, f64) {
        (self.beta * self.c0 / n as f64, self.beta * self.c1 / n as f64)
    }
}

/// Σ_x Σ_{μ<ν} Re Tr U_P, per plane type: (all planes, planes without the last axis
/// ("spatial"), planes containing it ("temporal")).
pub fn plaquette_sums<G: SunGroup, S: Sites + ?Sized>(lat: &S, u: &[G]) -> [f64; 3] {
    let d = lat.dim();
    let ps = planes(d);
    let spatial = lat.sum(|x, s| {
        for &(mu, nu) in ps.iter().filter(|p| p.1 != d - 1) {
            s.add(plaquette(lat, u, x, mu, nu).re_trace());
        }
    });
    let temporal = lat.sum(|x, s| {
        for mu in 0..d - 1 {
            s.add(plaquette(lat, u, x, mu, d - 1).re_trace());
        }
    });
    [spatial + temporal, spatial, temporal]
}

/// Σ_x Σ_{μ≠ν} Re Tr R(x; μ, ν), every 2×1 rectangle once per orientation.
pub fn rectangle_sum<G: SunGroup, S: Sites + ?Sized>(lat: &S, u: &[G]) -> f64 {
    let d = lat.dim();
    lat.sum(|x, s| {
        for mu in 0..d {
            for nu in (0..d).filter(|&nu| nu != mu) {
                s.add(rectangle(lat, u, x, mu, nu).re_trace());
            }
        }
    })
}

/// The action S (dimensionless) of the whole lattice (`lat` the lattice, or one rank's slab of
/// a split one with `u` holding its halos: then collective).
pub fn action<G: SunGroup, S: Sites + ?Sized>(lat: &S, u: &[G], k: Coefficients) -> f64 {
    let (w0, w1) = k.weights(G::NC);
    let p = if G::NC == 3 && lat.dim() <= fast::MAX_DIM {
        fast::plaquette_sum(lat, bytemuck::cast_slice(u), fast::plaquette_level())
    } else {
        plaquette_sums(lat, u)[0]
    };
    let r = if k.c1 != 0.0 { rectangle_sum(lat, u) } else { 0.0 };
    -(w0 * p + w1 * r)
}

/// The force F(x, μ) = ∂S/∂ω^a for U → exp(ω^a X_a) U (core's coefficient convention), one
/// algebra element per link, written to `f` (`[site][μ]`).
pub fn force<G: SunGroup, S: Sites + ?Sized>(lat: &S, u: &[G], k: Coefficients, f: &mut [G::Algebra]) {
    let d = lat.dim();
    let (w0, w1) = k.weights(G::NC);
    if G::NC == 3 && w1 == 0.0 && d <= fast::MAX_DIM {
        let (u3, f3) = (bytemuck::cast_slice(u), bytemuck::cast_slice_mut(f));
        fast::wilson_force(lat, u3, w0, f3, fast::force_level());
        return;
    }
    fill_sites_as(SiteWork::Heavy, f, d, |x, fs, _| {
        for (mu, out) in fs.iter_mut().enumerate() {
            let link = &u[x * d + mu];
            let mut g = link.re_trace_derivative(&staple(lat, u, x, mu)).scale(-w0);
            if w1 != 0.0 {
                g.axpy(-w1, &link.re_trace_derivative(&rectangle_staple(lat, u, x, mu)));
            }
            *out = g;
        }
    });
}

/// S and its Euclidean gradient ∂S/∂(Re U_ij, Im U_ij) for every link, treating the 2N² reals
/// of each link as independent coordinates (what model plugins train against). With A the
/// weighted staple sum of a link, S ∋ −Re Tr(U A), so ∂S/∂Re U_ij = −Re A_ji and
/// ∂S/∂Im U_ij = +Im A_ji.
pub fn action_grad<G: SunGroup>(lat: &Lattice, u: &[G], k: Coefficients, grad: &mut [f64]) -> f64 {
    let d = lat.dim();
    let n = G::NC;
    let per_link = 2 * n * n;
    let (w0, w1) = k.weights(n);
    fill_sites_as(SiteWork::Heavy, grad, d * per_link, |x, g, _| {
        for mu in 0..d {
            let p: G::Mat = staple(lat, u, x, mu);
            let a = bytemuck::bytes_of(&p);
            let a: &[f64] = bytemuck::cast_slice(a);
            let r_mat: G::Mat;
            let r: Option<&[f64]> = if w1 != 0.0 {
                r_mat = rectangle_staple(lat, u, x, mu);
                Some(bytemuck::cast_slice(bytemuck::bytes_of(&r_mat)))
            } else {
                None
            };
            let out = &mut g[mu * per_link..(mu + 1) * per_link];
            for i in 0..n {
                for j in 0..n {
                    let ji = 2 * (j * n + i);
                    let (mut re, mut im) = (w0 * a[ji], w0 * a[ji + 1]);
                    if let Some(r) = r {
                        re += w1 * r[ji];
                        im += w1 * r[ji + 1];
                    }
                    out[2 * (i * n + j)] = -re;
                    out[2 * (i * n + j) + 1] = im;
                }
            }
        }
    });
    action(lat, u, k)
}

/// The mean of Re Tr W / N over all sites and planes μ < ν of the R×T Wilson loop with R
/// links along μ and T along ν.
pub fn wilson_loop<G: SunGroup>(lat: &Lattice, u: &[G], r: usize, t: usize) -> f64 {
    let d = lat.dim();
    let ps = planes(d);
    let total = sum_sites_as(SiteWork::Heavy, lat.volume(), |x, s| {
        let mut steps = [Step { mu: 0, forward: true }; 64];
        for &(mu, nu) in &ps {
            let len = loop_steps(&mut steps, mu, nu, r, t);
            s.add(path(lat, u, x, &steps[..len]).0.re_trace());
        }
    });
    total / (lat.volume() * ps.len() * G::NC) as f64
}

/// The R×T loop's steps (R along +μ, T along +ν, R along −μ, T along −ν) into `buf`; returns
/// the length 2(R + T) (at most `buf.len()`: loop sizes are checked against
/// [`MAX_LOOP_SIDE`] when the card is read).
fn loop_steps(buf: &mut [Step; 64], mu: usize, nu: usize, r: usize, t: usize) -> usize {
    let legs = [(mu, true, r), (nu, true, t), (mu, false, r), (nu, false, t)];
    let mut k = 0;
    for (dir, forward, n) in legs {
        for _ in 0..n {
            buf[k] = Step { mu: dir, forward };
            k += 1;
        }
    }
    k
}

/// The longest side of a measured Wilson loop (a loop of 2(R + T) ≤ 64 steps).
pub const MAX_LOOP_SIDE: usize = 16;

/// The Polyakov loop: the mean over the sites of the t = 0 slice of Tr Π_t U_{d−1}(x, t) / N,
/// along the last axis ("time"), as (Re, Im).
pub fn polyakov_loop<G: SunGroup>(lat: &Lattice, u: &[G]) -> [f64; 2] {
    let d = lat.dim();
    let nt = lat.shape()[d - 1];
    let spatial = lat.volume() / nt;
    // the last axis runs fastest, so the t = 0 sites are the multiples of nt
    let loop_at = |xs: usize| {
        let mut x = xs * nt;
        let mut p = G::identity();
        for _ in 0..nt {
            p = p.mul(&u[x * d + d - 1]);
            x = lat.fwd(x, d - 1);
        }
        p.trace()
    };
    // each loop once (in parallel), then its real and imaginary parts summed in site order
    let mut traces = vec![latflow_core::gauge::Complex::new(0.0, 0.0); spatial];
    fill_sites_as(SiteWork::Heavy, &mut traces, 1, |xs, tr, _| tr[0] = loop_at(xs));
    let re = sum_sites(spatial, |xs, s| s.add(traces[xs].re));
    let im = sum_sites(spatial, |xs, s| s.add(traces[xs].im));
    let norm = (spatial * G::NC) as f64;
    [re / norm, im / norm]
}
