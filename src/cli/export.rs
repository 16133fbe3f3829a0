//! `a3ft export`: a full state_dict from a training run, or a diffusers model folder.

use a3ft::model::methods::export_state;
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
    /// adapter and a3ft runs add their tensors under the `adapter.` prefix. With --format
    /// diffusers: a folder
    #[arg(long, value_name = "FILE|DIR")]
    pub out: PathBuf,
    /// file (.safetensors/.pt), or diffusers: a pipeline folder (model_index.json, unet/,
    /// scheduler/) that `UNet2DModel`/`DDPMPipeline.from_pretrained` load. Runs of a diffusers
    /// model always export as diffusers folders; the others as files
    #[arg(long, value_parser = ["file", "diffusers"])]
    pub format: Option<String>,
    /// Tensor type of the file (or of a diffusers folder's weights): f32, or f16/bf16 for half
    /// the size (released weights)
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Replace --out if it exists (never allowed for the run's own files or its base checkpoint)
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: ExportArgs) -> Result<()> {
    let run = a3ft::train::run_dir::RunDir::new(&a.run);
    let rc = run.read_config()?;
    if let Some(base) = &rc.base_checkpoint {
        if a.out.exists() && std::fs::canonicalize(&a.out).is_ok_and(|o| o == base.path) {
            bail!(
                "--out {} is the run's base checkpoint; it is never overwritten",
                a.out.display()
            );
        }
    }
    if a3ft::util::paths::is_within(&a.out, &run.root) {
        bail!(
            "--out {} lies inside the run folder {}; write the export elsewhere",
            a.out.display(),
            run.root.display()
        );
    }
    let kind = match a.dtype.as_str() {
        "f32" => tch::Kind::Float,
        "f16" => tch::Kind::Half,
        "bf16" => tch::Kind::BFloat16,
        other => bail!("--dtype must be f32, f16 or bf16, got {other:?}"),
    };
    let diffusers = match a.format.as_deref() {
        Some("diffusers") => true,
        Some(_) if !rc.model.family.is_adm() => bail!(
            "{} fine-tuned a diffusers model: it exports as a diffusers folder (--format diffusers); a single file would lack the config needed to load it",
            run.root.display()
        ),
        Some(_) => false,
        None => !rc.model.family.is_adm(),
    };
    if a.out.exists() && !a.force {
        bail!(
            "--out {} already exists; pass --force to replace it",
            a.out.display()
        );
    }
    if diffusers {
        return export_diffusers(&a, &run, &rc, kind);
    }
    if a.out.is_dir() {
        bail!(
            "--out {} is a folder; give a file name ending in .safetensors or .pt",
            a.out.display()
        );
    }
    if kind != tch::Kind::Float && a.out.extension().and_then(|e| e.to_str()) != Some("safetensors")
    {
        bail!(
            "--dtype {} needs a .safetensors --out (the .pt writer stores f32)",
            a.dtype
        );
    }
    // Written atomically (whole or not at all); the lock refuses a second export to the same file.
    let _lock = a3ft::util::owned_dir::OutputLock::for_file(&a.out)?;
    let model = a3ft::train::run_model::load(&run, a.step, Device::Cpu)?;
    let tensors = converted(export_state(&model), kind)?;
    // The last point at which a signal leaves --out as it was.
    a3ft::util::stop::check()?;
    match a.out.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => {
            a3ft::io::checkpoint::save_safetensors(&a.out, &tensors, Default::default())?
        }
        Some("pt") | Some("pth") => a3ft::io::pt_writer::save_pt(&a.out, &tensors)?,
        _ => bail!(
            "--out must end in .safetensors or .pt, got {}",
            a.out.display()
        ),
    }
    let extra = tensors
        .iter()
        .filter(|(k, _)| k.starts_with("adapter."))
        .count();
    eprintln!(
        "wrote {} ({} tensors, {} of them adapter tensors)",
        a.out.display(),
        tensors.len(),
        extra
    );
    if extra > 0 {
        // The official UNet has no place for the adapter: say how the file runs as trained.
        eprintln!(
            "note: the official improved/guided-diffusion UNet has no time-aware adapter, and its strict load_state_dict refuses the `adapter.` tensors; \
             `a3ft sample --checkpoint {0} --model-config CONFIG` (or the run's --preset) samples this file with its adapter, as trained. \
             Dropping the `adapter.` keys in Python gives the fine-tuned weights alone, which is not the A³FT model; the adapter is specified in docs/design/adapter.md",
            a.out.display()
        );
    }
    Ok(())
}

/// `--format diffusers`: the run's model as a diffusers pipeline folder.
fn export_diffusers(
    a: &ExportArgs,
    run: &a3ft::train::run_dir::RunDir,
    rc: &a3ft::train::run_config::RunConfig,
    kind: tch::Kind,
) -> Result<()> {
    let Some(files) = rc.model.family.diffusers_files() else {
        bail!("--format diffusers needs a run of a diffusers model; {} fine-tuned an official improved/guided-diffusion model (export it as .safetensors or .pt)", run.root.display());
    };
    if ["safetensors", "pt", "pth"].contains(
        &a.out
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase()
            .as_str(),
    ) {
        bail!(
            "a diffusers export is a folder ({}); --out {} names a file",
            if a.format.is_some() {
                "--format diffusers"
            } else {
                "the run fine-tuned a diffusers model"
            },
            a.out.display()
        );
    }
    if let Some(base) = &rc.base_checkpoint {
        let base_dir = base
            .path
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_default();
        if a.out.exists()
            && std::fs::canonicalize(&a.out)
                .is_ok_and(|o| base.path.starts_with(&o) || o == base_dir)
        {
            bail!(
                "--out {} holds the run's base model; it is never overwritten",
                a.out.display()
            );
        }
    }
    // The step is resolved once, so that the model card names the checkpoint exported.
    let (step, _) = match a.step {
        Some(_) => run.find_checkpoint(a.step)?,
        None => a3ft::train::select::default_checkpoint(run)?,
    };
    let model = a3ft::train::run_model::load(run, Some(step), Device::Cpu)?;
    // Half-precision weights are what diffusers' fp16 releases hold; `from_pretrained` reads them
    // into whatever `torch_dtype` is asked for.
    let tensors = converted(export_state(&model), kind)?;
    let card = a3ft::export::model_card::Card {
        run,
        rc,
        step,
        dtype: &a.dtype,
        out: &a.out,
    }
    .markdown()?;
    let done = a3ft::export::diffusers::write_folder(&a.out, files, &tensors, &card)?;
    eprintln!(
        "wrote {} (diffusers pipeline folder, {} UNet tensors, model card README.md)",
        a.out.display(),
        done.tensors
    );
    if done.adapter_tensors > 0 {
        eprintln!(
            "note: the {} time-aware adapter tensors are in the UNet's weights and {}/unet/{}.py runs them: load with \
             DiffusionPipeline.from_pretrained(DIR, trust_remote_code=True). Without remote code {}",
            done.adapter_tensors,
            a.out.display(),
            a3ft::diffusers::RUNTIME_MODULE,
            a3ft::export::model_card::NO_REMOTE_CODE
        );
    }
    Ok(())
}

/// The exported tensors in `kind`; a value beyond f16's range (±65504) would become ∞ and make
/// the file unloadable, so it is refused, naming the tensor.
fn converted(
    state: Vec<(String, tch::Tensor)>,
    kind: tch::Kind,
) -> Result<Vec<(String, tch::Tensor)>> {
    state
        .into_iter()
        .map(|(k, t)| {
            if kind == tch::Kind::Half {
                let max = f64::try_from(t.abs().max())?;
                if max > 65504.0 {
                    bail!("{k} holds {max:.4e}, beyond the range of f16 (±65504); export with --dtype bf16 or f32");
                }
            }
            Ok((k, t.to_kind(kind)))
        })
        .collect()
}
