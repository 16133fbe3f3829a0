//! diffusers model folders: opening one as downloaded (`unet/` + `scheduler/`, or a bare
//! `UNet2DModel` folder), and writing a fine-tuned model back as one that `UNet2DModel` and
//! `DDPMPipeline` load unchanged.

pub mod config;
mod keys;
pub mod scheduler;

use crate::io::checkpoint::StateDict;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The two JSON files of a diffusers model, as read. Stored in a run's config so a run records
/// exactly what it fine-tuned, and written back unchanged on export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffusersFiles {
    pub unet: Map<String, Value>,
    pub scheduler: Map<String, Value>,
}

impl DiffusersFiles {
    /// The two configs as diffusers builds from them (see [`keys::as_diffusers_reads`]): what an
    /// export writes, also for a run recorded before a3ft applied that rule when reading.
    pub fn as_diffusers_reads(&self) -> Result<DiffusersFiles> {
        Ok(DiffusersFiles {
            unet: keys::as_diffusers_reads(&self.unet, "diffusers config.json")?,
            scheduler: keys::as_diffusers_reads(
                &self.scheduler,
                "diffusers scheduler_config.json",
            )?,
        })
    }
    pub fn unet_config(&self) -> Result<config::UNet2D> {
        config::UNet2D::from_json(&self.unet, "diffusers config.json")
    }
    pub fn scheduler_config(&self) -> Result<scheduler::Scheduler> {
        scheduler::Scheduler::from_json(&self.scheduler, "diffusers scheduler_config.json")
    }
}

/// Weight file names a `UNet2DModel` folder may hold, in the order diffusers prefers them.
pub const WEIGHT_FILES: &[&str] = &[
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
];
/// Adapter tensors beside the weights, as exports before the diffusers runtime wrote them
/// (still read; new exports keep the adapter in the UNet's weights, under `adapter.`).
pub const ADAPTER_FILE: &str = "a3ft_adapter.safetensors";

/// The Python module (`unet/a3ft_unet.py`) that runs an A³FT export's adapter in diffusers, and
/// its `UNet2DModel` subclass, as `model_index.json` and `auto_map` name them.
pub const RUNTIME_MODULE: &str = "a3ft_unet";
pub const RUNTIME_CLASS: &str = "A3FTUNet2DModel";

/// Largest JSON file read from a model folder.
const MAX_JSON_BYTES: u64 = 1 << 20;

/// A diffusers model folder, resolved to its files.
#[derive(Debug, Clone)]
pub struct Folder {
    pub files: DiffusersFiles,
    /// The UNet's weights (`.safetensors`, or `.bin` read without running pickle code).
    pub weights: PathBuf,
    /// Where an A³FT export's adapter tensors are: the weights themselves (`adapter.*` keys), or
    /// an older export's `a3ft_adapter.safetensors` beside them.
    pub adapter: Option<PathBuf>,
    /// The scheduler config read (inside the folder, or a `../scheduler/` beside a bare UNet).
    pub scheduler_path: PathBuf,
    pub image_size: i64,
}

/// Whether `path` is a folder that looks like a diffusers model (so `--checkpoint DIR` means one).
pub fn is_model_folder(path: &Path) -> bool {
    // A config.json holding valid JSON that is no object (a string, a list) is no model's
    // config; one that does not parse may be a damaged one, which `Folder::open` then names.
    let config_like = |p: &Path| {
        p.is_file()
            && match crate::util::files::read_at_most(p, MAX_JSON_BYTES) {
                Ok(bytes) => {
                    serde_json::from_slice::<Value>(&bytes).map_or(true, |v| v.is_object())
                }
                _ => true,
            }
    };
    path.is_dir()
        && (config_like(&path.join("config.json"))
            || config_like(&path.join("unet").join("config.json")))
}

fn read_json(path: &Path, what: &str) -> Result<Map<String, Value>> {
    let text = crate::util::files::read_text_at_most(path, MAX_JSON_BYTES)
        .with_context(|| format!("cannot read {what}"))?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => bail!("{what} {} is not a JSON object", path.display()),
        Err(e) => bail!("{what} {} is not valid JSON: {e}", path.display()),
    }
}

impl Folder {
    /// Opens a pipeline folder (`model_index.json`, `unet/`, `scheduler/`) or a `UNet2DModel`
    /// folder (`config.json` + weights, with `scheduler_config.json` beside it or in
    /// `../scheduler/`). Errors say what was looked for where.
    pub fn open(dir: &Path) -> Result<Folder> {
        let (unet_dir, files, sched_path, image_size) = Self::read_configs(dir)?;
        let Some(weights) = WEIGHT_FILES
            .iter()
            .map(|f| unet_dir.join(f))
            .find(|p| p.is_file())
        else {
            let variants = std::fs::read_dir(&unet_dir)
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.starts_with("diffusion_pytorch_model"))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            let seen = if variants.is_empty() {
                String::new()
            } else {
                format!("; found only {} (fp16 variants and sharded weights are not read; a link must point to a file)", variants.join(", "))
            };
            bail!(
                "diffusers model folder {} has no weights ({} in {}){seen}",
                dir.display(),
                WEIGHT_FILES.join(" or "),
                unet_dir.display()
            );
        };
        // An export keeps its adapters in the weights; older ones kept them in a file at the
        // top (above a pipeline's `unet/` given directly).
        let in_weights = weights.extension().is_some_and(|e| e == "safetensors")
            && crate::io::checkpoint::safetensors_keys(&weights)?
                .iter()
                .any(|k| k.starts_with("adapter."));
        let mut places = vec![dir.join(ADAPTER_FILE), unet_dir.join(ADAPTER_FILE)];
        if dir.join("..").join("model_index.json").is_file() {
            places.push(dir.join("..").join(ADAPTER_FILE));
        }
        let adapter = places.into_iter().find(|p| p.exists());
        if let Some(a) = &adapter {
            if !a.is_file() {
                bail!("{} is not a regular file", a.display());
            }
            if in_weights {
                bail!(
                    "{} holds adapter tensors and so does {}; which are meant? Remove one",
                    weights.display(),
                    a.display()
                );
            }
        }
        let adapter = if in_weights {
            Some(weights.clone())
        } else {
            adapter
        };
        Ok(Folder {
            files,
            weights,
            adapter,
            scheduler_path: sched_path,
            image_size,
        })
    }

    /// The UNet folder, both configs (checked against each other), the scheduler config's path
    /// and the image size.
    pub fn read_configs(dir: &Path) -> Result<(PathBuf, DiffusersFiles, PathBuf, i64)> {
        if !dir.is_dir() {
            bail!("{} is not a folder", dir.display());
        }
        let unet_dir = if dir.join("unet").join("config.json").is_file() {
            dir.join("unet")
        } else {
            dir.to_path_buf()
        };
        let config_path = unet_dir.join("config.json");
        if !config_path.is_file() {
            bail!("{} is not a diffusers model folder: neither config.json nor unet/config.json is there", dir.display());
        }
        // The pipeline this UNet belongs to: the folder's own, or the one above a `unet/` given
        // directly (a latent pipeline's `unet/` must not pass for a pixel model).
        for index_path in [
            dir.join("model_index.json"),
            dir.join("..").join("model_index.json"),
        ] {
            if index_path.exists() {
                check_pipeline(
                    &read_json(&index_path, "diffusers model_index.json")?,
                    &index_path,
                )?;
                break;
            }
        }
        let unet = read_json(&config_path, "diffusers UNet config")?;
        if unet.contains_key("hyper") && unet.contains_key("method") {
            bail!("{} is an a3ft training run, not a diffusers model (sample, eval and export take it as --run, train as --resume)", dir.display());
        }
        if !unet.contains_key("_class_name") && !unet.contains_key("block_out_channels") {
            bail!(
                "{} is not a UNet2DModel config (no _class_name or block_out_channels); an improved/guided-diffusion model takes --model-config FILE with a weights file",
                config_path.display()
            );
        }
        let candidates = [
            dir.join("scheduler").join("scheduler_config.json"),
            unet_dir.join("scheduler_config.json"),
            unet_dir
                .join("..")
                .join("scheduler")
                .join("scheduler_config.json"),
        ];
        let Some(sched_path) = candidates.iter().find(|p| p.is_file()) else {
            bail!(
                "diffusers model folder {} has no scheduler config (looked for scheduler/scheduler_config.json, scheduler_config.json and ../scheduler/scheduler_config.json); a3ft needs the noise schedule the model was trained with",
                dir.display()
            );
        };
        let scheduler = read_json(sched_path, "diffusers scheduler config")?;
        let (unet_origin, sched_origin) = (
            config_path.display().to_string(),
            sched_path.display().to_string(),
        );
        // As diffusers builds from them: what a run records and an export writes is that.
        let files = DiffusersFiles {
            unet: keys::as_diffusers_reads(&unet, &unet_origin)?,
            scheduler: keys::as_diffusers_reads(&scheduler, &sched_origin)?,
        };
        let cfg = config::UNet2D::from_json(&files.unet, &unet_origin)?;
        let sched = scheduler::Scheduler::from_json(&files.scheduler, &sched_origin)?;
        check_pair(&cfg, &sched)?;
        Ok((unet_dir, files, sched_path.clone(), cfg.sample_size))
    }
}

/// A pipeline folder must be a pixel-space DDPM/DDIM pipeline: a latent one (`LDMPipeline` with a
/// VQ-VAE) or a score-SDE one has a `UNet2DModel` too, whose outputs would mean something else.
fn check_pipeline(index: &Map<String, Value>, origin: &Path) -> Result<()> {
    let class = index
        .get("_class_name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !["DDPMPipeline", "DDIMPipeline"].contains(&class) {
        bail!("{}: pipeline {class:?} is not supported; a3ft fine-tunes pixel-space DDPMPipeline/DDIMPipeline models", origin.display());
    }
    if let Some(extra) = index
        .keys()
        .find(|k| !k.starts_with('_') && *k != "unet" && *k != "scheduler")
    {
        bail!("{}: component {extra:?} besides unet and scheduler is not supported (a latent or conditioned pipeline?)", origin.display());
    }
    // Each component is ["library", "ClassName"].
    let component = |name: &str| {
        index
            .get(name)
            .and_then(Value::as_array)
            .and_then(|a| a.get(1))
            .and_then(Value::as_str)
    };
    match component("unet") {
        Some("UNet2DModel" | RUNTIME_CLASS) => {}
        other => bail!(
            "{}: its unet is {}, not a UNet2DModel",
            origin.display(),
            other.unwrap_or("missing")
        ),
    }
    match component("scheduler") {
        Some("DDPMScheduler" | "DDIMScheduler") => {}
        other => bail!(
            "{}: its scheduler is {}; a3ft supports DDPMScheduler and DDIMScheduler",
            origin.display(),
            other.unwrap_or("missing")
        ),
    }
    Ok(())
}

/// The UNet's output channels must fit the scheduler: 6 with a learned variance, 3 otherwise.
pub fn check_pair(cfg: &config::UNet2D, sched: &scheduler::Scheduler) -> Result<()> {
    let want = if sched.learned_variance() { 6 } else { 3 };
    if cfg.out_channels != want {
        bail!(
            "the UNet has out_channels {} but the scheduler's variance_type {:?} needs {want}",
            cfg.out_channels,
            sched.variance_type
        );
    }
    Ok(())
}

/// Renames the attention keys of checkpoints saved by older diffusers releases
/// (`query`/`key`/`value`/`proj_attn`) to today's (`to_q`/`to_k`/`to_v`/`to_out.0`), as
/// diffusers itself does on load; 1×1-convolution-shaped weights become matrices. A file with
/// both names for one tensor is an error (which one would be meant?).
pub fn upgrade_keys(state: StateDict) -> Result<StateDict> {
    let mut out = StateDict::new();
    for (k, t) in state.into_iter().map(|(k, t)| {
        let parts: Vec<&str> = k.split('.').collect();
        let n = parts.len();
        if n >= 4 && parts[n - 4] == "attentions" {
            let new = match parts[n - 2] {
                "query" => Some("to_q"),
                "key" => Some("to_k"),
                "value" => Some("to_v"),
                "proj_attn" => Some("to_out.0"),
                _ => None,
            };
            if let Some(new) = new {
                let name = format!("{}.{new}.{}", parts[..n - 2].join("."), parts[n - 1]);
                let t = if t.dim() == 4 { t.flatten(1, 3) } else { t };
                return (name, t);
            }
        }
        (k, t)
    }) {
        if out.contains_key(&k) {
            bail!("the weights hold {k} under both its current and its older diffusers name (query/key/value/proj_attn)");
        }
        out.insert(k, t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_config_that_can_be_one_makes_a_model_folder() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (text, is) in [
            ("\"a string\"", false),
            ("[1, 2]", false),
            ("42", false),
            ("{\"_class_name\": \"UNet2DModel\"}", true),
            ("{ not json", true),
        ] {
            std::fs::write(d.join("config.json"), text).unwrap();
            assert_eq!(is_model_folder(d), is, "{text}");
        }
    }

    /// Timing a network needs its config, not its weights (`bench --diffusers`).
    #[test]
    fn a_config_without_weights_opens_for_its_config_only() {
        let src =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusers/cifar10-like");
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&src).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                std::fs::create_dir_all(dir.path().join(entry.file_name())).unwrap();
                for f in std::fs::read_dir(&p).unwrap().flatten() {
                    if f.path().extension().is_some_and(|e| e == "json") {
                        std::fs::copy(
                            f.path(),
                            dir.path().join(entry.file_name()).join(f.file_name()),
                        )
                        .unwrap();
                    }
                }
            } else if p.extension().is_some_and(|e| e == "json") {
                std::fs::copy(&p, dir.path().join(entry.file_name())).unwrap();
            }
        }
        assert!(format!("{:#}", Folder::open(dir.path()).err().unwrap()).contains("has no weights"));
        let cfg = Folder::config_only(dir.path()).unwrap();
        assert!(!cfg.family.is_adm());
    }
}
