//! The Euclidean γ matrices in 2D and 4D, stored as signed permutations, and the spin
//! projectors 1 ± γ_μ of the Wilson hopping term as pairs of components.
//!
//! Every γ_μ here has exactly one non-zero entry per row, a phase i^k: row r has the entry
//! i^{k_r} in column π(r). They are Hermitian, square to 1 and anticommute; γ5 is diagonal.
//!
//! * 2D (axis 0 = x, axis 1 = t): γ_0 = σ1, γ_1 = σ2, γ5 = σ3 = −i γ_0 γ_1.
//! * 4D (axes 0, 1, 2 = x, y, z; axis 3 = t): the DeGrand–Rossi (chiral) basis, axis μ taking
//!   DeGrand–Rossi's γ_{μ+1}:
//!   ```text
//!   γ_0 = [[0,0,0,i],[0,0,i,0],[0,−i,0,0],[−i,0,0,0]]
//!   γ_1 = [[0,0,0,−1],[0,0,1,0],[0,1,0,0],[−1,0,0,0]]
//!   γ_2 = [[0,0,i,0],[0,0,0,−i],[−i,0,0,0],[0,i,0,0]]
//!   γ_3 = [[0,0,1,0],[0,0,0,1],[1,0,0,0],[0,1,0,0]]
//!   γ5 = γ_0 γ_1 γ_2 γ_3 = diag(1, 1, −1, −1)
//!   ```

/// One row of a γ matrix: the column of its non-zero entry and the entry's phase i^k.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GammaRow {
    /// The column π(r) of the non-zero entry.
    pub col: usize,
    /// The entry is i^k.
    pub k: u8,
}

const fn row(col: usize, k: u8) -> GammaRow {
    GammaRow { col, k }
}

/// γ_0 = σ1, γ_1 = σ2 (2D).
pub const GAMMA_2D: [[GammaRow; 2]; 2] = [[row(1, 0), row(0, 0)], [row(1, 3), row(0, 1)]];
/// The diagonal of γ5 = σ3 (2D).
pub const GAMMA5_2D: [f64; 2] = [1.0, -1.0];

/// γ_0 … γ_3 of the DeGrand–Rossi basis (4D; axis 3 is time).
pub const GAMMA_4D: [[GammaRow; 4]; 4] = [
    [row(3, 1), row(2, 1), row(1, 3), row(0, 3)],
    [row(3, 2), row(2, 0), row(1, 0), row(0, 2)],
    [row(2, 1), row(3, 3), row(0, 3), row(1, 1)],
    [row(2, 0), row(3, 0), row(0, 0), row(1, 0)],
];
/// The diagonal of γ5 = γ_0 γ_1 γ_2 γ_3 = diag(1, 1, −1, −1) (4D).
pub const GAMMA5_4D: [f64; 4] = [1.0, 1.0, -1.0, -1.0];

/// The rows of γ_μ for `ns` spin components (2 or 4); `None` for other spin counts.
pub fn gamma_rows(ns: usize, mu: usize) -> Option<&'static [GammaRow]> {
    match ns {
        2 => GAMMA_2D.get(mu).map(|r| &r[..]),
        4 => GAMMA_4D.get(mu).map(|r| &r[..]),
        _ => None,
    }
}

/// The diagonal of γ5 for `ns` spin components (2 or 4).
pub fn gamma5_diag(ns: usize) -> Option<&'static [f64]> {
    match ns {
        2 => Some(&GAMMA5_2D),
        4 => Some(&GAMMA5_4D),
        _ => None,
    }
}

/// One pair of components (i, j = π(i), i < j) of the projector 1 + σγ_μ (σ = ±1): with
/// h = ψ_i + i^{ki} ψ_j, the projected spinor has h in component i and i^{kj} h in component j
/// (γ² = 1 makes the rank NS/2, so each pair is one "half spinor" component).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProjPair {
    /// First component.
    pub i: usize,
    /// Second component π(i).
    pub j: usize,
    /// h = ψ_i + i^{ki} ψ_j.
    pub ki: u8,
    /// Component j of the result is i^{kj} h.
    pub kj: u8,
}

/// The NS/2 pairs of the projector 1 + σγ_μ (σ = +1 for `plus`, −1 otherwise), padded to 2.
pub fn projector(ns: usize, mu: usize, plus: bool) -> Option<[ProjPair; 2]> {
    if (ns == 2 || ns == 4) && mu < ns { Some(projector_const(ns, mu, plus)) } else { None }
}

/// [`projector`] as a `const fn`, for `ns` ∈ {2, 4} and `mu < ns` (other inputs panic, at
/// compile time where it is evaluated in a constant).
const fn projector_const(ns: usize, mu: usize, plus: bool) -> [ProjPair; 2] {
    let shift = if plus { 0 } else { 2 };
    let mut out = [ProjPair { i: 0, j: 0, ki: 0, kj: 0 }; 2];
    let mut n = 0;
    let mut i = 0;
    while i < ns {
        let (r, rj) = if ns == 2 {
            (GAMMA_2D[mu][i], GAMMA_2D[mu][GAMMA_2D[mu][i].col])
        } else {
            (GAMMA_4D[mu][i], GAMMA_4D[mu][GAMMA_4D[mu][i].col])
        };
        let j = r.col;
        if i < j {
            // (1 + σγ)ψ_i = ψ_i + σ c_i ψ_j; (1 + σγ)ψ_j = ψ_j + σ c_j ψ_i = σ c_j (ψ_i + σ c_i ψ_j)
            // since c_i c_j = 1 (γ² = 1)
            out[n] = ProjPair { i, j, ki: (r.k + shift) & 3, kj: (rj.k + shift) & 3 };
            n += 1;
        }
        i += 1;
    }
    out
}

/// The projector pairs of the Wilson hopping term for `NS` spin components (2 or 4), as a
/// compile-time table `[dag][dir][μ]`: dir 0 is the forward hop (1 − γ_μ for D, 1 + γ_μ for
/// D† = γ5 D γ5), dir 1 the backward hop (the opposite sign). Entries μ ≥ NS are unused
/// (zero). Evaluated in a `const` block, it lets the hopping kernel fold every phase i^k.
pub const fn hop_projectors<const NS: usize>() -> [[[[ProjPair; 2]; 4]; 2]; 2] {
    assert!(NS == 2 || NS == 4, "2 or 4 spin components");
    let mut t = [[[[ProjPair { i: 0, j: 0, ki: 0, kj: 0 }; 2]; 4]; 2]; 2];
    let mut dag = 0;
    while dag < 2 {
        let fwd_plus = dag == 1;
        let mut mu = 0;
        while mu < NS {
            t[dag][0][mu] = projector_const(NS, mu, fwd_plus);
            t[dag][1][mu] = projector_const(NS, mu, !fwd_plus);
            let mut dir = 0;
            while dir < 2 {
                let [a, b] = t[dag][dir][mu];
                // the kernel's layout: NS = 2 pairs spin 0 with 1; NS = 4 (a chiral basis) pairs
                // spins 0 and 1 with 2 and 3
                assert!(a.i == 0 && a.j == 1 || NS == 4, "2D projector pairs spins 0 and 1");
                assert!(NS == 2 || (a.i == 0 && b.i == 1 && a.j >= 2 && b.j >= 2 && a.j != b.j), "chiral basis");
                dir += 1;
            }
            mu += 1;
        }
        dag += 1;
    }
    t
}
