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
//! then θ is rounded to the model's dtype. The models are tiny (≈10⁴ parameters at the peers'
//! setups), so the host round trip costs far less than ~100 small device kernels per step would.

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

#[cfg(test)]
mod tests {
    use super::*;
    use latflow_core::ErrorKind;

    fn settings(lr: f64) -> TrainSettings {
        crate::testing::settings(8, lr)
    }

    #[test]
    fn learning_rate_schedules() {
        let mut s = settings(0.1);
        assert_eq!(learning_rate(&s, 0), 0.1);
        assert_eq!(learning_rate(&s, 10_000), 0.1);
        s.schedule = LrSchedule::Step { every: 10, factor: 0.5 };
        assert_eq!(learning_rate(&s, 9), 0.1);
        assert_eq!(learning_rate(&s, 10), 0.05);
        assert_eq!(learning_rate(&s, 25), 0.025);
        s.schedule = LrSchedule::Cosine { steps: 110, min_lr: 0.01, warmup: 10 };
        assert!((learning_rate(&s, 0) - 0.01).abs() < 1e-15);
        assert!((learning_rate(&s, 9) - 0.1).abs() < 1e-15);
        assert!((learning_rate(&s, 10) - 0.1).abs() < 1e-15);
        assert!((learning_rate(&s, 60) - 0.055).abs() < 1e-15);
        assert!((learning_rate(&s, 110) - 0.01).abs() < 1e-15);
        assert!((learning_rate(&s, 500) - 0.01).abs() < 1e-15);
        validate(&s).unwrap();
        s.schedule = LrSchedule::Cosine { steps: 5, min_lr: 0.0, warmup: 5 };
        assert_eq!(learning_rate(&s, 4), 0.1);
        assert_eq!(learning_rate(&s, 50), 0.1, "a warm-up as long as the schedule ends at lr");
    }

    #[test]
    fn clipping_factor_and_norm() {
        assert_eq!(clip_factor(10.0, 0.0), 1.0);
        assert_eq!(clip_factor(0.5, 1.0), 1.0);
        assert!((clip_factor(10.0, 1.0) - 1.0 / (10.0 + 1e-6)).abs() < 1e-15);
        assert!((global_norm(&[vec![3.0], vec![4.0, 0.0]]) - 5.0).abs() < 1e-15);
    }

    /// torch.optim.Adam(lr=0.1) on f(x) = x² from x = 1 (g = 2x): after the first step the update
    /// is −lr·sign(g); the next values follow the closed form written out here.
    #[test]
    fn adam_matches_the_reference_update() {
        let s = settings(0.1);
        let mut st = AdamState::zeros(&[1]);
        let mut x = vec![vec![1.0]];
        st.update(&mut x, &[vec![2.0]], 0.1, &s);
        assert!((x[0][0] - (1.0 - 0.1 * 2.0 / (2.0 + 1e-8))).abs() < 1e-15);
        let g2 = 2.0 * x[0][0];
        let m = 0.9 * 0.2 + 0.1 * g2;
        let v = 0.999 * 0.004 + 0.001 * g2 * g2;
        let expect = x[0][0] - 0.1 * (m / (1.0 - 0.81)) / ((v / (1.0 - 0.999f64.powi(2))).sqrt() + 1e-8);
        st.update(&mut x, &[vec![g2]], 0.1, &s);
        assert!((x[0][0] - expect).abs() < 1e-15, "{} vs {expect}", x[0][0]);
        assert_eq!(st.step, 2);
        // decoupled weight decay shrinks θ before the moment update
        let mut wd = settings(0.1);
        wd.weight_decay = 0.5;
        let mut st = AdamState::zeros(&[1]);
        let mut x = vec![vec![1.0]];
        st.update(&mut x, &[vec![0.0]], 0.1, &wd);
        assert!((x[0][0] - 0.95).abs() < 1e-15);
    }

    #[test]
    fn invalid_settings_are_refused_naming_the_field() {
        for (bad, needle) in [
            (TrainSettings { batch: 0, ..settings(1e-3) }, "batch"),
            (settings(0.0), "learning_rate"),
            (settings(f64::NAN), "learning_rate"),
            (TrainSettings { beta1: 1.0, ..settings(1e-3) }, "beta1"),
            (TrainSettings { beta2: -0.1, ..settings(1e-3) }, "beta2"),
            (TrainSettings { eps: 0.0, ..settings(1e-3) }, "eps"),
            (TrainSettings { weight_decay: -1.0, ..settings(1e-3) }, "weight_decay"),
            (TrainSettings { grad_clip: -1.0, ..settings(1e-3) }, "grad_clip"),
            (TrainSettings { schedule: LrSchedule::Step { every: 0, factor: 0.5 }, ..settings(1e-3) }, "every"),
            (TrainSettings { schedule: LrSchedule::Step { every: 2, factor: 0.0 }, ..settings(1e-3) }, "factor"),
            (
                TrainSettings { schedule: LrSchedule::Cosine { steps: 10, min_lr: 0.0, warmup: 11 }, ..settings(1e-3) },
                "warmup",
            ),
            (
                TrainSettings { schedule: LrSchedule::Cosine { steps: 10, min_lr: 1.0, warmup: 0 }, ..settings(1e-3) },
                "min_lr",
            ),
        ] {
            let e = validate(&bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Config);
            assert!(e.message.contains(needle), "{bad:?}: {}", e.message);
        }
    }
}

/// The outcome of [`checked_step`]: the updated parameters and optimiser state, and the
/// metrics of the step.
#[derive(Debug, Clone)]
pub struct Step {
    pub params: Vec<Vec<f64>>,
    pub adam: AdamState,
    /// ‖g‖₂ over all parameters, before clipping.
    pub grad_norm: f64,
    pub learning_rate: f64,
}

/// One optimiser step of a training batch, all or nothing: refuses a non-finite gradient
/// (naming `names[j]` and the index), clips the gradients to `settings.grad_clip` in global
/// norm, takes the Adam(W) step of `adam` (at the rate of its step count) on the current
/// parameter values that `params` reads (called once, after the gradient checks), and refuses
/// an update that makes a parameter non-finite. Errors leave the caller's weights and state
/// untouched; on success the caller installs [`Step::params`] and [`Step::adam`].
pub fn checked_step<'a>(
    names: impl IntoIterator<Item = &'a str>,
    grads: Vec<Vec<f64>>,
    params: impl FnOnce() -> Result<Vec<Vec<f64>>, PluginError>,
    adam: &AdamState,
    settings: &TrainSettings,
) -> Result<Step, PluginError> {
    let names: Vec<&str> = names.into_iter().collect();
    for (name, g) in names.iter().zip(&grads) {
        if let Some(i) = g.iter().position(|x| !x.is_finite()) {
            return Err(PluginError::numerical(format!(
                "train_step: gradient of {name}[{i}] is {}; weights unchanged",
                g[i]
            )));
        }
    }
    let norm = global_norm(&grads);
    let factor = clip_factor(norm, settings.grad_clip);
    let grads: Vec<Vec<f64>> = if factor < 1.0 {
        grads.into_iter().map(|g| g.into_iter().map(|x| x * factor).collect()).collect()
    } else {
        grads
    };
    let lr = learning_rate(settings, adam.step);
    let mut params = params()?;
    let mut adam = adam.clone();
    adam.update(&mut params, &grads, lr, settings);
    for (name, p) in names.iter().zip(&params) {
        if p.iter().any(|x| !x.is_finite()) {
            return Err(PluginError::numerical(format!(
                "train_step: the update made {name} non-finite; weights unchanged"
            )));
        }
    }
    Ok(Step { params, adam, grad_norm: norm, learning_rate: lr })
}

/// Checks the host's buffers for `train_step` against the pending training batch: `pending`
/// is the size n of the batch that `train_sample` left (None: no batch pending), `actions` must
/// hold n reals and `grad` n × `width` (`unit` names what the `width` reals of a configuration
/// are in the error, e.g. "reals" or "links"). Returns n.
pub fn check_train_buffers(
    pending: Option<usize>,
    actions: &[f64],
    grad: &[f64],
    width: usize,
    unit: &str,
) -> Result<usize, PluginError> {
    let n = match pending {
        Some(n) => n,
        None => {
            return Err(PluginError::unsupported(
                "train_step: no training batch pending: call train_sample before every train_step",
            ))
        }
    };
    if actions.len() != n {
        return Err(PluginError::shape(format!(
            "train_step: {} actions for a batch of {n} configurations",
            actions.len()
        )));
    }
    if grad.len() != n * width {
        return Err(PluginError::shape(format!(
            "train_step: gradient of {} reals for a batch of {n} configurations of {width} {unit} ({} expected)",
            grad.len(),
            n * width
        )));
    }
    Ok(n)
}

/// The training loss mean(log q + S) of a batch from its log q (`logq`) and actions
/// (`actions`), in that summation order; refuses a non-finite loss, then a non-finite action
/// gradient `grad`, leaving the weights unchanged.
pub fn batch_loss(logq: &[f64], actions: &[f64], grad: &[f64]) -> Result<f64, PluginError> {
    let n = actions.len();
    let loss = logq.iter().zip(actions).map(|(a, s)| a + s).sum::<f64>() / n as f64;
    if !loss.is_finite() {
        return Err(PluginError::numerical(format!(
            "train_step: the loss mean(log q + S) is {loss}; weights unchanged"
        )));
    }
    latflow_core::abi::check_finite("train_step: action gradient", grad)?;
    Ok(loss)
}
