//! Samplers, independent of the model: anything mapping `(x_t, model_t)` to an output works.

use super::Diffusion;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    /// Ancestral sampling (`p_sample_loop`).
    Ancestral,
    /// DDIM with stochasticity η (`ddim_sample_loop`).
    Ddim { eta: f64 },
}

impl Sampler {
    /// As reports name it.
    pub fn name(&self) -> &'static str {
        match self {
            Sampler::Ancestral => "ancestral",
            Sampler::Ddim { .. } => "DDIM",
        }
    }

    /// DDIM's η must lie in [0, 1]: above 1 the update takes the square root of a negative
    /// number, and NaN poisons every image.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Sampler::Ddim { eta } = *self {
            if !(0.0..=1.0).contains(&eta) {
                anyhow::bail!("DDIM eta (η) must be between 0 and 1, got {eta}");
            }
        }
        Ok(())
    }
}

impl Diffusion {
    /// One ancestral step x_t → x_{t-1}.
    pub fn p_sample(
        &self,
        model_output: &Tensor,
        x: &Tensor,
        t: &Tensor,
        clip_denoised: bool,
    ) -> Tensor {
        self.p_sample_with(model_output, x, t, clip_denoised, &x.randn_like())
    }

    /// [`Diffusion::p_sample`] with the step's noise given.
    pub fn p_sample_with(
        &self,
        model_output: &Tensor,
        x: &Tensor,
        t: &Tensor,
        clip_denoised: bool,
        noise: &Tensor,
    ) -> Tensor {
        let out = self.p_mean_variance(model_output, x, t, clip_denoised);
        let log_variance = self.sampling_log_variance(&out, model_output, t);
        out.mean + self.noise_mask(t) * (log_variance * 0.5).exp() * noise
    }

    /// One DDIM step x_t → x_{t-1}; ε is re-derived from the (clipped) x0 prediction (the
    /// official rule) or is the network's own (diffusers').
    pub fn ddim_sample(
        &self,
        model_output: &Tensor,
        x: &Tensor,
        t: &Tensor,
        clip_denoised: bool,
        eta: f64,
    ) -> Tensor {
        self.ddim_sample_with(model_output, x, t, clip_denoised, eta, &x.randn_like())
    }

    /// [`Diffusion::ddim_sample`] with the step's noise given.
    pub fn ddim_sample_with(
        &self,
        model_output: &Tensor,
        x: &Tensor,
        t: &Tensor,
        clip_denoised: bool,
        eta: f64,
        noise: &Tensor,
    ) -> Tensor {
        let out = self.p_mean_variance(model_output, x, t, clip_denoised);
        let eps = self.ddim_eps(model_output, x, t, &out.pred_xstart);
        let (ab, ab_prev) = self.ddim_alphas(t);
        let sigma =
            ((-&ab_prev + 1.0) / (-&ab + 1.0)).sqrt() * (-(&ab / &ab_prev) + 1.0).sqrt() * eta;
        let mean =
            &out.pred_xstart * ab_prev.sqrt() + (-&ab_prev + 1.0 - sigma.square()).sqrt() * eps;
        mean + self.ddim_noise_mask(t) * sigma * noise
    }

    /// Runs the full reverse process from `noise` (x_T), calling `model(x_t, model_t)` once per
    /// step and `on_step` after each. Returns x_0 in f32.
    pub fn sample_loop(
        &self,
        model: &mut dyn FnMut(&Tensor, &Tensor) -> Tensor,
        noise: Tensor,
        sampler: Sampler,
        clip_denoised: bool,
        on_step: &mut dyn FnMut(),
    ) -> Tensor {
        let n = noise.size()[0];
        let mut x = noise;
        for i in (0..self.num_timesteps as i64).rev() {
            let t = Tensor::full([n], i, (Kind::Int64, x.device()));
            x = tch::no_grad(|| {
                let out = model(&x, &self.model_timesteps(&t));
                match sampler {
                    Sampler::Ancestral => self.p_sample(&out, &x, &t, clip_denoised),
                    Sampler::Ddim { eta } => self.ddim_sample(&out, &x, &t, clip_denoised, eta),
                }
            });
            on_step();
        }
        x
    }
}

/// `[N, 3, H, W]` in [-1, 1] → uint8 `[N, H, W, 3]`, as the official sampler script writes.
pub fn to_uint8_nhwc(x: &Tensor) -> Tensor {
    ((x + 1.0) * 127.5)
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
        .permute([0, 2, 3, 1])
        .contiguous()
}

/// The same with rounding, as diffusers' pipelines write images (`(x/2 + 0.5).clamp(0, 1)`,
/// then `(· 255).round()`).
pub fn to_uint8_nhwc_rounded(x: &Tensor) -> Tensor {
    ((x / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0)
        .round()
        .to_kind(Kind::Uint8)
        .permute([0, 2, 3, 1])
        .contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::ModelConfig;
    use tch::Device;

    /// With a model that predicts the true noise exactly, DDIM (η = 0) recovers x0 from x_T.
    #[test]
    fn ddim_inverts_exact_eps() {
        let cfg = ModelConfig {
            diffusion_steps: 1000,
            learn_sigma: false,
            ..Default::default()
        };
        let d = Diffusion::from_config(
            &cfg,
            Some(&crate::diffusion::respace::Respacing::Ddim(50)),
            Device::Cpu,
        )
        .unwrap();
        tch::manual_seed(0);
        let x0 = Tensor::rand([2, 3, 4, 4], (Kind::Float, Device::Cpu)) * 1.6 - 0.8;
        let eps = Tensor::randn([2, 3, 4, 4], (Kind::Float, Device::Cpu));
        let t_last = Tensor::full([2], 49i64, (Kind::Int64, Device::Cpu));
        let x_t = d.q_sample(&x0, &t_last, &eps);
        let mut model = |_x: &Tensor, _t: &Tensor| eps.shallow_clone();
        let out = d.sample_loop(
            &mut model,
            x_t,
            Sampler::Ddim { eta: 0.0 },
            true,
            &mut || {},
        );
        let err = f64::try_from((out - &x0).abs().max()).unwrap();
        assert!(err < 1e-3, "max error {err}");
    }
}
