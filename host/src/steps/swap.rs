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

/// The swap proposal for the pair (a, b): plain, or flow-assisted when `flow`.
pub fn propose(flow: bool, a: &PairSide<'_>, b: &PairSide<'_>) -> Result<Proposal, PluginLoadError> {
    for side in [a, b] {
        super::require_exact_action(side.theory, "a replica swap")?;
    }
    if flow {
        flow_proposal(a, b)
    } else {
        plain_proposal(a, b)
    }
}

/// A plain swap of the pair (a, b): the configurations exchanged as they are.
fn plain_proposal(a: &PairSide<'_>, b: &PairSide<'_>) -> Result<Proposal, PluginLoadError> {
    let both = [a.config, b.config].concat();
    let sa = a.theory.action(&both)?; // S_a(x_a), S_a(x_b)
    let sb = b.theory.action(&both)?; // S_b(x_a), S_b(x_b)
    Ok(Proposal {
        lower: b.config.to_vec(),
        upper: a.config.to_vec(),
        delta_s: (sa[0] - sa[1]) + (sb[1] - sb[0]),
        delta_log_q: 0.0,
    })
}

/// A flow-assisted swap of the pair (a, b): (x_a, x_b) → (T⁻¹ x_b, T x_a), T = F_b ∘ F_a⁻¹
/// (see the module documentation).
fn flow_proposal(a: &PairSide<'_>, b: &PairSide<'_>) -> Result<Proposal, PluginLoadError> {
    let (ma, mb) = match (a.model, b.model) {
        (Some(ma), Some(mb)) => (ma, mb),
        _ => unreachable!("flow-assisted swaps are set up with a model at every coupling"),
    };
    let (za, lq_a) = ma.to_latent(a.config)?; // z_a = F_a⁻¹(x_a), log q_a(x_a)
    let (zb, lq_b) = mb.to_latent(b.config)?; // z_b = F_b⁻¹(x_b), log q_b(x_b)
    let (upper, lq_upper) = mb.from_latent(&za)?; // T x_a = F_b(z_a), log q_b(T x_a)
    let (lower, lq_lower) = ma.from_latent(&zb)?; // T⁻¹ x_b = F_a(z_b), log q_a(T⁻¹ x_b)
    let sa = a.theory.action(&[a.config, lower.as_slice()].concat())?; // S_a(x_a), S_a(x_a')
    let sb = b.theory.action(&[b.config, upper.as_slice()].concat())?; // S_b(x_b), S_b(x_b')
    Ok(Proposal {
        delta_s: (sa[0] - sa[1]) + (sb[0] - sb[1]),
        delta_log_q: (lq_a[0] - lq_upper[0]) + (lq_b[0] - lq_lower[0]),
        lower,
        upper,
    })
}
