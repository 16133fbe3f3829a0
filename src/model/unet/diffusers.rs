//! diffusers' `UNet2DModel` blocks, with parameter names equal to its `state_dict` keys
//! (`down_blocks.1.resnets.0.conv1.weight`, `…attentions.0.to_q.weight`, …).
//!
//! The network is the same U-Net as the official one (one skip per encoder entry, popped by
//! the decoder); what differs is named here: GroupNorm groups and eps from the config, separate
//! q/k/v linear maps, an output scale factor, the asymmetric padding of `downsample_padding=0`.

use super::blocks::{ResParts, Resample, Upsample};
use super::layers::{Conv2d, GroupNorm, Linear, LoraDelta};
use super::{path_of, Builder, Layer};
use crate::diffusers::config::UNet2D;
use crate::model::adapter::{AdapterShared, TimeScaling};
use crate::model::difffit::Gamma;
use tch::{nn, Tensor};

/// `ResnetBlock2D` (`up`/`down` = the resampling of `upsample_type`/`downsample_type` "resnet").
#[derive(Debug)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    /// DiffFit's γ after `conv2`, when the method adds it.
    pub gamma: Option<Gamma>,
    out_channels: i64,
    scale_shift: bool,
    output_scale_factor: f64,
    resample: Resample,
    dropout: f64,
}

impl ResnetBlock2D {
    pub fn new(
        p: nn::Path,
        c_in: i64,
        c_out: i64,
        cfg: &UNet2D,
        output_scale_factor: f64,
        resample: Resample,
    ) -> Self {
        let (g, eps) = (cfg.norm_num_groups, cfg.norm_eps);
        let emb_out = if cfg.scale_shift { 2 * c_out } else { c_out };
        ResnetBlock2D {
            norm1: GroupNorm::with(&p / "norm1", c_in, g, eps),
            conv1: Conv2d::new(&p / "conv1", c_in, c_out, 3, 1, 1, false),
            time_emb_proj: Linear::new(&p / "time_emb_proj", cfg.time_embed_dim, emb_out),
            norm2: GroupNorm::with(&p / "norm2", c_out, g, eps),
            conv2: Conv2d::new(&p / "conv2", c_out, c_out, 3, 1, 1, false),
            conv_shortcut: (c_in != c_out)
                .then(|| Conv2d::new(&p / "conv_shortcut", c_in, c_out, 1, 1, 0, false)),
            gamma: None,
            out_channels: c_out,
            scale_shift: cfg.scale_shift,
            output_scale_factor,
            resample,
            dropout: cfg.dropout,
        }
    }

    pub fn forward(&self, x: &Tensor, emb: &Tensor, train: bool) -> Tensor {
        let parts = ResParts {
            norm1: &self.norm1,
            conv1: &self.conv1,
            emb_proj: &self.time_emb_proj,
            norm2: &self.norm2,
            conv2: &self.conv2,
            skip: self.conv_shortcut.as_ref(),
            gamma: self.gamma.as_ref(),
            out_channels: self.out_channels,
            scale_shift: self.scale_shift,
            resample: self.resample,
            dropout: self.dropout,
        };
        let out = parts.forward(x, emb, train);
        if self.output_scale_factor == 1.0 {
            out
        } else {
            out / self.output_scale_factor
        }
    }
}

/// diffusers `Attention` as the U-Net blocks build it: optional GroupNorm, separate q/k/v
/// linear maps over positions, `to_out.0`, residual, division by `rescale_output_factor`.
#[derive(Debug)]
pub struct Attention {
    pub group_norm: Option<GroupNorm>,
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    /// `to_out.0` (`to_out.1` is dropout, without parameters).
    pub to_out_0: Linear,
    /// DiffFit's γ after `to_out.0`, when the method adds it.
    pub gamma: Option<Gamma>,
    pub channels: i64,
    pub heads: i64,
    rescale_output_factor: f64,
}

impl Attention {
    pub fn new(
        p: nn::Path,
        channels: i64,
        heads: i64,
        groups: Option<i64>,
        eps: f64,
        rescale_output_factor: f64,
    ) -> Self {
        Attention {
            group_norm: groups.map(|g| GroupNorm::with(&p / "group_norm", channels, g, eps)),
            to_q: Linear::new(&p / "to_q", channels, channels),
            to_k: Linear::new(&p / "to_k", channels, channels),
            to_v: Linear::new(&p / "to_v", channels, channels),
            to_out_0: Linear::new(&p / "to_out" / 0, channels, channels),
            gamma: None,
            channels,
            heads,
            rescale_output_factor,
        }
    }

    /// Adds LoRA updates to the four projections, under `lp` (`lora.<block>`).
    pub fn add_lora(&mut self, lp: nn::Path, rank: i64) {
        let c = self.channels;
        self.to_q.lora = Some(LoraDelta::new(&lp / "to_q", c, c, rank));
        self.to_k.lora = Some(LoraDelta::new(&lp / "to_k", c, c, rank));
        self.to_v.lora = Some(LoraDelta::new(&lp / "to_v", c, c, rank));
        self.to_out_0.lora = Some(LoraDelta::new(&lp / "to_out" / 0, c, c, rank));
    }

    pub fn forward(
        &self,
        x: &Tensor,
        emb: &Tensor,
        adapter: Option<(&AdapterShared, &TimeScaling)>,
    ) -> Tensor {
        let s = x.size();
        let (n, c) = (s[0], s[1]);
        let x3 = x.reshape([n, c, -1]);
        let h = match &self.group_norm {
            Some(norm) => norm.forward(&x3),
            None => x3.shallow_clone(),
        }
        .transpose(1, 2); // [N, T, C]
        let t = h.size()[1];
        let d = c / self.heads;
        // [N, T, C] → [N, heads, T, d]: the head dimension stays contiguous, so libtorch's
        // fused attention kernels apply (see blocks::AttentionBlock::attention).
        let split = |y: Tensor| y.reshape([n, t, self.heads, d]).transpose(1, 2);
        let (q, k, v) = (
            split(self.to_q.forward(&h)),
            split(self.to_k.forward(&h)),
            split(self.to_v.forward(&h)),
        );
        let a = Tensor::scaled_dot_product_attention::<Tensor>(
            &q, &k, &v, None, 0.0, false, None, false,
        );
        let a = a.transpose(1, 2).reshape([n, t, c]);
        let a = match adapter {
            // The adapter reads and writes `[N, C, T]`, between the attention and `to_out`.
            Some((shared, scaling)) => shared.mix(&a.transpose(1, 2), emb, scaling).transpose(1, 2),
            None => a,
        };
        let h = self.to_out_0.forward(&a);
        let h = match &self.gamma {
            Some(g) => g.scale(&h, -1),
            None => h,
        };
        let out = h.transpose(1, 2).reshape(s.as_slice()) + x;
        if self.rescale_output_factor == 1.0 {
            out
        } else {
            out / self.rescale_output_factor
        }
    }
}

/// `Downsample2D` with a 3×3 stride-2 convolution; `padding = 0` pads right and bottom by one
/// first (the TensorFlow DDPM port's "SAME" padding).
#[derive(Debug)]
pub struct Downsample2D {
    conv: Conv2d,
    padding: i64,
}

impl Downsample2D {
    pub fn new(p: nn::Path, channels: i64, padding: i64) -> Self {
        Downsample2D {
            conv: Conv2d::new(&p / "conv", channels, channels, 3, 2, padding, false),
            padding,
        }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        if self.padding == 0 {
            self.conv.forward(&x.constant_pad_nd([0, 1, 0, 1]))
        } else {
            self.conv.forward(x)
        }
    }
}

/// The parts of a `UNet2DModel`, in the order the forward pass runs them.
pub struct Parts {
    pub time_embed: (Linear, Linear),
    pub input_blocks: Vec<Vec<Layer>>,
    pub middle_block: Vec<Layer>,
    pub output_blocks: Vec<Vec<Layer>>,
    pub out_norm: GroupNorm,
    pub out_conv: Conv2d,
}

impl Builder<'_, UNet2D> {
    fn resnet(&mut self, name: String, c_in: i64, c_out: i64, scale: f64, r: Resample) -> Layer {
        let cfg = self.spec;
        let p = path_of(&self.root, &name);
        let mut block = ResnetBlock2D::new(p, c_in, c_out, cfg, scale, r);
        block.gamma = self.difffit_gamma(&name, c_out);
        self.blocks.residual.push(name);
        Layer::ResnetBlock2D(block)
    }

    fn attention(
        &mut self,
        name: String,
        channels: i64,
        groups: Option<i64>,
        rescale: f64,
    ) -> Layer {
        let cfg = self.spec;
        let mut block = Attention::new(
            path_of(&self.root, &name),
            channels,
            cfg.heads(channels),
            groups,
            cfg.norm_eps,
            rescale,
        );
        if let Some(rank) = self.extras.lora_rank {
            block.add_lora(path_of(&(self.root.clone() / "lora"), &name), rank);
        }
        block.gamma = self.difffit_gamma(&name, channels);
        self.add_adapter(&name, channels);
        self.blocks.attention.push((name.clone(), channels));
        Layer::DiffusersAttention(Box::new(block), name)
    }

    /// Builds every block of `UNet2DModel.__init__`, keys as diffusers names them.
    pub(super) fn diffusers(&mut self) -> Parts {
        let cfg = self.spec;
        let root = self.root.clone();
        let widths = &cfg.block_out_channels;
        let levels = widths.len();
        let emb = cfg.time_embed_dim;
        let time_embed = (
            Linear::new(&root / "time_embedding" / "linear_1", widths[0], emb),
            Linear::new(&root / "time_embedding" / "linear_2", emb, emb),
        );
        let mut input_blocks = vec![vec![Layer::Conv(Conv2d::new(
            &root / "conv_in",
            cfg.in_channels,
            widths[0],
            3,
            1,
            1,
            false,
        ))]];
        let mut chans = vec![widths[0]];
        let mut ch = widths[0];
        for (i, &w) in widths.iter().enumerate() {
            for j in 0..cfg.layers_per_block {
                let mut entry = vec![self.resnet(
                    format!("down_blocks.{i}.resnets.{j}"),
                    ch,
                    w,
                    1.0,
                    Resample::None,
                )];
                ch = w;
                if cfg.down_attention[i] {
                    entry.push(self.attention(
                        format!("down_blocks.{i}.attentions.{j}"),
                        ch,
                        Some(cfg.norm_num_groups),
                        1.0,
                    ));
                }
                input_blocks.push(entry);
                chans.push(ch);
            }
            if i != levels - 1 {
                let name = format!("down_blocks.{i}.downsamplers.0");
                let layer = if cfg.down_attention[i] && cfg.resnet_downsample {
                    self.resnet(name, ch, ch, 1.0, Resample::Down)
                } else {
                    Layer::Downsample2D(Downsample2D::new(
                        path_of(&root, &name),
                        ch,
                        cfg.downsample_padding,
                    ))
                };
                input_blocks.push(vec![layer]);
                chans.push(ch);
            }
        }
        let mut middle_block = Vec::new();
        if cfg.mid_block {
            let f = cfg.mid_block_scale_factor;
            middle_block.push(self.resnet("mid_block.resnets.0".into(), ch, ch, f, Resample::None));
            if cfg.add_attention {
                middle_block.push(self.attention(
                    "mid_block.attentions.0".into(),
                    ch,
                    cfg.mid_attention_groups,
                    f,
                ));
            }
            middle_block.push(self.resnet("mid_block.resnets.1".into(), ch, ch, f, Resample::None));
        }
        let mut output_blocks = Vec::new();
        for (i, &w) in widths.iter().rev().enumerate() {
            for j in 0..=cfg.layers_per_block {
                let skip = chans
                    .pop()
                    .expect("decoder pops one skip per encoder entry");
                let mut entry = vec![self.resnet(
                    format!("up_blocks.{i}.resnets.{j}"),
                    ch + skip,
                    w,
                    1.0,
                    Resample::None,
                )];
                ch = w;
                if cfg.up_attention[i] {
                    entry.push(self.attention(
                        format!("up_blocks.{i}.attentions.{j}"),
                        ch,
                        Some(cfg.norm_num_groups),
                        1.0,
                    ));
                }
                if i != levels - 1 && j == cfg.layers_per_block {
                    let name = format!("up_blocks.{i}.upsamplers.0");
                    entry.push(if cfg.up_attention[i] && cfg.resnet_upsample {
                        self.resnet(name, ch, ch, 1.0, Resample::Up)
                    } else {
                        // `Upsample2D` is the official `Upsample` under the same key (`conv`).
                        Layer::Up(Upsample::new(path_of(&root, &name), ch))
                    });
                }
                output_blocks.push(entry);
            }
        }
        Parts {
            time_embed,
            input_blocks,
            middle_block,
            output_blocks,
            out_norm: GroupNorm::with(
                &root / "conv_norm_out",
                ch,
                cfg.norm_num_groups,
                cfg.norm_eps,
            ),
            out_conv: Conv2d::new(&root / "conv_out", ch, cfg.out_channels, 3, 1, 1, false),
        }
    }
}
