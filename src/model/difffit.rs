//! DiffFit (Xie et al., 2023): fine-tune every bias and normalisation affine parameter, plus a
//! learnable per-channel scale γ (initialised to 1) on the residual branch of every block.
//!
//! Where γ sits: a ResBlock computes `skip(x) + γ ⊙ branch(x)`, with γ after the branch's last
//! convolution (official `out_layers.3`, diffusers `conv2`); an attention block computes
//! `x + γ ⊙ proj(attention(x))`, after its output projection (official `proj_out`, diffusers
//! `to_out.0`). γ is stored as `difffit.<block>.gamma` (`[C]`), outside the official key set.
//! Because γ multiplies the output channels of a linear layer, exporting folds it into that
//! layer's weight and bias ([`fold`]), and the exported checkpoint is a plain one.

use super::unet::layers::cast;
use tch::{nn, Tensor};

/// γ of one block.
#[derive(Debug)]
pub struct Gamma {
    pub gamma: Tensor,
}

impl Gamma {
    /// `p`: the block's path under `difffit` (e.g. `difffit.input_blocks.1.0`).
    pub fn new(p: nn::Path, channels: i64) -> Self {
        Gamma {
            gamma: p.var("gamma", &[channels], nn::Init::Const(1.0)),
        }
    }

    /// `h ⊙ γ` along `channel_dim` (1 for `[N, C, …]`, the last for `[N, T, C]`).
    pub fn scale(&self, h: &Tensor, channel_dim: i64) -> Tensor {
        let dims = h.dim() as i64;
        let channel_dim = if channel_dim < 0 {
            dims + channel_dim
        } else {
            channel_dim
        };
        let mut shape = vec![1i64; dims as usize];
        shape[channel_dim as usize] = self.gamma.size()[0];
        h * cast(&self.gamma, h.kind()).reshape(shape.as_slice())
    }
}

/// Scales a parameter whose first dimension is the output channel (a conv/linear weight or
/// bias) by γ: `layer(x) ⊙ γ = (γ ⊙ layer)(x)`.
pub fn fold(t: &Tensor, gamma: &Tensor) -> Tensor {
    let mut shape = vec![1i64; t.dim()];
    shape[0] = gamma.size()[0];
    tch::no_grad(|| t * gamma.to_kind(t.kind()).reshape(shape.as_slice()))
}

/// The key prefix of the layer γ of block `block` folds into.
pub fn fold_target(block: &str, attention: bool, diffusers: bool) -> String {
    let layer = match (attention, diffusers) {
        (false, false) => "out_layers.3",
        (true, false) => "proj_out",
        (false, true) => "conv2",
        (true, true) => "to_out.0",
    };
    format!("{block}.{layer}")
}
