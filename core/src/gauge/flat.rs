//! The gauge types as plain reals: their memory is exactly the flat configuration layout, so a
//! configuration buffer (`&[f64]`) is viewed as links without copying.
//!
//! [`Complex`] is `#[repr(C)]` (re, im); [`Matrix<N>`] is `#[repr(C)]` over `[[Complex; N];
//! N]`; [`SuN<N>`], [`SuAlg<N>`] and [`U1Angle`] are `#[repr(transparent)]` over those. All are
//! made of `f64`s only, with no padding, and every bit pattern is a valid value, which is what
//! [`bytemuck::Pod`] asks for. The views check length and alignment and fail instead of
//! panicking.

use bytemuck::{Pod, Zeroable};

use super::algebra::SuAlg;
use super::complex::Complex;
use super::group::U1Angle;
use super::matrix::Matrix;
use super::sun::SuN;

// SAFETY (all impls below): each type is `repr(C)`/`repr(transparent)` over `f64`s only (see
// the module docs), so it has no padding, the alignment of `f64`, and no invalid bit patterns;
// the all-zero pattern is a valid value.
unsafe impl Zeroable for Complex {}
unsafe impl Pod for Complex {}
unsafe impl<const N: usize> Zeroable for Matrix<N> {}
unsafe impl<const N: usize> Pod for Matrix<N> {}
unsafe impl<const N: usize> Zeroable for SuN<N> {}
unsafe impl<const N: usize> Pod for SuN<N> {}
unsafe impl<const N: usize> Zeroable for SuAlg<N> {}
unsafe impl<const N: usize> Pod for SuAlg<N> {}
unsafe impl Zeroable for U1Angle {}
unsafe impl Pod for U1Angle {}

/// Why a flat buffer cannot be viewed as elements of a gauge type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a buffer of {len} reals cannot be viewed as {what} of {reals} reals each ({why})")]
pub struct FlatViewError {
    /// Its length in reals.
    pub len: usize,
    /// The element type's name.
    pub what: &'static str,
    /// Reals per element.
    pub reals: usize,
    /// bytemuck's reason (length not a multiple, or misalignment).
    pub why: String,
}

fn error<T>(len: usize, e: bytemuck::PodCastError) -> FlatViewError {
    FlatViewError {
        len,
        what: std::any::type_name::<T>(),
        reals: std::mem::size_of::<T>() / std::mem::size_of::<f64>(),
        why: format!("{e:?}"),
    }
}

/// Views `reals` as elements of `T` (no copy). Fails if the length is not a multiple of the
/// element's reals (alignment cannot fail: every type here has the alignment of `f64`).
pub fn view<T: Pod>(reals: &[f64]) -> Result<&[T], FlatViewError> {
    bytemuck::try_cast_slice(reals).map_err(|e| error::<T>(reals.len(), e))
}

/// Mutable [`view`].
pub fn view_mut<T: Pod>(reals: &mut [f64]) -> Result<&mut [T], FlatViewError> {
    let len = reals.len();
    bytemuck::try_cast_slice_mut(reals).map_err(|e| error::<T>(len, e))
}

/// The reals of a slice of elements (no copy).
pub fn reals<T: Pod>(items: &[T]) -> &[f64] {
    bytemuck::cast_slice(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gauge::{GaugeGroup, Su3};
    use crate::rng::Stream;

    #[test]
    fn views_match_the_documented_layout() {
        let mut rng = Stream::new(5, 0);
        let links: Vec<Su3> = (0..4).map(|_| Su3::random(&mut rng)).collect();
        let flat = reals(&links);
        assert_eq!(flat.len(), 4 * 18);
        let mut expect = vec![0.0; 18];
        links[2].write_reals(&mut expect);
        assert_eq!(&flat[36..54], &expect[..]);
        let back: &[Su3] = view(flat).unwrap();
        assert_eq!(back, &links[..]);
        let e = view::<Su3>(&flat[..17]).unwrap_err();
        assert!(e.to_string().contains("17 reals") && e.to_string().contains("18 reals each"), "{e}");
    }
}
