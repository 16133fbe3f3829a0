//! `a3ft train`: fine-tune (or pre-train) on an image folder.
//!
//! Flags → RunConfig (from `Hyper::paper_defaults`, the one source of defaults) → `train`.
//! Hyper-parameter flags are optional here so that `--resume` can tell which ones were given:
//! those a run can change are applied, the others refused.

use super::common::{CheckpointArgs, DeviceArgs, ModelArgs};
use a3ft::model::adapter::AdapterStart;
use a3ft::model::methods::Method;
use a3ft::train::run_config::BaseCheckpoint;
use a3ft::train::run_config::{Hyper, RunConfig};
use a3ft::train::run_dir::RunDir;
use a3ft::train::{train, TrainInputs};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

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
    #[arg(long, value_enum, help = format!("Which parameters to train [default: {}]", RunConfig::DEFAULT_METHOD.name()))]
    pub method: Option<Method>,
    #[arg(long, help = format!("LoRA rank (--method lora) [default: {}]", RunConfig::DEFAULT_LORA_RANK))]
    pub lora_rank: Option<i64>,
    #[arg(long, allow_hyphen_values = true, conflicts_with = "adapter_gate_bias", help = format!(
        "How the adapters start: random (the paper's), zero-scale (exactly the identity at step 0), gate-bias:B (every gate at sigmoid(B)) or default [default: {}, chosen on held-out loss]",
        AdapterStart::default().name()
    ))]
    pub adapter_start: Option<String>,
    /// Shorthand for --adapter-start gate-bias:B (e.g. -4 for a near-identity start)
    #[arg(long, allow_hyphen_values = true)]
    pub adapter_gate_bias: Option<f64>,
    /// Learning rate of the modules the method adds: adapters, LoRA, DiffFit's γ (default: --lr)
    #[arg(long, alias = "adapter-lr")]
    pub new_lr: Option<f64>,
    /// Run folder (config.json, metrics.jsonl, checkpoints/, samples/)
    #[arg(long, value_name = "RUN_DIR", required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in RUN_DIR from its newest intact checkpoint; flags that a run can
    /// change (length, learning rates, schedules, evaluation, precision) apply from there on
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["out", "preset", "model_config", "checkpoint", "data"])]
    pub resume: Option<PathBuf>,
    #[arg(long, help = format!("Adam learning rate [default: {:e}]", Hyper::PAPER_LR))]
    pub lr: Option<f64>,
    #[arg(long, help = format!("Images per optimisation step [default: {}]", Hyper::PAPER_BATCH_SIZE))]
    pub batch_size: Option<usize>,
    /// Split each batch into chunks of this size (gradient accumulation)
    #[arg(long)]
    pub microbatch: Option<usize>,
    #[arg(long, conflicts_with = "steps", help = format!("Passes over the data (an epoch = ceil(N / batch) steps) [default: {}]; with --resume, the new length", Hyper::PAPER_EPOCHS))]
    pub epochs: Option<u64>,
    /// Optimisation steps (instead of --epochs); with --resume, the new total
    #[arg(long)]
    pub steps: Option<u64>,
    #[arg(long, help = format!("Diffusion steps T used for training [default: {}]", Hyper::PAPER_DIFFUSION_STEPS))]
    pub diffusion_steps: Option<i64>,
    #[arg(long, help = format!("Noise schedule used for training: cosine or linear [default: {}]", Hyper::PAPER_NOISE_SCHEDULE))]
    pub noise_schedule: Option<String>,
    #[arg(long, help = format!("P2 loss weighting γ (0 = the paper's plain hybrid loss) [default: {}]", Hyper::PAPER_P2_GAMMA))]
    pub p2_gamma: Option<f64>,
    /// Keep an EMA of the trained weights with this rate (e.g. 0.9999); samples use it
    #[arg(long, allow_negative_numbers = true)]
    pub ema: Option<f64>,
    #[arg(long, value_name = "BOOL", help = format!(
        "Ramp the EMA rate up as min(RATE, (1 + step) / (10 + step)), so that a short run's EMA is not mostly its starting weights [default: {} for new runs]",
        paper().ema_warmup
    ))]
    pub ema_warmup: Option<bool>,
    /// Random horizontal flips
    #[arg(long)]
    pub flip: bool,
    /// Fail on unreadable images instead of skipping them
    #[arg(long)]
    pub strict: bool,
    #[arg(long, help = format!("Seed of every random draw [default: {}]", paper().seed))]
    pub seed: Option<u64>,
    #[arg(long, value_enum, help = format!("fp32, or bf16 mixed precision (fp32 master weights and optimizer state) [default: {}]", paper().precision))]
    pub precision: Option<a3ft::util::precision::Precision>,
    #[arg(long, help = format!("Write a metrics.jsonl line every K steps [default: {}]", paper().log_every))]
    pub log_every: Option<u64>,
    /// Save a checkpoint every K steps (always at the end and when stopped)
    #[arg(long)]
    pub save_every: Option<u64>,
    /// Write samples/step_XXXXXX.png every K steps
    #[arg(long)]
    pub sample_every: Option<u64>,
    #[arg(long, help = format!("Respacing of the sampler used for sample grids (ddimN uses DDIM η = 0, otherwise ancestral) [default: {}]", paper().sample_respacing))]
    pub sample_respacing: Option<a3ft::diffusion::respace::Respacing>,
    #[arg(long, help = format!("Images in each sample grid [default: {}]", paper().sample_count))]
    pub sample_count: Option<usize>,
    /// Evaluate every K epochs (and at the end): held-out loss/bits-per-dim and, with
    /// --eval-samples, clean-FID/KID against the training set and memorisation
    #[arg(long, value_name = "K")]
    pub eval_every: Option<u64>,
    #[arg(long, help = format!("Images sampled at each evaluation [default: {}]", paper().eval.samples))]
    pub eval_samples: Option<usize>,
    #[arg(long, help = format!("Respacing of the evaluation sampler [default: {}]", paper().eval.respacing))]
    pub eval_respacing: Option<a3ft::diffusion::respace::Respacing>,
    /// Held-out images for the held-out loss (never trained on)
    #[arg(long, value_name = "DIR", conflicts_with = "holdout_fraction")]
    pub holdout: Option<PathBuf>,
    /// Hold out this fraction of --data instead (seeded choice)
    #[arg(long)]
    pub holdout_fraction: Option<f64>,
    /// Keep the checkpoint with the best in-loop evaluation (recorded in selected.json; sample,
    /// eval, export and report then use it)
    #[arg(long, value_enum)]
    pub select: Option<a3ft::train::run_config::Selection>,
    /// Stop after this many evaluations without improvement of --select
    #[arg(long, value_name = "EVALUATIONS")]
    pub early_stop: Option<u64>,
    /// Domain guidance weight w of evaluation samples and held-out loss: ε_base + w·(ε_run − ε_base), the base checkpoint as the source (1 = off)
    #[arg(long, allow_negative_numbers = true)]
    pub guidance: Option<f64>,
    /// Inception weights for FID/KID (default: the `make inception` cache)
    #[arg(long, value_name = "FILE")]
    pub inception: Option<PathBuf>,
    /// Save and stop after this many minutes of training (resume later with --resume)
    #[arg(long, value_name = "MINUTES", allow_hyphen_values = true)]
    pub time_limit: Option<f64>,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

/// The defaults a new run starts from, for the help of flags that are optional so that
/// `--resume` can tell which ones were given (clap cannot fill those in).
fn paper() -> Hyper {
    Hyper::paper_defaults(Hyper::PAPER_BATCH_SIZE, 0)
}

pub fn run(a: TrainArgs) -> Result<()> {
    let device = a.dev.device()?;
    let (run_dir, config, resume) = match &a.resume {
        Some(dir) => (dir.clone(), resumed_config(&a, &RunDir::new(dir))?, true),
        None => {
            let out = a.out.clone().expect("clap requires --out without --resume");
            RunDir::new(&out).check_new()?;
            (out, new_config(&a)?, false)
        }
    };
    if a.new_lr.is_some() && !config.method.adds_modules() {
        bail!(
            "--new-lr sets the learning rate of the modules a method adds (adapters, LoRA, DiffFit's γ); --method {} adds none, so it would change nothing: use --lr",
            config.method.name()
        );
    }
    if resume {
        config.validate().with_context(|| {
            format!(
                "run config {} with the flags given",
                run_dir.join("config.json").display()
            )
        })?;
    } else {
        config.validate()?;
        RunDir::new(&run_dir).check_outside_images(&config)?;
    }
    let time_limit = match a.time_limit {
        Some(m) if !(m.is_finite() && m > 0.0 && m < 1e7) => bail!(
            "--time-limit must be a number of minutes above 0 and below 10000000, got {}",
            a3ft::util::fmt_num(m)
        ),
        m => m.map(|m| std::time::Duration::from_secs_f64(m * 60.0)),
    };
    let signal = a3ft::train::stop_on_signals();
    let created = !resume && !run_dir.exists();
    let result = train(TrainInputs {
        run_dir: run_dir.clone(),
        config,
        device,
        resume,
        show_progress: true,
        time_limit,
    });
    if result.is_err() && created {
        RunDir::new(&run_dir).remove_unstarted();
    }
    let summary = result?;
    if let Some(s) = &summary.selected {
        eprintln!(
            "selected checkpoint: step {} (epoch {:.1}, {} {:.5})",
            s.step,
            s.epoch,
            s.metric.name(),
            s.value
        );
    }
    let last = if summary.last_loss.is_finite() {
        format!("{:.5}", summary.last_loss)
    } else {
        "–".into()
    };
    eprintln!(
        "{} at step {} after {:.1}s ({:.1} images/s, last loss {last}); run folder {}",
        if summary.interrupted {
            "stopped"
        } else if summary.early_stopped {
            "stopped early"
        } else {
            "finished"
        },
        summary.final_step,
        summary.seconds,
        summary.images_per_sec,
        run_dir.display()
    );
    // Stopped by a signal: saved, but exit as the signal would (128 + n) so scripts can tell.
    let sig = signal.load(Ordering::SeqCst);
    if sig != 0 {
        std::process::exit(128 + sig);
    }
    Ok(())
}

/// A new run: the paper's defaults, then every flag given.
fn new_config(a: &TrainArgs) -> Result<RunConfig> {
    let Some(data) = &a.data else {
        bail!("--data DIR is required")
    };
    let data = a3ft::util::paths::absolute(data, "--data")?;
    let (mut model, ckpt) = super::common::model_source(&a.model, &a.ckpt)?;
    if let Some(adapter) = &ckpt.adapter_file {
        bail!(
            "--checkpoint holds A³FT adapter tensors ({}), which a new run cannot start from; continue the run that made it, or fine-tune its base model",
            adapter.display()
        );
    }
    if let (Some(dir), Some(out)) = (&a.ckpt.checkpoint, &a.out) {
        if dir.is_dir()
            && (a3ft::util::paths::is_within(out, dir) || a3ft::util::paths::is_within(dir, out))
        {
            bail!(
                "--out {} overlaps the model folder {}; write the run elsewhere",
                out.display(),
                dir.display()
            );
        }
    }
    if !model.family.is_adm() && (a.noise_schedule.is_some() || a.diffusion_steps.is_some()) {
        bail!("--noise-schedule/--diffusion-steps do not apply to a diffusers model: it trains with its scheduler_config.json");
    }
    let schedule = a
        .noise_schedule
        .clone()
        .unwrap_or_else(|| Hyper::PAPER_NOISE_SCHEDULE.into());
    let steps_t = a.diffusion_steps.unwrap_or(Hyper::PAPER_DIFFUSION_STEPS);
    // The paper fine-tunes with T = 1000 cosine whatever the checkpoint was trained with: say so
    // when that differs from the model config, since it changes what every timestep means.
    if ckpt.checkpoint.is_some()
        && model.family.is_adm()
        && (model.noise_schedule != schedule || model.diffusion_steps != steps_t)
    {
        eprintln!(
            "note: fine-tuning with T = {steps_t} {schedule}; the model config says the checkpoint was trained with T = {} {} (pass --noise-schedule/--diffusion-steps to keep that)",
            model.diffusion_steps, model.noise_schedule
        );
    }
    let p2 = a.p2_gamma.unwrap_or(Hyper::PAPER_P2_GAMMA);
    if a.p2_gamma.is_none() && model.p2_gamma != 0.0 {
        eprintln!("note: training with the plain hybrid loss (the paper's); the model config's P2 weighting (p2_gamma {}) is off unless --p2-gamma is given", model.p2_gamma);
    }
    if model.family.is_adm() {
        model.diffusion_steps = steps_t;
        model.noise_schedule = schedule;
        model.dropout = 0.0;
    } else {
        // A diffusers model keeps its scheduler's schedule (the flags were refused above) and
        // its config's dropout; the summary fields say so.
        model.summarise_diffusers()?;
    }
    model.p2_gamma = p2;
    model.timestep_respacing = a3ft::diffusion::respace::Respacing::All;
    model.resolve()?;

    // Epochs become steps in `train`, once the readable training images are known.
    let mut h = Hyper::paper_defaults(
        a.batch_size.unwrap_or(Hyper::PAPER_BATCH_SIZE),
        a.steps.unwrap_or(0),
    );
    h.epochs = if a.steps.is_some() {
        None
    } else {
        Some(a.epochs.unwrap_or(Hyper::PAPER_EPOCHS))
    };
    h.ema = a.ema;
    h.ema_warmup = a.ema_warmup.unwrap_or(true);
    if a.ema_warmup.is_some() && a.ema.is_none() {
        eprintln!("note: --ema-warmup has no effect without --ema");
    }
    h.flip = a.flip;
    h.strict = a.strict;
    h.seed = a.seed.unwrap_or(h.seed);
    h.eval.holdout = a
        .holdout
        .as_deref()
        .map(|p| a3ft::util::paths::absolute(p, "--holdout"))
        .transpose()?;
    h.eval.holdout_fraction = a.holdout_fraction;
    apply_changeable(a, &mut h);
    // The default sampler respacing ("50") may not fit the schedule (fewer steps, or no whole
    // stride); then in-loop samples and evaluations use every step, and say so.
    // A diffusers model with a DDIM scheduler samples as DDIMPipeline does.
    for (flag, given, spec) in [
        (
            "--sample-respacing",
            a.sample_respacing.is_some(),
            &mut h.sample_respacing,
        ),
        (
            "--eval-respacing",
            a.eval_respacing.is_some(),
            &mut h.eval.respacing,
        ),
    ] {
        if !given {
            let (chosen, every_step) = model.default_respacing(spec);
            if every_step {
                eprintln!("note: the default {flag} \"{spec}\" does not fit T = {}; using \"{chosen}\" (sampling steps)", model.diffusion_steps);
            }
            *spec = chosen;
        }
    }
    let mut rc = RunConfig::new(
        model,
        a.method.unwrap_or(RunConfig::DEFAULT_METHOD),
        data,
        h,
    );
    rc.lora_rank = a.lora_rank.unwrap_or(rc.lora_rank);
    rc.adapter_start = adapter_start(a)?.unwrap_or_default();
    rc.base_checkpoint = match &ckpt.checkpoint {
        Some(p) => Some(BaseCheckpoint::record(p, ckpt.checkpoint_key.as_deref())?),
        None => None,
    };
    Ok(rc)
}

/// `--adapter-start` or its `--adapter-gate-bias` shorthand, when given.
fn adapter_start(a: &TrainArgs) -> Result<Option<a3ft::model::adapter::AdapterStart>> {
    use a3ft::model::adapter::AdapterStart;
    Ok(match (&a.adapter_start, a.adapter_gate_bias) {
        (Some(s), _) => {
            Some(AdapterStart::parse(s).map_err(|e| anyhow::anyhow!("--adapter-start: {e:#}"))?)
        }
        (None, Some(b)) => Some(AdapterStart::GateBias(b)),
        (None, None) => None,
    })
}

/// Flags a run may change between sessions (they alter no state a checkpoint holds).
fn apply_changeable(a: &TrainArgs, h: &mut Hyper) {
    if a.guidance.is_some() {
        h.eval.guidance = a.guidance;
    }
    if let Some(v) = a.lr {
        h.lr = v;
    }
    if a.new_lr.is_some() {
        h.new_lr = a.new_lr;
    }
    if a.microbatch.is_some() {
        h.microbatch = a.microbatch;
    }
    if let Some(v) = a.precision {
        h.precision = v;
    }
    if let Some(v) = a.log_every {
        h.log_every = v;
    }
    if a.save_every.is_some() {
        h.save_every = a.save_every;
    }
    if a.sample_every.is_some() {
        h.sample_every = a.sample_every;
    }
    if let Some(v) = &a.sample_respacing {
        h.sample_respacing = v.clone();
    }
    if let Some(v) = a.sample_count {
        h.sample_count = v;
    }
    if a.eval_every.is_some() {
        h.eval.every_epochs = a.eval_every;
    }
    if let Some(v) = a.eval_samples {
        h.eval.samples = v;
    }
    if let Some(v) = &a.eval_respacing {
        h.eval.respacing = v.clone();
    }
    if let Some(p) = &a.inception {
        // Absolute when it exists, so a resumed run finds it; a missing file disables FID with a warning.
        h.eval.inception = Some(a3ft::util::paths::absolute_if_exists(p));
    }
    if a.select.is_some() {
        h.eval.select = a.select;
    }
    if a.early_stop.is_some() {
        h.eval.early_stop = a.early_stop;
    }
}

/// The stored config of a run being resumed, with the flags given now applied; a flag that
/// would change what the checkpoints mean (method, batch, seed, schedule, …) is refused.
fn resumed_config(a: &TrainArgs, run: &RunDir) -> Result<RunConfig> {
    let mut rc = run.read_config()?;
    let h = &rc.hyper;
    let fixed: [(&str, Option<String>, String); 14] = [
        (
            "--method",
            a.method.map(|m| m.name().to_string()),
            rc.method.name().to_string(),
        ),
        (
            "--lora-rank",
            a.lora_rank.map(|v| v.to_string()),
            rc.lora_rank.to_string(),
        ),
        (
            "--adapter-start",
            adapter_start(a)?.map(|s| s.name()),
            rc.adapter_start().name(),
        ),
        (
            "--batch-size",
            a.batch_size.map(|v| v.to_string()),
            h.batch_size.to_string(),
        ),
        (
            "--diffusion-steps",
            a.diffusion_steps.map(|v| v.to_string()),
            rc.model.diffusion_steps.to_string(),
        ),
        (
            "--noise-schedule",
            a.noise_schedule.clone(),
            rc.model.noise_schedule.clone(),
        ),
        (
            "--p2-gamma",
            a.p2_gamma.map(|v| v.to_string()),
            rc.model.p2_gamma.to_string(),
        ),
        (
            "--ema",
            a.ema.map(|v| v.to_string()),
            h.ema.map(|v| v.to_string()).unwrap_or("none".into()),
        ),
        (
            "--ema-warmup",
            a.ema_warmup
                .filter(|_| h.ema.is_some())
                .map(|v| v.to_string()),
            h.ema_warmup.to_string(),
        ),
        ("--flip", a.flip.then(|| "true".into()), h.flip.to_string()),
        (
            "--strict",
            a.strict.then(|| "true".into()),
            h.strict.to_string(),
        ),
        ("--seed", a.seed.map(|v| v.to_string()), h.seed.to_string()),
        (
            "--holdout",
            a.holdout.as_deref().map(|p| {
                a3ft::util::paths::absolute_if_exists(p)
                    .display()
                    .to_string()
            }),
            h.eval
                .holdout
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or("none".into()),
        ),
        (
            "--holdout-fraction",
            a.holdout_fraction.map(|v| v.to_string()),
            h.eval
                .holdout_fraction
                .map(|v| v.to_string())
                .unwrap_or("none".into()),
        ),
    ];
    for (flag, given, stored) in fixed {
        if let Some(g) = given {
            if g != stored {
                bail!(
                    "{flag} cannot change when resuming (the run in {} has {stored}, not {g}): the checkpoints were made with it; start a new run with --out to change it",
                    run.root.display()
                );
            }
        }
    }
    if let Some(steps) = a.steps {
        rc.hyper.total_steps = steps;
        rc.hyper.epochs = None;
    }
    if a.epochs.is_some() {
        rc.hyper.epochs = a.epochs;
    }
    apply_changeable(a, &mut rc.hyper);
    Ok(rc)
}
