//! The HMC field space of the plugin: core's [`FlatLinkSpace`] for the group chosen at run
//! time (U(1) angles, SU(2) or SU(3) matrices).

use latflow_core::gauge::{FlatLinkSpace, Su2, Su3, U1Angle};
use latflow_core::hmc::FieldSpace;
use latflow_core::Stream;

/// Links of the card's group on the flat configuration buffer (see [`FlatLinkSpace`]).
#[derive(Debug, Clone, Copy)]
pub enum QcdSpace {
    U1(FlatLinkSpace<U1Angle>),
    Su2(FlatLinkSpace<Su2>),
    Su3(FlatLinkSpace<Su3>),
}

macro_rules! each {
    ($self:expr, $s:ident => $body:expr) => {
        match $self {
            QcdSpace::U1($s) => $body,
            QcdSpace::Su2($s) => $body,
            QcdSpace::Su3($s) => $body,
        }
    };
}

impl FieldSpace for QcdSpace {
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
        each!(self, s => s.step_field(u, p, eps))
    }

    fn kick(&self, p: &mut Vec<f64>, f: &Vec<f64>, eps: f64) {
        each!(self, s => s.kick(p, f, eps))
    }

    fn project(&self, u: &mut Vec<f64>) -> f64 {
        each!(self, s => s.project(u))
    }
}
