//! `a3ft export`: a full state_dict from a training run.

use a3ft::finetune::export_state;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use tch::Device;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Training run folder
    #[arg(long, value_name = "RUN_DIR")]
    pub run: PathBuf,
    /// Checkpoint step (default: newest)
    #[arg(long)]
    pub step: Option<u64>,
    /// Output file: .safetensors or .pt (torch.save-compatible OrderedDict). full, attention,
    /// residual and lora runs give exactly the official key set (LoRA merged into the weights);
    /// adapter and a3ft runs add their tensors under the `adapter.` prefix
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Tensor type of the file: f32, or f16/bf16 for half the size (released weights)
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Replace --out if it exists (never allowed for the run's own files or its base checkpoint)
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: ExportArgs) -> Result<()> {
    let run = a3ft::run::RunDir::new(&a.run);
    let rc = run.read_config()?;
    if let Some(base) = &rc.base_checkpoint {
        if a.out.exists() && std::fs::canonicalize(&a.out).is_ok_and(|o| o == base.path) {
            bail!("--out {} is the run's base checkpoint; it is never overwritten", a.out.display());
        }
    }
    if a3ft::run::is_within(&a.out, &run.root) {
        bail!("--out {} lies inside the run folder {}; write the export elsewhere", a.out.display(), run.root.display());
    }
    if a.out.exists() && !a.force {
        bail!("--out {} already exists; pass --force to replace it", a.out.display());
    }
    if a.out.is_dir() {
        bail!("--out {} is a folder; give a file name ending in .safetensors or .pt", a.out.display());
    }
    let kind = match a.dtype.as_str() {
        "f32" => tch::Kind::Float,
        "f16" => tch::Kind::Half,
        "bf16" => tch::Kind::BFloat16,
        other => bail!("--dtype must be f32, f16 or bf16, got {other:?}"),
    };
    if kind != tch::Kind::Float && a.out.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        bail!("--dtype {} needs a .safetensors --out (the .pt writer stores f32)", a.dtype);
    }
    let model = run.load_model(a.step, Device::Cpu)?;
    let tensors: Vec<(String, tch::Tensor)> = export_state(&model).into_iter().map(|(k, t)| (k, t.to_kind(kind))).collect();
    match a.out.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => a3ft::checkpoint::save_safetensors(&a.out, &tensors, Default::default())?,
        Some("pt") | Some("pth") => a3ft::pt_writer::save_pt(&a.out, &tensors)?,
        _ => bail!("--out must end in .safetensors or .pt, got {}", a.out.display()),
    }
    let extra = tensors.iter().filter(|(k, _)| k.starts_with("adapter.")).count();
    eprintln!("wrote {} ({} tensors, {} of them adapter tensors)", a.out.display(), tensors.len(), extra);
    Ok(())
}
