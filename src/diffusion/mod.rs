//! Gaussian diffusion as in the official `gaussian_diffusion.py` / `respace.py`.
//!
//! Schedule arrays are computed in f64 and cast to f32 per lookup, as the official
//! `_extract_into_tensor` does. The diffusion is always "spaced": without respacing every step
//! is kept and the map is the identity.

pub mod respace;
pub mod sample;

use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeanType {
    Epsilon,
    StartX,
    PreviousX,
    /// v = √ᾱ·ε − √(1−ᾱ)·x0 (diffusers' `v_prediction`).
    Velocity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarType {
    Learned,
    LearnedRange,
    FixedSmall,
    FixedLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossType {
    Mse,
    RescaledMse,
    Kl,
    RescaledKl,
}

/// A schedule array: f64 values on the host and an f64 tensor on the compute device.
struct Arr {
    host: Vec<f64>,
    dev: Tensor,
}

impl Arr {
    fn new(v: Vec<f64>, device: Device) -> Arr {
        let dev = Tensor::from_slice(&v).to_device(device);
        Arr { host: v, dev }
    }
}

/// The schedule arrays [`Diffusion::host`] gives, named as the official code names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Array {
    Betas,
    AlphasCumprod,
    PosteriorLogVarianceClipped,
    PosteriorMeanCoef1,
    PosteriorMeanCoef2,
    P2Weight,
}

pub struct Diffusion {
    pub num_timesteps: usize,
    pub original_num_steps: usize,
    pub mean_type: MeanType,
    pub var_type: VarType,
    pub loss_type: LossType,
    pub rescale_timesteps: bool,
    pub p2_gamma: f64,
    pub p2_k: f64,
    timestep_map: Tensor,
    betas: Arr,
    log_betas: Arr,
    alphas_cumprod: Arr,
    alphas_cumprod_prev: Arr,
    sqrt_alphas_cumprod: Arr,
    sqrt_one_minus_alphas_cumprod: Arr,
    sqrt_recip_alphas_cumprod: Arr,
    sqrt_recipm1_alphas_cumprod: Arr,
    posterior_variance: Arr,
    posterior_log_variance_clipped: Arr,
    posterior_mean_coef1: Arr,
    posterior_mean_coef2: Arr,
    recip_coef1: Arr,
    coef2_over_coef1: Arr,
    fixed_large_variance: Arr,
    fixed_large_log_variance: Arr,
    p2_weight: Arr,
    /// Whose conventions sampling follows.
    rules: Rules,
    device: Device,
}

/// Whose sampling conventions a diffusion follows: the official code's, or those of diffusers'
/// DDPM/DDIM schedulers, which step differently in a few places (each named where it is used).
pub enum Rules {
    Official,
    Diffusers(DiffusersRules),
}

/// Where diffusers' DDPM/DDIM schedulers step differently from the official code.
pub struct DiffusersRules {
    /// `clip_sample_range` when `clip_sample` is on (the official code always clips to ±1).
    clip: Option<f64>,
    /// DDIM's ᾱ at `t − T/n` (the final ᾱ below 0) for each kept step.
    ddim_alphas_cumprod_prev: Arr,
    /// ln of the posterior variance clamped to 1e-20 (it is 0) and of β at the lowest kept
    /// timestep, i.e. the last sampling step: `DDPMScheduler` uses these where the official code
    /// uses the next step's variance. They only matter when that step adds noise, i.e. when its
    /// timestep is above 0 (`steps_offset`, trailing spacing).
    first_log_variance: (f64, f64),
}

impl DiffusersRules {
    /// `clip`: the scheduler's clip range (None: no clipping); `ddim_alphas_cumprod_prev`: ᾱ at
    /// each kept step's DDIM predecessor; `first_log_variance`: see the field.
    pub fn new(
        clip: Option<f64>,
        ddim_alphas_cumprod_prev: Vec<f64>,
        first_log_variance: (f64, f64),
        device: Device,
    ) -> DiffusersRules {
        DiffusersRules {
            clip,
            ddim_alphas_cumprod_prev: Arr::new(ddim_alphas_cumprod_prev, device),
            first_log_variance,
        }
    }
}

/// Output of `p_mean_variance`.
pub struct MeanVar {
    pub mean: Tensor,
    pub variance: Tensor,
    pub log_variance: Tensor,
    pub pred_xstart: Tensor,
}

/// Per-example training loss terms, each `[N]`.
pub struct Losses {
    pub loss: Tensor,
    pub mse: Tensor,
    pub vb: Tensor,
}

impl Losses {
    /// The values without the graph that computed them (which a microbatch lets go at once).
    pub fn detach(&self) -> Losses {
        Losses {
            loss: self.loss.detach(),
            mse: self.mse.detach(),
            vb: self.vb.detach(),
        }
    }

    /// The terms of `parts` (e.g. microbatches) one after another.
    pub fn cat(parts: &[Losses]) -> Losses {
        let cat =
            |f: fn(&Losses) -> &Tensor| Tensor::cat(&parts.iter().map(f).collect::<Vec<_>>(), 0);
        Losses {
            loss: cat(|p| &p.loss),
            mse: cat(|p| &p.mse),
            vb: cat(|p| &p.vb),
        }
    }
}

/// What `training_losses` computed on the way to the loss.
pub struct TrainingLosses {
    pub x_t: Tensor,
    pub model_output: Tensor,
    pub losses: Losses,
}

pub fn mean_flat(x: &Tensor) -> Tensor {
    let dims: Vec<i64> = (1..x.dim() as i64).collect();
    x.mean_dim(dims.as_slice(), false, Kind::Float)
}

/// KL(N(m1, e^lv1) ‖ N(m2, e^lv2)), elementwise, in nats.
pub fn normal_kl(m1: &Tensor, lv1: &Tensor, m2: &Tensor, lv2: &Tensor) -> Tensor {
    ((lv2 - lv1) - 1.0 + (lv1 - lv2).exp() + (m1 - m2).square() * (-lv2).exp()) * 0.5
}

fn approx_standard_normal_cdf(x: &Tensor) -> Tensor {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    (((x + x.pow_tensor_scalar(3) * 0.044715) * c).tanh() + 1.0) * 0.5
}

/// Log-likelihood (nats) of images discretised to 256 bins in [-1, 1].
pub fn discretized_gaussian_log_likelihood(
    x: &Tensor,
    means: &Tensor,
    log_scales: &Tensor,
) -> Tensor {
    let centered = x - means;
    let inv_stdv = (-log_scales).exp();
    let cdf_plus = approx_standard_normal_cdf(&(&inv_stdv * (&centered + 1.0 / 255.0)));
    let cdf_min = approx_standard_normal_cdf(&(&inv_stdv * (&centered - 1.0 / 255.0)));
    let log_cdf_plus = cdf_plus.clamp_min(1e-12).log();
    let log_one_minus_cdf_min = (-&cdf_min + 1.0).clamp_min(1e-12).log();
    let log_cdf_delta = (&cdf_plus - &cdf_min).clamp_min(1e-12).log();
    let inner = log_one_minus_cdf_min.where_self(&x.gt(0.999), &log_cdf_delta);
    log_cdf_plus.where_self(&x.lt(-0.999), &inner)
}

impl Diffusion {
    /// The same process, sampled by `rules`' conventions.
    pub fn with_rules(mut self, rules: Rules) -> Diffusion {
        self.rules = rules;
        self
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        betas: Vec<f64>,
        timestep_map: Vec<i64>,
        original_num_steps: usize,
        mean_type: MeanType,
        var_type: VarType,
        loss_type: LossType,
        rescale_timesteps: bool,
        (p2_gamma, p2_k): (f64, f64),
        device: Device,
    ) -> Diffusion {
        let n = betas.len();
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let mut ac = Vec::with_capacity(n);
        let mut acc = 1.0;
        for a in &alphas {
            acc *= a;
            ac.push(acc);
        }
        let mut ac_prev = vec![1.0];
        ac_prev.extend_from_slice(&ac[..n - 1]);
        let map = |f: &dyn Fn(usize) -> f64| (0..n).map(f).collect::<Vec<f64>>();
        let post_var = map(&|i| betas[i] * (1.0 - ac_prev[i]) / (1.0 - ac[i]));
        let post_logvar_clipped = map(&|i| {
            if i == 0 {
                post_var.get(1).copied().unwrap_or(post_var[0]).ln()
            } else {
                post_var[i].ln()
            }
        });
        let coef1 = map(&|i| betas[i] * ac_prev[i].sqrt() / (1.0 - ac[i]));
        let coef2 = map(&|i| (1.0 - ac_prev[i]) * alphas[i].sqrt() / (1.0 - ac[i]));
        let fixed_large = map(&|i| {
            if i == 0 {
                post_var.get(1).copied().unwrap_or(betas[0])
            } else {
                betas[i]
            }
        });
        let a = |v: Vec<f64>| Arr::new(v, device);
        Diffusion {
            num_timesteps: n,
            original_num_steps,
            mean_type,
            var_type,
            loss_type,
            rescale_timesteps,
            p2_gamma,
            p2_k,
            timestep_map: Tensor::from_slice(&timestep_map).to_device(device),
            log_betas: a(map(&|i| betas[i].ln())),
            alphas_cumprod: a(ac.clone()),
            sqrt_alphas_cumprod: a(map(&|i| ac[i].sqrt())),
            sqrt_one_minus_alphas_cumprod: a(map(&|i| (1.0 - ac[i]).sqrt())),
            sqrt_recip_alphas_cumprod: a(map(&|i| (1.0 / ac[i]).sqrt())),
            sqrt_recipm1_alphas_cumprod: a(map(&|i| (1.0 / ac[i] - 1.0).sqrt())),
            posterior_variance: a(post_var.clone()),
            posterior_log_variance_clipped: a(post_logvar_clipped),
            recip_coef1: a(map(&|i| 1.0 / coef1[i])),
            coef2_over_coef1: a(map(&|i| coef2[i] / coef1[i])),
            posterior_mean_coef1: a(coef1),
            posterior_mean_coef2: a(coef2),
            fixed_large_log_variance: a(fixed_large.iter().map(|v| v.ln()).collect()),
            fixed_large_variance: a(fixed_large),
            p2_weight: a(map(&|i| {
                let snr = 1.0 / (1.0 - ac[i]) - 1.0;
                1.0 / (p2_k + snr).powf(p2_gamma)
            })),
            alphas_cumprod_prev: a(ac_prev),
            betas: a(betas),
            rules: Rules::Official,
            device,
        }
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// f64 host values of the main arrays, for tests and reports.
    pub fn host(&self, array: Array) -> &[f64] {
        match array {
            Array::Betas => &self.betas.host,
            Array::AlphasCumprod => &self.alphas_cumprod.host,
            Array::PosteriorLogVarianceClipped => &self.posterior_log_variance_clipped.host,
            Array::PosteriorMeanCoef1 => &self.posterior_mean_coef1.host,
            Array::PosteriorMeanCoef2 => &self.posterior_mean_coef2.host,
            Array::P2Weight => &self.p2_weight.host,
        }
    }

    /// `arr[t]` cast to f32, shaped `[N, 1, 1, 1]` (broadcasts against images).
    fn extract(&self, arr: &Arr, t: &Tensor) -> Tensor {
        arr.dev
            .index_select(0, t)
            .to_kind(Kind::Float)
            .reshape([-1, 1, 1, 1])
    }

    /// The timesteps the network sees for diffusion steps `t` of this (respaced) process.
    pub fn model_timesteps(&self, t: &Tensor) -> Tensor {
        let mapped = self.timestep_map.index_select(0, t);
        if self.rescale_timesteps {
            mapped.to_kind(Kind::Float) * (1000.0 / self.original_num_steps as f64)
        } else {
            mapped.to_kind(Kind::Float)
        }
    }

    pub fn q_sample(&self, x0: &Tensor, t: &Tensor, noise: &Tensor) -> Tensor {
        self.extract(&self.sqrt_alphas_cumprod, t) * x0
            + self.extract(&self.sqrt_one_minus_alphas_cumprod, t) * noise
    }

    /// Mean and clipped log-variance of q(x_{t-1} | x_t, x_0).
    pub fn q_posterior(&self, x0: &Tensor, x_t: &Tensor, t: &Tensor) -> (Tensor, Tensor) {
        let mean = self.extract(&self.posterior_mean_coef1, t) * x0
            + self.extract(&self.posterior_mean_coef2, t) * x_t;
        let logvar = self
            .extract(&self.posterior_log_variance_clipped, t)
            .expand_as(x_t);
        (mean, logvar)
    }

    pub fn predict_xstart_from_eps(&self, x_t: &Tensor, t: &Tensor, eps: &Tensor) -> Tensor {
        self.extract(&self.sqrt_recip_alphas_cumprod, t) * x_t
            - self.extract(&self.sqrt_recipm1_alphas_cumprod, t) * eps
    }

    /// x0 as the network's prediction says (before any clipping).
    pub fn predict_xstart(&self, out: &Tensor, x_t: &Tensor, t: &Tensor) -> Tensor {
        match self.mean_type {
            MeanType::StartX => out.shallow_clone(),
            MeanType::Velocity => {
                self.extract(&self.sqrt_alphas_cumprod, t) * x_t
                    - self.extract(&self.sqrt_one_minus_alphas_cumprod, t) * out
            }
            _ => self.predict_xstart_from_eps(x_t, t, out),
        }
    }

    /// ε as the network's prediction says, unclipped: diffusers' DDIM direction.
    fn predict_eps(&self, out: &Tensor, x_t: &Tensor, t: &Tensor) -> Tensor {
        match self.mean_type {
            MeanType::Epsilon => out.shallow_clone(),
            MeanType::Velocity => {
                self.extract(&self.sqrt_alphas_cumprod, t) * out
                    + self.extract(&self.sqrt_one_minus_alphas_cumprod, t) * x_t
            }
            _ => {
                (x_t - self.extract(&self.sqrt_alphas_cumprod, t)
                    * self.predict_xstart(out, x_t, t))
                    / self.extract(&self.sqrt_one_minus_alphas_cumprod, t)
            }
        }
    }

    pub fn predict_eps_from_xstart(&self, x_t: &Tensor, t: &Tensor, x0: &Tensor) -> Tensor {
        (self.extract(&self.sqrt_recip_alphas_cumprod, t) * x_t - x0)
            / self.extract(&self.sqrt_recipm1_alphas_cumprod, t)
    }

    /// p(x_{t-1} | x_t) from a model output `[N, 3 or 6, H, W]`.
    pub fn p_mean_variance(
        &self,
        model_output: &Tensor,
        x_t: &Tensor,
        t: &Tensor,
        clip_denoised: bool,
    ) -> MeanVar {
        let c = x_t.size()[1];
        let (out, var_values) = match self.var_type {
            VarType::Learned | VarType::LearnedRange => (
                model_output.narrow(1, 0, c),
                Some(model_output.narrow(1, c, c)),
            ),
            _ => (model_output.shallow_clone(), None),
        };
        let (log_variance, variance) = match self.var_type {
            VarType::Learned => {
                let lv = var_values.unwrap();
                (lv.shallow_clone(), lv.exp())
            }
            VarType::LearnedRange => {
                let v = var_values.unwrap();
                let min_log = self.extract(&self.posterior_log_variance_clipped, t);
                let max_log = self.extract(&self.log_betas, t);
                let frac = (v + 1.0) / 2.0;
                let lv = &frac * max_log + (-&frac + 1.0) * min_log;
                let var = lv.exp();
                (lv, var)
            }
            VarType::FixedLarge => (
                self.extract(&self.fixed_large_log_variance, t)
                    .expand_as(x_t),
                self.extract(&self.fixed_large_variance, t).expand_as(x_t),
            ),
            VarType::FixedSmall => (
                self.extract(&self.posterior_log_variance_clipped, t)
                    .expand_as(x_t),
                self.extract(&self.posterior_variance, t).expand_as(x_t),
            ),
        };
        let range = match &self.rules {
            Rules::Diffusers(r) => r.clip,
            Rules::Official => Some(1.0),
        };
        let clip = |x: Tensor| match range {
            Some(r) if clip_denoised => x.clamp(-r, r),
            _ => x,
        };
        let (pred_xstart, mean) = match self.mean_type {
            MeanType::PreviousX => {
                let x0 = clip(
                    self.extract(&self.recip_coef1, t) * &out
                        - self.extract(&self.coef2_over_coef1, t) * x_t,
                );
                (x0, out)
            }
            MeanType::StartX | MeanType::Epsilon | MeanType::Velocity => {
                let x0 = clip(self.predict_xstart(&out, x_t, t));
                let (mean, _) = self.q_posterior(&x0, x_t, t);
                (x0, mean)
            }
        };
        MeanVar {
            mean,
            variance,
            log_variance,
            pred_xstart,
        }
    }

    /// Variational bound term in bits/dim for each example (decoder NLL at t = 0).
    pub fn vb_terms_bpd(
        &self,
        model_output: &Tensor,
        x0: &Tensor,
        x_t: &Tensor,
        t: &Tensor,
        clip_denoised: bool,
    ) -> (Tensor, MeanVar) {
        let (true_mean, true_logvar) = self.q_posterior(x0, x_t, t);
        let out = self.p_mean_variance(model_output, x_t, t, clip_denoised);
        let kl = mean_flat(&normal_kl(
            &true_mean,
            &true_logvar,
            &out.mean,
            &out.log_variance,
        )) / std::f64::consts::LN_2;
        let nll = -discretized_gaussian_log_likelihood(x0, &out.mean, &(&out.log_variance * 0.5));
        let nll = mean_flat(&nll) / std::f64::consts::LN_2;
        (nll.where_self(&t.eq(0), &kl), out)
    }

    /// Hybrid (or plain) training loss terms for a model output at `x_t = q_sample(x0, t, noise)`.
    pub fn losses_from_output(
        &self,
        model_output: &Tensor,
        x0: &Tensor,
        x_t: &Tensor,
        t: &Tensor,
        noise: &Tensor,
    ) -> Losses {
        let c = x0.size()[1];
        match self.loss_type {
            LossType::Kl | LossType::RescaledKl => {
                let (vb, _) = self.vb_terms_bpd(model_output, x0, x_t, t, false);
                let vb = if self.loss_type == LossType::RescaledKl {
                    vb * self.num_timesteps as f64
                } else {
                    vb
                };
                Losses {
                    loss: vb.shallow_clone(),
                    mse: vb.zeros_like(),
                    vb,
                }
            }
            LossType::Mse | LossType::RescaledMse => {
                let learned = matches!(self.var_type, VarType::Learned | VarType::LearnedRange);
                let pred = model_output.narrow(1, 0, c);
                let vb = if learned {
                    // The vb term trains only the variance: the mean prediction is detached.
                    let frozen = Tensor::cat(&[pred.detach(), model_output.narrow(1, c, c)], 1);
                    let (vb, _) = self.vb_terms_bpd(&frozen, x0, x_t, t, false);
                    if self.loss_type == LossType::RescaledMse {
                        vb * (self.num_timesteps as f64 / 1000.0)
                    } else {
                        vb
                    }
                } else {
                    Tensor::zeros([x0.size()[0]], (Kind::Float, x0.device()))
                };
                let target = match self.mean_type {
                    MeanType::Epsilon => noise.shallow_clone(),
                    MeanType::StartX => x0.shallow_clone(),
                    MeanType::PreviousX => self.q_posterior(x0, x_t, t).0,
                    MeanType::Velocity => {
                        self.extract(&self.sqrt_alphas_cumprod, t) * noise
                            - self.extract(&self.sqrt_one_minus_alphas_cumprod, t) * x0
                    }
                };
                let sq = (target - &pred).square();
                let sq = if self.p2_gamma != 0.0 {
                    self.extract(&self.p2_weight, t) * sq
                } else {
                    sq
                };
                let mse = mean_flat(&sq);
                Losses {
                    loss: &mse + &vb,
                    mse,
                    vb,
                }
            }
        }
    }

    /// `gaussian_diffusion.py`'s `training_losses`: noises `x0` to `x_t = q_sample(x0, t, noise)`,
    /// runs `model(x_t, model_timesteps(t))` and returns its output with the loss terms. The one
    /// path from pixels to loss: the trainer, the held-out loss and `debug step` all call it.
    pub fn training_losses(
        &self,
        model: impl Fn(&Tensor, &Tensor) -> Tensor,
        x0: &Tensor,
        t: &Tensor,
        noise: &Tensor,
    ) -> TrainingLosses {
        let x_t = self.q_sample(x0, t, noise);
        let model_output = model(&x_t, &self.model_timesteps(t));
        let losses = self.losses_from_output(&model_output, x0, &x_t, t, noise);
        TrainingLosses {
            x_t,
            model_output,
            losses,
        }
    }

    /// KL(q(x_T | x_0) ‖ N(0, I)) in bits/dim per example.
    pub fn prior_bpd(&self, x0: &Tensor) -> Tensor {
        let n = x0.size()[0];
        let t = Tensor::full(
            [n],
            self.num_timesteps as i64 - 1,
            (Kind::Int64, x0.device()),
        );
        let mean = self.extract(&self.sqrt_alphas_cumprod, &t) * x0;
        let logvar = (-self.extract(&self.alphas_cumprod, &t) + 1.0)
            .log()
            .expand_as(x0);
        let zeros = x0.zeros_like();
        mean_flat(&normal_kl(&mean, &logvar, &zeros, &zeros)) / std::f64::consts::LN_2
    }

    /// DDIM coefficient arrays at `t` for sampling.
    fn ddim_alphas(&self, t: &Tensor) -> (Tensor, Tensor) {
        let prev = match &self.rules {
            Rules::Diffusers(r) => &r.ddim_alphas_cumprod_prev,
            Rules::Official => &self.alphas_cumprod_prev,
        };
        (self.extract(&self.alphas_cumprod, t), self.extract(prev, t))
    }

    /// The log-variance an ancestral step samples with: `p_mean_variance`'s, except at the first
    /// kept step of a diffusers schedule (see `DiffusersRules::first_log_variance`).
    fn sampling_log_variance(&self, mv: &MeanVar, model_output: &Tensor, t: &Tensor) -> Tensor {
        let Rules::Diffusers(r) = &self.rules else {
            return mv.log_variance.shallow_clone();
        };
        let (small, large) = r.first_log_variance;
        let first = match self.var_type {
            VarType::FixedLarge => mv.log_variance.full_like(large),
            VarType::LearnedRange => {
                let c = mv.mean.size()[1];
                let frac = (model_output.narrow(1, c, c) + 1.0) / 2.0;
                &frac * large + (-&frac + 1.0) * small
            }
            _ => mv.log_variance.full_like(small),
        };
        first.where_self(&t.eq(0).reshape([-1, 1, 1, 1]), &mv.log_variance)
    }

    /// 1 where an ancestral step adds noise: every step but the last in the official code;
    /// in diffusers' `DDPMScheduler.step`, wherever the model timestep is above 0.
    fn noise_mask(&self, t: &Tensor) -> Tensor {
        let on = match &self.rules {
            Rules::Diffusers(_) => self.timestep_map.index_select(0, t).gt(0),
            Rules::Official => t.ne(0),
        };
        on.to_kind(Kind::Float).reshape([-1, 1, 1, 1])
    }

    /// ε for a DDIM step: re-derived from the clipped x0 in the official code, the network's own
    /// (unclipped) prediction in diffusers' (`use_clipped_model_output` off).
    fn ddim_eps(
        &self,
        model_output: &Tensor,
        x: &Tensor,
        t: &Tensor,
        clipped_xstart: &Tensor,
    ) -> Tensor {
        match &self.rules {
            Rules::Diffusers(_) => {
                let c = x.size()[1];
                self.predict_eps(&model_output.narrow(1, 0, c), x, t)
            }
            Rules::Official => self.predict_eps_from_xstart(x, t, clipped_xstart),
        }
    }

    /// Whether DDIM adds its η-noise at step `t`: not at the last official step; always in
    /// diffusers (where σ is 0 there unless `set_alpha_to_one` is off).
    fn ddim_noise_mask(&self, t: &Tensor) -> Tensor {
        match &self.rules {
            Rules::Diffusers(_) => t.ones_like().to_kind(Kind::Float).reshape([-1, 1, 1, 1]),
            Rules::Official => t.ne(0).to_kind(Kind::Float).reshape([-1, 1, 1, 1]),
        }
    }
}
