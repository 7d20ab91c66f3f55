//! The HMC field spaces of the plugin: core's [`FlatLinkSpace`] for the group chosen at run
//! time, and for the SU(3) Wilson action [`PackedSpace`], the same fields in the site-blocked
//! layout of [`crate::blocked`] for whole trajectories.

use latflow_core::gauge::flat::{view, view_mut};
use latflow_core::gauge::{FlatLinkSpace, Su2, Su3};
use latflow_core::hmc::FieldSpace;
use latflow_core::Stream;

use crate::blocked::{Layout, Packed};

/// SU(2) or SU(3) links on the flat configuration buffer (see [`FlatLinkSpace`]).
#[derive(Debug, Clone, Copy)]
pub enum SunSpace {
    Two(FlatLinkSpace<Su2>),
    Three(FlatLinkSpace<Su3>),
}

impl SunSpace {
    /// The space of SU(`n`) links (n = 2 or 3, validated by the theory) in `dim` directions on
    /// `sites` sites.
    pub fn new(n: usize, dim: usize, sites: usize) -> Self {
        if n == 2 {
            SunSpace::Two(FlatLinkSpace::new(dim, sites))
        } else {
            SunSpace::Three(FlatLinkSpace::new(dim, sites))
        }
    }
}

macro_rules! each {
    ($self:expr, $s:ident => $body:expr) => {
        match $self {
            SunSpace::Two($s) => $body,
            SunSpace::Three($s) => $body,
        }
    };
}

impl FieldSpace for SunSpace {
    type Field = Vec<f64>;
    type Momentum = Vec<f64>;

    fn sample_momentum(&self, u: &Vec<f64>, rng: &mut Stream) -> Vec<f64> {
        each!(self, s => s.sample_momentum(u, rng))
    }

    fn zero_momentum(&self) -> Vec<f64> {
        each!(self, s => s.zero_momentum())
    }

    fn kinetic(&self, p: &Vec<f64>) -> f64 {
        each!(self, s => s.kinetic(p))
    }

    fn step_field(&self, u: &mut Vec<f64>, p: &mut Vec<f64>, eps: f64) {
        match self {
            // the same bits as FlatLinkSpace's drift, from the fast kernels
            SunSpace::Three(s) => {
                let links = view_mut(u).unwrap_or_else(|e| panic!("{e}"));
                let momenta = view(p).unwrap_or_else(|e| panic!("{e}"));
                crate::fast::step_links(links, momenta, s.0.dim, eps, crate::fast::step_level())
            }
            SunSpace::Two(s) => s.step_field(u, p, eps),
        }
    }

    fn kick(&self, p: &mut Vec<f64>, f: &Vec<f64>, eps: f64) {
        each!(self, s => s.kick(p, f, eps))
    }

    fn project(&self, u: &mut Vec<f64>) -> f64 {
        each!(self, s => s.project(u))
    }
}

/// SU(3) links and momenta in a site-blocked [`Layout`] for a whole HMC trajectory: the force,
/// the kick and the drift run on the blocked fields, so that no force packs the links or
/// writes its result back to `[site][μ]`. What runs once or twice a trajectory goes through
/// the flat layout, with the flat space's bits: momenta are drawn there and packed (the same
/// random numbers in the same order), the kinetic energy is summed there, and the links are
/// reunitarised there. Every step gives the bits of [`FlatLinkSpace`]'s (tested), so a
/// trajectory is the same on either path.
#[derive(Clone)]
pub struct PackedSpace {
    pub layout: Layout,
    flat: FlatLinkSpace<Su3>,
}

impl PackedSpace {
    /// The space of SU(3) links on the lattice of `layout`, blocked by it.
    pub fn new(layout: Layout) -> Self {
        let flat = FlatLinkSpace::new(layout.dim(), layout.sites());
        Self { layout, flat }
    }

    /// `p` in the flat layout (`[site][μ]`, 18 reals each).
    pub fn flat(&self, p: &Packed) -> Vec<f64> {
        let mut v = vec![0.0; self.layout.reals()];
        self.layout.unpack(p, &mut v);
        v
    }
}

impl FieldSpace for PackedSpace {
    type Field = Packed;
    type Momentum = Packed;

    fn sample_momentum(&self, _u: &Packed, rng: &mut Stream) -> Packed {
        self.layout.pack(&self.flat.sample_momentum(&Vec::new(), rng))
    }

    fn zero_momentum(&self) -> Packed {
        self.layout.zeros()
    }

    fn kinetic(&self, p: &Packed) -> f64 {
        self.flat.kinetic(&self.flat(p))
    }

    fn step_field(&self, u: &mut Packed, p: &mut Packed, eps: f64) {
        self.layout.drift(u, p, eps)
    }

    fn kick(&self, p: &mut Packed, f: &Packed, eps: f64) {
        self.layout.kick(p, f, eps)
    }

    fn project(&self, u: &mut Packed) -> f64 {
        let mut v = self.flat(u);
        let worst = self.flat.project(&mut v);
        *u = self.layout.pack(&v);
        worst
    }
}
