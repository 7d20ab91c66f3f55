//! The U(1) kernels on one configuration of link angles `θ[x·d + μ]`: plaquette angles, action,
//! gradient, topological charge and Wilson loops.
//!
//! Plaquettes are enumerated per site x and per plane (μ, ν), μ < ν, in the order of
//! [`Kernel::planes`] (the gauge module's [`planes`]); the plaquette angle is
//! θ_P(x; μ, ν) = θ_μ(x) + θ_ν(x+μ̂) − θ_μ(x+ν̂) − θ_ν(x).
//!
//! The kernels run on `latflow_core::gauge` with U(1) in the angle representation
//! ([`U1Angle`]): the configuration buffer itself is the link field (read through
//! [`latflow_core::gauge::Links`]), plaquettes and the action come from the gauge module's loop
//! functions, and every neighbour is reached through [`Neighbours`], never a table of its own.
//!
//! Work is split into fixed chunks of sites ([`latflow_core::gauge::parallel`]), independent of
//! the thread count; the gradient has no reductions, and partial action sums are compensated and
//! merged in chunk order, so results are bit-identical for any number of threads.

use std::f64::consts::TAU;

use latflow_core::gauge::parallel::fill_sites;
use latflow_core::gauge::{planes, plaquette, plaquette_sum, Neighbours, U1Angle};
use latflow_core::sum::{compensated_sum, CompensatedSum};
use latflow_core::Lattice;

pub use latflow_core::gauge::wrap_angle;

/// A defect: plaquettes whose coupling is β·`coupling` instead of β, so that
/// S = −β Σ_P w_P cos θ_P with w_P = `coupling` on the defect and 1 elsewhere. At `coupling` = 1
/// (the default) the action is the plain Wilson action, bit for bit; at 0 the defect's plaquettes
/// are free, and in 2D the topological charge can change through them without an action barrier
/// (the open-boundary defect of Hasenbusch, PRD 96 (2017) 054504, on a torus).
#[derive(Debug, Clone, PartialEq)]
pub struct Defect {
    /// Plaquette indices `x·planes + p`, in increasing order.
    pub plaquettes: Vec<usize>,
    /// The factor w on the defect (finite, ≥ 0).
    pub coupling: f64,
}

impl Defect {
    /// Whether the action differs from the plain one.
    fn active(&self) -> bool {
        self.coupling != 1.0 && !self.plaquettes.is_empty()
    }
}

/// Precomputed geometry: the lattice (its neighbours) and the plane enumeration, and the defect.
#[derive(Debug, Clone)]
pub struct Kernel {
    lattice: Lattice,
    planes: Vec<(usize, usize)>,
    /// `plane_of[μ·d + ν]`: index of the plane {μ, ν} in `planes` (unused on the diagonal).
    plane_of: Vec<usize>,
    defect: Defect,
}

impl Kernel {
    /// Geometry for `lattice` (d ≥ 2).
    pub fn new(lattice: &Lattice) -> Self {
        let d = lattice.dim();
        assert!(d >= 2, "a U(1) gauge field needs at least 2 dimensions");
        let planes = planes(d);
        let mut plane_of = vec![usize::MAX; d * d];
        for (p, &(mu, nu)) in planes.iter().enumerate() {
            plane_of[mu * d + nu] = p;
            plane_of[nu * d + mu] = p;
        }
        Self { lattice: lattice.clone(), planes, plane_of, defect: Defect { plaquettes: Vec::new(), coupling: 1.0 } }
    }

    /// Makes every plaquette (x; μ, ν) whose site x lies in the box `0 ≤ x_i < extent[i]` a
    /// defect plaquette, at coupling 1 (`extent` has one entry per axis, each in 1..=L_i).
    pub fn set_defect_box(&mut self, extent: &[usize]) {
        let np = self.planes.len();
        let mut plaquettes = Vec::new();
        for x in 0..self.volume() {
            if self.lattice.coords(x).iter().zip(extent).all(|(&c, &e)| c < e) {
                plaquettes.extend((0..np).map(|p| x * np + p));
            }
        }
        self.defect = Defect { plaquettes, coupling: 1.0 };
    }

    /// Makes every plaquette (x; μ, ν) at the listed sites a defect plaquette, at coupling 1
    /// (site indices, distinct, each < V).
    pub fn set_defect_sites(&mut self, sites: &[usize]) {
        let np = self.planes.len();
        let mut plaquettes: Vec<usize> = sites.iter().flat_map(|&x| (0..np).map(move |p| x * np + p)).collect();
        plaquettes.sort_unstable();
        self.defect = Defect { plaquettes, coupling: 1.0 };
    }

    /// The defect (empty without `set_defect_box` or `set_defect_sites`).
    pub fn defect(&self) -> &Defect {
        &self.defect
    }

    /// Sets the defect's coupling factor w (checked by the caller: finite, ≥ 0).
    pub fn set_defect_coupling(&mut self, w: f64) {
        self.defect.coupling = w;
    }

    /// Σ_{P ∈ defect} cos θ_P, in defect order (few terms).
    fn defect_cos(&self, theta: &[f64]) -> f64 {
        let np = self.planes.len();
        compensated_sum(self.defect.plaquettes.iter().map(|&i| self.plaquette(theta, i / np, i % np).cos()))
    }

    /// Σ_P w_P cos θ_P from the plain Σ_P cos θ_P: unchanged when the defect is inactive.
    fn weighted(&self, theta: &[f64], sum_cos: f64) -> f64 {
        if self.defect.active() {
            sum_cos - (1.0 - self.defect.coupling) * self.defect_cos(theta)
        } else {
            sum_cos
        }
    }

    /// Scales the defect's entries of the per-plaquette sines `sp` by w.
    fn weight_sines(&self, sp: &mut [f64]) {
        if self.defect.active() {
            for &i in &self.defect.plaquettes {
                sp[i] *= self.defect.coupling;
            }
        }
    }

    /// Number of sites V.
    pub fn volume(&self) -> usize {
        self.lattice.volume()
    }

    /// Number of dimensions d.
    #[inline]
    fn d(&self) -> usize {
        self.lattice.dim()
    }

    /// Number of links V·d (the length of a configuration).
    pub fn n_links(&self) -> usize {
        self.volume() * self.d()
    }

    /// The planes (μ, ν), μ < ν, in plaquette order.
    pub fn planes(&self) -> &[(usize, usize)] {
        &self.planes
    }

    /// Number of plaquettes V·d(d−1)/2.
    pub fn n_plaquettes(&self) -> usize {
        self.volume() * self.planes.len()
    }

    /// The angle of plaquette `index` (= x·planes + p, the order of [`Kernel::plaquette_angles`]).
    pub fn plaquette_angle(&self, theta: &[f64], index: usize) -> f64 {
        let np = self.planes.len();
        self.plaquette(theta, index / np, index % np)
    }

    /// θ_P(x; μ, ν) of plane `p`: the gauge module's plaquette U_P(x; μ, ν) of U(1) angles.
    #[inline]
    fn plaquette(&self, theta: &[f64], x: usize, p: usize) -> f64 {
        let (mu, nu) = self.planes[p];
        plaquette::<U1Angle, _, _>(&self.lattice, theta, x, mu, nu).0
    }

    /// Σ_P cos θ_P = Σ_P Re U_P, compensated, in fixed chunks of sites merged in order.
    pub fn sum_cos(&self, theta: &[f64]) -> f64 {
        plaquette_sum::<U1Angle, _, _>(&self.lattice, theta)
    }

    /// S = −β Σ_P w_P cos θ_P (dimensionless; w_P = 1 off the defect).
    pub fn action(&self, theta: &[f64], beta: f64) -> f64 {
        -beta * self.weighted(theta, self.sum_cos(theta))
    }

    /// Writes every plaquette angle θ_P (unwrapped) to `out`, `[site][plane]`.
    pub fn plaquette_angles(&self, theta: &[f64], out: &mut [f64]) {
        let np = self.planes.len();
        fill_sites(out, np, |x, site, _| {
            for (p, o) in site.iter_mut().enumerate() {
                *o = self.plaquette(theta, x, p);
            }
        });
    }

    /// ∂S/∂θ_μ(x) from the weighted plaquette sines `sp` (`[site][plane]`, w_P sin θ_P), written
    /// to `out`: β Σ_{ν≠μ} ±[sin θ_P(x; μ, ν) − sin θ_P(x−ν̂; μ, ν)], with + for μ < ν (θ_μ(x) enters
    /// P(x) with + and P(x−ν̂) with −) and − for μ > ν.
    fn gather(&self, sp: &[f64], beta: f64, out: &mut [f64]) {
        let (d, np) = (self.d(), self.planes.len());
        fill_sites(out, d, |x, site, _| {
            for (mu, o) in site.iter_mut().enumerate() {
                let mut g = 0.0;
                for nu in 0..d {
                    if nu == mu {
                        continue;
                    }
                    let p = self.plane_of[mu * d + nu];
                    let diff = sp[x * np + p] - sp[self.lattice.dn(x, nu) * np + p];
                    g += if mu < nu { diff } else { -diff };
                }
                *o = beta * g;
            }
        });
    }

    /// The Euclidean gradient ∂S/∂θ_μ(x) for every link, written to `out` (len V·d). It is also
    /// the HMC force: U(1)'s Lie algebra is the real line, with θ itself as the coordinate.
    pub fn gradient(&self, theta: &[f64], beta: f64, out: &mut [f64]) {
        let np = self.planes.len();
        let mut sp = vec![0.0; self.volume() * np];
        fill_sites(&mut sp, np, |x, site, _| {
            for (p, o) in site.iter_mut().enumerate() {
                *o = self.plaquette(theta, x, p).sin();
            }
        });
        self.weight_sines(&mut sp);
        self.gather(&sp, beta, out);
    }

    /// S and the gradient in one pass over the plaquettes (each angle's sin and cos together);
    /// S is summed in the same order as by [`Kernel::action`].
    pub fn action_and_gradient(&self, theta: &[f64], beta: f64, out: &mut [f64]) -> f64 {
        let np = self.planes.len();
        let mut sp = vec![0.0; self.volume() * np];
        let sum_cos = fill_sites(&mut sp, np, |x, site, s| {
            for (p, o) in site.iter_mut().enumerate() {
                let (sn, cs) = self.plaquette(theta, x, p).sin_cos();
                *o = sn;
                s.add(cs);
            }
        });
        self.weight_sines(&mut sp);
        self.gather(&sp, beta, out);
        -beta * self.weighted(theta, sum_cos)
    }

    /// Q = (1/2π) Σ_P wrap(θ_P), before rounding (2D only, else `None`). On a torus it is an
    /// integer up to round-off, since Σ_P θ_P = 0 link by link.
    pub fn topological_charge_raw(&self, theta: &[f64]) -> Option<f64> {
        if self.d() != 2 {
            return None;
        }
        let mut ang = vec![0.0; self.n_plaquettes()];
        self.plaquette_angles(theta, &mut ang);
        Some(compensated_sum(ang.iter().map(|&a| wrap_angle(a))) / TAU)
    }

    /// Σ_{i<n} θ_μ(x + iμ̂) for every site, and the table x ↦ x + nμ̂.
    fn line_sums(&self, theta: &[f64], mu: usize, n: usize) -> (Vec<f64>, Vec<u32>) {
        let d = self.d();
        let nb = &self.lattice;
        let mut sums: Vec<f64> = (0..self.volume()).map(|x| theta[x * d + mu]).collect();
        let mut cur: Vec<u32> = (0..self.volume()).map(|x| nb.up(x, mu) as u32).collect();
        for _ in 1..n {
            for (s, c) in sums.iter_mut().zip(cur.iter_mut()) {
                *s += theta[*c as usize * d + mu];
                *c = nb.up(*c as usize, mu) as u32;
            }
        }
        (sums, cur)
    }

    /// Whether an R×T loop fits: R ≤ L_μ and T ≤ L_ν for every plane (μ, ν), μ < ν.
    pub fn loop_fits(&self, r: usize, t: usize) -> bool {
        let shape = self.lattice.shape();
        self.planes.iter().all(|&(mu, nu)| r <= shape[mu] && t <= shape[nu])
    }

    /// The R×T Wilson loop ⟨cos θ_C⟩, averaged over all sites and all planes (μ, ν), μ < ν,
    /// with R along μ and T along ν:
    /// θ_C(x) = Σ_{i<R} θ_μ(x+iμ̂) + Σ_{j<T} θ_ν(x+Rμ̂+jν̂) − Σ_{i<R} θ_μ(x+Tν̂+iμ̂) − Σ_{j<T} θ_ν(x+jν̂).
    /// The 1×1 loop is the plaquette. Requires [`Kernel::loop_fits`].
    pub fn wilson_loop(&self, theta: &[f64], r: usize, t: usize) -> f64 {
        let mut s = CompensatedSum::new();
        for &(mu, nu) in &self.planes {
            let (lr, shift_r) = self.line_sums(theta, mu, r);
            let (lt, shift_t) = self.line_sums(theta, nu, t);
            for x in 0..self.volume() {
                let c = lr[x] + lt[shift_r[x] as usize] - lr[shift_t[x] as usize] - lt[x];
                s.add(c.cos());
            }
        }
        s.value() / self.n_plaquettes() as f64
    }

    /// Appends the observables of one configuration to `out`, in the plugin's order:
    /// plaquette, action_density, then in 2D topological_charge and topological_susceptibility,
    /// then one Wilson loop per entry of `loops`.
    pub fn observables(&self, theta: &[f64], beta: f64, loops: &[(usize, usize)], out: &mut Vec<f64>) {
        let mut ang = vec![0.0; self.n_plaquettes()];
        self.plaquette_angles(theta, &mut ang);
        let sum_cos = compensated_sum(ang.iter().map(|a| a.cos()));
        out.push(sum_cos / ang.len() as f64);
        out.push(-beta * self.weighted(theta, sum_cos) / self.volume() as f64);
        if self.d() == 2 {
            let q = (compensated_sum(ang.iter().map(|&a| wrap_angle(a))) / TAU).round();
            out.push(q);
            out.push(q * q / self.volume() as f64);
        }
        for &(r, t) in loops {
            out.push(self.wilson_loop(theta, r, t));
        }
    }
}
