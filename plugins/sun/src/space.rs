//! The HMC field space of the plugin: core's [`FlatLinkSpace`] for the group chosen at run
//! time.

use latflow_core::gauge::flat::{view, view_mut};
use latflow_core::gauge::{FlatLinkSpace, Su2, Su3};
use latflow_core::hmc::FieldSpace;
use latflow_core::Stream;

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
