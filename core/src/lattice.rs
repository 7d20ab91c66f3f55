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
    /// A field given to [`Lattice::shift_field`] does not have `per_site` values per site, or
    /// the axis does not exist.
    FieldShape { len: usize, out: usize, per_site: usize, axis: usize },
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
            LatticeError::FieldShape { len, out, per_site, axis } => write!(
                f,
                "cannot shift a field of {len} values into {out} along axis {axis} with {per_site} values per site on this lattice"
            ),
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
    /// The sites of parity 0 and of parity 1 (Σ coords even/odd), each in increasing order.
    eo_sites: [Vec<u32>; 2],
    /// `eo_pos[x]`: the position of x in `eo_sites[parity(x)]`.
    eo_pos: Vec<u32>,
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
        let mut eo_sites = [Vec::with_capacity(volume / 2 + 1), Vec::with_capacity(volume / 2 + 1)];
        let mut eo_pos = vec![0u32; volume];
        for x in 0..volume {
            let parity = coords.iter().sum::<usize>() % 2;
            eo_pos[x] = eo_sites[parity].len() as u32;
            eo_sites[parity].push(x as u32);
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
        Ok(Self { shape, strides, volume, fwd, bwd, eo_sites, eo_pos })
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

    /// The sites of one parity (0: Σ coords even, 1: odd), in increasing order, precomputed at
    /// construction: iterate a checkerboard without allocating. A proper checkerboard (every
    /// neighbour of one parity has the other) needs even extents; see
    /// [`Lattice::checkerboard_view`].
    #[inline]
    pub fn sites_of_parity(&self, parity: usize) -> &[u32] {
        &self.eo_sites[parity & 1]
    }

    /// The even and the odd sites as borrowed, precomputed lists (no allocation). Requires
    /// even extents. A half-lattice field (e.g. an even/odd-preconditioned spinor) is indexed by
    /// [`Lattice::eo_index`].
    pub fn checkerboard_view(&self) -> Result<[&[u32]; 2], LatticeError> {
        self.require_even()?;
        Ok([&self.eo_sites[0], &self.eo_sites[1]])
    }

    /// The position of site x within the list of its parity, in 0..V/2 for even extents.
    #[inline]
    pub fn eo_index(&self, x: usize) -> usize {
        self.eo_pos[x] as usize
    }

    /// The parity of site x from the precomputed tables (no allocation, unlike
    /// [`Lattice::parity`], with which it agrees).
    #[inline]
    pub fn site_parity(&self, x: usize) -> usize {
        let p = usize::from(self.eo_sites[1].get(self.eo_pos[x] as usize) == Some(&(x as u32)));
        p
    }

    /// The site x + n·μ̂ (periodic, any signed n).
    #[inline]
    pub fn shift_site(&self, x: usize, mu: usize, n: isize) -> usize {
        let l = self.shape[mu] as isize;
        let c = ((x / self.strides[mu]) % self.shape[mu]) as isize;
        let to = (c + n).rem_euclid(l);
        (x as isize + (to - c) * self.strides[mu] as isize) as usize
    }

    /// A whole-field shift along μ (Grid's `Cshift`): `out[x] = src[x + μ̂]` for `forward`,
    /// `out[x] = src[x − μ̂]` otherwise, with `per_site` consecutive values per site. This is the
    /// operation a domain-decomposed lattice implements with a halo exchange; physics written
    /// against it needs no global site indices. Errors if the lengths are not `per_site · V`.
    pub fn shift_field<T: Copy>(
        &self,
        src: &[T],
        per_site: usize,
        mu: usize,
        forward: bool,
        out: &mut [T],
    ) -> Result<(), LatticeError> {
        if mu >= self.dim() || src.len() != per_site * self.volume || out.len() != src.len() {
            return Err(LatticeError::FieldShape { len: src.len(), out: out.len(), per_site, axis: mu });
        }
        let table = if forward { &self.fwd } else { &self.bwd };
        let d = self.dim();
        for (x, o) in out.chunks_exact_mut(per_site.max(1)).enumerate().take(self.volume) {
            let y = table[x * d + mu] as usize;
            o.copy_from_slice(&src[y * per_site..(y + 1) * per_site]);
        }
        Ok(())
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
    #[test]
    fn even_odd_views_match_parity() {
        for shape in [vec![4, 6], vec![2, 2, 4], vec![3, 4]] {
            let lat = Lattice::new(&shape).unwrap();
            let (e, o) = (lat.sites_of_parity(0), lat.sites_of_parity(1));
            assert_eq!(e.len() + o.len(), lat.volume());
            for p in 0..2 {
                for (i, &x) in lat.sites_of_parity(p).iter().enumerate() {
                    assert_eq!(lat.parity(x as usize), p);
                    assert_eq!(lat.site_parity(x as usize), p);
                    assert_eq!(lat.eo_index(x as usize), i);
                }
                assert!(lat.sites_of_parity(p).windows(2).all(|w| w[0] < w[1]));
            }
        }
        let lat = Lattice::new(&[4, 6]).unwrap();
        let owned = lat.checkerboard().unwrap();
        let view = lat.checkerboard_view().unwrap();
        for p in 0..2 {
            assert!(owned[p].iter().zip(view[p]).all(|(&a, &b)| a == b as usize));
        }
        assert!(Lattice::new(&[3, 4]).unwrap().checkerboard_view().is_err());
    }

    #[test]
    fn shifts() {
        let lat = Lattice::new(&[3, 4, 5]).unwrap();
        for x in 0..lat.volume() {
            for mu in 0..3 {
                assert_eq!(lat.shift_site(x, mu, 1), lat.fwd(x, mu));
                assert_eq!(lat.shift_site(x, mu, -1), lat.bwd(x, mu));
                assert_eq!(lat.shift_site(x, mu, 0), x);
                let l = lat.shape()[mu] as isize;
                assert_eq!(lat.shift_site(x, mu, l), x);
                assert_eq!(lat.shift_site(lat.shift_site(x, mu, 7), mu, -7), x);
            }
        }
        // a field of two values per site: (x, 10x)
        let src: Vec<usize> = (0..lat.volume()).flat_map(|x| [x, 10 * x]).collect();
        let mut out = vec![0; src.len()];
        for (mu, fwd) in [(0, true), (1, false), (2, true)] {
            lat.shift_field(&src, 2, mu, fwd, &mut out).unwrap();
            for x in 0..lat.volume() {
                let y = if fwd { lat.fwd(x, mu) } else { lat.bwd(x, mu) };
                assert_eq!(&out[2 * x..2 * x + 2], &[y, 10 * y]);
            }
        }
        assert!(lat.shift_field(&src, 3, 0, true, &mut out).is_err());
        assert!(lat.shift_field(&src, 2, 3, true, &mut out).is_err());
    }
}
