//! `config.json` of a diffusers `UNet2DModel`, read into a checked, typed form.
//!
//! Key names and defaults are diffusers' own (`UNet2DModel.__init__`). Every value a3ft cannot
//! reproduce exactly is an error naming the key: a silently different network would sample
//! garbage from a good checkpoint.

use super::keys::{class_name, Keys};
use crate::util::limits::{MAX_IMAGE_SIZE, MAX_LEVELS, MAX_NUM_CHANNELS, MAX_RES_BLOCKS};
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

const UNET_KEYS: &[&str] = &[
    "sample_size",
    "in_channels",
    "out_channels",
    "center_input_sample",
    "time_embedding_type",
    "time_embedding_dim",
    "freq_shift",
    "flip_sin_to_cos",
    "down_block_types",
    "mid_block_type",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "mid_block_scale_factor",
    "downsample_padding",
    "downsample_type",
    "upsample_type",
    "dropout",
    "act_fn",
    "attention_head_dim",
    "norm_num_groups",
    "attn_norm_num_groups",
    "norm_eps",
    "resnet_time_scale_shift",
    "add_attention",
    "class_embed_type",
    "num_class_embeds",
    "num_train_timesteps",
];

/// Per block of `key`: false for the plain type, true for the one with attention (either may
/// carry diffusers' optional `UNetRes` prefix); any other type is an error naming it.
fn attention_flags(
    types: &[String],
    key: &str,
    [plain, attn]: [&str; 2],
    origin: &str,
) -> Result<Vec<bool>> {
    types
        .iter()
        .map(|t| match t.strip_prefix("UNetRes").unwrap_or(t) {
            x if x == plain => Ok(false),
            x if x == attn => Ok(true),
            other => bail!("{origin}: key {key:?}: {other:?} is not supported ({plain}, {attn})"),
        })
        .collect()
}

impl UNet2D {
    /// Reads `config.json` of a `UNet2DModel` (`origin` names the file in errors).
    pub fn from_json(map: &Map<String, Value>, origin: &str) -> Result<UNet2D> {
        let map = &super::keys::as_diffusers_reads(map, origin)?;
        let k = Keys { map, origin };
        if let Some(class) = class_name(map, origin)? {
            if class != "UNet2DModel" {
                bail!("{origin}: _class_name {class:?} is not a UNet2DModel (a3ft fine-tunes unconditional UNet2DModel checkpoints)");
            }
        }
        // `auto_map` names an A³FT export's runtime module, which a3ft does not need: it builds
        // the adapter itself when the weights hold one.
        k.only(UNET_KEYS, &["auto_map"])?;
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
        let block_out_channels = k
            .int_list("block_out_channels")?
            .unwrap_or_else(|| vec![224, 448, 672, 896]);
        let levels = block_out_channels.len();
        if levels == 0 || levels > MAX_LEVELS {
            bail!("{origin}: key \"block_out_channels\" must have 1..={MAX_LEVELS} entries, got {levels}");
        }
        let default_down = [
            "DownBlock2D",
            "AttnDownBlock2D",
            "AttnDownBlock2D",
            "AttnDownBlock2D",
        ]
        .map(String::from)
        .to_vec();
        let default_up = [
            "AttnUpBlock2D",
            "AttnUpBlock2D",
            "AttnUpBlock2D",
            "UpBlock2D",
        ]
        .map(String::from)
        .to_vec();
        let down = k.str_list("down_block_types")?.unwrap_or(default_down);
        let up = k.str_list("up_block_types")?.unwrap_or(default_up);
        if down.len() != levels || up.len() != levels {
            bail!(
                "{origin}: down_block_types ({}), up_block_types ({}) and block_out_channels ({levels}) must have the same length",
                down.len(),
                up.len()
            );
        }
        let down_attention = attention_flags(
            &down,
            "down_block_types",
            ["DownBlock2D", "AttnDownBlock2D"],
            origin,
        )?;
        let up_attention = attention_flags(
            &up,
            "up_block_types",
            ["UpBlock2D", "AttnUpBlock2D"],
            origin,
        )?;
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
                bail!(
                    "{origin}: block_out_channels[{i}] = {w} is outside 1..={}",
                    MAX_NUM_CHANNELS * 4
                );
            }
            if w % norm_num_groups != 0 {
                bail!("{origin}: block_out_channels[{i}] = {w} is not divisible by norm_num_groups {norm_num_groups}");
            }
        }
        let downsamples = levels as u32 - 1;
        if sample_size % (1i64 << downsamples) != 0 {
            bail!("{origin}: sample_size {sample_size} is not divisible by 2^{downsamples} (one halving per extra block)");
        }
        let resnet_time_scale_shift = k.one_of(
            "resnet_time_scale_shift",
            "default",
            &["default", "scale_shift"],
        )?;
        let scale_shift = resnet_time_scale_shift == "scale_shift";
        let attn_norm_num_groups = k.opt_int("attn_norm_num_groups")?;
        let attention_head_dim =
            k.opt_int("attention_head_dim")?
                .or(if map.contains_key("attention_head_dim") {
                    None
                } else {
                    Some(8)
                });
        let add_attention = k.boolean("add_attention", true)?;
        let mid_attention_groups =
            attn_norm_num_groups.or((!scale_shift).then_some(norm_num_groups));
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
                attention_widths
                    .push((format!("up_blocks.{i}"), block_out_channels[levels - 1 - i]));
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
        let time_embed_dim = k
            .opt_int("time_embedding_dim")?
            .unwrap_or(block_out_channels[0] * 4);
        if !(1..=MAX_NUM_CHANNELS * 16).contains(&time_embed_dim) {
            bail!(
                "{origin}: key \"time_embedding_dim\" = {time_embed_dim} is outside 1..={}",
                MAX_NUM_CHANNELS * 16
            );
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
            bail!("{origin}: key \"mid_block_scale_factor\" = {mid_block_scale_factor:e} is (almost) 0; the mid block divides by it");
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
            resnet_downsample: k.one_of("downsample_type", "conv", &["conv", "resnet"])?
                == "resnet",
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
            gn(i)
                + conv(i, o, 3)
                + lin(emb, e)
                + gn(o)
                + conv(o, o, 3)
                + if i != o { conv(i, o, 1) } else { 0 }
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
                n += if self.down_attention[l] && self.resnet_downsample {
                    res(ch, ch)
                } else {
                    conv(ch, ch, 3)
                };
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
                n += if self.up_attention[i] && self.resnet_upsample {
                    res(ch, ch)
                } else {
                    conv(ch, ch, 3)
                };
            }
        }
        n + gn(ch) + conv(ch, c(self.out_channels), 3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusers::keys::obj;

    #[test]
    fn unsupported_values_name_their_key() {
        let base = r#""sample_size":16,"block_out_channels":[32,64],"down_block_types":["DownBlock2D","AttnDownBlock2D"],"up_block_types":["AttnUpBlock2D","UpBlock2D"]"#;
        UNet2D::from_json(&obj(&format!("{{{base}}}")), "c").unwrap();
        for (extra, needle) in [
            (r#""time_embedding_type":"fourier""#, "time_embedding_type"),
            (r#""num_class_embeds":10"#, "num_class_embeds"),
            (r#""norm_num_groups":24"#, "norm_num_groups 24"),
            (r#""attention_head_dim":48"#, "attention_head_dim"),
            (
                r#""resnet_time_scale_shift":"spatial""#,
                "resnet_time_scale_shift",
            ),
            (r#""layers_per_block":100"#, "layers_per_block"),
            (r#""sample_size":17"#, "sample_size 17"),
            (r#""frobnicate":1"#, "frobnicate"),
            (r#""act_fn":"gelu""#, "act_fn"),
            (r#""downsample_type":"fir""#, "downsample_type"),
            (r#""in_channels":4"#, "in_channels"),
            (r#""layers_per_block":2.0"#, "layers_per_block"),
            (r#""downsample_padding":null"#, "downsample_padding"),
            (
                r#""resnet_time_scale_shift":null"#,
                "resnet_time_scale_shift",
            ),
            (
                r#""mid_block_scale_factor":1e-320"#,
                "mid_block_scale_factor",
            ),
            (r#""freq_shift":16.0000001"#, "freq_shift"),
            (r#""_class_name":5"#, "_class_name"),
        ] {
            let text = format!("{{{base},{extra}}}");
            let e = format!("{:#}", UNet2D::from_json(&obj(&text), "c").unwrap_err());
            assert!(e.contains(needle) && !e.contains('\n'), "{extra}: {e}");
        }
        let mut types = obj(&format!("{{{base}}}"));
        types.insert(
            "down_block_types".into(),
            serde_json::json!(["CrossAttnDownBlock2D", "DownBlock2D"]),
        );
        assert!(format!("{:#}", UNet2D::from_json(&types, "c").unwrap_err())
            .contains("CrossAttnDownBlock2D"));
    }

    #[test]
    fn null_flags_are_false_as_in_python() {
        let base = r#""sample_size":16,"block_out_channels":[32,64],"down_block_types":["DownBlock2D","AttnDownBlock2D"],"up_block_types":["AttnUpBlock2D","UpBlock2D"]"#;
        let c = UNet2D::from_json(
            &obj(&format!(
                "{{{base},\"flip_sin_to_cos\":null,\"add_attention\":null}}"
            )),
            "c",
        )
        .unwrap();
        assert!(!c.flip_sin_to_cos && !c.add_attention);
    }
}
