//! `a3ft sample`: generate images with the ancestral or DDIM sampler.

use super::common::{CheckpointArgs, DeviceArgs, ModelArgs};
use a3ft::diffusion::sample::Sampler;
use a3ft::diffusion::Diffusion;
use a3ft::io::images;
use a3ft::util::precision::Precision;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub ckpt: CheckpointArgs,
    /// Sample from a training run (base checkpoint + fine-tuned tensors) instead of --checkpoint
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["preset", "model_config", "checkpoint"])]
    pub run: Option<PathBuf>,
    /// Checkpoint step of the run (default: newest)
    #[arg(long, requires = "run", allow_negative_numbers = true)]
    pub step: Option<u64>,
    /// Domain guidance weight w: sample ε_base + w·(ε_run − ε_base) with the run's base checkpoint as the source (1 = off, 0 = the base's noise prediction)
    #[arg(long, requires = "run", allow_negative_numbers = true)]
    pub guidance: Option<f64>,
    /// Number of images
    #[arg(long, default_value_t = 16, allow_negative_numbers = true)]
    pub num: usize,
    /// Images per batch
    #[arg(long, default_value_t = 16, allow_negative_numbers = true)]
    pub batch_size: usize,
    /// Timestep respacing: a step count ("250"), sections ("10,20") or "ddimN" (DDIM on N steps);
    /// default all steps (a diffusers model with a DDIM scheduler: ddim50, as DDIMPipeline)
    #[arg(long, allow_hyphen_values = true)]
    pub respacing: Option<a3ft::diffusion::respace::Respacing>,
    /// Use the DDIM update rule (implied by a ddimN respacing)
    #[arg(long)]
    pub ddim: bool,
    /// DDIM stochasticity η (0 = deterministic)
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub eta: f64,
    /// Random seed
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub seed: i64,
    /// Precision of convolutions and matmuls: fp32 or bf16
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    /// Output folder: 000000.png …, grid.png, samples.npz (arr_0, uint8 NHWC)
    #[arg(long)]
    pub out: PathBuf,
    /// Replace the samples of an earlier `a3ft sample` in --out (nothing else is ever removed)
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

pub fn run(a: SampleArgs) -> Result<()> {
    // Everything that can be checked is checked before a model is built or loaded.
    // A `ddimN` respacing means DDIM here as in train and eval (--ddim also selects it).
    Sampler::Ddim { eta: a.eta }.validate().context("--eta")?;
    if std::fs::symlink_metadata(&a.out).is_ok() && !a.out.is_dir() {
        bail!(
            "--out {} exists and is not a folder (or is a dangling link)",
            a.out.display()
        );
    }
    let (config, ckpt) = match &a.run {
        Some(run) => {
            let rc = a3ft::train::run_dir::read_run_config(run)?;
            if let Some((flag, dir)) = rc.image_folder_holding(&a.out) {
                bail!(
                    "--out {} lies inside the run's {flag} folder {}; write the samples elsewhere",
                    a.out.display(),
                    dir.display()
                );
            }
            (rc.model, a.ckpt.clone())
        }
        None => super::common::model_source(&a.model, &a.ckpt)?,
    };
    config.resolve()?;
    // Claimed before sampling and held until the new set replaces the old one in one rename: a
    // second `sample` into the folder is refused, and a kill leaves the earlier set whole.
    let out = a3ft::io::images::claim_sample_folder(&a.out)?;
    if out.earlier_files() > 0 && !a.force {
        bail!("--out {} already holds {} files of an earlier `a3ft sample`; pass --force to replace them", a.out.display(), out.earlier_files());
    }
    a3ft::model::check_sample_counts(
        a.num,
        a.batch_size,
        config.image_size,
        "--num",
        "--batch-size",
    )?;
    // Without --respacing a model samples as its own code would: every step, or for a diffusers
    // model whose scheduler is DDIM, `DDIMPipeline`'s 50 DDIM steps.
    let respacing = a.respacing.clone().or_else(|| config.default_sampling());
    if let Some(spec) = &respacing {
        config.validate_respacing(spec).context("--respacing")?;
    }
    let ddim = a.ddim || respacing.as_ref().is_some_and(|r| r.is_ddim());
    let sampler = if ddim {
        Sampler::Ddim { eta: a.eta }
    } else {
        Sampler::Ancestral
    };
    if !ddim && a.eta != 0.0 {
        eprintln!(
            "warning: --eta {} has no effect without --ddim (ancestral sampling)",
            a.eta
        );
    }
    let device = a.dev.device()?;
    let mut model = match &a.run {
        Some(run) => a3ft::train::run_model::load_guided(
            &a3ft::train::run_dir::RunDir::new(run),
            a.step,
            device,
            a.guidance,
        )?,
        None => {
            if ckpt.checkpoint.is_none() {
                eprintln!(
                    "warning: no --checkpoint given; sampling from a randomly initialised model"
                );
            }
            super::common::build_model(&config, &Default::default(), &ckpt, device)?
        }
    };
    model.unet.compute_kind = a.precision.kind();
    a3ft::util::device::warn_if_slow(a.precision, device);
    let diffusion = Diffusion::from_config(&model.config, respacing.as_ref(), device)?;
    let start = std::time::Instant::now();
    let imgs = model.sample_images(&diffusion, a.num, a.batch_size, sampler, a.seed, true)?;
    out.publish(|staging| images::save_samples(staging, &imgs))?;
    eprintln!(
        "wrote {} images to {} ({:.1}s, {} steps each)",
        a.num,
        a.out.display(),
        start.elapsed().as_secs_f64(),
        diffusion.num_timesteps
    );
    Ok(())
}
