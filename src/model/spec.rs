//! What a model config resolves to: the spec of one family's network, validated before
//! anything is allocated, and its parameter count computed without building it.

use super::config::{check_range, Family, ModelConfig};
use crate::util::limits::{
    MAX_CHANNEL_MULT, MAX_IMAGE_SIZE, MAX_LEVELS, MAX_NUM_CHANNELS, MAX_PARAMS, MAX_RES_BLOCKS,
};
use anyhow::{bail, Result};
use serde::Serialize;

/// Everything needed to build a UNet, validated: one type per model family.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum UNetSpec {
    /// The official improved/guided-diffusion UNet.
    Adm(AdmSpec),
    /// A diffusers `UNet2DModel`, built by `unet::diffusers` from its config.
    Diffusers(crate::diffusers::config::UNet2D),
}

/// The official UNet's resolved flags.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdmSpec {
    pub image_size: i64,
    pub in_channels: i64,
    pub model_channels: i64,
    pub out_channels: i64,
    pub num_res_blocks: i64,
    /// Downsample factors `ds` at which attention is added.
    pub attention_ds: Vec<i64>,
    pub channel_mult: Vec<f64>,
    pub num_heads: i64,
    pub num_head_channels: i64,
    pub num_heads_upsample: i64,
    pub num_classes: Option<i64>,
    pub use_scale_shift_norm: bool,
    pub resblock_updown: bool,
    pub use_new_attention_order: bool,
    pub dropout: f64,
}

impl UNetSpec {
    /// Width of the time embedding every residual block and adapter receives.
    pub fn time_embed_dim(&self) -> i64 {
        match self {
            UNetSpec::Adm(s) => s.time_embed_dim(),
            UNetSpec::Diffusers(d) => d.time_embed_dim,
        }
    }

    /// Width of the first level (the sinusoidal timestep features' size).
    pub fn model_channels(&self) -> i64 {
        match self {
            UNetSpec::Adm(s) => s.model_channels,
            UNetSpec::Diffusers(d) => d.block_out_channels[0],
        }
    }

    /// Parameter count of the network (no adapters or LoRA), computed from the spec without
    /// building anything; equal to the built model's count.
    pub fn num_params(&self) -> u64 {
        match self {
            UNetSpec::Adm(s) => s.num_params(),
            UNetSpec::Diffusers(d) => d.num_params(),
        }
    }
}

impl AdmSpec {
    pub fn time_embed_dim(&self) -> i64 {
        4 * self.model_channels
    }
    /// Width of level `l` (guided allows fractional multipliers such as 0.5).
    pub fn level_width(&self, level: usize) -> i64 {
        (self.channel_mult[level] * self.model_channels as f64) as i64
    }
    /// Heads for an attention block of `channels` width.
    pub fn heads_for(&self, channels: i64, upsample: bool) -> i64 {
        if self.num_head_channels != -1 {
            channels / self.num_head_channels
        } else if upsample {
            self.num_heads_upsample
        } else {
            self.num_heads
        }
    }
}

impl ModelConfig {
    /// Resolve the official flags into a validated UNet description.
    ///
    /// Every flag is range-checked before anything is allocated (errors name the key and the
    /// limit), and the parameter count of the network is computed from the flags and refused
    /// above [`MAX_PARAMS`].
    pub fn resolve(&self) -> Result<UNetSpec> {
        if let Family::Diffusers(files) = &self.family {
            return self.resolve_diffusers(files);
        }
        check_range("image_size", self.image_size, 1, MAX_IMAGE_SIZE)?;
        check_range("num_channels", self.num_channels, 1, MAX_NUM_CHANNELS)?;
        check_range("num_res_blocks", self.num_res_blocks, 1, MAX_RES_BLOCKS)?;
        let channel_mult = if self.channel_mult.is_empty() {
            match self.image_size {
                512 => vec![0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0],
                256 => vec![1.0, 1.0, 2.0, 2.0, 4.0, 4.0],
                128 => vec![1.0, 1.0, 2.0, 3.0, 4.0],
                64 => vec![1.0, 2.0, 3.0, 4.0],
                32 => vec![1.0, 2.0, 2.0, 2.0],
                s => bail!("model config: image_size {s} has no default channel_mult; give channel_mult explicitly"),
            }
        } else {
            self.channel_mult.clone()
        };
        if channel_mult.len() > MAX_LEVELS {
            bail!(
                "model config: channel_mult has {} levels, above the limit of {MAX_LEVELS}",
                channel_mult.len()
            );
        }
        for (l, &m) in channel_mult.iter().enumerate() {
            if !m.is_finite() || m <= 0.0 || m > MAX_CHANNEL_MULT {
                bail!("model config: channel_mult[{l}] = {m} is outside (0, {MAX_CHANNEL_MULT}]");
            }
            let w = m * self.num_channels as f64;
            if w.fract() != 0.0 {
                bail!("model config: channel_mult[{l}] = {m} gives {w} channels (num_channels {}); widths must be whole", self.num_channels);
            }
        }
        let downsamples = channel_mult.len() as u32 - 1;
        if self.image_size % (1i64 << downsamples) != 0 {
            bail!(
                "model config: image_size {} is not divisible by 2^{downsamples} = {} (one halving per extra channel_mult level, {} levels)",
                self.image_size,
                1i64 << downsamples,
                channel_mult.len()
            );
        }
        // Resolutions the network runs at: image_size / 2^level.
        let reached: Vec<i64> = (0..=downsamples).map(|l| self.image_size >> l).collect();
        let mut attention_ds = Vec::new();
        for &res in &self.attention_resolutions {
            if !res.is_finite() || res.fract() != 0.0 || res <= 0.0 {
                bail!("model config: attention_resolutions entry {res} is not a positive whole number of pixels");
            }
            if res > self.image_size as f64 || self.image_size % res as i64 != 0 {
                bail!(
                    "model config: attention resolution {res} does not divide image_size {}",
                    self.image_size
                );
            }
            let res = res as i64;
            if !reached.contains(&res) {
                let list: Vec<String> = reached.iter().map(|r| r.to_string()).collect();
                bail!(
                    "model config: attention resolution {res} is never reached; with image_size {} and {} channel_mult levels the UNet runs at {} px",
                    self.image_size,
                    channel_mult.len(),
                    list.join(", ")
                );
            }
            attention_ds.push(self.image_size / res);
        }
        if self.num_head_channels != -1 && self.num_head_channels < 1 {
            bail!(
                "model config: num_head_channels must be -1 (use num_heads) or at least 1, got {}",
                self.num_head_channels
            );
        }
        if self.num_head_channels == -1 {
            if self.num_heads < 1 {
                bail!("model config: num_heads must be at least 1 when num_head_channels is -1, got {}", self.num_heads);
            }
            if self.num_heads_upsample != -1 && self.num_heads_upsample < 1 {
                bail!("model config: num_heads_upsample must be -1 (same as num_heads) or at least 1, got {}", self.num_heads_upsample);
            }
        }
        if !self.dropout.is_finite() || !(0.0..1.0).contains(&self.dropout) {
            bail!(
                "model config: dropout must be in [0, 1), got {}",
                self.dropout
            );
        }
        let num_heads_upsample = if self.num_heads_upsample == -1 {
            self.num_heads
        } else {
            self.num_heads_upsample
        };
        let spec = AdmSpec {
            image_size: self.image_size,
            in_channels: 3,
            model_channels: self.num_channels,
            out_channels: if self.learn_sigma { 6 } else { 3 },
            num_res_blocks: self.num_res_blocks,
            attention_ds,
            channel_mult,
            num_heads: self.num_heads,
            num_head_channels: self.num_head_channels,
            num_heads_upsample,
            num_classes: if self.class_cond { Some(1000) } else { None },
            use_scale_shift_norm: self.use_scale_shift_norm,
            resblock_updown: self.resblock_updown,
            use_new_attention_order: self.use_new_attention_order,
            dropout: self.dropout,
        };
        self.validate_widths(&spec)?;
        self.validate_diffusion()?;
        let params = spec.num_params();
        if params > MAX_PARAMS {
            bail!(
                "model config: this UNet would have {} parameters ({:.1} GB in f32), above the limit of {} (check num_channels, channel_mult, num_res_blocks)",
                crate::util::fmt_count(params.min(i64::MAX as u64) as i64),
                params as f64 * 4.0 / 1e9,
                crate::util::fmt_count(MAX_PARAMS as i64)
            );
        }
        Ok(UNetSpec::Adm(spec))
    }

    /// The spec of a diffusers model: the typed `UNet2DModel` config, checked against its
    /// scheduler and the parameter limit.
    fn resolve_diffusers(&self, files: &crate::diffusers::DiffusersFiles) -> Result<UNetSpec> {
        let cfg = files.unet_config()?;
        let sched = files.scheduler_config()?;
        crate::diffusers::check_pair(&cfg, &sched)?;
        if self.image_size != cfg.sample_size {
            bail!(
                "model config: image_size {} differs from the diffusers sample_size {}",
                self.image_size,
                cfg.sample_size
            );
        }
        self.validate_diffusion()?;
        let params = cfg.num_params();
        if params > MAX_PARAMS {
            bail!(
                "diffusers config: this UNet would have {} parameters, above the limit of {}",
                crate::util::fmt_count(params.min(i64::MAX as u64) as i64),
                crate::util::fmt_count(MAX_PARAMS as i64)
            );
        }
        Ok(UNetSpec::Diffusers(cfg))
    }

    fn validate_widths(&self, spec: &AdmSpec) -> Result<()> {
        // Every GroupNorm input width: level widths and decoder concatenations, all multiples of
        // the level widths, so checking the level widths and the model width suffices.
        let mut widths = vec![spec.model_channels];
        for l in 0..spec.channel_mult.len() {
            let w = spec.level_width(l);
            if w <= 0 {
                bail!("model config: channel_mult[{l}] gives a non-positive width {w}");
            }
            widths.push(w);
        }
        for &w in &widths {
            if w % 32 != 0 {
                bail!("model config: channel width {w} is not divisible by GroupNorm's 32 groups (num_channels={}, channel_mult={:?})", spec.model_channels, spec.channel_mult);
            }
        }
        let mut ds = 1;
        for l in 0..spec.channel_mult.len() {
            // The middle block (deepest level) always has attention.
            if spec.attention_ds.contains(&ds) || l == spec.channel_mult.len() - 1 {
                let w = spec.level_width(l);
                for upsample in [false, true] {
                    if spec.num_head_channels != -1 {
                        if w % spec.num_head_channels != 0 {
                            bail!("model config: num_head_channels {} does not divide attention width {w}", spec.num_head_channels);
                        }
                        continue;
                    }
                    let heads = spec.heads_for(w, upsample);
                    let key = if upsample {
                        "num_heads_upsample"
                    } else {
                        "num_heads"
                    };
                    if heads <= 0 || w % heads != 0 {
                        bail!("model config: {key} {heads} does not divide attention width {w}");
                    }
                }
            }
            ds *= 2;
        }
        Ok(())
    }
}

impl AdmSpec {
    /// Parameter count of the official network (no adapters or LoRA), computed from the spec
    /// without building anything; equal to the built model's count.
    pub fn num_params(&self) -> u64 {
        let c = |x: i64| x.max(0) as u64;
        let conv = |i: u64, o: u64, k: u64| i * o * k * k + o;
        let lin = |i: u64, o: u64| i * o + o;
        let gn = |ch: u64| 2 * ch;
        let emb = c(self.time_embed_dim());
        let res = |i: u64, o: u64| {
            let emb_out = if self.use_scale_shift_norm { 2 * o } else { o };
            gn(i)
                + conv(i, o, 3)
                + lin(emb, emb_out)
                + gn(o)
                + conv(o, o, 3)
                + if i != o { conv(i, o, 1) } else { 0 }
        };
        let attn = |ch: u64| gn(ch) + (ch * 3 * ch + 3 * ch) + (ch * ch + ch);
        let resample = |ch: u64| {
            if self.resblock_updown {
                res(ch, ch)
            } else {
                conv(ch, ch, 3)
            }
        };
        let mc = c(self.model_channels);
        let mut n = lin(mc, emb) + lin(emb, emb) + self.num_classes.map_or(0, |k| c(k) * emb);
        n += conv(c(self.in_channels), mc, 3);
        let mut chans = vec![mc];
        let mut ch = mc;
        let mut ds = 1;
        let levels = self.channel_mult.len();
        for level in 0..levels {
            let w = c(self.level_width(level));
            for _ in 0..self.num_res_blocks {
                n += res(ch, w);
                ch = w;
                if self.attention_ds.contains(&ds) {
                    n += attn(ch);
                }
                chans.push(ch);
            }
            if level != levels - 1 {
                n += resample(ch);
                chans.push(ch);
                ds *= 2;
            }
        }
        n += res(ch, ch) + attn(ch) + res(ch, ch);
        for level in (0..levels).rev() {
            let w = c(self.level_width(level));
            for i in 0..=self.num_res_blocks {
                let skip = chans.pop().unwrap_or(0);
                n += res(ch + skip, w);
                ch = w;
                if self.attention_ds.contains(&ds) {
                    n += attn(ch);
                }
                if level > 0 && i == self.num_res_blocks {
                    n += resample(ch);
                    ds /= 2;
                }
            }
        }
        n + gn(ch) + conv(ch, c(self.out_channels), 3)
    }
}
