//! diffusers model folders: opening one as downloaded (`unet/` + `scheduler/`, or a bare
//! `UNet2DModel` folder), and writing a fine-tuned model back as one that `UNet2DModel` and
//! `DDPMPipeline` load unchanged.

pub mod config;
mod keys;
pub mod scheduler;

use crate::checkpoint::StateDict;
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
    pub fn unet_config(&self) -> Result<config::UNet2D> {
        config::UNet2D::from_json(&self.unet, "diffusers config.json")
    }
    pub fn scheduler_config(&self) -> Result<scheduler::Scheduler> {
        scheduler::Scheduler::from_json(&self.scheduler, "diffusers scheduler_config.json")
    }
}

/// Weight file names a `UNet2DModel` folder may hold, in the order diffusers prefers them.
pub const WEIGHT_FILES: &[&str] = &["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"];
/// Adapter tensors beside the weights, as exports before the diffusers runtime wrote them
/// (still read; new exports keep the adapter in the UNet's weights, under `adapter.`).
pub const ADAPTER_FILE: &str = "a3ft_adapter.safetensors";
/// The Python module (`unet/a3ft_unet.py`) that runs an A³FT export's adapter in diffusers, and
/// its `UNet2DModel` subclass, as `model_index.json` and `auto_map` name them.
pub const RUNTIME_MODULE: &str = "a3ft_unet";
pub const RUNTIME_CLASS: &str = "A3FTUNet2DModel";
/// One template for every export; `runtime_module` fills in the run's two constants.
const RUNTIME_TEMPLATE: &str = include_str!("runtime_template.py");

/// The runtime module for an adapter with (zero-scale start) or without per-channel output scales.
pub fn runtime_module(out_scale: bool) -> String {
    let text = RUNTIME_TEMPLATE
        .replace("@TIME_SCALING_HIDDEN@", &crate::adapter::TIME_SCALING_HIDDEN.to_string())
        .replace("@OUT_SCALE@", if out_scale { "True" } else { "False" });
    debug_assert!(!text.contains('@') || !text.contains("@\n"), "a template field left unfilled");
    text
}
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
    // A config.json holding a string or a list is no model's config.
    path.is_dir() && [path.join("config.json"), path.join("unet").join("config.json")].iter().any(|p| p.is_file() && read_json(p, "config").is_ok())
}

fn read_json(path: &Path, what: &str) -> Result<Map<String, Value>> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    if !meta.is_file() || meta.len() > MAX_JSON_BYTES {
        bail!("{what} {} is not a regular JSON file of at most {MAX_JSON_BYTES} bytes", path.display());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
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
        let Some(weights) = WEIGHT_FILES.iter().map(|f| unet_dir.join(f)).find(|p| p.is_file()) else {
            let variants = std::fs::read_dir(&unet_dir)
                .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("diffusion_pytorch_model")).collect::<Vec<_>>())
                .unwrap_or_default();
            let seen = if variants.is_empty() { String::new() } else { format!("; found only {} (fp16 variants and sharded weights are not read; a link must point to a file)", variants.join(", ")) };
            bail!("diffusers model folder {} has no weights ({} in {}){seen}", dir.display(), WEIGHT_FILES.join(" or "), unet_dir.display());
        };
        // An export keeps its adapters in the weights; older ones kept them in a file at the
        // top (above a pipeline's `unet/` given directly).
        let in_weights = weights.extension().is_some_and(|e| e == "safetensors")
            && crate::checkpoint::safetensors_keys(&weights)?.iter().any(|k| k.starts_with("adapter."));
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
                bail!("{} holds adapter tensors and so does {}; which are meant? Remove one", weights.display(), a.display());
            }
        }
        let adapter = if in_weights { Some(weights.clone()) } else { adapter };
        Ok(Folder { files, weights, adapter, scheduler_path: sched_path, image_size })
    }

    /// The model config of a folder whose weights are not needed (timing the network).
    pub fn config_only(dir: &Path) -> Result<crate::config::ModelConfig> {
        let (_, files, _, image_size) = Self::read_configs(dir)?;
        Ok(crate::config::ModelConfig { image_size, diffusers: Some(files), ..Default::default() })
    }

    /// The UNet folder, both configs (checked against each other), the scheduler config's path
    /// and the image size.
    fn read_configs(dir: &Path) -> Result<(PathBuf, DiffusersFiles, PathBuf, i64)> {
        if !dir.is_dir() {
            bail!("{} is not a folder", dir.display());
        }
        let unet_dir = if dir.join("unet").join("config.json").is_file() { dir.join("unet") } else { dir.to_path_buf() };
        let config_path = unet_dir.join("config.json");
        if !config_path.is_file() {
            bail!("{} is not a diffusers model folder: neither config.json nor unet/config.json is there", dir.display());
        }
        // The pipeline this UNet belongs to: the folder's own, or the one above a `unet/` given
        // directly (a latent pipeline's `unet/` must not pass for a pixel model).
        for index_path in [dir.join("model_index.json"), dir.join("..").join("model_index.json")] {
            if index_path.exists() {
                check_pipeline(&read_json(&index_path, "diffusers model_index.json")?, &index_path)?;
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
            unet_dir.join("..").join("scheduler").join("scheduler_config.json"),
        ];
        let Some(sched_path) = candidates.iter().find(|p| p.is_file()) else {
            bail!(
                "diffusers model folder {} has no scheduler config (looked for scheduler/scheduler_config.json, scheduler_config.json and ../scheduler/scheduler_config.json); a3ft needs the noise schedule the model was trained with",
                dir.display()
            );
        };
        let scheduler = read_json(sched_path, "diffusers scheduler config")?;
        let files = DiffusersFiles { unet, scheduler };
        let cfg = config::UNet2D::from_json(&files.unet, &config_path.display().to_string())?;
        let sched = scheduler::Scheduler::from_json(&files.scheduler, &sched_path.display().to_string())?;
        check_pair(&cfg, &sched)?;
        Ok((unet_dir, files, sched_path.clone(), cfg.sample_size))
    }

    /// The model config a3ft builds from this folder.
    pub fn model_config(&self) -> crate::config::ModelConfig {
        crate::config::ModelConfig {
            image_size: self.image_size,
            diffusers: Some(self.files.clone()),
            ..Default::default()
        }
    }
}

/// A pipeline folder must be a pixel-space DDPM/DDIM pipeline: a latent one (`LDMPipeline` with a
/// VQ-VAE) or a score-SDE one has a `UNet2DModel` too, whose outputs would mean something else.
fn check_pipeline(index: &Map<String, Value>, origin: &Path) -> Result<()> {
    let class = index.get("_class_name").and_then(Value::as_str).unwrap_or("");
    if !["DDPMPipeline", "DDIMPipeline"].contains(&class) {
        bail!("{}: pipeline {class:?} is not supported; a3ft fine-tunes pixel-space DDPMPipeline/DDIMPipeline models", origin.display());
    }
    if let Some(extra) = index.keys().find(|k| !k.starts_with('_') && *k != "unet" && *k != "scheduler") {
        bail!("{}: component {extra:?} besides unet and scheduler is not supported (a latent or conditioned pipeline?)", origin.display());
    }
    // Each component is ["library", "ClassName"].
    let component = |name: &str| index.get(name).and_then(Value::as_array).and_then(|a| a.get(1)).and_then(Value::as_str);
    match component("unet") {
        Some("UNet2DModel" | RUNTIME_CLASS) => {}
        other => bail!("{}: its unet is {}, not a UNet2DModel", origin.display(), other.unwrap_or("missing")),
    }
    match component("scheduler") {
        Some("DDPMScheduler" | "DDIMScheduler") => {}
        other => bail!("{}: its scheduler is {}; a3ft supports DDPMScheduler and DDIMScheduler", origin.display(), other.unwrap_or("missing")),
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

/// What an export wrote.
pub struct Exported {
    pub tensors: usize,
    pub adapter_tensors: usize,
}

/// Writes `tensors` (the UNet's keys, plus any `adapter.*`) and the model's JSON files as a
/// diffusers pipeline folder: `model_index.json`, `unet/`, `scheduler/`, the model card `readme`
/// as `README.md`, and at the top a copy of the UNet config with a link to its weights so that
/// `UNet2DModel.from_pretrained(out)` works too. With adapter tensors the folder is a diffusers
/// custom component (docs/diffusers.md): the adapter stays in the UNet's weights, and
/// `unet/a3ft_unet.py`, named by `model_index.json` and the config's `auto_map`, runs it.
/// `out` must be new, empty, or an earlier export (its manifest lists every file).
pub fn write_folder(out: &Path, files: &DiffusersFiles, tensors: &[(String, tch::Tensor)], readme: &str) -> Result<Exported> {
    let runtime_file = format!("{RUNTIME_MODULE}.py");
    let unet_runtime_file = format!("unet/{runtime_file}");
    // Every file an export may hold, earlier layouts' included, so that one replaces the other.
    let manifest_files: Vec<String> = [
        "model_index.json",
        "config.json",
        "unet/config.json",
        "scheduler/scheduler_config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.safetensors",
        ADAPTER_FILE,
        "README.md",
        &runtime_file,
        &unet_runtime_file,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let listed = manifest_files.clone();
    let claimed = crate::owned_dir::OwnedDir::claim(out, "export", move |bytes| {
        let v: Value = serde_json::from_slice(bytes).context("manifest.json is not JSON")?;
        if v.get("written_by").and_then(Value::as_str) != Some("a3ft export") {
            bail!("its manifest.json was not written by a3ft export");
        }
        Ok(listed.clone())
    })?;
    let adapter_tensors = tensors.iter().filter(|(k, _)| k.starts_with("adapter.")).count();
    let out_scale = tensors.iter().any(|(k, _)| k.starts_with("adapter.") && k.ends_with(".out_scale"));
    let weight_bytes = crate::checkpoint::safetensors_bytes(tensors, [("format".to_string(), "pt".to_string())].into())?;
    let mut unet_cfg = files.unet.clone();
    unet_cfg.insert("_class_name".into(), "UNet2DModel".into());
    unet_cfg.remove("auto_map");
    let mut sched_cfg = files.scheduler.clone();
    sched_cfg.entry("_class_name").or_insert_with(|| "DDPMScheduler".into());
    let sched_class = sched_cfg["_class_name"].as_str().unwrap_or("DDPMScheduler").to_string();
    let pipeline = if sched_class == "DDIMScheduler" { "DDIMPipeline" } else { "DDPMPipeline" };
    let mut index = serde_json::json!({
        "_class_name": pipeline,
        "scheduler": ["diffusers", sched_class],
        "unet": ["diffusers", "UNet2DModel"],
    });
    let runtime = (adapter_tensors > 0).then(|| runtime_module(out_scale));
    if runtime.is_some() {
        // `_class_name` stays UNet2DModel, so that loading without remote code gives the plain
        // model; the pipeline reads its UNet class from model_index.json (`unet/a3ft_unet.py`),
        // `AutoModel` from the configs' `auto_map`. Not in model_index.json, where only
        // `AutoModel(…, subfolder="unet")` would read it and every pipeline load warn about it.
        let auto_map = serde_json::json!({ "AutoModel": format!("{RUNTIME_MODULE}.{RUNTIME_CLASS}") });
        unet_cfg.insert("auto_map".into(), auto_map);
        index["unet"] = serde_json::json!([RUNTIME_MODULE, RUNTIME_CLASS]);
    }
    let pretty = |v: &Value| serde_json::to_vec_pretty(v).expect("JSON values serialise");
    let mut out_files = vec![
        ("model_index.json".to_string(), pretty(&index)),
        ("config.json".to_string(), pretty(&Value::Object(unet_cfg.clone()))),
        ("unet/config.json".to_string(), pretty(&Value::Object(unet_cfg))),
        ("scheduler/scheduler_config.json".to_string(), pretty(&Value::Object(sched_cfg))),
        ("unet/diffusion_pytorch_model.safetensors".to_string(), weight_bytes),
        ("README.md".to_string(), readme.as_bytes().to_vec()),
    ];
    if let Some(code) = runtime {
        // Beside both configs: `AutoModel.from_pretrained(out)` reads the top-level one.
        out_files.push((unet_runtime_file.clone(), code.clone().into_bytes()));
        out_files.push((runtime_file.clone(), code.into_bytes()));
    }
    let manifest = serde_json::json!({"written_by": "a3ft export", "files": manifest_files});
    out_files.push((crate::owned_dir::MANIFEST.to_string(), pretty(&manifest)));
    claimed.publish(|staging| {
        crate::owned_dir::write_files(staging, &out_files)?;
        // The top-level weights are a link, not a second copy of the file; made before the swap,
        // so the folder is whole from the moment it appears.
        std::os::unix::fs::symlink("unet/diffusion_pytorch_model.safetensors", staging.join("diffusion_pytorch_model.safetensors"))
            .with_context(|| format!("cannot link the weights in {}", staging.display()))
    })?;
    Ok(Exported { tensors: tensors.len() - adapter_tensors, adapter_tensors })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_runtime_template_is_filled_in() {
        for out_scale in [false, true] {
            let code = super::runtime_module(out_scale);
            assert!(!code.contains("= @"), "a field of the template is left: {code}");
            assert!(code.contains(&format!("TIME_SCALING_HIDDEN = {}\n", crate::adapter::TIME_SCALING_HIDDEN)));
            assert!(code.contains(if out_scale { "OUT_SCALE = True\n" } else { "OUT_SCALE = False\n" }));
            assert!(code.contains(&format!("class {}(UNet2DModel)", super::RUNTIME_CLASS)));
        }
    }
}
