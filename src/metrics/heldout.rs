//! Held-out denoising loss and bits/dim on a fixed grid of timesteps with fixed noise, so
//! values are comparable across epochs and methods. Rising held-out loss signals overfitting.

use crate::diffusion::Diffusion;
use crate::model::Model;
use anyhow::{bail, Result};
use serde::Serialize;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Serialize)]
pub struct HeldOut {
    pub num_images: usize,
    pub num_timesteps: usize,
    /// Hybrid training loss (mse + rescaled vb), averaged over images and the timestep grid.
    pub loss: f64,
    pub mse: f64,
    /// Variational bound in bits/dim estimated from the grid: T·mean_k L_{t_k} + prior.
    pub bpd: f64,
}

/// Evaluates `model` (in eval mode) on `images` `[N, 3, H, W]` in [-1, 1].
pub fn heldout(model: &Model, diffusion: &Diffusion, images: &Tensor, num_t: usize, seed: u64, batch: usize) -> Result<HeldOut> {
    let n = images.size()[0];
    if n == 0 || num_t < 2 {
        bail!("held-out evaluation needs images and at least 2 timesteps");
    }
    let device = model.vs.device();
    let t_max = diffusion.num_timesteps as f64 - 1.0;
    let (mut loss, mut mse, mut vb_raw) = (0.0, 0.0, 0.0);
    tch::no_grad(|| -> Result<()> {
        for k in 0..num_t {
            let tk = (k as f64 * t_max / (num_t - 1) as f64).round() as i64;
            let mut start = 0;
            while start < n {
                let len = (batch as i64).min(n - start);
                let x0 = images.narrow(0, start, len).to_device(device);
                tch::manual_seed((seed as i64).wrapping_mul(1_000_003).wrapping_add(k as i64 * 65_537 + start));
                let noise = x0.randn_like();
                let t = Tensor::full([len], tk, (Kind::Int64, device));
                let x_t = diffusion.q_sample(&x0, &t, &noise);
                let out = model.unet.forward(&x_t, &diffusion.model_timesteps(&t), None);
                let l = diffusion.losses_from_output(&out, &x0, &x_t, &t, &noise);
                let (vb, _) = diffusion.vb_terms_bpd(&out, &x0, &x_t, &t, false);
                loss += f64::try_from(l.loss.sum(Kind::Double))?;
                mse += f64::try_from(l.mse.sum(Kind::Double))?;
                vb_raw += f64::try_from(vb.sum(Kind::Double))?;
                start += len;
            }
        }
        Ok(())
    })?;
    let count = (n as usize * num_t) as f64;
    let prior = tch::no_grad(|| f64::try_from(diffusion.prior_bpd(&images.to_device(device)).mean(Kind::Double)))?;
    Ok(HeldOut {
        num_images: n as usize,
        num_timesteps: num_t,
        loss: loss / count,
        mse: mse / count,
        bpd: diffusion.num_timesteps as f64 * vb_raw / count + prior,
    })
}
