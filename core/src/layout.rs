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

/// What one element of a component is.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ElementKind {
    /// A real number.
    Real,
    /// An angle in radians (a U(1) link).
    Angle,
    /// An n×n complex matrix (an SU(N) link).
    ComplexMatrix { n: u32 },
    /// A complex vector of length n (e.g. a Wilson spinor, spin ⊗ colour).
    ComplexVector { n: u32 },
}

impl ElementKind {
    /// Number of reals per element.
    pub fn reals(&self) -> usize {
        match *self {
            ElementKind::Real | ElementKind::Angle => 1,
            ElementKind::ComplexMatrix { n } => 2 * (n as usize) * (n as usize),
            ElementKind::ComplexVector { n } => 2 * n as usize,
        }
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
            element: ElementKind::ComplexMatrix { n: 3 },
            role: FieldRole::Dynamical,
        });
        assert_eq!(l.config_len(), 16 + 32 + 32 * 18);
        l.components.push(FieldComponent {
            name: "pf".into(),
            support: Support::Site,
            element: ElementKind::ComplexVector { n: 2 },
            role: FieldRole::Auxiliary,
        });
        assert_eq!(l.config_len(), 16 + 32 + 32 * 18);
        assert_eq!(l.aux_len(), 16 * 4);
        let json = serde_json::to_string(&l).unwrap();
        let back: FieldLayout = serde_json::from_str(&json).unwrap();
        assert_eq!(back, l);
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
