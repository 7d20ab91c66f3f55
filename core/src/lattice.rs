//! Periodic hypercubic lattices in any dimension.
//!
//! Sites are numbered lexicographically in row-major (C) order over `shape = [L_0, …, L_{d−1}]`:
//! the **last axis runs fastest**. The last axis is "time" where a plugin needs one (for
//! example the zero-momentum correlator). A flat field with one value per site therefore
//! reshapes to `shape` directly in numpy/h5py.

use std::fmt;

/// Why a lattice could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LatticeError {
    /// No extents were given.
    Empty,
    /// An extent is smaller than 2 (periodic neighbours would coincide with the site).
    TooSmall { axis: usize, extent: i64 },
    /// A checkerboard (even/odd) decomposition needs every extent even.
    OddExtent { axis: usize, extent: usize },
    /// The volume does not fit the index type.
    TooLarge,
}

impl fmt::Display for LatticeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LatticeError::Empty => write!(f, "lattice must have at least one dimension"),
            LatticeError::TooSmall { axis, extent } => {
                write!(f, "lattice extent {extent} along axis {axis} is invalid: every extent must be at least 2")
            }
            LatticeError::OddExtent { axis, extent } => write!(
                f,
                "lattice extent {extent} along axis {axis} is odd, but a checkerboard (even/odd) decomposition needs every extent even"
            ),
            LatticeError::TooLarge => write!(f, "lattice volume is too large"),
        }
    }
}

impl std::error::Error for LatticeError {}

/// A periodic hypercubic lattice with precomputed neighbour tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lattice {
    shape: Vec<usize>,
    strides: Vec<usize>,
    volume: usize,
    /// `fwd[x * d + mu]` is the site x + μ̂ (periodic).
    fwd: Vec<u32>,
    /// `bwd[x * d + mu]` is the site x − μ̂ (periodic).
    bwd: Vec<u32>,
}

impl Lattice {
    /// Builds a lattice from extents as given in a run card (signed, so that negative values
    /// are reported rather than wrapped). Every extent must be ≥ 2.
    pub fn new(extents: &[i64]) -> Result<Self, LatticeError> {
        if extents.is_empty() {
            return Err(LatticeError::Empty);
        }
        let mut shape = Vec::with_capacity(extents.len());
        for (axis, &e) in extents.iter().enumerate() {
            if e < 2 {
                return Err(LatticeError::TooSmall { axis, extent: e });
            }
            shape.push(usize::try_from(e).map_err(|_| LatticeError::TooLarge)?);
        }
        let volume = shape
            .iter()
            .try_fold(1usize, |acc, &l| acc.checked_mul(l))
            .filter(|&v| v <= u32::MAX as usize / shape.len().max(1))
            .ok_or(LatticeError::TooLarge)?;
        let d = shape.len();
        let mut strides = vec![1usize; d];
        for mu in (0..d.saturating_sub(1)).rev() {
            strides[mu] = strides[mu + 1] * shape[mu + 1];
        }
        let mut fwd = vec![0u32; volume * d];
        let mut bwd = vec![0u32; volume * d];
        let mut coords = vec![0usize; d];
        for x in 0..volume {
            for mu in 0..d {
                let c = coords[mu];
                let up = if c + 1 == shape[mu] { x - c * strides[mu] } else { x + strides[mu] };
                let down = if c == 0 { x + (shape[mu] - 1) * strides[mu] } else { x - strides[mu] };
                fwd[x * d + mu] = up as u32;
                bwd[x * d + mu] = down as u32;
            }
            // advance row-major coordinates (last axis fastest)
            for mu in (0..d).rev() {
                coords[mu] += 1;
                if coords[mu] < shape[mu] {
                    break;
                }
                coords[mu] = 0;
            }
        }
        Ok(Self { shape, strides, volume, fwd, bwd })
    }

    /// Extents `[L_0, …, L_{d−1}]`.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of dimensions d.
    pub fn dim(&self) -> usize {
        self.shape.len()
    }

    /// Number of sites V.
    pub fn volume(&self) -> usize {
        self.volume
    }

    /// Extent of the last axis ("time").
    pub fn time_extent(&self) -> usize {
        self.shape[self.dim() - 1]
    }

    /// Neighbour x + μ̂ (periodic).
    #[inline]
    pub fn fwd(&self, x: usize, mu: usize) -> usize {
        self.fwd[x * self.dim() + mu] as usize
    }

    /// Neighbour x − μ̂ (periodic).
    #[inline]
    pub fn bwd(&self, x: usize, mu: usize) -> usize {
        self.bwd[x * self.dim() + mu] as usize
    }

    /// Flat forward-neighbour table, `d` entries per site.
    pub fn fwd_table(&self) -> &[u32] {
        &self.fwd
    }

    /// Flat backward-neighbour table, `d` entries per site.
    pub fn bwd_table(&self) -> &[u32] {
        &self.bwd
    }

    /// Coordinates of site `x`.
    pub fn coords(&self, x: usize) -> Vec<usize> {
        self.shape.iter().zip(&self.strides).map(|(&l, &s)| (x / s) % l).collect()
    }

    /// Site index of coordinates (taken modulo the extents).
    pub fn index(&self, coords: &[usize]) -> usize {
        coords.iter().zip(&self.shape).zip(&self.strides).map(|((&c, &l), &s)| (c % l) * s).sum()
    }

    /// Time coordinate (last axis) of site `x`.
    #[inline]
    pub fn time(&self, x: usize) -> usize {
        x % self.time_extent()
    }

    /// Parity of site `x`: 0 for even (Σ coords even), 1 for odd. Meaningful as a checkerboard
    /// only when every extent is even (see [`Lattice::require_even`]).
    pub fn parity(&self, x: usize) -> usize {
        self.coords(x).iter().sum::<usize>() % 2
    }

    /// Errors unless every extent is even, as checkerboard decompositions need.
    pub fn require_even(&self) -> Result<(), LatticeError> {
        match self.shape.iter().enumerate().find(|(_, &l)| l % 2 != 0) {
            Some((axis, &extent)) => Err(LatticeError::OddExtent { axis, extent }),
            None => Ok(()),
        }
    }

    /// The even and the odd sites, each in increasing order. Requires even extents.
    pub fn checkerboard(&self) -> Result<[Vec<usize>; 2], LatticeError> {
        self.require_even()?;
        let mut sets = [Vec::with_capacity(self.volume / 2), Vec::with_capacity(self.volume / 2)];
        for x in 0..self.volume {
            sets[self.parity(x)].push(x);
        }
        Ok(sets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbours_are_inverse_and_periodic() {
        for shape in [vec![2, 2], vec![4, 6], vec![3, 4, 5], vec![8]] {
            let lat = Lattice::new(&shape).unwrap();
            for x in 0..lat.volume() {
                for mu in 0..lat.dim() {
                    assert_eq!(lat.bwd(lat.fwd(x, mu), mu), x);
                    assert_eq!(lat.fwd(lat.bwd(x, mu), mu), x);
                    let mut c = lat.coords(x);
                    c[mu] = (c[mu] + 1) % lat.shape()[mu];
                    assert_eq!(lat.index(&c), lat.fwd(x, mu));
                }
                assert_eq!(lat.index(&lat.coords(x)), x);
            }
        }
    }

    #[test]
    fn row_major_last_axis_fastest() {
        let lat = Lattice::new(&[3, 4]).unwrap();
        assert_eq!(lat.coords(1), vec![0, 1]);
        assert_eq!(lat.coords(4), vec![1, 0]);
        assert_eq!(lat.time(6), 2);
    }

    #[test]
    fn checkerboard_splits_evenly_and_neighbours_flip_parity() {
        let lat = Lattice::new(&[4, 6]).unwrap();
        let [even, odd] = lat.checkerboard().unwrap();
        assert_eq!(even.len(), 12);
        assert_eq!(odd.len(), 12);
        for &x in &even {
            for mu in 0..2 {
                assert_eq!(lat.parity(lat.fwd(x, mu)), 1);
            }
        }
        let odd_lat = Lattice::new(&[4, 5]).unwrap();
        assert_eq!(odd_lat.checkerboard().unwrap_err(), LatticeError::OddExtent { axis: 1, extent: 5 });
    }

    #[test]
    fn bad_extents() {
        assert_eq!(Lattice::new(&[]).unwrap_err(), LatticeError::Empty);
        assert_eq!(Lattice::new(&[8, 0]).unwrap_err(), LatticeError::TooSmall { axis: 1, extent: 0 });
        assert_eq!(Lattice::new(&[-4]).unwrap_err(), LatticeError::TooSmall { axis: 0, extent: -4 });
        assert_eq!(Lattice::new(&[1 << 20, 1 << 20]).unwrap_err(), LatticeError::TooLarge);
    }
}
