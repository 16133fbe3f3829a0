//! `a3ft train`: fine-tune (or pre-train) on an image folder.

use super::common::{CheckpointArgs, DeviceArgs, ModelArgs};
use a3ft::finetune::Method;
use a3ft::train::{base_checkpoint, read_run_config, train, Hyper, RunConfig, TrainInputs};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Pre-trained weights (omit to train from random init)
    #[command(flatten)]
    pub ckpt: CheckpointArgs,
    /// Folder of training images (png, jpg, webp, bmp, gif; searched recursively)
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Which parameters to train
    #[arg(long, value_enum, default_value = "a3ft")]
    pub method: Method,
    /// LoRA rank (--method lora)
    #[arg(long, default_value_t = 8)]
    pub lora_rank: i64,
    /// Start every adapter gate at sigmoid(B) (W6 = 0, b6 = B); e.g. -4 for a near-identity start
    #[arg(long, allow_hyphen_values = true)]
    pub adapter_gate_bias: Option<f64>,
    /// Learning rate of the adapter parameters (default: --lr)
    #[arg(long)]
    pub adapter_lr: Option<f64>,
    /// Run folder (config.json, metrics.jsonl, checkpoints/, samples/)
    #[arg(long, value_name = "RUN_DIR", required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in RUN_DIR from its newest checkpoint
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["out", "preset", "model_config", "checkpoint", "data"])]
    pub resume: Option<PathBuf>,
    /// Adam learning rate
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    /// Images per optimisation step
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Split each batch into chunks of this size (gradient accumulation)
    #[arg(long)]
    pub microbatch: Option<usize>,
    /// Passes over the data (an epoch = ceil(N / batch) steps)
    #[arg(long, conflicts_with = "steps")]
    pub epochs: Option<u64>,
    /// Optimisation steps (default: 500 epochs); with --resume, the new total
    #[arg(long)]
    pub steps: Option<u64>,
    /// Diffusion steps T used for training
    #[arg(long, default_value_t = 1000)]
    pub diffusion_steps: i64,
    /// Noise schedule used for training: cosine or linear
    #[arg(long, default_value = "cosine")]
    pub noise_schedule: String,
    /// Keep an EMA of the trained weights with this rate (e.g. 0.9999); samples use it
    #[arg(long)]
    pub ema: Option<f64>,
    /// Random horizontal flips
    #[arg(long)]
    pub flip: bool,
    /// Fail on unreadable images instead of skipping them
    #[arg(long)]
    pub strict: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// fp32, or bf16 mixed precision (fp32 master weights and optimizer state)
    #[arg(long, default_value = "fp32")]
    pub precision: String,
    /// Write a metrics.jsonl line every K steps
    #[arg(long, default_value_t = 10)]
    pub log_every: u64,
    /// Save a checkpoint every K steps (always at the end and on Ctrl-C)
    #[arg(long)]
    pub save_every: Option<u64>,
    /// Write samples/step_XXXXXX.png every K steps
    #[arg(long)]
    pub sample_every: Option<u64>,
    /// Respacing of the sampler used for sample grids (ddimN uses DDIM η = 0, otherwise ancestral)
    #[arg(long, default_value = "50")]
    pub sample_respacing: String,
    /// Images in each sample grid
    #[arg(long, default_value_t = 16)]
    pub sample_count: usize,
    /// Evaluate every K epochs (and at the end): held-out loss/bits-per-dim and, with
    /// --eval-samples, clean-FID/KID against the training set and memorisation
    #[arg(long, value_name = "K")]
    pub eval_every: Option<u64>,
    /// Images sampled at each evaluation
    #[arg(long, default_value_t = 0)]
    pub eval_samples: usize,
    /// Respacing of the evaluation sampler
    #[arg(long, default_value = "50")]
    pub eval_respacing: String,
    /// Held-out images for the held-out loss (never trained on)
    #[arg(long, value_name = "DIR", conflicts_with = "holdout_fraction")]
    pub holdout: Option<PathBuf>,
    /// Hold out this fraction of --data instead (seeded choice)
    #[arg(long)]
    pub holdout_fraction: Option<f64>,
    /// Inception weights for FID/KID (default: the `make inception` cache)
    #[arg(long, value_name = "FILE")]
    pub inception: Option<PathBuf>,
    /// Save and stop after this many minutes of training (resume later with --resume)
    #[arg(long, value_name = "MINUTES")]
    pub time_limit: Option<f64>,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

pub fn run(a: TrainArgs) -> Result<()> {
    let device = a.dev.device()?;
    let interrupt = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupt.clone();
        let _ = ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\nCtrl-C: saving a checkpoint after this step (press again to abort)");
        });
    }
    let (run_dir, config, resume) = match &a.resume {
        Some(dir) => {
            let mut config = read_run_config(dir)?;
            if let Some(steps) = a.steps {
                // Extending a finished run: record the new length.
                config.hyper.total_steps = steps;
                a3ft::checkpoint::write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&config)?.as_bytes())?;
            }
            (dir.clone(), config, true)
        }
        None => {
            let out = a.out.clone().unwrap();
            if out.join("config.json").exists() {
                bail!("{} already holds a run; use --resume {} or another --out", out.display(), out.display());
            }
            let Some(data) = a.data.clone() else { bail!("--data DIR is required") };
            let mut model = a.model.config()?;
            model.diffusion_steps = a.diffusion_steps;
            model.noise_schedule = a.noise_schedule.clone();
            model.timestep_respacing = String::new();
            model.dropout = 0.0;
            model.resolve()?;
            a3ft::device::parse_precision(&a.precision)?;
            if a.batch_size == 0 {
                bail!("--batch-size must be positive");
            }
            // Epochs become steps in `train`, once the readable training images are known.
            let (total_steps, epochs) = match (a.steps, a.epochs) {
                (Some(s), _) => (s, None),
                (None, e) => (0, Some(e.unwrap_or(500))),
            };
            let base = match &a.ckpt.checkpoint {
                Some(p) => Some(base_checkpoint(p, a.ckpt.checkpoint_key.as_deref())?),
                None => None,
            };
            let config = RunConfig {
                a3ft_version: env!("CARGO_PKG_VERSION").into(),
                model,
                method: a.method,
                lora_rank: a.lora_rank,
                adapter_gate_bias: a.adapter_gate_bias,
                base_checkpoint: base,
                data,
                num_images: 0,
                params: None,
                hyper: Hyper {
                    lr: a.lr,
                    adapter_lr: a.adapter_lr,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    batch_size: a.batch_size,
                    microbatch: a.microbatch,
                    epochs,
                    total_steps,
                    ema: a.ema,
                    flip: a.flip,
                    strict: a.strict,
                    seed: a.seed,
                    precision: a.precision.clone(),
                    log_every: a.log_every,
                    save_every: a.save_every,
                    sample_every: a.sample_every,
                    sample_respacing: a.sample_respacing.clone(),
                    sample_count: a.sample_count,
                    eval: a3ft::train::EvalOptions {
                        every_epochs: a.eval_every,
                        samples: a.eval_samples,
                        respacing: a.eval_respacing.clone(),
                        holdout: a.holdout.clone(),
                        holdout_fraction: a.holdout_fraction,
                        inception: a.inception.clone(),
                        memo_threshold: None,
                    },
                },
            };
            (out, config, false)
        }
    };
    let summary = train(TrainInputs { run_dir: run_dir.clone(), config, device, resume, show_progress: true, interrupt, time_limit: a.time_limit.map(|m| std::time::Duration::from_secs_f64(m * 60.0)) })?;
    eprintln!(
        "{} at step {} after {:.1}s ({:.1} images/s, last loss {:.5}); run folder {}",
        if summary.interrupted { "stopped" } else { "finished" },
        summary.final_step,
        summary.seconds,
        summary.images_per_sec,
        summary.last_loss,
        run_dir.display()
    );
    Ok(())
}
