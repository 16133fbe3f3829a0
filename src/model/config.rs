//! Model and diffusion configuration with the official flag names, plus presets.
//!
//! A config file is the JSON form of the official `script_util` flags. Missing keys take the
//! improved-diffusion defaults; unknown keys are an error (a typo would otherwise silently
//! build a different model).

use crate::diffusion::{respace, Diffusion, LossType, MeanType, VarType};
use crate::util::limits::{MAX_CHANNEL_MULT, MAX_IMAGE_SIZE, MAX_LEVELS, MAX_NUM_CHANNELS, MAX_PARAMS, MAX_RES_BLOCKS};
use anyhow::{bail, Context, Result};
use tch::Device;
use serde::{Deserialize, Deserializer, Serialize};
use std::path::Path;

/// Official flags, as written in a config file. Use [`ModelConfig::resolve`] to get a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    #[serde(deserialize_with = "de_int")]
    pub image_size: i64,
    #[serde(deserialize_with = "de_int")]
    pub num_channels: i64,
    #[serde(deserialize_with = "de_int_list")]
    pub channel_mult: Vec<f64>,
    #[serde(deserialize_with = "de_int")]
    pub num_res_blocks: i64,
    /// Pixel resolutions (`"16,8"`), converted to downsample factors by `resolve`.
    #[serde(deserialize_with = "de_int_list")]
    pub attention_resolutions: Vec<f64>,
    #[serde(deserialize_with = "de_int")]
    pub num_heads: i64,
    #[serde(deserialize_with = "de_int")]
    pub num_head_channels: i64,
    #[serde(deserialize_with = "de_int")]
    pub num_heads_upsample: i64,
    pub learn_sigma: bool,
    pub class_cond: bool,
    pub use_scale_shift_norm: bool,
    pub resblock_updown: bool,
    pub use_new_attention_order: bool,
    pub dropout: f64,
    #[serde(deserialize_with = "de_int")]
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
    /// The model family: official (built from the flags above), or a diffusers folder's. Written
    /// as the `diffusers` key (absent for official models), as it always was; never by hand:
    /// `--checkpoint DIR` fills it in.
    #[serde(rename = "diffusers", skip_serializing_if = "Family::is_adm", with = "family_field")]
    pub family: Family,
}

/// Which code a model comes from.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Family {
    /// The official improved/guided-diffusion UNet and `GaussianDiffusion`, from the flags of
    /// [`ModelConfig`].
    #[default]
    Adm,
    /// A diffusers `UNet2DModel` with its scheduler (the files as read). The network and the
    /// schedule come from these files; of the flags only `image_size` is used (it equals
    /// `sample_size`), and `summarise_diffusers` fills a few others in for reports.
    Diffusers(crate::diffusers::DiffusersFiles),
}

impl Family {
    pub fn is_adm(&self) -> bool {
        matches!(self, Family::Adm)
    }

    /// The diffusers files, for what only a diffusers model has (its export folder).
    pub fn diffusers_files(&self) -> Option<&crate::diffusers::DiffusersFiles> {
        match self {
            Family::Diffusers(files) => Some(files),
            Family::Adm => None,
        }
    }
}

/// `family` as the optional `diffusers` object of a config file.
mod family_field {
    use super::Family;
    use crate::diffusers::DiffusersFiles;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(family: &Family, s: S) -> Result<S::Ok, S::Error> {
        family.diffusers_files().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Family, D::Error> {
        Ok(match Option::<DiffusersFiles>::deserialize(d)? {
            Some(files) => Family::Diffusers(files),
            None => Family::Adm,
        })
    }
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
            family: Family::Adm,
        }
    }
}

/// An integer flag. JSON numbers written as floats are accepted when they are whole
/// (`64.0`, `1e7`) so that the range checks of [`ModelConfig::resolve`] can name the limit;
/// fractions and values beyond ±2^53 are errors.
fn de_int<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<i64, D::Error> {
    use serde::de::Error;
    match serde_json::Number::deserialize(d)? {
        n if n.is_i64() => Ok(n.as_i64().unwrap_or_default()),
        n if n.is_u64() => Err(D::Error::custom(format!("{n} is too large"))),
        n => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() != 0.0 || !f.is_finite() {
                Err(D::Error::custom(format!("expected a whole number, got {f}")))
            } else if f.abs() > 9.007_199_254_740_992e15 {
                Err(D::Error::custom(format!("{f} is too large")))
            } else {
                Ok(f as i64)
            }
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
    let v = match Raw::deserialize(d)? {
        Raw::L(v) => v,
        Raw::N(n) => vec![n],
        Raw::S(s) => s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| p.parse::<f64>().map_err(|e| serde::de::Error::custom(format!("bad number {p:?} in list: {e}"))))
            .collect::<std::result::Result<_, _>>()?,
    };
    if v.len() > 64 {
        return Err(serde::de::Error::custom(format!("a list of {} numbers is too long", v.len())));
    }
    Ok(v)
}

/// Largest model config file read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

fn check_range(key: &str, v: i64, lo: i64, hi: i64) -> Result<()> {
    if v < lo {
        bail!("model config: {key} must be at least {lo}, got {v}");
    }
    if v > hi {
        bail!("model config: {key} = {v} is above the limit of {hi}");
    }
    Ok(())
}

/// Edit distance, for "did you mean" on unknown keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `"…text before the error…"` of line `line` up to `column` (1-based), for JSON syntax errors.
fn context_at(text: &str, line: usize, column: usize) -> String {
    let l = text.lines().nth(line.saturating_sub(1)).unwrap_or("");
    let upto: String = l.chars().take(column).collect();
    let start = upto.chars().count().saturating_sub(40);
    upto.chars().skip(start).collect::<String>().trim().to_string()
}

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
    /// Parses a config file's JSON. Errors name the offending key: unknown keys (with the
    /// closest known one), values of the wrong type, and JSON syntax errors (with the text
    /// before the error). Value ranges are checked by [`ModelConfig::resolve`].
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            let near = context_at(text, e.line(), e.column());
            anyhow::anyhow!("invalid model config {origin}: not valid JSON: {e} (after `{near}`)")
        })?;
        let Some(obj) = value.as_object() else {
            bail!("invalid model config {origin}: expected a JSON object of flags ({{\"image_size\": 64, …}})");
        };
        let known = match serde_json::to_value(ModelConfig::default())? {
            serde_json::Value::Object(m) => m,
            _ => unreachable!("a struct serialises to an object"),
        };
        if obj.contains_key("block_out_channels") || obj.get("_class_name").and_then(|v| v.as_str()) == Some("UNet2DModel") {
            bail!("invalid model config {origin}: this is a diffusers UNet2DModel config; give its model folder as --checkpoint DIR (without --model-config)");
        }
        for (k, v) in obj {
            if !known.contains_key(k) {
                let best = known.keys().min_by_key(|c| edit_distance(k, c)).filter(|c| edit_distance(k, c) <= 3);
                match best {
                    Some(c) => bail!("invalid model config {origin}: unknown key {k:?} (did you mean {c:?}?)"),
                    None => bail!("invalid model config {origin}: unknown key {k:?}"),
                }
            }
            let mut single = serde_json::Map::new();
            single.insert(k.clone(), v.clone());
            if let Err(e) = serde_json::from_value::<ModelConfig>(serde_json::Value::Object(single)) {
                bail!("invalid model config {origin}: key {k:?}: {e}");
            }
        }
        serde_json::from_value(value).with_context(|| format!("invalid model config {origin}"))
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read model config {}", path.display()))?;
        if !meta.is_file() {
            bail!("model config {} is not a regular file", path.display());
        }
        if meta.len() > MAX_CONFIG_BYTES {
            bail!("model config {} is {} bytes, above the limit of {MAX_CONFIG_BYTES} bytes for a JSON config", path.display(), meta.len());
        }
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
            bail!("model config: channel_mult has {} levels, above the limit of {MAX_LEVELS}", channel_mult.len());
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
                bail!("model config: attention resolution {res} does not divide image_size {}", self.image_size);
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
            bail!("model config: num_head_channels must be -1 (use num_heads) or at least 1, got {}", self.num_head_channels);
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
            bail!("model config: dropout must be in [0, 1), got {}", self.dropout);
        }
        let num_heads_upsample = if self.num_heads_upsample == -1 { self.num_heads } else { self.num_heads_upsample };
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
            bail!("model config: image_size {} differs from the diffusers sample_size {}", self.image_size, cfg.sample_size);
        }
        self.validate_diffusion()?;
        let params = cfg.num_params();
        if params > MAX_PARAMS {
            bail!("diffusers config: this UNet would have {} parameters, above the limit of {}", crate::util::fmt_count(params.min(i64::MAX as u64) as i64), crate::util::fmt_count(MAX_PARAMS as i64));
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
                    let key = if upsample { "num_heads_upsample" } else { "num_heads" };
                    if heads <= 0 || w % heads != 0 {
                        bail!("model config: {key} {heads} does not divide attention width {w}");
                    }
                }
            }
            ds *= 2;
        }
        Ok(())
    }

    fn validate_p2(&self) -> Result<()> {
        // P2 weighting uses γ of 0.5 to 2; at large γ the weights (k + SNR)^-γ underflow and the
        // MSE term silently vanishes.
        if !(0.0..=10.0).contains(&self.p2_gamma) {
            bail!("model config: p2_gamma must lie in [0, 10] (P2 uses 0.5 to 2), got {}", crate::util::fmt_num(self.p2_gamma));
        }
        if !self.p2_k.is_finite() || self.p2_k < 0.0 || (self.p2_k == 0.0 && self.p2_gamma > 0.0) {
            bail!("model config: p2_k must be a finite number > 0, got {}", self.p2_k);
        }
        Ok(())
    }

    /// For a diffusers model: fills the official summary fields from its files — T into
    /// `diffusion_steps`, the beta schedule's name into `noise_schedule`, the UNet's dropout into
    /// `dropout` — so a run's config.json and resume checks state what is used. Nothing reads them
    /// to build the model or the schedule.
    pub fn summarise_diffusers(&mut self) -> Result<()> {
        let Family::Diffusers(files) = &self.family else { return Ok(()) };
        let sched = files.scheduler_config()?;
        self.diffusion_steps = sched.num_train_timesteps as i64;
        self.noise_schedule = sched.schedule_name;
        self.dropout = files.unet_config()?.dropout;
        Ok(())
    }

    /// "T = 1000 cosine schedule", or the diffusers scheduler's, for reports.
    pub fn schedule_summary(&self) -> String {
        match self.family.diffusers_files().and_then(|f| f.scheduler_config().ok()) {
            Some(s) => {
                format!("the diffusers {}'s T = {} {} schedule ({} prediction)", s.class_name, s.num_train_timesteps, s.schedule_name, s.prediction.name())
            }
            _ => format!("T = {} {} schedule", self.diffusion_steps, self.noise_schedule),
        }
    }

    /// The respacing a model samples with when none is asked for: `None` (every step, the
    /// official sampler and `DDPMPipeline`), or `ddim50` for a diffusers model whose scheduler is
    /// a `DDIMScheduler` (`DDIMPipeline`'s default; fewer if the schedule is shorter).
    pub fn default_sampling(&self) -> Option<String> {
        let sched = self.family.diffusers_files()?.scheduler_config().ok()?;
        (sched.class_name == "DDIMScheduler").then(|| format!("ddim{}", sched.num_train_timesteps.min(50)))
    }

    /// The sampler respacing to use where the user gave none and the command's default is
    /// `default`: the model's own default ([`ModelConfig::default_sampling`]) if it has one, else
    /// `default`; and when that does not fit the schedule, every step (`T`), or failing that
    /// (a diffusers `steps_offset` can push T steps past the schedule) the most steps that fit.
    /// The flag says whether it had to fall back (callers print a note).
    pub fn default_respacing(&self, default: &str) -> (String, bool) {
        let spec = self.default_sampling().unwrap_or_else(|| default.to_string());
        if self.validate_respacing(&spec).is_ok() {
            return (spec, false);
        }
        let t = self.diffusion_steps;
        let fallback = [t, 1000, 500, 250, 100, 50, 25, 10, 5, 2, 1]
            .into_iter()
            .filter(|&n| n >= 1 && n <= t)
            .map(|n| n.to_string())
            .find(|n| self.validate_respacing(n).is_ok())
            .unwrap_or_else(|| t.to_string());
        (fallback, true)
    }

    /// Checks a sampler respacing (`--respacing`, `--eval-respacing`, …) against this model's
    /// schedule: the official forms for official models, one step count for diffusers models.
    pub fn validate_respacing(&self, spec: &str) -> Result<()> {
        if let Family::Diffusers(files) = &self.family {
            return files.scheduler_config()?.respaced_timesteps(spec).map(|_| ());
        }
        crate::diffusion::respace::validate(spec, self.diffusion_steps.max(0) as usize)
    }

    /// Checks the diffusion flags: `diffusion_steps` in 2..=100000, a known `noise_schedule`
    /// whose betas all lie in (0, 1) (the linear schedule needs more than 20 steps), the P2
    /// weights and `timestep_respacing`.
    pub fn validate_diffusion(&self) -> Result<()> {
        if !self.family.is_adm() {
            self.validate_p2()?;
            return self.validate_respacing(&self.timestep_respacing).context("model config: invalid timestep_respacing");
        }
        let max = crate::diffusion::respace::MAX_DIFFUSION_STEPS as i64;
        check_range("diffusion_steps", self.diffusion_steps, 2, max)?;
        if !["linear", "cosine"].contains(&self.noise_schedule.as_str()) {
            bail!("model config: unknown noise_schedule {:?} (linear or cosine)", self.noise_schedule);
        }
        let steps = self.diffusion_steps as usize;
        let betas = crate::diffusion::respace::beta_schedule(&self.noise_schedule, steps)?;
        if let Some(i) = betas.iter().position(|b| !(b.is_finite() && *b > 0.0 && *b < 1.0)) {
            bail!(
                "model config: noise_schedule {} with diffusion_steps {steps} gives beta[{i}] = {} outside (0, 1); use more diffusion_steps",
                self.noise_schedule,
                betas[i]
            );
        }
        self.validate_p2()?;
        crate::diffusion::respace::validate(&self.timestep_respacing, steps).context("model config: invalid timestep_respacing")?;
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
            gn(i) + conv(i, o, 3) + lin(emb, emb_out) + gn(o) + conv(o, o, 3) + if i != o { conv(i, o, 1) } else { 0 }
        };
        let attn = |ch: u64| gn(ch) + (ch * 3 * ch + 3 * ch) + (ch * ch + ch);
        let resample = |ch: u64| if self.resblock_updown { res(ch, ch) } else { conv(ch, ch, 3) };
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

pub const PRESETS: &[&str] = &["imagenet64", "ffhq256"];

#[cfg(test)]
mod tests {
    use super::*;

    fn adm(spec: UNetSpec) -> AdmSpec {
        match spec {
            UNetSpec::Adm(s) => s,
            UNetSpec::Diffusers(_) => panic!("an official config resolved to a diffusers spec"),
        }
    }

    #[test]
    fn channel_mult_forms() {
        for text in [r#"{"channel_mult":"1,2,2"}"#, r#"{"channel_mult":[1,2,2]}"#] {
            let c = ModelConfig::from_json(text, "t").unwrap();
            assert_eq!(c.channel_mult, vec![1.0, 2.0, 2.0]);
        }
        let c = ModelConfig::from_json(r#"{"channel_mult":"", "image_size":64}"#, "t").unwrap();
        assert_eq!(adm(c.resolve().unwrap()).channel_mult, vec![1.0, 2.0, 3.0, 4.0]);
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

    fn resolve_err(json: &str) -> String {
        match ModelConfig::from_json(json, "t") {
            Err(e) => format!("{e:#}"),
            Ok(c) => format!("{:#}", c.resolve().expect_err(json)),
        }
    }

    #[test]
    fn runaway_and_invalid_values_name_the_key() {
        let base = r#""image_size":8,"num_channels":32,"channel_mult":"1","attention_resolutions":"8","num_heads":2,"diffusion_steps":100"#;
        for (extra, needles) in [
            (r#""num_res_blocks":1e7"#, &["num_res_blocks", "10000000", "limit of 16"][..]),
            (r#""num_res_blocks":10000000"#, &["num_res_blocks", "limit of 16"]),
            (r#""num_res_blocks":1.5"#, &["num_res_blocks", "whole number"]),
            (r#""num_res_blocks":0"#, &["num_res_blocks", "at least 1"]),
            (r#""num_res_blocks":-3"#, &["num_res_blocks", "at least 1"]),
            (r#""num_res_blocks":"two""#, &["num_res_blocks"]),
            (r#""num_res_blocks":18446744073709551615"#, &["num_res_blocks", "too large"]),
            (r#""num_res_blocks":1e300"#, &["num_res_blocks", "too large"]),
            (r#""image_size":1099511627776"#, &["image_size", "limit of 1024"]),
            (r#""num_channels":1e9"#, &["num_channels", "limit of 1024"]),
            (r#""num_channels":1024,"channel_mult":"16,16,16""#, &["parameters", "limit"]),
            (r#""channel_mult":"0""#, &["channel_mult[0]"]),
            (r#""channel_mult":"1,-2""#, &["channel_mult[1]"]),
            (r#""channel_mult":"nan""#, &["channel_mult[0]"]),
            (r#""channel_mult":"1,1,1,1,1,1,1,1,1,1,1,1""#, &["channel_mult", "levels"]),
            (r#""channel_mult":"1,2,2,2,2""#, &["image_size 8", "2^4"]),
            (r#""attention_resolutions":"3""#, &["attention resolution 3"]),
            (r#""attention_resolutions":"0""#, &["attention_resolutions"]),
            (r#""attention_resolutions":"4""#, &["never reached"]),
            (r#""num_heads":0"#, &["num_heads", "at least 1"]),
            (r#""num_heads":3"#, &["num_heads 3"]),
            (r#""num_head_channels":0"#, &["num_head_channels"]),
            (r#""num_head_channels":-5"#, &["num_head_channels"]),
            (r#""num_head_channels":24"#, &["num_head_channels 24"]),
            (r#""num_heads_upsample":0"#, &["num_heads_upsample"]),
            (r#""dropout":1.0"#, &["dropout"]),
            (r#""dropout":-0.1"#, &["dropout"]),
            (r#""diffusion_steps":0"#, &["diffusion_steps", "at least 2"]),
            (r#""diffusion_steps":1e12"#, &["diffusion_steps", "limit of 100000"]),
            (r#""diffusion_steps":10"#, &["diffusion_steps 10", "beta"]),
            (r#""noise_schedule":"sqrt""#, &["noise_schedule", "sqrt"]),
            (r#""timestep_respacing":"0""#, &["timestep_respacing", "0 steps"]),
            (r#""timestep_respacing":"ddim500""#, &["timestep_respacing", "only 100"]),
            (r#""p2_gamma":-1"#, &["p2_gamma"]),
            (r#""p2_gamma":1,"p2_k":0"#, &["p2_k"]),
            (r#""learn_sigma":1"#, &["learn_sigma"]),
            (r#""num_chanels":64"#, &["num_chanels", "did you mean \"num_channels\""]),
            (r#""block_out_channels":[32,64]"#, &["diffusers UNet2DModel config", "--checkpoint DIR"]),
        ] {
            let json = format!("{{{base},{extra}}}");
            let e = resolve_err(&json);
            assert!(!e.contains('\n'), "{json}: multi-line: {e}");
            for n in needles {
                assert!(e.contains(n), "{json}: {e:?} lacks {n:?}");
            }
        }
        let ok = ModelConfig::from_json(&format!("{{{base},\"num_res_blocks\":2.0}}"), "t").unwrap();
        assert_eq!(ok.num_res_blocks, 2);
        ok.resolve().unwrap();
        for (text, needle) in [("[1,2]", "JSON object"), ("{\"image_size\": 2^40}", "image_size\": 2"), ("", "not valid JSON"), ("{\"image_size\": 1e400}", "image_size")] {
            let e = format!("{:#}", ModelConfig::from_json(text, "t").unwrap_err());
            assert!(e.contains(needle) && !e.contains('\n'), "{text}: {e}");
        }
    }

    #[test]
    fn parameter_count_without_building() {
        assert_eq!(ModelConfig::preset("imagenet64").unwrap().resolve().unwrap().num_params(), 121_063_942);
        assert_eq!(ModelConfig::preset("ffhq256").unwrap().resolve().unwrap().num_params(), 93_563_910);
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for name in ["adm-fixed-xstart", "adm-kl-small", "adm-plain", "adm-sigma-small", "adm-updown", "iddpm-tiny", "variants"] {
            let mut cfg = ModelConfig::from_file(&dir.join(name).join("config.json")).unwrap();
            cfg.class_cond = name == "variants";
            let m = crate::model::Model::new(&cfg, &Default::default(), tch::Device::Cpu).unwrap();
            let built: i64 = m.vs.variables().values().map(|t| t.numel() as i64).sum();
            assert_eq!(m.spec.num_params(), built as u64, "{name}");
        }
    }

    #[test]
    fn presets_resolve() {
        let s = adm(ModelConfig::preset("imagenet64").unwrap().resolve().unwrap());
        assert_eq!(s.attention_ds, vec![4, 8]);
        assert_eq!(s.out_channels, 6);
        let s = adm(ModelConfig::preset("ffhq256").unwrap().resolve().unwrap());
        assert_eq!(s.attention_ds, vec![16]);
        assert_eq!(s.heads_for(512, false), 8);
        assert!(ModelConfig::preset("nope").is_err());
    }
}

/// The model configs of a diffusers folder (the folder itself is read by `crate::diffusers`).
impl crate::diffusers::Folder {
    /// The model config a3ft builds from this folder.
    pub fn model_config(&self) -> crate::model::config::ModelConfig {
        crate::model::config::ModelConfig {
            image_size: self.image_size,
            family: Family::Diffusers(self.files.clone()),
            ..Default::default()
        }
    }

    /// The model config of a folder whose weights are not needed (timing the network).
    pub fn config_only(dir: &Path) -> Result<crate::model::config::ModelConfig> {
        let (_, files, _, image_size) = Self::read_configs(dir)?;
        Ok(ModelConfig { image_size, family: Family::Diffusers(files), ..Default::default() })
    }
}

/// The diffusion of a model config (the process itself is in `crate::diffusion`, which knows
/// nothing of configs).
impl crate::diffusion::Diffusion {
    /// Builds the (respaced) diffusion of a model config. `respacing` overrides
    /// `timestep_respacing` when given (`""` = all steps).
    pub fn from_config(cfg: &ModelConfig, respacing: Option<&str>, device: Device) -> Result<Diffusion> {
        // Steps, schedule and the config's own respacing; a bad one is an error, never a panic.
        cfg.validate_diffusion()?;
        if let Family::Diffusers(files) = &cfg.family {
            return Self::from_scheduler(&files.scheduler_config()?, respacing.unwrap_or(&cfg.timestep_respacing), (cfg.p2_gamma, cfg.p2_k), device);
        }
        let t = cfg.diffusion_steps as usize;
        let base = respace::beta_schedule(&cfg.noise_schedule, t)?;
        let keep = respace::space_timesteps(t, respacing.unwrap_or(&cfg.timestep_respacing))?;
        if keep.is_empty() {
            anyhow::bail!("the respacing keeps no diffusion steps");
        }
        let (betas, map) = respace::respaced_betas(&base, &keep);
        let mean_type = if cfg.predict_xstart { MeanType::StartX } else { MeanType::Epsilon };
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
        Ok(Diffusion::new(betas, map, t, mean_type, var_type, loss_type, cfg.rescale_timesteps, (cfg.p2_gamma, cfg.p2_k), device))
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
        ModelConfig { noise_schedule: schedule.into(), diffusion_steps: t, learn_sigma: true, ..Default::default() }
    }

    #[test]
    fn reference_vectors() {
        let d = Diffusion::from_config(&cfg("cosine", 4000), None, Device::Cpu).unwrap();
        let ac = d.host("alphas_cumprod");
        close(ac[0], 0.9999901341811863, 1e-13);
        close(ac[2000], 0.49345397967426397, 1e-12);
        close(ac[3999], 1.5179804688514517e-10, 1e-9);
        let plv = d.host("posterior_log_variance_clipped");
        close(plv[0], -12.204537145969704, 1e-12);
        close(plv[1], -12.204537145969704, 1e-12);
        close(plv[2], -11.88720820365687, 1e-12);
        close(d.host("posterior_mean_coef1")[1], 0.5075765921997202, 1e-12);
        close(d.host("posterior_mean_coef2")[1], 0.492423407789176, 1e-12);

        let d = Diffusion::from_config(&cfg("linear", 1000), None, Device::Cpu).unwrap();
        let ac = d.host("alphas_cumprod");
        close(ac[999], 4.035829765375676e-05, 1e-11);
        close(ac[500], 0.07779665836502389, 1e-12);
        let plv = d.host("posterior_log_variance_clipped");
        close(plv[0], -9.81672513529567, 1e-12);
        close(plv[2], -9.36712149736664, 1e-12);

        let d = Diffusion::from_config(&cfg("linear", 1000), Some("250"), Device::Cpu).unwrap();
        let b = d.host("betas");
        close(b[0], 9.999999999998899e-05, 1e-10);
        close(b[1], 5.990655644756426e-04, 1e-11);
        close(b[2], 9.176029928172902e-04, 1e-11);
        close(b[248], 0.07721930545605926, 1e-11);
        close(b[249], 0.07751934499235003, 1e-11);
        close(d.host("posterior_log_variance_clipped")[0], -9.364628159803084, 1e-12);
    }

    #[test]
    fn p2_weights() {
        let mut c = cfg("linear", 1000);
        c.p2_gamma = 1.0;
        c.p2_k = 1.0;
        let d = Diffusion::from_config(&c, None, Device::Cpu).unwrap();
        let w = d.host("p2_weight");
        close(w[0], 9.9999999999989e-05, 1e-9);
        close(w[500], 0.9222033416349761, 1e-12);
        close(w[999], 0.9999596417023462, 1e-12);
        c.p2_gamma = 0.5;
        let d = Diffusion::from_config(&c, None, Device::Cpu).unwrap();
        let w = d.host("p2_weight");
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
        let d = Diffusion::from_config(&cfg("cosine", 4000), Some("ddim50"), Device::Cpu).unwrap();
        let v: Vec<f32> = Vec::try_from(d.model_timesteps(&Tensor::from_slice(&[1i64, 49]))).unwrap();
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
