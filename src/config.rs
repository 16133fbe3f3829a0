//! Model and diffusion configuration with the official flag names, plus presets.
//!
//! A config file is the JSON form of the official `script_util` flags. Missing keys take the
//! improved-diffusion defaults; unknown keys are an error (a typo would otherwise silently
//! build a different model).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer, Serialize};
use std::path::Path;

/// Official flags, as written in a config file. Use [`ModelConfig::resolve`] to get a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub image_size: i64,
    pub num_channels: i64,
    #[serde(deserialize_with = "de_int_list")]
    pub channel_mult: Vec<f64>,
    pub num_res_blocks: i64,
    /// Pixel resolutions (`"16,8"`), converted to downsample factors by `resolve`.
    #[serde(deserialize_with = "de_int_list")]
    pub attention_resolutions: Vec<f64>,
    pub num_heads: i64,
    pub num_head_channels: i64,
    pub num_heads_upsample: i64,
    pub learn_sigma: bool,
    pub class_cond: bool,
    pub use_scale_shift_norm: bool,
    pub resblock_updown: bool,
    pub use_new_attention_order: bool,
    pub dropout: f64,
    pub diffusion_steps: i64,
    pub noise_schedule: String,
    pub timestep_respacing: String,
    pub rescale_timesteps: bool,
    pub rescale_learned_sigmas: bool,
    pub use_kl: bool,
    pub predict_xstart: bool,
    pub sigma_small: bool,
    /// P2 weighting (P2-weighting fork); γ = 0 is plain MSE.
    pub p2_gamma: f64,
    pub p2_k: f64,
    /// Accepted for compatibility with official flag dumps; a3ft picks precision with `--precision`.
    pub use_fp16: bool,
    pub use_checkpoint: bool,
}

impl Default for ModelConfig {
    /// improved-diffusion `model_and_diffusion_defaults()`.
    fn default() -> Self {
        ModelConfig {
            image_size: 64,
            num_channels: 128,
            channel_mult: vec![],
            num_res_blocks: 2,
            attention_resolutions: vec![16.0, 8.0],
            num_heads: 4,
            num_head_channels: -1,
            num_heads_upsample: -1,
            learn_sigma: false,
            class_cond: false,
            use_scale_shift_norm: true,
            resblock_updown: false,
            use_new_attention_order: false,
            dropout: 0.0,
            diffusion_steps: 1000,
            noise_schedule: "linear".into(),
            timestep_respacing: String::new(),
            rescale_timesteps: true,
            rescale_learned_sigmas: true,
            use_kl: false,
            predict_xstart: false,
            sigma_small: false,
            p2_gamma: 0.0,
            p2_k: 1.0,
            use_fp16: false,
            use_checkpoint: false,
        }
    }
}

/// Accepts `"1,2,3"`, `[1,2,3]`, `""`, `[]` or a single number.
fn de_int_list<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        S(String),
        L(Vec<f64>),
        N(f64),
    }
    match Raw::deserialize(d)? {
        Raw::L(v) => Ok(v),
        Raw::N(n) => Ok(vec![n]),
        Raw::S(s) => s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| p.parse::<f64>().map_err(|e| serde::de::Error::custom(format!("bad number {p:?} in list: {e}"))))
            .collect(),
    }
}

/// Everything needed to build the UNet, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UNetSpec {
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
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        serde_json::from_str(text).with_context(|| format!("invalid model config {origin}"))
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read model config {}", path.display()))?;
        Self::from_json(&text, &path.display().to_string())
    }

    pub fn preset(name: &str) -> Result<Self> {
        let base = ModelConfig::default();
        match name {
            // imagenet64_uncond_100M_1500K.pt: README flags, the rest improved-diffusion defaults.
            "imagenet64" => Ok(ModelConfig {
                image_size: 64,
                num_channels: 128,
                num_res_blocks: 3,
                learn_sigma: true,
                diffusion_steps: 4000,
                noise_schedule: "cosine".into(),
                ..base
            }),
            // P2-weighting FFHQ-256 (guided-diffusion code path).
            "ffhq256" => Ok(ModelConfig {
                image_size: 256,
                num_channels: 128,
                num_res_blocks: 1,
                attention_resolutions: vec![16.0],
                num_head_channels: 64,
                learn_sigma: true,
                resblock_updown: true,
                use_scale_shift_norm: true,
                diffusion_steps: 1000,
                noise_schedule: "linear".into(),
                timestep_respacing: String::new(),
                rescale_timesteps: false,
                rescale_learned_sigmas: true,
                p2_gamma: 1.0,
                p2_k: 1.0,
                ..base
            }),
            other => bail!("unknown preset {other:?}; available presets: {}", PRESETS.join(", ")),
        }
    }

    /// Resolve the official flags into a validated UNet description.
    pub fn resolve(&self) -> Result<UNetSpec> {
        if self.image_size <= 0 || self.num_channels <= 0 || self.num_res_blocks <= 0 {
            bail!("image_size, num_channels and num_res_blocks must be positive");
        }
        let channel_mult = if self.channel_mult.is_empty() {
            match self.image_size {
                512 => vec![0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0],
                256 => vec![1.0, 1.0, 2.0, 2.0, 4.0, 4.0],
                128 => vec![1.0, 1.0, 2.0, 3.0, 4.0],
                64 => vec![1.0, 2.0, 3.0, 4.0],
                32 => vec![1.0, 2.0, 2.0, 2.0],
                s => bail!("image_size {s} has no default channel_mult; give channel_mult explicitly"),
            }
        } else {
            self.channel_mult.clone()
        };
        let mut attention_ds = Vec::new();
        for &res in &self.attention_resolutions {
            let res = res as i64;
            if res <= 0 || self.image_size % res != 0 {
                bail!("attention resolution {res} does not divide image_size {}", self.image_size);
            }
            attention_ds.push(self.image_size / res);
        }
        let downsamples = channel_mult.len() as u32 - 1;
        if self.image_size % (1 << downsamples) != 0 {
            bail!("image_size {} is not divisible by 2^{downsamples} (one halving per extra channel_mult level)", self.image_size);
        }
        let num_heads_upsample = if self.num_heads_upsample == -1 { self.num_heads } else { self.num_heads_upsample };
        let spec = UNetSpec {
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
        Ok(spec)
    }

    fn validate_widths(&self, spec: &UNetSpec) -> Result<()> {
        // Every GroupNorm input width: level widths and decoder concatenations, all multiples of
        // the level widths, so checking the level widths and the model width suffices.
        let mut widths = vec![spec.model_channels];
        for l in 0..spec.channel_mult.len() {
            let w = spec.level_width(l);
            if w <= 0 {
                bail!("channel_mult[{l}] gives a non-positive width {w}");
            }
            widths.push(w);
        }
        for &w in &widths {
            if w % 32 != 0 {
                bail!("channel width {w} is not divisible by GroupNorm's 32 groups (num_channels={}, channel_mult={:?})", spec.model_channels, spec.channel_mult);
            }
        }
        if spec.num_head_channels == -1 && (spec.num_heads <= 0 || spec.num_heads_upsample <= 0) {
            bail!("num_heads must be positive when num_head_channels is -1");
        }
        let mut ds = 1;
        for l in 0..spec.channel_mult.len() {
            if spec.attention_ds.contains(&ds) {
                let w = spec.level_width(l);
                for upsample in [false, true] {
                    let heads = if spec.num_head_channels != -1 {
                        if w % spec.num_head_channels != 0 {
                            bail!("num_head_channels {} does not divide attention width {w}", spec.num_head_channels);
                        }
                        w / spec.num_head_channels
                    } else {
                        spec.heads_for(w, upsample)
                    };
                    if heads <= 0 || w % heads != 0 {
                        bail!("{heads} heads do not divide attention width {w}");
                    }
                }
            }
            ds *= 2;
        }
        if !(0.0..1.0).contains(&spec.dropout) {
            bail!("dropout must be in [0, 1), got {}", spec.dropout);
        }
        Ok(())
    }

    fn validate_diffusion(&self) -> Result<()> {
        if self.diffusion_steps <= 0 {
            bail!("diffusion_steps must be positive");
        }
        if !["linear", "cosine"].contains(&self.noise_schedule.as_str()) {
            bail!("unknown noise_schedule {:?} (linear or cosine)", self.noise_schedule);
        }
        Ok(())
    }
}

pub const PRESETS: &[&str] = &["imagenet64", "ffhq256"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_mult_forms() {
        for text in [r#"{"channel_mult":"1,2,2"}"#, r#"{"channel_mult":[1,2,2]}"#] {
            let c = ModelConfig::from_json(text, "t").unwrap();
            assert_eq!(c.channel_mult, vec![1.0, 2.0, 2.0]);
        }
        let c = ModelConfig::from_json(r#"{"channel_mult":"", "image_size":64}"#, "t").unwrap();
        assert_eq!(c.resolve().unwrap().channel_mult, vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn rejects_unknown_and_impossible() {
        let e = ModelConfig::from_json(r#"{"num_chanels":64}"#, "t").unwrap_err();
        assert!(format!("{e:#}").contains("num_chanels"), "{e:#}");
        let c = ModelConfig::from_json(r#"{"num_channels":48,"image_size":32}"#, "t").unwrap();
        assert!(format!("{:#}", c.resolve().unwrap_err()).contains("32 groups"));
        let c = ModelConfig::from_json(r#"{"num_channels":64,"image_size":32,"num_heads":3}"#, "t").unwrap();
        assert!(format!("{:#}", c.resolve().unwrap_err()).contains("heads"));
        let c = ModelConfig::from_json(r#"{"noise_schedule":"sqrt"}"#, "t").unwrap();
        assert!(c.resolve().is_err());
    }

    #[test]
    fn presets_resolve() {
        let s = ModelConfig::preset("imagenet64").unwrap().resolve().unwrap();
        assert_eq!(s.attention_ds, vec![4, 8]);
        assert_eq!(s.out_channels, 6);
        let s = ModelConfig::preset("ffhq256").unwrap().resolve().unwrap();
        assert_eq!(s.attention_ds, vec![16]);
        assert_eq!(s.heads_for(512, false), 8);
        assert!(ModelConfig::preset("nope").is_err());
    }
}
