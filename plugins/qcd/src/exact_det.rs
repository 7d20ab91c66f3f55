//! The exact fermion determinant on small lattices (`determinant = "exact"`): the Nf = 2 weight
//! det(D†D) = |det D|² computed densely, with its exact derivative.
//!
//! The Wilson–Dirac matrix D (dimension n = V·NS·N, index (site, spin, colour) in the memory
//! order of a spinor field) is built column by column from the operator of
//! [`latflow_core::gauge::fermion`], so it carries the same conventions (antiperiodic time,
//! twisted mass). Its LU decomposition with partial pivoting gives ln |det D|, and the inverse
//! G = D⁻¹ gives the derivative: d ln det D = Tr(G dD). The link U_μ(x) enters D in two blocks,
//! the forward hop D_{x, x+μ̂} = −κσ(1 − γ_μ) ⊗ U and the backward hop D_{x+μ̂, x} =
//! −κσ(1 + γ_μ) ⊗ U† (σ = −1 on the links that cross the time boundary, +1 otherwise). With
//! ```text
//! P_{ba} = Σ_{s,t} G_{(x+μ̂,t,b),(x,s,a)} (1 − γ_μ)_{st},   Q_{ba} = Σ_{s,t} G_{(x,t,b),(x+μ̂,s,a)} (1 + γ_μ)_{st}
//! ```
//! the fermion action S_f = −ln det(D†D) = −2 Re ln det D changes by
//! dS_f = Re Tr(dU · M) with M = 2κσ (P + Q†), treating the entries of U and U† as those of
//! one matrix (so the relation holds for any variation of the 2N² reals of the link, not only
//! along the group). From M follow the HMC force (the Lie derivative,
//! [`latflow_core::gauge::GaugeGroup::re_trace_derivative`]) and the ambient gradient ∂S_f/∂(Re U_ij, Im U_ij) =
//! (Re M_ji, −Im M_ji) that model plugins train against.
//!
//! Cost: O(n³) per configuration for the LU and the inverse, O(V) for the derivative blocks.
//! The matrix dimension is limited to [`MAX_DENSE_DIM`].

use latflow_core::gauge::fermion::gamma::gamma_rows;
use latflow_core::gauge::fermion::{
    Colour, FermionError, Spinor, SpinorOf, WilsonDirac, WilsonGroup,
};
use latflow_core::gauge::flat::view_mut;
use latflow_core::gauge::Complex;
use latflow_core::hmc::{ActionTerm, TermError};
use latflow_core::Lattice;

use crate::space::QcdSpace;
use crate::terms::links;

/// The largest dense matrix dimension n = V·d·N the exact determinant accepts (a 2048×2048
/// complex LU and inverse take seconds and 64 MiB).
pub const MAX_DENSE_DIM: usize = 2048;

/// The dimension n = V·d·N of the Wilson–Dirac matrix of `lattice` with `nc` colours.
pub fn dense_dim(lattice: &Lattice, nc: usize) -> usize {
    lattice.volume() * lattice.dim() * nc
}

/// An LU decomposition P·A = L·U of a dense complex n×n matrix (row-major), by Gaussian
/// elimination with partial pivoting. L (unit diagonal) and U share the storage.
pub struct DenseLu {
    n: usize,
    lu: Vec<Complex>,
    /// Row i of P·A is row `perm[i]` of A.
    perm: Vec<usize>,
}

impl DenseLu {
    /// Decomposes `a` (n×n, row-major). Errors if a pivot is exactly zero (A singular) or
    /// not finite.
    pub fn new(mut a: Vec<Complex>, n: usize) -> Result<Self, String> {
        assert_eq!(a.len(), n * n, "dense matrix: expected {n}×{n} entries");
        let mut perm: Vec<usize> = (0..n).collect();
        for k in 0..n {
            let p = (k..n)
                .max_by(|&i, &j| a[i * n + k].abs2().total_cmp(&a[j * n + k].abs2()))
                .unwrap_or(k);
            if p != k {
                for j in 0..n {
                    a.swap(k * n + j, p * n + j);
                }
                perm.swap(k, p);
            }
            let piv = a[k * n + k];
            if piv == Complex::ZERO || !piv.is_finite() {
                return Err(format!(
                    "the Wilson-Dirac matrix is singular (pivot {k} of {n} is {piv:?})"
                ));
            }
            let inv = piv.inv();
            let (upper, lower) = a.split_at_mut((k + 1) * n);
            let row_k = &upper[k * n..];
            for row in lower.chunks_exact_mut(n) {
                let f = row[k] * inv;
                row[k] = f;
                if f == Complex::ZERO {
                    continue;
                }
                for (r, &s) in row[k + 1..].iter_mut().zip(&row_k[k + 1..]) {
                    *r -= f * s;
                }
            }
        }
        Ok(Self { n, lu: a, perm })
    }

    /// ln |det A| (the sum of ln |U_kk|).
    pub fn log_abs_det(&self) -> f64 {
        let n = self.n;
        (0..n).map(|k| self.lu[k * n + k].abs().ln()).sum()
    }

    /// A⁻¹ (n×n, row-major), solving L·U·X = P for all columns at once by row operations.
    pub fn inverse(&self) -> Vec<Complex> {
        let n = self.n;
        let mut x = vec![Complex::ZERO; n * n];
        for (i, &p) in self.perm.iter().enumerate() {
            x[i * n + p] = Complex::ONE;
        }
        // forward: L has a unit diagonal
        for i in 1..n {
            let (done, rest) = x.split_at_mut(i * n);
            let xi = &mut rest[..n];
            for k in 0..i {
                let l = self.lu[i * n + k];
                if l == Complex::ZERO {
                    continue;
                }
                for (a, &b) in xi.iter_mut().zip(&done[k * n..(k + 1) * n]) {
                    *a -= l * b;
                }
            }
        }
        // backward
        for i in (0..n).rev() {
            let (head, tail) = x.split_at_mut((i + 1) * n);
            let xi = &mut head[i * n..];
            for k in i + 1..n {
                let u = self.lu[i * n + k];
                if u == Complex::ZERO {
                    continue;
                }
                let xk = &tail[(k - i - 1) * n..(k - i) * n];
                for (a, &b) in xi.iter_mut().zip(xk) {
                    *a -= u * b;
                }
            }
            let inv = self.lu[i * n + i].inv();
            xi.iter_mut().for_each(|a| *a *= inv);
        }
        x
    }
}

/// The dense fermion determinant of one Wilson operator (no clover term).
pub struct ExactDet<G: WilsonGroup, const NS: usize> {
    dirac: WilsonDirac<G, NS>,
    /// `proj[dir][μ]`: the spin matrix 1 − γ_μ (dir 0) or 1 + γ_μ (dir 1), row-major.
    proj: [[[[Complex; NS]; NS]; NS]; 2],
}

impl<G: WilsonGroup, const NS: usize> ExactDet<G, NS> {
    /// The determinant of `dirac`. Errors if it has a clover term (its link dependence is not
    /// implemented here) or if the matrix dimension exceeds [`MAX_DENSE_DIM`].
    pub fn new(dirac: WilsonDirac<G, NS>) -> Result<Self, String> {
        if dirac.params().csw != 0.0 {
            return Err(format!(
                "the exact determinant does not support the clover term (csw = {})",
                dirac.params().csw
            ));
        }
        let n = dense_dim(dirac.lattice(), G::NC);
        if n > MAX_DENSE_DIM {
            return Err(format!(
                "the dense Wilson-Dirac matrix of this lattice has dimension {n} (V·d·N), more than the {MAX_DENSE_DIM} allowed"
            ));
        }
        let mut proj = [[[[Complex::ZERO; NS]; NS]; NS]; 2];
        for (dir, p) in proj.iter_mut().enumerate() {
            let sign = if dir == 0 { -1.0 } else { 1.0 };
            for (mu, m) in p.iter_mut().enumerate() {
                let rows =
                    gamma_rows(NS, mu).ok_or("Wilson fermions need 2 or 4 spin components")?;
                for (s, r) in rows.iter().enumerate() {
                    m[s][s] += Complex::ONE;
                    let phase = [Complex::ONE, Complex::I, -Complex::ONE, -Complex::I]
                        [usize::from(r.k & 3)];
                    m[s][r.col] += phase.scale(sign);
                }
            }
        }
        Ok(Self { dirac, proj })
    }

    /// The dimension n = V·NS·N.
    pub fn dim(&self) -> usize {
        self.dirac.volume() * NS * G::NC
    }

    /// The dense matrix of D on `links` (n×n, row-major; index (site·NS + s)·N + c).
    pub fn matrix(&self, links: &[G]) -> Result<Vec<Complex>, FermionError> {
        let (v, n) = (self.dirac.volume(), self.dim());
        let mut a = vec![Complex::ZERO; n * n];
        let mut e: Vec<SpinorOf<G, NS>> = vec![Spinor::default(); v];
        let mut out = e.clone();
        for j in 0..n {
            let (site, comp) = (j / (NS * G::NC), j % (NS * G::NC));
            *component_mut::<G, NS>(&mut e[site], comp) = Complex::ONE;
            self.dirac.apply(links, &e, &mut out)?;
            *component_mut::<G, NS>(&mut e[site], comp) = Complex::ZERO;
            for (i, z) in out
                .iter()
                .flat_map(|s| s.0.iter().flat_map(|c| c.components().iter()))
                .enumerate()
            {
                a[i * n + j] = *z;
            }
        }
        Ok(a)
    }

    /// ln |det D| on `links`.
    pub fn log_abs_det(&self, links: &[G]) -> Result<f64, String> {
        let a = self.matrix(links).map_err(|e| e.to_string())?;
        Ok(DenseLu::new(a, self.dim())?.log_abs_det())
    }

    /// S_f = −ln det(D†D) = −2 ln |det D| and, for every link `[site][μ]`, the matrix M with
    /// dS_f = Re Tr(dU_μ(x) · M_μ(x)) (see the module docs).
    pub fn action_and_derivative(&self, links: &[G]) -> Result<(f64, Vec<G::Mat>), String> {
        let a = self.matrix(links).map_err(|e| e.to_string())?;
        let lu = DenseLu::new(a, self.dim())?;
        let action = -2.0 * lu.log_abs_det();
        let inv = lu.inverse();
        Ok((action, self.link_matrices(&inv)))
    }

    /// M_μ(x) = 2κσ (P + Q†) from G = D⁻¹ for every link.
    fn link_matrices(&self, inv: &[Complex]) -> Vec<G::Mat> {
        let lat = self.dirac.lattice();
        let (v, n, nc) = (lat.volume(), self.dim(), G::NC);
        let t_max = lat.time_extent() - 1;
        let idx = |site: usize, s: usize, c: usize| (site * NS + s) * nc + c;
        let mut out = Vec::with_capacity(v * NS);
        for x in 0..v {
            for mu in 0..NS {
                let y = lat.fwd(x, mu);
                let sigma = if mu == NS - 1 && lat.time(x) == t_max {
                    -1.0
                } else {
                    1.0
                };
                let coef = 2.0 * self.dirac.kappa() * sigma;
                // column a of M: M_{ba} = coef (P_{ba} + conj(Q_{ab}))
                let mut m = G::Mat::default();
                for a in 0..nc {
                    let mut column = <G::Colour as Default>::default();
                    for b in 0..nc {
                        let (mut p, mut q) = (Complex::ZERO, Complex::ZERO);
                        for s in 0..NS {
                            for t in 0..NS {
                                let (pm, pp) = (self.proj[0][mu][s][t], self.proj[1][mu][s][t]);
                                if pm != Complex::ZERO {
                                    p += inv[idx(y, t, b) * n + idx(x, s, a)] * pm;
                                }
                                if pp != Complex::ZERO {
                                    q += inv[idx(x, t, a) * n + idx(y, s, b)] * pp;
                                }
                            }
                        }
                        column.components_mut()[b] = (p + q.conj()).scale(coef);
                    }
                    let mut unit = <G::Colour as Default>::default();
                    unit.components_mut()[a] = Complex::ONE;
                    m += G::outer(&column, &unit);
                }
                out.push(m);
            }
        }
        out
    }
}

/// Component `comp` = s·N + c of a spinor.
fn component_mut<G: WilsonGroup, const NS: usize>(
    s: &mut SpinorOf<G, NS>,
    comp: usize,
) -> &mut Complex {
    let nc = G::NC;
    &mut s.0[comp / nc].components_mut()[comp % nc]
}

/// The ambient gradient of a link from its M (dS = Re Tr(dU M)): ∂S/∂Re U_ij = Re M_ji and
/// ∂S/∂Im U_ij = −Im M_ji, written as 2N² reals (row-major entries, (re, im) interleaved).
pub fn ambient_gradient<G: WilsonGroup>(m: &G::Mat, out: &mut [f64]) {
    let n = G::NC;
    for i in 0..n {
        for j in 0..n {
            let z = G::mat_entry(m, j, i);
            out[2 * (i * n + j)] = z.re;
            out[2 * (i * n + j) + 1] = -z.im;
        }
    }
}

/// The fermion action −ln det(D†D) as an HMC term (exact, no auxiliary field), with the exact
/// force: F^a_μ(x) = d/dt S_f(exp(t X_a) U_μ(x)) from M (see the module docs).
pub struct ExactDetTerm<G: WilsonGroup, const NS: usize> {
    pub det: ExactDet<G, NS>,
}

impl<G: WilsonGroup + bytemuck::Pod, const NS: usize> ActionTerm<QcdSpace> for ExactDetTerm<G, NS>
where
    G::Algebra: bytemuck::Pod,
{
    fn name(&self) -> &str {
        "exact_det"
    }

    fn action(&self, u: &Vec<f64>) -> Result<f64, TermError> {
        let l = links::<G>(u);
        Ok(-2.0 * self.det.log_abs_det(l).map_err(|e| self.error(e))?)
    }

    fn force(&self, u: &Vec<f64>, out: &mut Vec<f64>) -> Result<(), TermError> {
        let l = links::<G>(u);
        let (_, m) = self
            .det
            .action_and_derivative(l)
            .map_err(|e| self.error(e))?;
        let f: &mut [G::Algebra] =
            view_mut(out).map_err(|e| self.error(format!("force buffer: {e}")))?;
        for ((f, link), m) in f.iter_mut().zip(l).zip(&m) {
            *f = link.re_trace_derivative(m);
        }
        Ok(())
    }
}
