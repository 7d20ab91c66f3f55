//! Adam(W), the learning-rate schedule, and gradient clipping.
//!
//! candle-nn's `AdamW` keeps its moments private, so they could not be saved; this is the same
//! update (decoupled weight decay, as torch's `AdamW` and candle-nn's), done on the host in f64
//! with the moments kept in f64, which makes the state trivially serialisable and resumption
//! bit-exact. With `weight_decay = 0` it is torch's `Adam`. For step t = 1, 2, …:
//!
//! ```text
//! θ ← θ (1 − lr·wd)
//! m ← β₁ m + (1 − β₁) g,   v ← β₂ v + (1 − β₂) g²
//! θ ← θ − lr · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)
//! ```
//!
//! then θ is rounded to the model's dtype. The model is tiny (≈13k parameters at the peer's
//! setup), so the host round trip costs far less than ~100 small device kernels per step would.

use latflow_core::abi::{LrSchedule, PluginError, TrainSettings};

/// Checks training settings; errors name the field.
pub fn validate(s: &TrainSettings) -> Result<(), PluginError> {
    let bad = |what: &str, v: f64| PluginError::config(format!("train settings: {what}, got {v}"));
    if s.batch == 0 {
        return Err(PluginError::config("train settings: batch must be at least 1, got 0"));
    }
    if !(s.learning_rate.is_finite() && s.learning_rate > 0.0) {
        return Err(bad("learning_rate must be finite and > 0", s.learning_rate));
    }
    if !(0.0..1.0).contains(&s.beta1) {
        return Err(bad("beta1 must be in [0, 1)", s.beta1));
    }
    if !(0.0..1.0).contains(&s.beta2) {
        return Err(bad("beta2 must be in [0, 1)", s.beta2));
    }
    if !(s.eps.is_finite() && s.eps > 0.0) {
        return Err(bad("eps must be finite and > 0", s.eps));
    }
    if !(s.weight_decay.is_finite() && s.weight_decay >= 0.0) {
        return Err(bad("weight_decay must be finite and ≥ 0", s.weight_decay));
    }
    if !(s.grad_clip.is_finite() && s.grad_clip >= 0.0) {
        return Err(bad("grad_clip must be finite and ≥ 0 (0: no clipping)", s.grad_clip));
    }
    match s.schedule {
        LrSchedule::Constant => {}
        LrSchedule::Cosine { steps, min_lr, warmup } => {
            if steps == 0 {
                return Err(PluginError::config("train settings: schedule.steps must be at least 1"));
            }
            if warmup > steps {
                return Err(PluginError::config(format!(
                    "train settings: schedule.warmup ({warmup}) exceeds schedule.steps ({steps})"
                )));
            }
            if !(min_lr.is_finite() && min_lr >= 0.0 && min_lr <= s.learning_rate) {
                return Err(bad("schedule.min_lr must be finite and in [0, learning_rate]", min_lr));
            }
        }
        LrSchedule::Step { every, factor } => {
            if every == 0 {
                return Err(PluginError::config("train settings: schedule.every must be at least 1"));
            }
            if !(factor.is_finite() && factor > 0.0) {
                return Err(bad("schedule.factor must be finite and > 0", factor));
            }
        }
    }
    Ok(())
}

/// The learning rate of the step that follows `done` completed steps.
///
/// * constant: lr;
/// * cosine: lr·(done + 1)/warmup during the warm-up (done < warmup), then
///   min_lr + ½(lr − min_lr)(1 + cos(π·min(1, (done − warmup)/(steps − warmup)))), which stays
///   at min_lr after `steps` (a warm-up as long as `steps` ends at lr);
/// * step: lr·factor^⌊done / every⌋.
pub fn learning_rate(s: &TrainSettings, done: u64) -> f64 {
    let lr = s.learning_rate;
    match s.schedule {
        LrSchedule::Constant => lr,
        LrSchedule::Cosine { steps, min_lr, warmup } => {
            if done < warmup {
                lr * (done + 1) as f64 / warmup as f64
            } else if steps == warmup {
                lr
            } else {
                let progress = ((done - warmup) as f64 / (steps - warmup) as f64).min(1.0);
                min_lr + 0.5 * (lr - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
        LrSchedule::Step { every, factor } => lr * factor.powf((done / every) as f64),
    }
}

/// Global L2 norm of a list of gradients, summed in order in f64.
pub fn global_norm(grads: &[Vec<f64>]) -> f64 {
    grads.iter().flat_map(|g| g.iter()).map(|x| x * x).sum::<f64>().sqrt()
}

/// Scale factor of torch's `clip_grad_norm_`: min(1, clip / (norm + 1e-6)); 1 when clip = 0.
pub fn clip_factor(norm: f64, clip: f64) -> f64 {
    if clip > 0.0 {
        (clip / (norm + 1e-6)).min(1.0)
    } else {
        1.0
    }
}

/// Adam's state: first and second moments per parameter (f64) and the completed step count.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamState {
    pub m: Vec<Vec<f64>>,
    pub v: Vec<Vec<f64>>,
    pub step: u64,
}

impl AdamState {
    /// Zero moments for parameters of the given sizes.
    pub fn zeros(sizes: &[usize]) -> Self {
        Self {
            m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            v: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            step: 0,
        }
    }

    /// One AdamW update of `params` in place (f64), with already clipped gradients.
    pub fn update(&mut self, params: &mut [Vec<f64>], grads: &[Vec<f64>], lr: f64, s: &TrainSettings) {
        self.step += 1;
        let t = self.step as f64;
        let (b1, b2) = (s.beta1, s.beta2);
        let scale_m = 1.0 / (1.0 - b1.powf(t));
        let scale_v = 1.0 / (1.0 - b2.powf(t));
        let decay = 1.0 - lr * s.weight_decay;
        for ((theta, g), (m, v)) in params.iter_mut().zip(grads).zip(self.m.iter_mut().zip(self.v.iter_mut())) {
            for i in 0..theta.len() {
                let gi = g[i];
                m[i] = b1 * m[i] + (1.0 - b1) * gi;
                v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                let m_hat = m[i] * scale_m;
                let v_hat = v[i] * scale_v;
                theta[i] = theta[i] * decay - lr * m_hat / (v_hat.sqrt() + s.eps);
            }
        }
    }
}
