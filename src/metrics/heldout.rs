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
    /// Variational bound in bits/dim: decoder NLL at t = 0 + (T − 1)·mean_k KL_{t_k} + prior.
    pub bpd: f64,
}

/// Evaluates `model` (in eval mode) on `images` `[N, 3, H, W]` in [-1, 1] at the `num_t`
/// timesteps t_k = round((k + ½)·T/num_t) (t = 0 is added for the decoder term of the bound).
pub fn heldout(
    model: &Model,
    diffusion: &Diffusion,
    images: &Tensor,
    num_t: usize,
    seed: u64,
    batch: usize,
) -> Result<HeldOut> {
    let n = images.size()[0];
    if n == 0 || num_t < 2 {
        bail!("held-out evaluation needs images and at least 2 timesteps");
    }
    let device = model.vs.device();
    let big_t = diffusion.num_timesteps as f64;
    let (mut loss, mut mse, mut kl, mut nll) = (0.0, 0.0, 0.0, 0.0);
    tch::no_grad(|| -> Result<()> {
        for k in 0..=num_t {
            crate::util::stop::check()?;
            // k = num_t is the t = 0 decoder term, used for the bound only.
            let tk = if k == num_t {
                0
            } else {
                (((k as f64 + 0.5) * big_t / num_t as f64).round() as i64)
                    .clamp(1, big_t as i64 - 1)
            };
            let mut start = 0;
            while start < n {
                let len = (batch as i64).min(n - start);
                let x0 = images.narrow(0, start, len).to_device(device);
                tch::manual_seed(
                    (seed as i64)
                        .wrapping_mul(1_000_003)
                        .wrapping_add(k as i64 * 65_537 + start),
                );
                let noise = x0.randn_like();
                let t = Tensor::full([len], tk, (Kind::Int64, device));
                let tl = diffusion.training_losses(|x, t| model.denoise(x, t), &x0, &t, &noise);
                let l = &tl.losses;
                // The bound uses the unscaled vb term (the loss's vb may be rescaled by T/1000).
                let (vb, _) = diffusion.vb_terms_bpd(&tl.model_output, &x0, &tl.x_t, &t, false);
                let vb_sum = f64::try_from(vb.sum(Kind::Double))?;
                if k == num_t {
                    nll += vb_sum;
                } else {
                    loss += f64::try_from(l.loss.sum(Kind::Double))?;
                    mse += f64::try_from(l.mse.sum(Kind::Double))?;
                    kl += vb_sum;
                }
                start += len;
            }
        }
        Ok(())
    })?;
    let count = (n as usize * num_t) as f64;
    let prior = tch::no_grad(|| {
        f64::try_from(
            diffusion
                .prior_bpd(&images.to_device(device))
                .mean(Kind::Double),
        )
    })?;
    Ok(HeldOut {
        num_images: n as usize,
        num_timesteps: num_t,
        loss: loss / count,
        mse: mse / count,
        bpd: nll / n as f64 + (big_t - 1.0) * kl / count + prior,
    })
}
