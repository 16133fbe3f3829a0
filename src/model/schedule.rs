//! The diffusion a model config implies: its schedule and loss flags checked, the sampler
//! respacings that fit it, and the `Diffusion` built from it (official flags, or a diffusers
//! folder's scheduler).

use super::config::{check_range, Family, ModelConfig};
use crate::diffusion::respace::{self, Respacing};
use crate::diffusion::{Diffusion, LossType, MeanType, VarType};
use anyhow::{bail, Context, Result};
use tch::Device;

impl ModelConfig {
    /// Checks the diffusion flags: `diffusion_steps` in 2..=100000, a known `noise_schedule`
    /// whose betas all lie in (0, 1) (the linear schedule needs more than 20 steps), the P2
    /// weights and `timestep_respacing`.
    pub fn validate_diffusion(&self) -> Result<()> {
        if !self.family.is_adm() {
            self.validate_p2()?;
            return self
                .validate_respacing(&self.timestep_respacing)
                .context("model config: invalid timestep_respacing");
        }
        let max = crate::diffusion::respace::MAX_DIFFUSION_STEPS as i64;
        check_range("diffusion_steps", self.diffusion_steps, 2, max)?;
        if !["linear", "cosine"].contains(&self.noise_schedule.as_str()) {
            bail!(
                "model config: unknown noise_schedule {:?} (linear or cosine)",
                self.noise_schedule
            );
        }
        let steps = self.diffusion_steps as usize;
        let betas = crate::diffusion::respace::beta_schedule(&self.noise_schedule, steps)?;
        if let Some(i) = betas
            .iter()
            .position(|b| !(b.is_finite() && *b > 0.0 && *b < 1.0))
        {
            bail!(
                "model config: noise_schedule {} with diffusion_steps {steps} gives beta[{i}] = {} outside (0, 1); use more diffusion_steps",
                self.noise_schedule,
                betas[i]
            );
        }
        self.validate_p2()?;
        respace::validate(&self.timestep_respacing, steps)
            .context("model config: invalid timestep_respacing")?;
        Ok(())
    }

    fn validate_p2(&self) -> Result<()> {
        // P2 weighting uses γ of 0.5 to 2; at large γ the weights (k + SNR)^-γ underflow and the
        // MSE term silently vanishes.
        if !(0.0..=10.0).contains(&self.p2_gamma) {
            bail!(
                "model config: p2_gamma must lie in [0, 10] (P2 uses 0.5 to 2), got {}",
                crate::util::fmt_num(self.p2_gamma)
            );
        }
        if !self.p2_k.is_finite() || self.p2_k < 0.0 || (self.p2_k == 0.0 && self.p2_gamma > 0.0) {
            bail!(
                "model config: p2_k must be a finite number > 0, got {}",
                self.p2_k
            );
        }
        Ok(())
    }

    /// Checks a sampler respacing (`--respacing`, `--eval-respacing`, …) against this model's
    /// schedule: the official forms for official models, one step count for diffusers models.
    pub fn validate_respacing(&self, respacing: &Respacing) -> Result<()> {
        if let Family::Diffusers(files) = &self.family {
            return files
                .scheduler_config()?
                .respaced_timesteps(respacing)
                .map(|_| ());
        }
        respace::validate(respacing, self.diffusion_steps.max(0) as usize)
    }

    /// The respacing a model samples with when none is asked for: `None` (every step, the
    /// official sampler and `DDPMPipeline`), or `ddim50` for a diffusers model whose scheduler is
    /// a `DDIMScheduler` (`DDIMPipeline`'s default; fewer if the schedule is shorter).
    pub fn default_sampling(&self) -> Option<Respacing> {
        let sched = self.family.diffusers_files()?.scheduler_config().ok()?;
        (sched.class_name == "DDIMScheduler")
            .then(|| Respacing::Ddim(sched.num_train_timesteps.min(50)))
    }

    /// The sampler respacing to use where the user gave none and the command's default is
    /// `default`: the model's own default ([`ModelConfig::default_sampling`]) if it has one, else
    /// `default`; and when that does not fit the schedule, every step (`T`), or failing that
    /// (a diffusers `steps_offset` can push T steps past the schedule) the most steps that fit.
    /// The flag says whether it had to fall back (callers print a note).
    pub fn default_respacing(&self, default: &Respacing) -> (Respacing, bool) {
        let spec = self.default_sampling().unwrap_or_else(|| default.clone());
        if self.validate_respacing(&spec).is_ok() {
            return (spec, false);
        }
        let t = self.diffusion_steps;
        let fallback = [t, 1000, 500, 250, 100, 50, 25, 10, 5, 2, 1]
            .into_iter()
            .filter(|&n| n >= 1 && n <= t)
            .map(|n| Respacing::steps(n as usize))
            .find(|n| self.validate_respacing(n).is_ok())
            .unwrap_or_else(|| Respacing::steps(t.max(1) as usize));
        (fallback, true)
    }

    /// "T = 1000 cosine schedule", or the diffusers scheduler's, for reports.
    pub fn schedule_summary(&self) -> String {
        match self
            .family
            .diffusers_files()
            .and_then(|f| f.scheduler_config().ok())
        {
            Some(s) => {
                format!(
                    "the diffusers {}'s T = {} {} schedule ({} prediction)",
                    s.class_name,
                    s.num_train_timesteps,
                    s.schedule_name,
                    s.prediction.name()
                )
            }
            _ => format!(
                "T = {} {} schedule",
                self.diffusion_steps, self.noise_schedule
            ),
        }
    }

    /// For a diffusers model: fills the official summary fields from its files — T into
    /// `diffusion_steps`, the beta schedule's name into `noise_schedule`, the UNet's dropout into
    /// `dropout` — so a run's config.json and resume checks state what is used. Nothing reads them
    /// to build the model or the schedule.
    pub fn summarise_diffusers(&mut self) -> Result<()> {
        let Family::Diffusers(files) = &self.family else {
            return Ok(());
        };
        let sched = files.scheduler_config()?;
        self.diffusion_steps = sched.num_train_timesteps as i64;
        self.noise_schedule = sched.schedule_name;
        self.dropout = files.unet_config()?.dropout;
        Ok(())
    }
}

/// The diffusion of a model config (the process itself is in `crate::diffusion`, which knows
/// nothing of configs).
impl crate::diffusion::Diffusion {
    /// Builds the (respaced) diffusion of a model config. `respacing` overrides
    /// `timestep_respacing` when given.
    pub fn from_config(
        cfg: &ModelConfig,
        respacing: Option<&Respacing>,
        device: Device,
    ) -> Result<Diffusion> {
        // Steps, schedule and the config's own respacing; a bad one is an error, never a panic.
        cfg.validate_diffusion()?;
        if let Family::Diffusers(files) = &cfg.family {
            return Self::from_scheduler(
                &files.scheduler_config()?,
                respacing.unwrap_or(&cfg.timestep_respacing),
                (cfg.p2_gamma, cfg.p2_k),
                device,
            );
        }
        let t = cfg.diffusion_steps as usize;
        let base = respace::beta_schedule(&cfg.noise_schedule, t)?;
        let keep = respace::space_timesteps(t, respacing.unwrap_or(&cfg.timestep_respacing))?;
        if keep.is_empty() {
            anyhow::bail!("the respacing keeps no diffusion steps");
        }
        let (betas, map) = respace::respaced_betas(&base, &keep);
        let mean_type = if cfg.predict_xstart {
            MeanType::StartX
        } else {
            MeanType::Epsilon
        };
        let var_type = match (cfg.learn_sigma, cfg.sigma_small) {
            (true, _) => VarType::LearnedRange,
            (false, true) => VarType::FixedSmall,
            (false, false) => VarType::FixedLarge,
        };
        let loss_type = if cfg.use_kl {
            LossType::RescaledKl
        } else if cfg.rescale_learned_sigmas {
            LossType::RescaledMse
        } else {
            LossType::Mse
        };
        Ok(Diffusion::new(
            betas,
            map,
            t,
            mean_type,
            var_type,
            loss_type,
            cfg.rescale_timesteps,
            (cfg.p2_gamma, cfg.p2_k),
            device,
        ))
    }
}

#[cfg(test)]
mod diffusion_tests {
    //! The diffusion of official configs against improved-diffusion's values.
    use super::ModelConfig;
    use crate::diffusion::*;
    use tch::{Device, Tensor};

    fn close(a: f64, b: f64, rel: f64) {
        assert!((a - b).abs() <= rel * b.abs(), "{a} vs {b}");
    }

    fn cfg(schedule: &str, t: i64) -> ModelConfig {
        ModelConfig {
            noise_schedule: schedule.into(),
            diffusion_steps: t,
            learn_sigma: true,
            ..Default::default()
        }
    }

    #[test]
    fn reference_vectors() {
        let d = Diffusion::from_config(&cfg("cosine", 4000), None, Device::Cpu).unwrap();
        let ac = d.host(Array::AlphasCumprod);
        close(ac[0], 0.9999901341811863, 1e-13);
        close(ac[2000], 0.49345397967426397, 1e-12);
        close(ac[3999], 1.5179804688514517e-10, 1e-9);
        let plv = d.host(Array::PosteriorLogVarianceClipped);
        close(plv[0], -12.204537145969704, 1e-12);
        close(plv[1], -12.204537145969704, 1e-12);
        close(plv[2], -11.88720820365687, 1e-12);
        close(
            d.host(Array::PosteriorMeanCoef1)[1],
            0.5075765921997202,
            1e-12,
        );
        close(
            d.host(Array::PosteriorMeanCoef2)[1],
            0.492423407789176,
            1e-12,
        );

        let d = Diffusion::from_config(&cfg("linear", 1000), None, Device::Cpu).unwrap();
        let ac = d.host(Array::AlphasCumprod);
        close(ac[999], 4.035829765375676e-05, 1e-11);
        close(ac[500], 0.07779665836502389, 1e-12);
        let plv = d.host(Array::PosteriorLogVarianceClipped);
        close(plv[0], -9.81672513529567, 1e-12);
        close(plv[2], -9.36712149736664, 1e-12);

        let d = Diffusion::from_config(
            &cfg("linear", 1000),
            Some(&crate::diffusion::respace::Respacing::steps(250)),
            Device::Cpu,
        )
        .unwrap();
        let b = d.host(Array::Betas);
        close(b[0], 9.999999999998899e-05, 1e-10);
        close(b[1], 5.990655644756426e-04, 1e-11);
        close(b[2], 9.176029928172902e-04, 1e-11);
        close(b[248], 0.07721930545605926, 1e-11);
        close(b[249], 0.07751934499235003, 1e-11);
        close(
            d.host(Array::PosteriorLogVarianceClipped)[0],
            -9.364628159803084,
            1e-12,
        );
    }

    #[test]
    fn p2_weights() {
        let mut c = cfg("linear", 1000);
        c.p2_gamma = 1.0;
        c.p2_k = 1.0;
        let d = Diffusion::from_config(&c, None, Device::Cpu).unwrap();
        let w = d.host(Array::P2Weight);
        close(w[0], 9.9999999999989e-05, 1e-9);
        close(w[500], 0.9222033416349761, 1e-12);
        close(w[999], 0.9999596417023462, 1e-12);
        c.p2_gamma = 0.5;
        let d = Diffusion::from_config(&c, None, Device::Cpu).unwrap();
        let w = d.host(Array::P2Weight);
        close(w[0], 0.01, 1e-6);
        close(w[500], 0.96031, 1e-5);
        close(w[999], 0.99998, 1e-5);
    }

    #[test]
    fn model_timesteps_rescale() {
        let d = Diffusion::from_config(&cfg("cosine", 4000), None, Device::Cpu).unwrap();
        let t = Tensor::from_slice(&[0i64, 1, 3999]);
        let v: Vec<f32> = Vec::try_from(d.model_timesteps(&t)).unwrap();
        assert_eq!(v, vec![0.0, 0.25, 999.75]);
        let d = Diffusion::from_config(
            &cfg("cosine", 4000),
            Some(&crate::diffusion::respace::Respacing::Ddim(50)),
            Device::Cpu,
        )
        .unwrap();
        let v: Vec<f32> =
            Vec::try_from(d.model_timesteps(&Tensor::from_slice(&[1i64, 49]))).unwrap();
        assert_eq!(v, vec![20.0, 980.0]);
    }

    #[test]
    fn kl_and_discretized_likelihood() {
        let m = Tensor::from_slice(&[0.3f32]);
        let lv = Tensor::from_slice(&[-1.0f32]);
        let kl = f64::try_from(normal_kl(&m, &lv, &m, &lv)).unwrap();
        assert!(kl.abs() < 1e-7);
        // A very narrow Gaussian centred on a bin puts all its mass in that bin.
        let x = Tensor::from_slice(&[0.0f32, -1.0, 1.0]);
        let ll = discretized_gaussian_log_likelihood(&x, &x, &Tensor::from_slice(&[-10.0f32; 3]));
        let v: Vec<f32> = Vec::try_from(ll).unwrap();
        assert!(v.iter().all(|l| l.abs() < 1e-5), "{v:?}");
    }
}
