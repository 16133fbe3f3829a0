//! The arrays of `a3ft debug step`, shared by the CLI and the parity tests.

use crate::diffusion::Diffusion;
use crate::model::Model;
use tch::{Kind, Tensor};

/// q_sample, model output, loss terms and p_mean_variance (unclipped and clipped) at raw
/// diffusion steps `t`, all as f32 CPU tensors, in the order of the golden fixtures.
///
/// `model_output` is the network evaluated at the raw step `t`, which is what the golden
/// fixtures hold (for `rescale_timesteps` configs their `model_output` equals the network at
/// the unscaled t, while every other array uses the scaled t the official diffusion passes).
/// `model_output_scaled` is the network at the time the diffusion actually feeds it.
pub fn debug_step(
    model: &Model,
    diffusion: &Diffusion,
    x0: &Tensor,
    t: &Tensor,
    noise: &Tensor,
) -> Vec<(&'static str, Tensor)> {
    let arrays = tch::no_grad(|| {
        let tl = diffusion.training_losses(|x, t| model.unet.forward(x, t, None), x0, t, noise);
        let (x_t, out, l) = (tl.x_t, tl.model_output, tl.losses);
        let raw = if diffusion.rescale_timesteps {
            model.unet.forward(&x_t, &t.to_kind(Kind::Float), None)
        } else {
            out.shallow_clone()
        };
        let mv = diffusion.p_mean_variance(&out, &x_t, t, false);
        let mvc = diffusion.p_mean_variance(&out, &x_t, t, true);
        vec![
            ("x_t", x_t),
            ("model_output", raw),
            ("model_output_scaled", out),
            ("mse", l.mse),
            ("vb", l.vb),
            ("loss", l.loss),
            ("mean", mv.mean),
            ("log_variance", mv.log_variance),
            ("pred_xstart", mv.pred_xstart),
            ("mean_clipped", mvc.mean),
            ("pred_xstart_clipped", mvc.pred_xstart),
        ]
    });
    arrays
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                v.to_kind(Kind::Float)
                    .to_device(tch::Device::Cpu)
                    .contiguous(),
            )
        })
        .collect()
}
