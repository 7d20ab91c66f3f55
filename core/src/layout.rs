//! Field layouts: how a plugin's fields map onto the flat `f64` buffers that cross the ABI.
//!
//! A layout is a lattice shape plus an ordered list of [`FieldComponent`]s. The flat
//! configuration buffer is the concatenation of the *dynamical* components, in order. Within a
//! component the index runs `[site][direction][element reals]`, with sites in row-major order
//! (last axis fastest, see [`crate::lattice`]), the direction present only for link fields,
//! and the element's reals as:
//!
//! | element | reals | order |
//! |---|---|---|
//! | `Real` | 1 | φ |
//! | `Angle` | 1 | θ, radians, any representative (periodic with 2π) |
//! | `ComplexMatrix { n }` | 2n² | row-major entries, each as (re, im) |
//! | `ComplexVector { n }` | 2n | entries as (re, im); e.g. spin ⊗ colour for fermions |
//! | `RealVector { n }` | n | components; e.g. an O(N) spin |
//!
//! [`FieldLayout::component_dims`] gives the array shape a component's reals reshape to.
//!
//! Auxiliary components (pseudofermions) are described so that tools know they exist, but they
//! are owned and refreshed by the theory, not stored in configurations.

use abi_stable::std_types::{RString, RVec};
use abi_stable::StableAbi;
use serde::{Deserialize, Serialize};

/// Where a component lives.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Support {
    /// One element per site.
    Site,
    /// One element per link (site × direction).
    Link,
}

/// What one element of a component is: an open kind code, a size parameter `n`, and the
/// element's number of reals.
///
/// Not a Rust `enum`, so that kinds can be added without breaking plugins built before (see
/// [`crate::open_enum`]): a kind this build does not know still carries its real count, so
/// lengths stay right, and shows as `Unknown`. Build values with the constants
/// ([`ElementKind::Real`], [`ElementKind::Angle`]) and constructors
/// ([`ElementKind::real_vector`], [`ElementKind::complex_matrix`],
/// [`ElementKind::complex_vector`]); inspect them with [`ElementKind::shape`]. Serde keeps the
/// format of the former enum: `"Real"`, `"Angle"`, `{"ComplexMatrix": {"n": 3}}`, ….
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "Element", from = "Element")]
pub struct ElementKind {
    code: u32,
    n: u32,
    reals: u64,
}

/// The readable form of an [`ElementKind`], for matching.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Element {
    /// A real number.
    Real,
    /// An angle in radians (a U(1) link, an XY spin), periodic with 2π.
    Angle,
    /// An n×n complex matrix (an SU(N) link): 2n² reals, row-major, each entry (re, im).
    ComplexMatrix { n: u32 },
    /// A complex vector of length n (e.g. a Wilson spinor, spin ⊗ colour): 2n reals.
    ComplexVector { n: u32 },
    /// A real vector of length n (e.g. an O(N) spin): n reals.
    RealVector { n: u32 },
    /// A kind unknown to this build of latflow-core, with its code, size and real count.
    Unknown { code: u32, n: u32, reals: u64 },
}

const CODE_REAL: u32 = 0;
const CODE_ANGLE: u32 = 1;
const CODE_COMPLEX_MATRIX: u32 = 2;
const CODE_COMPLEX_VECTOR: u32 = 3;
const CODE_REAL_VECTOR: u32 = 4;

#[allow(non_upper_case_globals)]
impl ElementKind {
    /// A real number.
    pub const Real: ElementKind = ElementKind { code: CODE_REAL, n: 1, reals: 1 };
    /// An angle in radians.
    pub const Angle: ElementKind = ElementKind { code: CODE_ANGLE, n: 1, reals: 1 };

    /// An n×n complex matrix (2n² reals).
    pub const fn complex_matrix(n: u32) -> Self {
        Self { code: CODE_COMPLEX_MATRIX, n, reals: 2 * (n as u64) * (n as u64) }
    }

    /// A complex vector of length n (2n reals).
    pub const fn complex_vector(n: u32) -> Self {
        Self { code: CODE_COMPLEX_VECTOR, n, reals: 2 * n as u64 }
    }

    /// A real vector of length n (n reals), e.g. an O(N) spin.
    pub const fn real_vector(n: u32) -> Self {
        Self { code: CODE_REAL_VECTOR, n, reals: n as u64 }
    }

    /// Number of reals per element.
    pub fn reals(&self) -> usize {
        self.reals as usize
    }

    /// The readable form, for matching.
    pub fn shape(&self) -> Element {
        let n = self.n;
        match self.code {
            CODE_REAL => Element::Real,
            CODE_ANGLE => Element::Angle,
            CODE_COMPLEX_MATRIX => Element::ComplexMatrix { n },
            CODE_COMPLEX_VECTOR => Element::ComplexVector { n },
            CODE_REAL_VECTOR => Element::RealVector { n },
            code => Element::Unknown { code, n, reals: self.reals },
        }
    }

    /// The array dimensions of one element, innermost last, that its reals reshape to: `[]`
    /// for a real or an angle, `[n]` for a real vector, `[n, 2]` for a complex vector and
    /// `[n, n, 2]` for a complex matrix (the 2 is (re, im)); `[reals]` for an unknown kind.
    pub fn dims(&self) -> Vec<usize> {
        match self.shape() {
            Element::Real | Element::Angle => vec![],
            Element::RealVector { n } => vec![n as usize],
            Element::ComplexVector { n } => vec![n as usize, 2],
            Element::ComplexMatrix { n } => vec![n as usize, n as usize, 2],
            Element::Unknown { reals, .. } => vec![reals as usize],
        }
    }
}

impl From<Element> for ElementKind {
    fn from(e: Element) -> Self {
        match e {
            Element::Real => Self::Real,
            Element::Angle => Self::Angle,
            Element::ComplexMatrix { n } => Self::complex_matrix(n),
            Element::ComplexVector { n } => Self::complex_vector(n),
            Element::RealVector { n } => Self::real_vector(n),
            Element::Unknown { code, n, reals } => Self { code, n, reals },
        }
    }
}

impl From<ElementKind> for Element {
    fn from(k: ElementKind) -> Self {
        k.shape()
    }
}

impl std::fmt::Debug for ElementKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.shape(), f)
    }
}

/// Whether a component is part of the sampled configuration.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FieldRole {
    /// Sampled; stored in configurations; what flows act on.
    Dynamical,
    /// Owned by the theory (e.g. pseudofermions), refreshed inside HMC; never stored.
    Auxiliary,
}

/// One named field component.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldComponent {
    pub name: RString,
    pub support: Support,
    pub element: ElementKind,
    pub role: FieldRole,
}

/// A lattice shape and the components that live on it.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldLayout {
    /// Extents `[L_0, …, L_{d−1}]`, last axis fastest.
    pub lattice: RVec<u64>,
    pub components: RVec<FieldComponent>,
}

impl FieldLayout {
    /// A layout with a single dynamical component.
    pub fn single(lattice: &[usize], name: &str, support: Support, element: ElementKind) -> Self {
        Self {
            lattice: lattice.iter().map(|&l| l as u64).collect(),
            components: RVec::from(vec![FieldComponent {
                name: name.into(),
                support,
                element,
                role: FieldRole::Dynamical,
            }]),
        }
    }

    /// Number of sites.
    pub fn volume(&self) -> usize {
        self.lattice.iter().map(|&l| l as usize).product()
    }

    /// Number of dimensions.
    pub fn dim(&self) -> usize {
        self.lattice.len()
    }

    /// Number of reals in one component.
    pub fn component_len(&self, c: &FieldComponent) -> usize {
        let per_site = match c.support {
            Support::Site => 1,
            Support::Link => self.dim(),
        };
        self.volume() * per_site * c.element.reals()
    }

    /// The array dimensions a component's reals reshape to, outermost first: the lattice
    /// extents, then the direction for a link field, then [`ElementKind::dims`].
    pub fn component_dims(&self, c: &FieldComponent) -> Vec<usize> {
        let mut dims = self.shape();
        if c.support == Support::Link {
            dims.push(self.dim());
        }
        dims.extend(c.element.dims());
        dims
    }

    /// The array dimensions a whole flat configuration reshapes to (what ensembles store as
    /// `attrs["shape"]`): [`FieldLayout::component_dims`] of the one dynamical component, e.g.
    /// `[L0, L1]` for a real scalar, `[L0, L1, d]` for link angles, `[L0, L1, n]` for an O(n)
    /// spin, `[L0, L1, d, N, N, 2]` for SU(N) links. A layout with several dynamical
    /// components has no single array shape: `[config_len]`.
    pub fn config_dims(&self) -> Vec<usize> {
        let mut dynamical = self.components.iter().filter(|c| c.role == FieldRole::Dynamical);
        match (dynamical.next(), dynamical.next()) {
            (Some(c), None) => self.component_dims(c),
            _ => vec![self.config_len()],
        }
    }

    /// Length of a flat configuration: all dynamical components.
    pub fn config_len(&self) -> usize {
        self.components.iter().filter(|c| c.role == FieldRole::Dynamical).map(|c| self.component_len(c)).sum()
    }

    /// Length of the auxiliary fields.
    pub fn aux_len(&self) -> usize {
        self.components.iter().filter(|c| c.role == FieldRole::Auxiliary).map(|c| self.component_len(c)).sum()
    }

    /// The lattice shape as `usize`.
    pub fn shape(&self) -> Vec<usize> {
        self.lattice.iter().map(|&l| l as usize).collect()
    }

    /// Whether two layouts describe the same configuration space (used to check that a model
    /// fits a theory). Returns a description of the first difference.
    pub fn check_compatible(&self, other: &FieldLayout) -> Result<(), String> {
        if self.lattice != other.lattice {
            return Err(format!("lattice {:?} differs from {:?}", self.shape(), other.shape()));
        }
        let a: Vec<_> = self.components.iter().filter(|c| c.role == FieldRole::Dynamical).collect();
        let b: Vec<_> = other.components.iter().filter(|c| c.role == FieldRole::Dynamical).collect();
        if a.len() != b.len() {
            return Err(format!("{} dynamical components differ from {}", a.len(), b.len()));
        }
        for (x, y) in a.iter().zip(&b) {
            if x.support != y.support || x.element != y.element {
                return Err(format!(
                    "component '{}' ({:?} {:?}) differs from '{}' ({:?} {:?})",
                    x.name, x.support, x.element, y.name, y.support, y.element
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_dims_reshape_the_flat_configuration() {
        let cases = [
            (FieldLayout::single(&[6, 4], "phi", Support::Site, ElementKind::Real), vec![6, 4]),
            (FieldLayout::single(&[8, 8], "theta", Support::Link, ElementKind::Angle), vec![8, 8, 2]),
            (FieldLayout::single(&[4, 4], "n", Support::Site, ElementKind::real_vector(3)), vec![4, 4, 3]),
            (FieldLayout::single(&[2, 2, 2], "U", Support::Link, ElementKind::complex_matrix(3)), vec![2, 2, 2, 3, 3, 3, 2]),
        ];
        for (layout, dims) in cases {
            assert_eq!(dims.iter().product::<usize>(), layout.config_len(), "{dims:?}");
            assert_eq!(layout.config_dims(), dims);
        }
        let mut two = FieldLayout::single(&[4, 4], "phi", Support::Site, ElementKind::Real);
        two.components.push(FieldComponent {
            name: "chi".into(),
            support: Support::Site,
            element: ElementKind::Real,
            role: FieldRole::Dynamical,
        });
        assert_eq!(two.config_dims(), vec![32]);
    }

    #[test]
    fn lengths_for_all_kinds() {
        let mut l = FieldLayout::single(&[4, 4], "phi", Support::Site, ElementKind::Real);
        assert_eq!(l.config_len(), 16);
        l.components.push(FieldComponent {
            name: "theta".into(),
            support: Support::Link,
            element: ElementKind::Angle,
            role: FieldRole::Dynamical,
        });
        assert_eq!(l.config_len(), 16 + 32);
        l.components.push(FieldComponent {
            name: "U".into(),
            support: Support::Link,
            element: ElementKind::complex_matrix(3),
            role: FieldRole::Dynamical,
        });
        assert_eq!(l.config_len(), 16 + 32 + 32 * 18);
        l.components.push(FieldComponent {
            name: "pf".into(),
            support: Support::Site,
            element: ElementKind::complex_vector(2),
            role: FieldRole::Auxiliary,
        });
        assert_eq!(l.config_len(), 16 + 32 + 32 * 18);
        assert_eq!(l.aux_len(), 16 * 4);
        l.components.push(FieldComponent {
            name: "spin".into(),
            support: Support::Site,
            element: ElementKind::real_vector(3),
            role: FieldRole::Dynamical,
        });
        assert_eq!(l.config_len(), 16 + 32 + 32 * 18 + 16 * 3);
        let dims: Vec<_> = l.components.iter().map(|c| l.component_dims(c)).collect();
        assert_eq!(dims, vec![vec![4, 4], vec![4, 4, 2], vec![4, 4, 2, 3, 3, 2], vec![4, 4, 2, 2], vec![4, 4, 3]]);
        for (c, d) in l.components.iter().zip(&dims) {
            assert_eq!(l.component_len(c), d.iter().product::<usize>());
        }
        let json = serde_json::to_string(&l).unwrap();
        assert!(
            json.contains(r#""element":{"ComplexMatrix":{"n":3}}"#) && json.contains(r#""element":"Real""#),
            "{json}"
        );
        let back: FieldLayout = serde_json::from_str(&json).unwrap();
        assert_eq!(back, l);
    }

    #[test]
    fn unknown_element_kinds_keep_their_size() {
        let future: ElementKind = serde_json::from_str(r#"{"Unknown":{"code":99,"n":4,"reals":10}}"#).unwrap();
        assert_eq!(future.reals(), 10);
        assert_eq!(future.dims(), vec![10]);
        assert_eq!(format!("{future:?}"), "Unknown { code: 99, n: 4, reals: 10 }");
        assert_eq!(serde_json::from_str::<ElementKind>(r#""Angle""#).unwrap(), ElementKind::Angle);
    }

    #[test]
    fn compatibility() {
        let a = FieldLayout::single(&[4, 4], "phi", Support::Site, ElementKind::Real);
        let b = FieldLayout::single(&[4, 4], "x", Support::Site, ElementKind::Real);
        let c = FieldLayout::single(&[8, 8], "phi", Support::Site, ElementKind::Real);
        let d = FieldLayout::single(&[4, 4], "theta", Support::Link, ElementKind::Angle);
        assert!(a.check_compatible(&b).is_ok());
        assert!(a.check_compatible(&c).is_err());
        assert!(a.check_compatible(&d).is_err());
    }
}
