//! Adam (as `torch.optim.Adam`, no weight decay) and an exponential moving average of the
//! trained weights, both with explicit, savable state.
//!
//! Parameters sharing a learning rate are packed into one flat buffer (each variable becomes a
//! view into it), so an update is a handful of kernels instead of several per tensor, like
//! PyTorch's multi-tensor Adam. `exp_avg[i]` / `exp_avg_sq[i]` are views of the flat state of
//! parameter `i`, used for checkpoints; the EMA keeps the same layout.

use tch::Tensor;

/// A trainable tensor with its name (the checkpoint key) and learning rate.
pub struct Param {
    pub name: String,
    pub tensor: Tensor,
    pub lr: f64,
}

pub struct Adam {
    pub params: Vec<Param>,
    pub exp_avg: Vec<Tensor>,
    pub exp_avg_sq: Vec<Tensor>,
    groups: Vec<Group>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

/// Parameters with one learning rate, packed into flat buffers.
struct Group {
    lr: f64,
    members: Vec<usize>,
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Scratch for the packed gradient and the denominator, kept across steps: allocated anew,
    /// two 484 MB buffers on 121M parameters cost ~240K page faults a step on a CPU (each fresh
    /// mapping is faulted in and zeroed), which made a full step slower than the official code's.
    grad: Tensor,
    denom: Tensor,
}

impl Adam {
    /// Packs `params` by learning rate (their tensors become views of the packed buffers).
    pub fn new(mut params: Vec<Param>, beta1: f64, beta2: f64, eps: f64) -> Adam {
        let mut lrs: Vec<f64> = Vec::new();
        for p in &params {
            if !lrs.contains(&p.lr) {
                lrs.push(p.lr);
            }
        }
        let n = params.len();
        let mut exp_avg = (0..n).map(|_| Tensor::new()).collect::<Vec<_>>();
        let mut exp_avg_sq = (0..n).map(|_| Tensor::new()).collect::<Vec<_>>();
        let mut groups = Vec::new();
        for lr in lrs {
            let members: Vec<usize> = (0..n).filter(|&i| params[i].lr == lr).collect();
            let flat = tch::no_grad(|| {
                Tensor::cat(
                    &members
                        .iter()
                        .map(|&i| params[i].tensor.detach().flatten(0, -1))
                        .collect::<Vec<_>>(),
                    0,
                )
            });
            let m = flat.zeros_like();
            let v = flat.zeros_like();
            let (pv, mv, vv) = (
                views(&params, &members, &flat),
                views(&params, &members, &m),
                views(&params, &members, &v),
            );
            for (k, &i) in members.iter().enumerate() {
                params[i].tensor.set_data(&pv[k]);
                exp_avg[i] = mv[k].shallow_clone();
                exp_avg_sq[i] = vv[k].shallow_clone();
            }
            let (grad, denom) = (flat.zeros_like(), flat.zeros_like());
            groups.push(Group {
                lr,
                members,
                param: flat,
                exp_avg: m,
                exp_avg_sq: v,
                grad,
                denom,
            });
        }
        Adam {
            params,
            exp_avg,
            exp_avg_sq,
            groups,
            beta1,
            beta2,
            eps,
        }
    }

    /// One update at 1-based step `step` with `grads[i]` the gradient of `params[i]` (undefined =
    /// unused, treated as zero), as `torch.optim.Adam`.
    pub fn step(&mut self, step: u64, grads: &[Tensor]) {
        let bc1 = 1.0 - self.beta1.powi(step as i32);
        let bc2_sqrt = (1.0 - self.beta2.powi(step as i32)).sqrt();
        tch::no_grad(|| {
            for g in &mut self.groups {
                let flat: Vec<Tensor> = g
                    .members
                    .iter()
                    .map(|&i| {
                        let grad = &grads[i];
                        if grad.defined() {
                            grad.flatten(0, -1)
                        } else {
                            self.params[i].tensor.zeros_like().flatten(0, -1)
                        }
                    })
                    .collect();
                let _ = Tensor::cat_out(&g.grad, &flat, 0);
                let _ = g.exp_avg.lerp_(&g.grad, 1.0 - self.beta1);
                // In place wherever possible: on 121M parameters every temporary is a 484 MB pass.
                let _ = g.exp_avg_sq.g_mul_scalar_(self.beta2);
                let _ = g.grad.g_mul_scalar_((1.0 - self.beta2).sqrt());
                let _ = g.exp_avg_sq.addcmul_(&g.grad, &g.grad);
                let _ = g.exp_avg_sq.sqrt_out(&g.denom);
                // p −= (lr/bc1)·m / (√v/√bc2 + ε), with the step size folded into the denominator.
                let _ = g
                    .denom
                    .g_div_scalar_(bc2_sqrt)
                    .g_add_scalar_(self.eps)
                    .g_mul_scalar_(-bc1 / g.lr);
                let _ = g.param.addcdiv_(&g.exp_avg, &g.denom);
            }
        });
    }

    /// Gradients of `loss` with respect to the parameters, without touching `.grad` (no zeroing
    /// pass, no accumulation pass: PyTorch's `zero_grad(set_to_none=True)` behaviour).
    pub fn gradients(&self, loss: &Tensor) -> Vec<Tensor> {
        let inputs: Vec<&Tensor> = self.params.iter().map(|p| &p.tensor).collect();
        Tensor::run_backward(&[loss], &inputs, false, false)
    }

    /// Number of trained values.
    pub fn numel(&self) -> i64 {
        self.params.iter().map(|p| p.tensor.numel() as i64).sum()
    }
}

/// Per-parameter views (shaped like `params[i]`) of a flat buffer packed for `members`.
fn views(params: &[Param], members: &[usize], flat: &Tensor) -> Vec<Tensor> {
    let mut off = 0;
    members
        .iter()
        .map(|&i| {
            let p = &params[i].tensor;
            let numel = p.numel() as i64;
            let v = flat.narrow(0, off, numel).view(p.size().as_slice());
            off += numel;
            v
        })
        .collect()
}

/// Exponential moving average of the trained weights: `ema ← rate·ema + (1 − rate)·param`
/// after every optimiser step. Kept in Adam's packed layout, so an update is one kernel per
/// learning-rate group.
///
/// With `warmup`, the rate at step n is `min(rate, (1 + n) / (10 + n))`: without it an EMA of
/// rate 0.9995 still holds 17% of the step-0 weights after 3,500 steps (0.9995^3500), and a
/// short run's EMA samples are noise (seen on a 3.5-minute GPU pre-training).
pub struct Ema {
    pub rate: f64,
    pub warmup: bool,
    flats: Vec<Tensor>,
    /// `values[i]` is the average of `adam.params[i]` (a view of the packed buffer).
    pub values: Vec<Tensor>,
}

impl Ema {
    /// Starts at the current weights.
    pub fn new(adam: &Adam, rate: f64, warmup: bool) -> Ema {
        let mut values = (0..adam.params.len())
            .map(|_| Tensor::new())
            .collect::<Vec<_>>();
        let flats: Vec<Tensor> = adam
            .groups
            .iter()
            .map(|g| tch::no_grad(|| g.param.detach().copy()))
            .collect();
        for (g, flat) in adam.groups.iter().zip(&flats) {
            for (k, v) in g.members.iter().zip(views(&adam.params, &g.members, flat)) {
                values[*k] = v;
            }
        }
        Ema {
            rate,
            warmup,
            flats,
            values,
        }
    }

    /// The rate of the update after optimiser step `step` (1 for the first).
    pub fn rate_at(&self, step: u64) -> f64 {
        if self.warmup {
            self.rate.min((1 + step) as f64 / (10 + step) as f64)
        } else {
            self.rate
        }
    }

    pub fn update(&mut self, adam: &Adam, step: u64) {
        let rate = self.rate_at(step);
        tch::no_grad(|| {
            for (e, g) in self.flats.iter_mut().zip(&adam.groups) {
                let _ = e.lerp_(&g.param, 1.0 - rate);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn packed_views_alias_the_parameters() {
        let a = Tensor::ones([2, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let b = Tensor::zeros([4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let params = vec![
            Param {
                name: "a".into(),
                tensor: a.shallow_clone(),
                lr: 0.1,
            },
            Param {
                name: "b".into(),
                tensor: b.shallow_clone(),
                lr: 0.01,
            },
        ];
        let mut adam = Adam::new(params, 0.9, 0.999, 1e-8);
        let mut ema = Ema::new(&adam, 0.5, false);
        let grads = vec![
            Tensor::ones([2, 3], (Kind::Float, Device::Cpu)),
            Tensor::new(),
        ];
        adam.step(1, &grads);
        ema.update(&adam, 1);
        // First Adam step moves each coordinate by lr·sign(g); an undefined gradient moves nothing.
        let av = f64::try_from(a.mean(Kind::Float)).unwrap();
        assert!((av - 0.9).abs() < 1e-5, "{av}");
        assert!(bool::try_from(b.eq(0.0).all()).unwrap());
        let ev = f64::try_from(ema.values[0].mean(Kind::Float)).unwrap();
        assert!((ev - 0.95).abs() < 1e-5, "{ev}");
        assert_eq!(adam.numel(), 10);
    }

    /// What share of the step-0 weights an EMA still holds after `steps` updates.
    fn start_share(warmup: bool, rate: f64, steps: u64) -> f64 {
        let a = Tensor::zeros([1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let adam = Adam::new(
            vec![Param {
                name: "a".into(),
                tensor: a.shallow_clone(),
                lr: 0.1,
            }],
            0.9,
            0.999,
            1e-8,
        );
        let ema = Ema::new(&adam, rate, warmup);
        (1..=steps).map(|n| ema.rate_at(n)).product()
    }

    #[test]
    fn warmup_keeps_a_short_runs_ema_off_its_start() {
        // The GPU pre-training that produced noise: rate 0.9995, 3,500 steps.
        assert!((start_share(false, 0.9995, 3500) - 0.9995f64.powi(3500)).abs() < 1e-9);
        assert!(start_share(false, 0.9995, 3500) > 0.17);
        assert!(start_share(true, 0.9995, 3500) < 1e-6);
        // Long runs reach the asked-for rate: warm-up only caps it early.
        let ema_rate = |n| {
            let a = Tensor::zeros([1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
            let adam = Adam::new(
                vec![Param {
                    name: "a".into(),
                    tensor: a,
                    lr: 0.1,
                }],
                0.9,
                0.999,
                1e-8,
            );
            Ema::new(&adam, 0.999, true).rate_at(n)
        };
        assert_eq!(ema_rate(100_000), 0.999);
        assert!((ema_rate(1) - 2.0 / 11.0).abs() < 1e-12);
    }
}
