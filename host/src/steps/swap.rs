//! `kind = "replica_exchange"`: swaps of the configurations of neighbouring couplings of a
//! replica ladder, plain or flow-assisted (the derivation of the acceptance ratio is in
//! [`crate::replica`]). Unlike the other steps it acts on a pair of configurations, so the
//! ladder driver applies it; this file holds the step's state, records and proposals.

use latflow_core::Stream;

use crate::card::ExchangeCard;
use crate::plugin::{ModelHandle, PluginLoadError, TheoryHandle};

/// The columns of a swap record: the lower coupling of the pair, the log acceptance ratio and
/// its two parts (`log_ratio = delta_s + delta_log_q`).
pub const SWAP_COLUMNS: [&str; 4] = ["pair", "log_ratio", "delta_s", "delta_log_q"];

/// A `replica_exchange` step.
pub struct ExchangeStep {
    pub card_index: usize,
    pub card: ExchangeCard,
    /// Applications so far; application a attempts the pairs (i, i+1) with i ≡ a (mod 2).
    pub applications: u64,
    pub rng: Stream,
}

/// One attempted swap of the pair (pair, pair + 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SwapRecord {
    pub pair: usize,
    pub accepted: bool,
    pub log_ratio: f64,
    pub delta_s: f64,
    pub delta_log_q: f64,
}

impl SwapRecord {
    /// The record's values in [`SWAP_COLUMNS`] order.
    pub fn columns(&self) -> [f64; 4] {
        [self.pair as f64, self.log_ratio, self.delta_s, self.delta_log_q]
    }
}

/// What a swap would put at the two couplings, and its log-ratio.
pub struct Proposal {
    /// The configuration proposed for the lower coupling of the pair.
    pub lower: Vec<f64>,
    /// The configuration proposed for the upper coupling.
    pub upper: Vec<f64>,
    /// The action part of the log acceptance ratio.
    pub delta_s: f64,
    /// The model part (0 for plain swaps).
    pub delta_log_q: f64,
}

/// One coupling of a pair as a swap sees it: its theory, its model (needed for flow-assisted
/// swaps) and the configuration now at it.
pub struct PairSide<'a> {
    pub theory: &'a TheoryHandle,
    pub model: Option<&'a ModelHandle>,
    pub config: &'a [f64],
}

/// The swap proposal for the pair (a, b): plain, or flow-assisted when `flow`. It is the two
/// [`half`]s put together by [`combine`], so a pair whose two couplings live on different ranks
/// (each computing its own half) gets the same bits as a pair on one rank.
pub fn propose(flow: bool, a: &PairSide<'_>, b: &PairSide<'_>) -> Result<Proposal, PluginLoadError> {
    let lower = half(flow, Side::Lower, a, b)?;
    let upper = half(flow, Side::Upper, a, b)?;
    let (delta_s, delta_log_q) = combine(flow, &lower.values, &upper.values);
    Ok(Proposal { lower: upper.outgoing, upper: lower.outgoing, delta_s, delta_log_q })
}

/// Which configuration of a pair (a, b) a [`half`] starts from: x_a (the lower coupling's) or
/// x_b.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Lower,
    Upper,
}

/// What one side of a pair computes from its own configuration alone.
#[derive(Debug, Clone, PartialEq)]
pub struct Half {
    /// The numbers the other side needs ([`HALF_LEN`] of them): for a plain swap, the actions
    /// of this side's configuration at both couplings; for a flow-assisted swap, this side's
    /// action, the other coupling's action of the proposal, and the two log q.
    pub values: Vec<f64>,
    /// The configuration this side proposes for the *other* coupling (its own for a plain
    /// swap, T x_a or T⁻¹ x_b for a flow-assisted one).
    pub outgoing: Vec<f64>,
}

/// The length of [`Half::values`].
pub const HALF_LEN: usize = 4;

/// One side's half of the swap proposal of the pair (a, b): only `a.config` is read for
/// [`Side::Lower`], only `b.config` for [`Side::Upper`]; both theories (and, when `flow`, both
/// models) are used.
pub fn half(flow: bool, side: Side, a: &PairSide<'_>, b: &PairSide<'_>) -> Result<Half, PluginLoadError> {
    for s in [a, b] {
        super::require_exact_action(s.theory, "a replica swap")?;
    }
    let (own, other) = match side {
        Side::Lower => (a, b),
        Side::Upper => (b, a),
    };
    if !flow {
        // S_a(x), S_b(x) for this side's x
        let x = own.config;
        let sa = a.theory.action(x)?[0];
        let sb = b.theory.action(x)?[0];
        return Ok(Half { values: vec![sa, sb, 0.0, 0.0], outgoing: x.to_vec() });
    }
    let (Some(m_own), Some(m_other)) = (own.model, other.model) else {
        unreachable!("flow-assisted swaps are set up with a model at every coupling")
    };
    let (z, lq_own) = m_own.to_latent(own.config)?; // z = F_own⁻¹(x), log q_own(x)
    let (moved, lq_moved) = m_other.from_latent(&z)?; // F_other(z), log q_other(F_other(z))
    let s_own = own.theory.action(own.config)?[0];
    let s_moved = other.theory.action(&moved)?[0];
    Ok(Half { values: vec![s_own, s_moved, lq_own[0], lq_moved[0]], outgoing: moved })
}

/// (delta_s, delta_log_q) of a pair from its lower and upper [`Half::values`].
pub fn combine(flow: bool, lower: &[f64], upper: &[f64]) -> (f64, f64) {
    if flow {
        // (S_a(x_a) − S_a(x_a')) + (S_b(x_b) − S_b(x_b')), (log q_a(x_a) − log q_b(x_b')) + (log q_b(x_b) − log q_a(x_a'))
        ((lower[0] - upper[1]) + (upper[0] - lower[1]), (lower[2] - lower[3]) + (upper[2] - upper[3]))
    } else {
        // (S_a(x_a) − S_a(x_b)) + (S_b(x_b) − S_b(x_a))
        ((lower[0] - upper[0]) + (upper[1] - lower[1]), 0.0)
    }
}
