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
}

pub fn run(a: ExportArgs) -> Result<()> {
    let model = a3ft::run::load_run_model(&a.run, a.step, Device::Cpu)?;
    let tensors = export_state(&model);
    match a.out.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => a3ft::checkpoint::save_safetensors(&a.out, &tensors, Default::default())?,
        Some("pt") | Some("pth") => a3ft::pt_writer::save_pt(&a.out, &tensors)?,
        _ => bail!("--out must end in .safetensors or .pt, got {}", a.out.display()),
    }
    let extra = tensors.iter().filter(|(k, _)| k.starts_with("adapter.")).count();
    eprintln!("wrote {} ({} tensors, {} of them adapter tensors)", a.out.display(), tensors.len(), extra);
    Ok(())
}
