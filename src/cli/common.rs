//! Arguments and helpers shared by subcommands.

use a3ft::model::config::ModelConfig;
use a3ft::model::unet::Extras;
use a3ft::model::Model;
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
    /// Where a diffusers folder's A³FT adapter tensors are (its weights, or an older export's
    /// `a3ft_adapter.safetensors` beside them), set by [`model_source`].
    #[arg(skip)]
    pub adapter_file: Option<PathBuf>,
}

/// The model config and the checkpoint to load. A diffusers folder given as `--checkpoint DIR`
/// brings its config (and its scheduler's); its weight file becomes the checkpoint.
pub fn model_source(
    model: &ModelArgs,
    ckpt: &CheckpointArgs,
) -> Result<(ModelConfig, CheckpointArgs)> {
    match &ckpt.checkpoint {
        Some(p) if std::fs::symlink_metadata(p).is_err() => {
            bail!("--checkpoint {} does not exist", p.display())
        }
        Some(dir) if dir.is_dir() && !a3ft::diffusers::is_model_folder(dir) => {
            bail!("--checkpoint {} is not a regular file, nor a diffusers model folder (no config.json or unet/config.json that could be a model config in it)", dir.display())
        }
        Some(dir) if dir.is_dir() => {
            if model.preset.is_some() || model.model_config.is_some() {
                bail!("--checkpoint {} is a diffusers model folder with its own config.json; drop --preset/--model-config", dir.display());
            }
            if ckpt.checkpoint_key.is_some() {
                bail!(
                    "--checkpoint-key does not apply to a diffusers model folder ({})",
                    dir.display()
                );
            }
            let folder = a3ft::diffusers::Folder::open(dir)?;
            if !a3ft::util::paths::is_within(&folder.scheduler_path, dir) {
                eprintln!(
                    "note: {} has no scheduler config of its own; using {}",
                    dir.display(),
                    folder.scheduler_path.display()
                );
            }
            let cfg = folder.model_config();
            cfg.resolve()
                .with_context(|| format!("diffusers model folder {}", dir.display()))?;
            Ok((
                cfg,
                CheckpointArgs {
                    checkpoint: Some(folder.weights),
                    checkpoint_key: None,
                    adapter_file: folder.adapter,
                },
            ))
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
        a3ft::util::device::parse_device(&self.device)
    }
}

/// Builds a model and loads the checkpoint when one is given. A file exported from an
/// adapter run carries `adapter.*` tensors; the adapters are then built to receive them.
pub fn build_model(
    cfg: &ModelConfig,
    extras: &Extras,
    ckpt: &CheckpointArgs,
    device: Device,
) -> Result<Model> {
    match &ckpt.checkpoint {
        None => Model::new(cfg, extras, device),
        Some(path) => Model::from_checkpoint(
            cfg,
            extras,
            path,
            ckpt.checkpoint_key.as_deref(),
            ckpt.adapter_file.as_deref(),
            device,
        ),
    }
}

pub fn read_npy(path: &Path, what: &str) -> Result<Tensor> {
    if !path.exists() {
        bail!("{what} file {} does not exist", path.display());
    }
    a3ft::io::npy::read_npy(path)
        .with_context(|| format!("cannot read {what} (expected a .npy array)"))
}
