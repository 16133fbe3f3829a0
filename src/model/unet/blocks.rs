//! ResBlock, AttentionBlock and the conv resamplers of the official UNet.

use super::layers::{Conv1x1, Conv2d, GroupNorm, Linear};
use crate::model::adapter::{AdapterShared, TimeScaling};
use crate::model::difffit::Gamma;
use tch::{nn, Tensor};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Resample {
    None,
    Up,
    Down,
}

fn resample(x: &Tensor, r: Resample) -> Tensor {
    match r {
        Resample::None => x.shallow_clone(),
        Resample::Up => {
            let s = x.size();
            x.upsample_nearest2d([s[2] * 2, s[3] * 2], None, None)
        }
        Resample::Down => x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None),
    }
}

#[derive(Debug)]
pub struct ResBlock {
    /// `in_layers.0`: GroupNorm before the first convolution.
    in_layers_0: GroupNorm,
    /// `in_layers.2`: the first 3×3 convolution (after SiLU and any resampling).
    in_layers_2: Conv2d,
    /// `emb_layers.1`: time embedding → per-channel scale and shift (or bias).
    emb_layers_1: Linear,
    /// `out_layers.0`: GroupNorm before the second convolution.
    out_layers_0: GroupNorm,
    /// `out_layers.3`: the second 3×3 convolution (zero-initialised in the official code).
    out_layers_3: Conv2d,
    /// `skip_connection`: 1×1 convolution when the width changes.
    skip_connection: Option<Conv2d>,
    /// DiffFit's γ on the branch (`difffit.<block>.gamma`), when the method adds it.
    pub gamma: Option<Gamma>,
    out_channels: i64,
    use_scale_shift_norm: bool,
    resample: Resample,
    dropout: f64,
}

impl ResBlock {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: nn::Path,
        c_in: i64,
        c_out: i64,
        emb_dim: i64,
        use_scale_shift_norm: bool,
        resample: Resample,
        dropout: f64,
    ) -> Self {
        let emb_out = if use_scale_shift_norm {
            2 * c_out
        } else {
            c_out
        };
        ResBlock {
            in_layers_0: GroupNorm::new(&p / "in_layers" / 0, c_in),
            in_layers_2: Conv2d::new(&p / "in_layers" / 2, c_in, c_out, 3, 1, 1, false),
            emb_layers_1: Linear::new(&p / "emb_layers" / 1, emb_dim, emb_out),
            out_layers_0: GroupNorm::new(&p / "out_layers" / 0, c_out),
            out_layers_3: Conv2d::new(&p / "out_layers" / 3, c_out, c_out, 3, 1, 1, true),
            skip_connection: (c_in != c_out)
                .then(|| Conv2d::new(&p / "skip_connection", c_in, c_out, 1, 1, 0, false)),
            gamma: None,
            out_channels: c_out,
            use_scale_shift_norm,
            resample,
            dropout,
        }
    }

    pub fn forward(&self, x: &Tensor, emb: &Tensor, train: bool) -> Tensor {
        let parts = ResParts {
            norm1: &self.in_layers_0,
            conv1: &self.in_layers_2,
            emb_proj: &self.emb_layers_1,
            norm2: &self.out_layers_0,
            conv2: &self.out_layers_3,
            skip: self.skip_connection.as_ref(),
            gamma: self.gamma.as_ref(),
            out_channels: self.out_channels,
            scale_shift: self.use_scale_shift_norm,
            resample: self.resample,
            dropout: self.dropout,
        };
        parts.forward(x, emb, train)
    }
}

/// The residual block's computation, shared by the official `ResBlock` and diffusers'
/// `ResnetBlock2D` (the same block under two sets of names):
/// `skip(x') + conv2(drop(SiLU(norm2(conv1(SiLU(norm1(x))') ⊕ emb))))`, where `'` is the
/// block's resampling and ⊕ adds the projected time embedding, or scales and shifts by it.
pub(super) struct ResParts<'a> {
    pub norm1: &'a GroupNorm,
    pub conv1: &'a Conv2d,
    pub emb_proj: &'a Linear,
    pub norm2: &'a GroupNorm,
    pub conv2: &'a Conv2d,
    pub skip: Option<&'a Conv2d>,
    pub gamma: Option<&'a Gamma>,
    pub out_channels: i64,
    pub scale_shift: bool,
    pub resample: Resample,
    pub dropout: f64,
}

impl ResParts<'_> {
    pub fn forward(&self, x: &Tensor, emb: &Tensor, train: bool) -> Tensor {
        let h = self.norm1.forward(x).silu();
        let (h, x) = (resample(&h, self.resample), resample(x, self.resample));
        let h = self.conv1.forward(&h);
        let e = self
            .emb_proj
            .forward(&emb.silu().to_kind(h.kind()))
            .unsqueeze(-1)
            .unsqueeze(-1);
        let h = if self.scale_shift {
            let scale = e.narrow(1, 0, self.out_channels);
            let shift = e.narrow(1, self.out_channels, self.out_channels);
            shift.addcmul(&self.norm2.forward(&h), &(scale + 1.0))
        } else {
            self.norm2.forward(&(h + e))
        };
        let h = h.silu();
        let h = if self.dropout > 0.0 {
            h.dropout(self.dropout, train)
        } else {
            h
        };
        let h = self.conv2.forward(&h);
        let h = match self.gamma {
            Some(g) => g.scale(&h, 1),
            None => h,
        };
        match self.skip {
            Some(skip) => skip.forward(&x) + h,
            None => x + h,
        }
    }
}

/// QKV channel layout of the official attention variants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QkvOrder {
    /// improved-diffusion `QKVAttention` / guided `QKVAttentionLegacy`: heads outermost, `[q_h k_h v_h]`.
    Legacy,
    /// guided `QKVAttention` (`use_new_attention_order`): `[q | k | v]`, each split into heads.
    New,
}

#[derive(Debug)]
pub struct AttentionBlock {
    pub norm: GroupNorm,
    pub qkv: Conv1x1,
    pub proj_out: Conv1x1,
    /// DiffFit's γ after `proj_out`, when the method adds it.
    pub gamma: Option<Gamma>,
    pub channels: i64,
    pub heads: i64,
    pub order: QkvOrder,
}

impl AttentionBlock {
    pub fn new(p: nn::Path, channels: i64, heads: i64, order: QkvOrder) -> Self {
        AttentionBlock {
            norm: GroupNorm::new(&p / "norm", channels),
            qkv: Conv1x1::new(&p / "qkv", channels, 3 * channels, false),
            proj_out: Conv1x1::new(&p / "proj_out", channels, channels, true),
            gamma: None,
            channels,
            heads,
            order,
        }
    }

    /// Multi-head self-attention over positions, `[N, 3C, T]` → `[N, C, T]`.
    ///
    /// Both official layouts scale q and k by d^(-1/4) each, i.e. logits q·k/√d, with a softmax
    /// over keys: exactly scaled-dot-product attention with its default scale. libtorch's fused
    /// kernels (flash, memory-efficient) require the head dimension to be contiguous (stride 1)
    /// and otherwise fall back to the unfused math kernel, which materialises every `T×T` matrix
    /// (in fp32, even under bf16); one copy of qkv into `[3, N, heads, T, d]` avoids that.
    pub fn attention(&self, qkv: &Tensor) -> Tensor {
        let (n, _, t) = qkv.size3().unwrap();
        let (h, d) = (self.heads, self.channels / self.heads);
        let qkv = match self.order {
            QkvOrder::Legacy => qkv.reshape([n, h, 3, d, t]).permute([2, 0, 1, 4, 3]),
            QkvOrder::New => qkv.reshape([n, 3, h, d, t]).permute([1, 0, 2, 4, 3]),
        }
        .contiguous();
        let out = Tensor::scaled_dot_product_attention::<Tensor>(
            &qkv.select(0, 0),
            &qkv.select(0, 1),
            &qkv.select(0, 2),
            None,
            0.0,
            false,
            None,
            false,
        );
        // [N, heads, T, d] -> [N, heads·d, T], heads outermost as in both official layouts.
        out.transpose(2, 3).reshape([n, self.channels, t])
    }

    pub fn forward(
        &self,
        x: &Tensor,
        emb: &Tensor,
        adapter: Option<(&AdapterShared, &TimeScaling)>,
    ) -> Tensor {
        let s = x.size();
        let x3 = x.reshape([s[0], s[1], -1]);
        let qkv = self.qkv.forward(&self.norm.forward(&x3));
        let a = self.attention(&qkv);
        let a = match adapter {
            Some((shared, scaling)) => shared.mix(&a, emb, scaling),
            None => a,
        };
        let h = self.proj_out.forward(&a);
        let h = match &self.gamma {
            Some(g) => g.scale(&h, 1),
            None => h,
        };
        (x3 + h).reshape(s.as_slice())
    }
}

#[derive(Debug)]
pub struct Downsample {
    op: Conv2d,
}

impl Downsample {
    pub fn new(p: nn::Path, channels: i64) -> Self {
        Downsample {
            op: Conv2d::new(&p / "op", channels, channels, 3, 2, 1, false),
        }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.op.forward(x)
    }
}

#[derive(Debug)]
pub struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    pub fn new(p: nn::Path, channels: i64) -> Self {
        Upsample {
            conv: Conv2d::new(&p / "conv", channels, channels, 3, 1, 1, false),
        }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.conv.forward(&resample(x, Resample::Up))
    }
}
