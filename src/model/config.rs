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
    pub timestep_respacing: crate::diffusion::respace::Respacing,
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
    #[serde(
        rename = "diffusers",
        skip_serializing_if = "Family::is_adm",
        with = "family_field"
    )]
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
            timestep_respacing: crate::diffusion::respace::Respacing::All,
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
                Err(D::Error::custom(format!(
                    "expected a whole number, got {f}"
                )))
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
            .map(|p| {
                p.parse::<f64>()
                    .map_err(|e| serde::de::Error::custom(format!("bad number {p:?} in list: {e}")))
            })
            .collect::<std::result::Result<_, _>>()?,
    };
    if v.len() > 64 {
        return Err(serde::de::Error::custom(format!(
            "a list of {} numbers is too long",
            v.len()
        )));
    }
    Ok(v)
}

/// Largest model config file read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

pub(crate) fn check_range(key: &str, v: i64, lo: i64, hi: i64) -> Result<()> {
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
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
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
    upto.chars()
        .skip(start)
        .collect::<String>()
        .trim()
        .to_string()
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
        if obj.contains_key("block_out_channels")
            || obj.get("_class_name").and_then(|v| v.as_str()) == Some("UNet2DModel")
        {
            bail!("invalid model config {origin}: this is a diffusers UNet2DModel config; give its model folder as --checkpoint DIR (without --model-config)");
        }
        for (k, v) in obj {
            if !known.contains_key(k) {
                let best = known
                    .keys()
                    .min_by_key(|c| edit_distance(k, c))
                    .filter(|c| edit_distance(k, c) <= 3);
                match best {
                    Some(c) => bail!(
                        "invalid model config {origin}: unknown key {k:?} (did you mean {c:?}?)"
                    ),
                    None => bail!("invalid model config {origin}: unknown key {k:?}"),
                }
            }
            let mut single = serde_json::Map::new();
            single.insert(k.clone(), v.clone());
            if let Err(e) = serde_json::from_value::<ModelConfig>(serde_json::Value::Object(single))
            {
                bail!("invalid model config {origin}: key {k:?}: {e}");
            }
        }
        serde_json::from_value(value).with_context(|| format!("invalid model config {origin}"))
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot read model config {}", path.display()))?;
        if !meta.is_file() {
            bail!("model config {} is not a regular file", path.display());
        }
        if meta.len() > MAX_CONFIG_BYTES {
            bail!("model config {} is {} bytes, above the limit of {MAX_CONFIG_BYTES} bytes for a JSON config", path.display(), meta.len());
        }
        let text = crate::util::files::read_text_at_most(path, MAX_CONFIG_BYTES)
            .context("cannot read the model config")?;
        Self::from_json(&text, &path.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::spec::{AdmSpec, UNetSpec};

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
        assert_eq!(
            adm(c.resolve().unwrap()).channel_mult,
            vec![1.0, 2.0, 3.0, 4.0]
        );
    }

    #[test]
    fn rejects_unknown_and_impossible() {
        let e = ModelConfig::from_json(r#"{"num_chanels":64}"#, "t").unwrap_err();
        assert!(format!("{e:#}").contains("num_chanels"), "{e:#}");
        let c = ModelConfig::from_json(r#"{"num_channels":48,"image_size":32}"#, "t").unwrap();
        assert!(format!("{:#}", c.resolve().unwrap_err()).contains("32 groups"));
        let c = ModelConfig::from_json(r#"{"num_channels":64,"image_size":32,"num_heads":3}"#, "t")
            .unwrap();
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
            (
                r#""num_res_blocks":1e7"#,
                &["num_res_blocks", "10000000", "limit of 16"][..],
            ),
            (
                r#""num_res_blocks":10000000"#,
                &["num_res_blocks", "limit of 16"],
            ),
            (
                r#""num_res_blocks":1.5"#,
                &["num_res_blocks", "whole number"],
            ),
            (r#""num_res_blocks":0"#, &["num_res_blocks", "at least 1"]),
            (r#""num_res_blocks":-3"#, &["num_res_blocks", "at least 1"]),
            (r#""num_res_blocks":"two""#, &["num_res_blocks"]),
            (
                r#""num_res_blocks":18446744073709551615"#,
                &["num_res_blocks", "too large"],
            ),
            (
                r#""num_res_blocks":1e300"#,
                &["num_res_blocks", "too large"],
            ),
            (
                r#""image_size":1099511627776"#,
                &["image_size", "limit of 1024"],
            ),
            (r#""num_channels":1e9"#, &["num_channels", "limit of 1024"]),
            (
                r#""num_channels":1024,"channel_mult":"16,16,16""#,
                &["parameters", "limit"],
            ),
            (r#""channel_mult":"0""#, &["channel_mult[0]"]),
            (r#""channel_mult":"1,-2""#, &["channel_mult[1]"]),
            (r#""channel_mult":"nan""#, &["channel_mult[0]"]),
            (
                r#""channel_mult":"1,1,1,1,1,1,1,1,1,1,1,1""#,
                &["channel_mult", "levels"],
            ),
            (r#""channel_mult":"1,2,2,2,2""#, &["image_size 8", "2^4"]),
            (
                r#""attention_resolutions":"3""#,
                &["attention resolution 3"],
            ),
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
            (
                r#""diffusion_steps":1e12"#,
                &["diffusion_steps", "limit of 100000"],
            ),
            (r#""diffusion_steps":10"#, &["diffusion_steps 10", "beta"]),
            (r#""noise_schedule":"sqrt""#, &["noise_schedule", "sqrt"]),
            (
                r#""timestep_respacing":"0""#,
                &["timestep_respacing", "0 steps"],
            ),
            (
                r#""timestep_respacing":"ddim500""#,
                &["timestep_respacing", "only 100"],
            ),
            (r#""p2_gamma":-1"#, &["p2_gamma"]),
            (r#""p2_gamma":1,"p2_k":0"#, &["p2_k"]),
            (r#""learn_sigma":1"#, &["learn_sigma"]),
            (
                r#""num_chanels":64"#,
                &["num_chanels", "did you mean \"num_channels\""],
            ),
            (
                r#""block_out_channels":[32,64]"#,
                &["diffusers UNet2DModel config", "--checkpoint DIR"],
            ),
        ] {
            let json = format!("{{{base},{extra}}}");
            let e = resolve_err(&json);
            assert!(!e.contains('\n'), "{json}: multi-line: {e}");
            for n in needles {
                assert!(e.contains(n), "{json}: {e:?} lacks {n:?}");
            }
        }
        let ok =
            ModelConfig::from_json(&format!("{{{base},\"num_res_blocks\":2.0}}"), "t").unwrap();
        assert_eq!(ok.num_res_blocks, 2);
        ok.resolve().unwrap();
        for (text, needle) in [
            ("[1,2]", "JSON object"),
            ("{\"image_size\": 2^40}", "image_size\": 2"),
            ("", "not valid JSON"),
            ("{\"image_size\": 1e400}", "image_size"),
        ] {
            let e = format!("{:#}", ModelConfig::from_json(text, "t").unwrap_err());
            assert!(e.contains(needle) && !e.contains('\n'), "{text}: {e}");
        }
    }

    #[test]
    fn parameter_count_without_building() {
        assert_eq!(
            ModelConfig::preset("imagenet64")
                .unwrap()
                .resolve()
                .unwrap()
                .num_params(),
            121_063_942
        );
        assert_eq!(
            ModelConfig::preset("ffhq256")
                .unwrap()
                .resolve()
                .unwrap()
                .num_params(),
            93_563_910
        );
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for name in [
            "adm-fixed-xstart",
            "adm-kl-small",
            "adm-plain",
            "adm-sigma-small",
            "adm-updown",
            "iddpm-tiny",
            "variants",
        ] {
            let mut cfg = ModelConfig::from_file(&dir.join(name).join("config.json")).unwrap();
            cfg.class_cond = name == "variants";
            let m = crate::model::Model::new(&cfg, &Default::default(), tch::Device::Cpu).unwrap();
            let built: i64 = m.vs.variables().values().map(|t| t.numel() as i64).sum();
            assert_eq!(m.spec.num_params(), built as u64, "{name}");
        }
    }

    #[test]
    fn presets_resolve() {
        let s = adm(ModelConfig::preset("imagenet64")
            .unwrap()
            .resolve()
            .unwrap());
        assert_eq!(s.attention_ds, vec![4, 8]);
        assert_eq!(s.out_channels, 6);
        let s = adm(ModelConfig::preset("ffhq256").unwrap().resolve().unwrap());
        assert_eq!(s.attention_ds, vec![16]);
        assert_eq!(s.heads_for(512, false), 8);
        assert!(ModelConfig::preset("nope").is_err());
    }
}
