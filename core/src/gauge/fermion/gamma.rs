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
    let rows = gamma_rows(ns, mu)?;
    let shift = if plus { 0 } else { 2 };
    let mut out = [ProjPair::default(); 2];
    let mut n = 0;
    for (i, r) in rows.iter().enumerate() {
        let j = r.col;
        if i < j {
            // (1 + σγ)ψ_i = ψ_i + σ c_i ψ_j; (1 + σγ)ψ_j = ψ_j + σ c_j ψ_i = σ c_j (ψ_i + σ c_i ψ_j)
            // since c_i c_j = 1 (γ² = 1)
            out[n] = ProjPair { i, j, ki: (r.k + shift) & 3, kj: (rows[j].k + shift) & 3 };
            n += 1;
        }
    }
    Some(out)
}
