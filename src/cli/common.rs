//! Arguments and helpers shared by subcommands.

use a3ft::config::ModelConfig;
use a3ft::model::Model;
use a3ft::unet::Extras;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Built-in model config: imagenet64 (improved-diffusion ImageNet-64 uncond.) or ffhq256 (P2 FFHQ-256)
    #[arg(long, conflicts_with = "model_config")]
    pub preset: Option<String>,
    /// Model config JSON with the official flag names (missing keys take improved-diffusion defaults)
    #[arg(long, value_name = "FILE")]
    pub model_config: Option<PathBuf>,
}

impl ModelArgs {
    pub fn config(&self) -> Result<ModelConfig> {
        match (&self.preset, &self.model_config) {
            (Some(p), None) => ModelConfig::preset(p),
            (None, Some(f)) => ModelConfig::from_file(f),
            _ => bail!("give the model with --preset NAME or --model-config FILE (only a diffusers model folder given as --checkpoint DIR brings its own config)"),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct CheckpointArgs {
    /// Official .pt (zip or legacy) or .safetensors weights, or a diffusers model folder
    /// (UNet2DModel + scheduler config, as downloaded; it brings its own config)
    #[arg(long, visible_alias = "model", value_name = "FILE|DIR")]
    pub checkpoint: Option<PathBuf>,
    /// Key of the nested dict holding the weights (e.g. state_dict, model)
    #[arg(long, value_name = "KEY")]
    pub checkpoint_key: Option<String>,
    /// Adapter tensors stored beside a diffusers folder's weights (an A³FT export's
    /// `a3ft_adapter.safetensors`), set by [`model_source`].
    #[arg(skip)]
    pub adapter_file: Option<PathBuf>,
}

/// The model config and the checkpoint to load. A diffusers folder given as `--checkpoint DIR`
/// brings its config (and its scheduler's); its weight file becomes the checkpoint.
pub fn model_source(model: &ModelArgs, ckpt: &CheckpointArgs) -> Result<(ModelConfig, CheckpointArgs)> {
    match &ckpt.checkpoint {
        Some(p) if std::fs::symlink_metadata(p).is_err() => bail!("--checkpoint {} does not exist", p.display()),
        Some(dir) if dir.is_dir() && !a3ft::diffusers::is_model_folder(dir) => {
            bail!("--checkpoint {} is not a regular file, nor a diffusers model folder (no config.json or unet/config.json in it)", dir.display())
        }
        Some(dir) if dir.is_dir() => {
            if model.preset.is_some() || model.model_config.is_some() {
                bail!("--checkpoint {} is a diffusers model folder with its own config.json; drop --preset/--model-config", dir.display());
            }
            if ckpt.checkpoint_key.is_some() {
                bail!("--checkpoint-key does not apply to a diffusers model folder ({})", dir.display());
            }
            let folder = a3ft::diffusers::Folder::open(dir)?;
            if !a3ft::run::is_within(&folder.scheduler_path, dir) {
                eprintln!("note: {} has no scheduler config of its own; using {}", dir.display(), folder.scheduler_path.display());
            }
            let cfg = folder.model_config();
            cfg.resolve().with_context(|| format!("diffusers model folder {}", dir.display()))?;
            Ok((cfg, CheckpointArgs { checkpoint: Some(folder.weights), checkpoint_key: None, adapter_file: folder.adapter }))
        }
        _ => Ok((model.config()?, ckpt.clone())),
    }
}

#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Compute device: auto (CUDA when libtorch sees a GPU), cpu, cuda, cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
}

impl DeviceArgs {
    pub fn device(&self) -> Result<Device> {
        a3ft::device::parse_device(&self.device)
    }
}

/// Builds a model and loads the checkpoint when one is given. A file exported from an
/// adapter run carries `adapter.*` tensors; the adapters are then built to receive them.
pub fn build_model(cfg: &ModelConfig, extras: &Extras, ckpt: &CheckpointArgs, device: Device) -> Result<Model> {
    let Some(path) = &ckpt.checkpoint else { return Model::new(cfg, extras, device) };
    let mut state = a3ft::checkpoint::load_state_dict(path, ckpt.checkpoint_key.as_deref())?;
    if let Some(adapter) = &ckpt.adapter_file {
        for (k, t) in a3ft::checkpoint::load_state_dict(adapter, None)? {
            if !k.starts_with("adapter.") {
                bail!("{} holds {k}, not an adapter tensor", adapter.display());
            }
            state.insert(k, t);
        }
    }
    let mut extras = extras.clone();
    if extras.adapter.is_none() && state.keys().any(|k| k.starts_with("adapter.")) {
        // The start only shapes initial values, except zero-scale's extra out_scale tensors.
        let zero_scale = state.keys().any(|k| k.starts_with("adapter.") && k.ends_with(".out_scale"));
        extras.adapter = Some(if zero_scale { a3ft::adapter::AdapterStart::ZeroScale } else { a3ft::adapter::AdapterStart::Random });
    }
    a3ft::model::check_state_size(cfg, &state, &path.display().to_string())?;
    let mut model = Model::new(cfg, &extras, device)?;
    let origin = match &ckpt.adapter_file {
        Some(a) => format!("{} (with {})", path.display(), a.display()),
        None => path.display().to_string(),
    };
    model.load_state(&state, &origin)?;
    Ok(model)
}

pub fn read_npy(path: &Path, what: &str) -> Result<Tensor> {
    if !path.exists() {
        bail!("{what} file {} does not exist", path.display());
    }
    a3ft::npy::read_npy(path).with_context(|| format!("cannot read {what} (expected a .npy array)"))
}
