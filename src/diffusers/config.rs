//! The two JSON files of a diffusers model: `UNet2DModel`'s `config.json` and the scheduler's
//! `scheduler_config.json`, read into checked, typed forms.
//!
//! Key names and defaults are diffusers' own (`UNet2DModel.__init__`, `DDPMScheduler` /
//! `DDIMScheduler`). Every value a3ft cannot reproduce exactly is an error naming the key: a
//! silently different network or schedule would sample garbage from a good checkpoint.

use crate::config::{MAX_IMAGE_SIZE, MAX_LEVELS, MAX_NUM_CHANNELS, MAX_RES_BLOCKS};
use anyhow::{bail, Result};
use serde_json::{Map, Value};

/// A validated `UNet2DModel` configuration (the options the unconditional checkpoints use).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UNet2D {
    pub sample_size: i64,
    pub in_channels: i64,
    pub out_channels: i64,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub time_embed_dim: i64,
    /// Per down block (input order): `AttnDownBlock2D`?
    pub down_attention: Vec<bool>,
    /// Per up block (in `up_blocks` order, deepest first): `AttnUpBlock2D`?
    pub up_attention: Vec<bool>,
    pub block_out_channels: Vec<i64>,
    pub layers_per_block: i64,
    /// `mid_block_type` is `UNetMidBlock2D` (not null).
    pub mid_block: bool,
    pub mid_block_scale_factor: f64,
    pub downsample_padding: i64,
    /// `downsample_type == "resnet"` (applies to `AttnDownBlock2D` only, as in diffusers).
    pub resnet_downsample: bool,
    /// `upsample_type == "resnet"` (applies to `AttnUpBlock2D` only).
    pub resnet_upsample: bool,
    pub dropout: f64,
    /// `attention_head_dim`; `None` = one head as wide as the block.
    pub attention_head_dim: Option<i64>,
    pub norm_num_groups: i64,
    /// Groups of the mid block's attention norm; `None` = that attention has no norm.
    pub mid_attention_groups: Option<i64>,
    pub norm_eps: f64,
    pub scale_shift: bool,
    pub add_attention: bool,
}

/// How the prediction of the network is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Prediction {
    Epsilon,
    Sample,
    VPrediction,
}

/// A validated DDPM/DDIM scheduler configuration.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Scheduler {
    pub class_name: String,
    pub num_train_timesteps: usize,
    /// β_t, computed as diffusers does (f32 linspace / squaredcos_cap_v2 / trained_betas).
    pub betas: Vec<f64>,
    pub prediction: Prediction,
    /// `fixed_small`, `fixed_small_log`, `fixed_large` or `learned_range`.
    pub variance_type: String,
    /// `clip_sample_range` when `clip_sample` is on.
    pub clip: Option<f64>,
    /// `leading`, `trailing` or `linspace`.
    pub timestep_spacing: String,
    pub steps_offset: i64,
    /// DDIM's `set_alpha_to_one` (true unless the file says otherwise).
    pub set_alpha_to_one: bool,
}

impl Scheduler {
    pub fn learned_variance(&self) -> bool {
        self.variance_type == "learned_range"
    }
}

/// Typed access to one JSON object with errors naming `origin` and the key.
struct Keys<'a> {
    map: &'a Map<String, Value>,
    origin: &'a str,
}

impl Keys<'_> {
    fn err(&self, key: &str, what: &str) -> anyhow::Error {
        let got = self.map.get(key).map(|v| v.to_string()).unwrap_or_default();
        let got: String = got.chars().take(60).collect();
        anyhow::anyhow!("{}: key {key:?} {what} (got {got})", self.origin)
    }
    /// The value, `None` when absent or null (for the keys where null means "none").
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }
    /// The value, `None` when absent; null is an error (diffusers would pass `None` on and fail).
    fn present(&self, key: &str) -> Result<Option<&Value>> {
        match self.map.get(key) {
            Some(Value::Null) => Err(self.err(key, "must not be null")),
            v => Ok(v),
        }
    }
    /// A JSON integer (`2.0` is a float to Python, and diffusers fails on it where it counts).
    fn int(&self, key: &str, default: i64) -> Result<i64> {
        match self.present(key)? {
            None => Ok(default),
            Some(v) => v.as_i64().ok_or_else(|| self.err(key, "must be an integer")),
        }
    }
    /// An integer, or `None` when absent or null (keys whose default is null).
    fn opt_int(&self, key: &str) -> Result<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| self.err(key, "must be an integer or null")),
        }
    }
    fn float(&self, key: &str, default: f64) -> Result<f64> {
        match self.present(key)? {
            None => Ok(default),
            Some(v) => v.as_f64().filter(|f| f.is_finite()).ok_or_else(|| self.err(key, "must be a finite number")),
        }
    }
    /// A flag as diffusers reads it: absent takes the default, null is Python's falsy `None`.
    fn boolean(&self, key: &str, default: bool) -> Result<bool> {
        match self.map.get(key) {
            None => Ok(default),
            Some(Value::Null) => Ok(false),
            Some(v) => v.as_bool().ok_or_else(|| self.err(key, "must be true or false")),
        }
    }
    fn string(&self, key: &str, default: &str) -> Result<String> {
        match self.present(key)? {
            None => Ok(default.to_string()),
            Some(v) => v.as_str().map(String::from).ok_or_else(|| self.err(key, "must be a string")),
        }
    }
    fn one_of(&self, key: &str, default: &str, allowed: &[&str]) -> Result<String> {
        let s = self.string(key, default)?;
        if !allowed.contains(&s.as_str()) {
            bail!("{}: key {key:?} = {s:?} is not supported by a3ft (supported: {})", self.origin, allowed.join(", "));
        }
        Ok(s)
    }
    fn list(&self, key: &str) -> Result<Option<&Vec<Value>>> {
        self.list_of_at_most(key, 64)
    }
    fn list_of_at_most(&self, key: &str, max: usize) -> Result<Option<&Vec<Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) if a.len() <= max => Ok(Some(a)),
            Some(Value::Array(a)) => Err(self.err(key, &format!("has {} entries, above the limit of {max}", a.len()))),
            Some(_) => Err(self.err(key, "must be a list")),
        }
    }
    fn int_list(&self, key: &str) -> Result<Option<Vec<i64>>> {
        self.present(key)?;
        let Some(a) = self.list(key)? else { return Ok(None) };
        a.iter().map(|v| v.as_i64().ok_or_else(|| self.err(key, "must be a list of whole numbers"))).collect::<Result<_>>().map(Some)
    }
    fn str_list(&self, key: &str) -> Result<Option<Vec<String>>> {
        self.present(key)?;
        let Some(a) = self.list(key)? else { return Ok(None) };
        a.iter().map(|v| v.as_str().map(String::from).ok_or_else(|| self.err(key, "must be a list of strings"))).collect::<Result<_>>().map(Some)
    }
    /// Refuses keys outside `known` (keys starting with `_` are diffusers' bookkeeping).
    fn only(&self, known: &[&str], ignored: &[&str]) -> Result<()> {
        for k in self.map.keys() {
            if !k.starts_with('_') && !known.contains(&k.as_str()) && !ignored.contains(&k.as_str()) {
                bail!("{}: key {k:?} is not a UNet2DModel/scheduler option a3ft knows; it cannot build this model exactly", self.origin);
            }
        }
        Ok(())
    }
}

const UNET_KEYS: &[&str] = &[
    "sample_size", "in_channels", "out_channels", "center_input_sample", "time_embedding_type", "time_embedding_dim",
    "freq_shift", "flip_sin_to_cos", "down_block_types", "mid_block_type", "up_block_types", "block_out_channels",
    "layers_per_block", "mid_block_scale_factor", "downsample_padding", "downsample_type", "upsample_type", "dropout",
    "act_fn", "attention_head_dim", "norm_num_groups", "attn_norm_num_groups", "norm_eps", "resnet_time_scale_shift",
    "add_attention", "class_embed_type", "num_class_embeds", "num_train_timesteps",
];

/// `_class_name`, which must be a string when present.
fn class_name<'a>(map: &'a Map<String, Value>, origin: &str) -> Result<Option<&'a str>> {
    match map.get("_class_name") {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => bail!("{origin}: key \"_class_name\" must be a string (got {other})"),
    }
}

/// Block type without diffusers' optional `UNetRes` prefix.
fn block_type(s: &str) -> &str {
    s.strip_prefix("UNetRes").unwrap_or(s)
}

impl UNet2D {
    /// Reads `config.json` of a `UNet2DModel` (`origin` names the file in errors).
    pub fn from_json(map: &Map<String, Value>, origin: &str) -> Result<UNet2D> {
        let k = Keys { map, origin };
        if let Some(class) = class_name(map, origin)? {
            if class != "UNet2DModel" {
                bail!("{origin}: _class_name {class:?} is not a UNet2DModel (a3ft fine-tunes unconditional UNet2DModel checkpoints)");
            }
        }
        k.only(UNET_KEYS, &[])?;
        let sample_size = match k.get("sample_size") {
            None => bail!("{origin}: key \"sample_size\" is missing; a3ft needs the image size the model was trained at"),
            Some(Value::Array(a)) => match a.as_slice() {
                [h, w] if h == w => h.as_i64().ok_or_else(|| k.err("sample_size", "must hold whole numbers"))?,
                _ => bail!("{origin}: key \"sample_size\" must be one number or a square [H, H] (a3ft trains square images)"),
            },
            Some(_) => k.int("sample_size", 0)?,
        };
        if !(1..=MAX_IMAGE_SIZE).contains(&sample_size) {
            bail!("{origin}: key \"sample_size\" = {sample_size} is outside 1..={MAX_IMAGE_SIZE}");
        }
        let in_channels = k.int("in_channels", 3)?;
        if in_channels != 3 {
            bail!("{origin}: key \"in_channels\" = {in_channels}; a3ft fine-tunes RGB image models (3)");
        }
        let out_channels = k.int("out_channels", 3)?;
        if out_channels != 3 && out_channels != 6 {
            bail!("{origin}: key \"out_channels\" = {out_channels}; expected 3 (or 6 with a learned variance)");
        }
        k.one_of("time_embedding_type", "positional", &["positional"])?;
        k.one_of("act_fn", "silu", &["silu", "swish"])?;
        if k.get("class_embed_type").is_some() || k.get("num_class_embeds").is_some() {
            bail!("{origin}: keys \"class_embed_type\"/\"num_class_embeds\" make a class-conditional model; a3ft fine-tunes unconditional ones");
        }
        let block_out_channels = k.int_list("block_out_channels")?.unwrap_or_else(|| vec![224, 448, 672, 896]);
        let levels = block_out_channels.len();
        if levels == 0 || levels > MAX_LEVELS {
            bail!("{origin}: key \"block_out_channels\" must have 1..={MAX_LEVELS} entries, got {levels}");
        }
        let default_down = ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"].map(String::from).to_vec();
        let default_up = ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"].map(String::from).to_vec();
        let down = k.str_list("down_block_types")?.unwrap_or(default_down);
        let up = k.str_list("up_block_types")?.unwrap_or(default_up);
        if down.len() != levels || up.len() != levels {
            bail!(
                "{origin}: down_block_types ({}), up_block_types ({}) and block_out_channels ({levels}) must have the same length",
                down.len(),
                up.len()
            );
        }
        let down_attention = down
            .iter()
            .map(|t| match block_type(t) {
                "DownBlock2D" => Ok(false),
                "AttnDownBlock2D" => Ok(true),
                other => bail!("{origin}: key \"down_block_types\": {other:?} is not supported (DownBlock2D, AttnDownBlock2D)"),
            })
            .collect::<Result<Vec<_>>>()?;
        let up_attention = up
            .iter()
            .map(|t| match block_type(t) {
                "UpBlock2D" => Ok(false),
                "AttnUpBlock2D" => Ok(true),
                other => bail!("{origin}: key \"up_block_types\": {other:?} is not supported (UpBlock2D, AttnUpBlock2D)"),
            })
            .collect::<Result<Vec<_>>>()?;
        let mid_block = match k.get("mid_block_type") {
            None if map.contains_key("mid_block_type") => false,
            _ => {
                k.one_of("mid_block_type", "UNetMidBlock2D", &["UNetMidBlock2D"])?;
                true
            }
        };
        let layers_per_block = k.int("layers_per_block", 2)?;
        if !(1..=MAX_RES_BLOCKS).contains(&layers_per_block) {
            bail!("{origin}: key \"layers_per_block\" = {layers_per_block} is outside 1..={MAX_RES_BLOCKS}");
        }
        let norm_num_groups = match k.opt_int("norm_num_groups")? {
            Some(g) => g,
            None if map.contains_key("norm_num_groups") => {
                bail!("{origin}: key \"norm_num_groups\" = null is not supported (UNet2DModel's resnets need a group count)")
            }
            None => 32,
        };
        if norm_num_groups < 1 {
            bail!("{origin}: key \"norm_num_groups\" must be at least 1, got {norm_num_groups}");
        }
        for (i, &w) in block_out_channels.iter().enumerate() {
            if !(1..=MAX_NUM_CHANNELS * 4).contains(&w) {
                bail!("{origin}: block_out_channels[{i}] = {w} is outside 1..={}", MAX_NUM_CHANNELS * 4);
            }
            if w % norm_num_groups != 0 {
                bail!("{origin}: block_out_channels[{i}] = {w} is not divisible by norm_num_groups {norm_num_groups}");
            }
        }
        let downsamples = levels as u32 - 1;
        if sample_size % (1i64 << downsamples) != 0 {
            bail!("{origin}: sample_size {sample_size} is not divisible by 2^{downsamples} (one halving per extra block)");
        }
        let resnet_time_scale_shift = k.one_of("resnet_time_scale_shift", "default", &["default", "scale_shift"])?;
        let scale_shift = resnet_time_scale_shift == "scale_shift";
        let attn_norm_num_groups = k.opt_int("attn_norm_num_groups")?;
        let attention_head_dim = k.opt_int("attention_head_dim")?.or(if map.contains_key("attention_head_dim") { None } else { Some(8) });
        let add_attention = k.boolean("add_attention", true)?;
        let mid_attention_groups = attn_norm_num_groups.or((!scale_shift).then_some(norm_num_groups));
        // Every attention width must split into whole heads and norm groups.
        let deepest = *block_out_channels.last().unwrap_or(&1);
        let mut attention_widths: Vec<(String, i64)> = Vec::new();
        for (i, &a) in down_attention.iter().enumerate() {
            if a {
                attention_widths.push((format!("down_blocks.{i}"), block_out_channels[i]));
            }
        }
        for (i, &a) in up_attention.iter().enumerate() {
            if a {
                attention_widths.push((format!("up_blocks.{i}"), block_out_channels[levels - 1 - i]));
            }
        }
        if mid_block && add_attention {
            attention_widths.push(("mid_block".into(), deepest));
            if let Some(g) = mid_attention_groups {
                if g < 1 || deepest % g != 0 {
                    bail!("{origin}: key \"attn_norm_num_groups\" = {g} does not divide the mid block width {deepest}");
                }
            }
        }
        if let Some(d) = attention_head_dim {
            if d < 1 {
                bail!("{origin}: key \"attention_head_dim\" must be at least 1, got {d}");
            }
            for (block, w) in &attention_widths {
                if w % d != 0 {
                    bail!("{origin}: key \"attention_head_dim\" = {d} does not divide the attention width {w} of {block}");
                }
            }
        }
        let time_embed_dim = k.opt_int("time_embedding_dim")?.unwrap_or(block_out_channels[0] * 4);
        if !(1..=MAX_NUM_CHANNELS * 16).contains(&time_embed_dim) {
            bail!("{origin}: key \"time_embedding_dim\" = {time_embed_dim} is outside 1..={}", MAX_NUM_CHANNELS * 16);
        }
        let downsample_padding = k.int("downsample_padding", 1)?;
        if !(0..=1).contains(&downsample_padding) {
            bail!("{origin}: key \"downsample_padding\" = {downsample_padding} is not supported (0 or 1)");
        }
        let dropout = k.float("dropout", 0.0)?;
        if !(0.0..1.0).contains(&dropout) {
            bail!("{origin}: key \"dropout\" must be in [0, 1), got {dropout}");
        }
        let norm_eps = k.float("norm_eps", 1e-5)?;
        if norm_eps <= 0.0 {
            bail!("{origin}: key \"norm_eps\" must be positive, got {norm_eps}");
        }
        let mid_block_scale_factor = k.float("mid_block_scale_factor", 1.0)?;
        if mid_block_scale_factor.abs() < 1e-30 {
            bail!("{origin}: key \"mid_block_scale_factor\" = {mid_block_scale_factor} is (almost) 0; the mid block divides by it");
        }
        let freq_shift = k.float("freq_shift", 0.0)?;
        let half = (block_out_channels[0] / 2) as f64;
        if half <= 0.0 || (half - freq_shift).abs() < 1e-3 {
            bail!("{origin}: key \"freq_shift\" = {freq_shift} leaves no usable frequencies for a {}-wide time embedding (it divides by {half} − freq_shift)", block_out_channels[0]);
        }
        Ok(UNet2D {
            sample_size,
            in_channels,
            out_channels,
            center_input_sample: k.boolean("center_input_sample", false)?,
            flip_sin_to_cos: k.boolean("flip_sin_to_cos", true)?,
            freq_shift,
            time_embed_dim,
            down_attention,
            up_attention,
            block_out_channels,
            layers_per_block,
            mid_block,
            mid_block_scale_factor,
            downsample_padding,
            resnet_downsample: k.one_of("downsample_type", "conv", &["conv", "resnet"])? == "resnet",
            resnet_upsample: k.one_of("upsample_type", "conv", &["conv", "resnet"])? == "resnet",
            dropout,
            attention_head_dim,
            norm_num_groups,
            mid_attention_groups,
            norm_eps,
            scale_shift,
            add_attention,
        })
    }

    /// Heads of an attention block of `width` channels.
    pub fn heads(&self, width: i64) -> i64 {
        match self.attention_head_dim {
            Some(d) => width / d,
            None => 1,
        }
    }

    /// Parameter count, computed without building anything (checked against a built model).
    pub fn num_params(&self) -> u64 {
        let c = |x: i64| x.max(0) as u64;
        let conv = |i: u64, o: u64, k: u64| i * o * k * k + o;
        let lin = |i: u64, o: u64| i * o + o;
        let gn = |ch: u64| 2 * ch;
        let emb = c(self.time_embed_dim);
        let res = |i: u64, o: u64| {
            let e = if self.scale_shift { 2 * o } else { o };
            gn(i) + conv(i, o, 3) + lin(emb, e) + gn(o) + conv(o, o, 3) + if i != o { conv(i, o, 1) } else { 0 }
        };
        let attn = |ch: u64, norm: bool| if norm { gn(ch) } else { 0 } + 4 * lin(ch, ch);
        let widths: Vec<u64> = self.block_out_channels.iter().map(|&w| c(w)).collect();
        let levels = widths.len();
        let mut n = lin(widths[0], emb) + lin(emb, emb) + conv(c(self.in_channels), widths[0], 3);
        let mut chans = vec![widths[0]];
        let mut ch = widths[0];
        for (l, &w) in widths.iter().enumerate() {
            for _ in 0..self.layers_per_block {
                n += res(ch, w);
                ch = w;
                if self.down_attention[l] {
                    n += attn(ch, true);
                }
                chans.push(ch);
            }
            if l != levels - 1 {
                n += if self.down_attention[l] && self.resnet_downsample { res(ch, ch) } else { conv(ch, ch, 3) };
                chans.push(ch);
            }
        }
        if self.mid_block {
            n += 2 * res(ch, ch);
            if self.add_attention {
                n += attn(ch, self.mid_attention_groups.is_some());
            }
        }
        for (i, &w) in widths.iter().rev().enumerate() {
            for _ in 0..=self.layers_per_block {
                let skip = chans.pop().unwrap_or(0);
                n += res(ch + skip, w);
                ch = w;
                if self.up_attention[i] {
                    n += attn(ch, true);
                }
            }
            if i != levels - 1 {
                n += if self.up_attention[i] && self.resnet_upsample { res(ch, ch) } else { conv(ch, ch, 3) };
            }
        }
        n + gn(ch) + conv(ch, c(self.out_channels), 3)
    }
}

const SCHEDULER_KEYS: &[&str] = &[
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "variance_type", "clip_sample",
    "clip_sample_range", "prediction_type", "thresholding", "dynamic_thresholding_ratio", "sample_max_value",
    "timestep_spacing", "steps_offset", "set_alpha_to_one", "rescale_betas_zero_snr",
];
/// Keys of older diffusers releases that change nothing a3ft computes.
const SCHEDULER_LEGACY_KEYS: &[&str] = &["tensor_format", "skip_prk_steps"];

/// numpy/torch `linspace` in f32 arithmetic as torch computes it (step from the start for the
/// first half, from the end for the second), returned as f64.
fn linspace_f32(start: f64, end: f64, n: usize) -> Vec<f64> {
    let (s, e) = (start as f32, end as f32);
    if n == 1 {
        return vec![s as f64];
    }
    let step = (e - s) / (n - 1) as f32;
    let half = n / 2;
    (0..n).map(|i| if i < half { s + step * i as f32 } else { e - step * (n - 1 - i) as f32 } as f64).collect()
}

impl Scheduler {
    /// Reads `scheduler_config.json` (a `DDPMScheduler` or `DDIMScheduler`).
    pub fn from_json(map: &Map<String, Value>, origin: &str) -> Result<Scheduler> {
        let k = Keys { map, origin };
        let class_name = class_name(map, origin)?.unwrap_or("DDPMScheduler").to_string();
        if !["DDPMScheduler", "DDIMScheduler"].contains(&class_name.as_str()) {
            bail!("{origin}: _class_name {class_name:?} is not supported (DDPMScheduler or DDIMScheduler; a3ft samples with ancestral DDPM or DDIM steps)");
        }
        k.only(SCHEDULER_KEYS, SCHEDULER_LEGACY_KEYS)?;
        let t = k.int("num_train_timesteps", 1000)?;
        let max = crate::diffusion::respace::MAX_DIFFUSION_STEPS as i64;
        if !(2..=max).contains(&t) {
            bail!("{origin}: key \"num_train_timesteps\" = {t} is outside 2..={max}");
        }
        let t = t as usize;
        let betas = match k.list_of_at_most("trained_betas", t)? {
            Some(list) => {
                let b: Vec<f64> = list.iter().map(|v| v.as_f64().ok_or_else(|| k.err("trained_betas", "must be a list of numbers"))).collect::<Result<_>>()?;
                if b.len() != t {
                    bail!("{origin}: key \"trained_betas\" has {} values for {t} num_train_timesteps", b.len());
                }
                b
            }
            None => {
                let start = k.float("beta_start", 0.0001)?;
                let end = k.float("beta_end", 0.02)?;
                match k.one_of("beta_schedule", "linear", &["linear", "scaled_linear", "squaredcos_cap_v2"])?.as_str() {
                    "linear" => linspace_f32(start, end, t),
                    "scaled_linear" => {
                        if start < 0.0 || end < 0.0 {
                            bail!("{origin}: scaled_linear needs beta_start and beta_end ≥ 0");
                        }
                        linspace_f32(start.sqrt(), end.sqrt(), t).iter().map(|b| ((*b as f32) * (*b as f32)) as f64).collect()
                    }
                    _ => crate::diffusion::respace::beta_schedule("cosine", t)?,
                }
            }
        };
        if let Some(i) = betas.iter().position(|b| !(b.is_finite() && *b > 0.0 && *b < 1.0)) {
            bail!("{origin}: the schedule gives beta[{i}] = {} outside (0, 1) (check beta_start, beta_end, trained_betas)", betas[i]);
        }
        // Below this 1 − β is 1 in f32: ᾱ stays 1 and every x0 prediction divides by 0.
        if let Some(i) = betas.iter().position(|b| 1.0 - (*b as f32) == 1.0) {
            bail!("{origin}: the schedule gives beta[{i}] = {:e}, too small to change anything in f32 (1 − β rounds to 1)", betas[i]);
        }
        let prediction = match k.one_of("prediction_type", "epsilon", &["epsilon", "sample", "v_prediction"])?.as_str() {
            "epsilon" => Prediction::Epsilon,
            "sample" => Prediction::Sample,
            _ => Prediction::VPrediction,
        };
        let variance_type =
            k.one_of("variance_type", "fixed_small", &["fixed_small", "fixed_small_log", "fixed_large", "learned_range"])?;
        if k.boolean("thresholding", false)? {
            bail!("{origin}: key \"thresholding\" = true (dynamic thresholding) is not supported; set it to false");
        }
        if k.boolean("rescale_betas_zero_snr", false)? {
            bail!("{origin}: key \"rescale_betas_zero_snr\" = true is not supported");
        }
        let clip = k.boolean("clip_sample", true)?;
        let clip_range = k.float("clip_sample_range", 1.0)?;
        if clip && clip_range <= 0.0 {
            bail!("{origin}: key \"clip_sample_range\" must be positive, got {clip_range}");
        }
        let steps_offset = k.int("steps_offset", 0)?;
        if !(0..t as i64).contains(&steps_offset) {
            bail!("{origin}: key \"steps_offset\" = {steps_offset} is outside 0..{t}");
        }
        Ok(Scheduler {
            class_name,
            num_train_timesteps: t,
            betas,
            prediction,
            variance_type,
            clip: clip.then_some(clip_range),
            timestep_spacing: k.one_of("timestep_spacing", "leading", &["leading", "trailing", "linspace"])?,
            steps_offset,
            set_alpha_to_one: k.boolean("set_alpha_to_one", true)?,
        })
    }

    /// The timesteps `set_timesteps(n)` keeps, ascending, and the timestep DDIM steps to from
    /// each (`t − T/n`, diffusers' DDIM rule; negative = the final ᾱ).
    pub fn inference_timesteps(&self, n: usize) -> Result<(Vec<i64>, Vec<i64>)> {
        let t = self.num_train_timesteps;
        if n == 0 || n > t {
            bail!("{n} inference steps: the scheduler has {t} training timesteps (choose 1..={t})");
        }
        let mut ts: Vec<i64> = match self.timestep_spacing.as_str() {
            "leading" => {
                let ratio = (t / n) as i64;
                (0..n as i64).map(|i| i * ratio + self.steps_offset).collect()
            }
            "trailing" => {
                // np.round(np.arange(T, 0, -T/n)) - 1
                let ratio = t as f64 / n as f64;
                (0..n).map(|k| (t as f64 + k as f64 * -ratio).round_ties_even() as i64 - 1).collect()
            }
            // np.linspace(0, T - 1, n).round()
            _ => {
                let step = if n > 1 { (t - 1) as f64 / (n - 1) as f64 } else { 0.0 };
                (0..n).map(|i| if i + 1 == n && n > 1 { (t - 1) as i64 } else { (i as f64 * step).round_ties_even() as i64 }).collect()
            }
        };
        ts.sort_unstable();
        ts.dedup();
        if let Some(bad) = ts.iter().find(|&&x| x < 0 || x >= t as i64) {
            bail!("{n} inference steps with steps_offset {} give timestep {bad} outside 0..{t}", self.steps_offset);
        }
        let ratio = (t / n) as i64;
        let prev = ts.iter().map(|&x| x - ratio).collect();
        Ok((ts, prev))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(s: &str) -> Map<String, Value> {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn unsupported_values_name_their_key() {
        let base = r#""sample_size":16,"block_out_channels":[32,64],"down_block_types":["DownBlock2D","AttnDownBlock2D"],"up_block_types":["AttnUpBlock2D","UpBlock2D"]"#;
        UNet2D::from_json(&obj(&format!("{{{base}}}")), "c").unwrap();
        for (extra, needle) in [
            (r#""time_embedding_type":"fourier""#, "time_embedding_type"),
            (r#""num_class_embeds":10"#, "num_class_embeds"),
            (r#""norm_num_groups":24"#, "norm_num_groups 24"),
            (r#""attention_head_dim":48"#, "attention_head_dim"),
            (r#""resnet_time_scale_shift":"spatial""#, "resnet_time_scale_shift"),
            (r#""layers_per_block":100"#, "layers_per_block"),
            (r#""sample_size":17"#, "sample_size 17"),
            (r#""frobnicate":1"#, "frobnicate"),
            (r#""act_fn":"gelu""#, "act_fn"),
            (r#""downsample_type":"fir""#, "downsample_type"),
            (r#""in_channels":4"#, "in_channels"),
            (r#""layers_per_block":2.0"#, "layers_per_block"),
            (r#""downsample_padding":null"#, "downsample_padding"),
            (r#""resnet_time_scale_shift":null"#, "resnet_time_scale_shift"),
            (r#""mid_block_scale_factor":1e-320"#, "mid_block_scale_factor"),
            (r#""freq_shift":16.0000001"#, "freq_shift"),
            (r#""_class_name":5"#, "_class_name"),
        ] {
            let text = format!("{{{base},{extra}}}");
            let e = format!("{:#}", UNet2D::from_json(&obj(&text), "c").unwrap_err());
            assert!(e.contains(needle) && !e.contains('\n'), "{extra}: {e}");
        }
        let mut types = obj(&format!("{{{base}}}"));
        types.insert("down_block_types".into(), serde_json::json!(["CrossAttnDownBlock2D", "DownBlock2D"]));
        assert!(format!("{:#}", UNet2D::from_json(&types, "c").unwrap_err()).contains("CrossAttnDownBlock2D"));
        for (text, needle) in [
            (r#"{"beta_schedule":"sigmoid"}"#, "beta_schedule"),
            (r#"{"prediction_type":"flow"}"#, "prediction_type"),
            (r#"{"variance_type":"learned"}"#, "variance_type"),
            (r#"{"thresholding":true}"#, "thresholding"),
            (r#"{"_class_name":"PNDMScheduler"}"#, "PNDMScheduler"),
            (r#"{"num_train_timesteps":0}"#, "num_train_timesteps"),
            (r#"{"beta_end":2.0}"#, "beta"),
            (r#"{"num_train_timesteps":3,"trained_betas":[0.1,0.2]}"#, "trained_betas"),
            (r#"{"num_train_timesteps":2,"trained_betas":[0.1,1.5]}"#, "beta[1]"),
            (r#"{"num_train_timesteps":2,"trained_betas":[1e-320,1e-320]}"#, "beta[0]"),
            (r#"{"prediction_type":null}"#, "prediction_type"),
            (r#"{"steps_offset":null}"#, "steps_offset"),
            (r#"{"num_train_timesteps":null}"#, "num_train_timesteps"),
        ] {
            let e = format!("{:#}", Scheduler::from_json(&obj(text), "s").unwrap_err());
            assert!(e.contains(needle) && !e.contains('\n'), "{text}: {e}");
        }
    }

    #[test]
    fn null_flags_are_false_as_in_python() {
        let base = r#""sample_size":16,"block_out_channels":[32,64],"down_block_types":["DownBlock2D","AttnDownBlock2D"],"up_block_types":["AttnUpBlock2D","UpBlock2D"]"#;
        let c = UNet2D::from_json(&obj(&format!("{{{base},\"flip_sin_to_cos\":null,\"add_attention\":null}}")), "c").unwrap();
        assert!(!c.flip_sin_to_cos && !c.add_attention);
        let s = Scheduler::from_json(&obj(r#"{"clip_sample":null,"set_alpha_to_one":null,"clip_sample_range":0}"#), "s").unwrap();
        assert!(s.clip.is_none() && !s.set_alpha_to_one);
    }

    #[test]
    fn trained_betas_of_a_full_schedule_are_read() {
        let betas: Vec<f64> = (0..1000).map(|i| 1e-4 + i as f64 * 2e-5).collect();
        let text = serde_json::json!({"trained_betas": betas}).to_string();
        let read = Scheduler::from_json(&obj(&text), "s").unwrap().betas;
        assert_eq!(read.len(), 1000);
        assert!(read.iter().zip(&betas).all(|(a, b)| (a - b).abs() < 1e-15));
    }

    #[test]
    fn inference_timesteps_follow_diffusers() {
        let s = Scheduler::from_json(&obj("{}"), "s").unwrap();
        let (ts, prev) = s.inference_timesteps(50).unwrap();
        assert_eq!((ts[0], ts[49], prev[0]), (0, 980, -20));
        let s = Scheduler::from_json(&obj(r#"{"timestep_spacing":"trailing"}"#), "s").unwrap();
        let (ts, _) = s.inference_timesteps(50).unwrap();
        assert_eq!((ts[0], ts[49]), (19, 999));
        let s = Scheduler::from_json(&obj(r#"{"steps_offset":1}"#), "s").unwrap();
        assert_eq!(s.inference_timesteps(10).unwrap().0[0], 1);
        assert!(s.inference_timesteps(0).is_err() && s.inference_timesteps(1001).is_err());
    }
}
