//! `a3ft study`: methods × options × seeds on one data set, one report (see src/study.rs).

use super::common::{CheckpointArgs, DeviceArgs, ModelArgs};
use a3ft::model::adapter::AdapterStart;
use a3ft::model::methods::Method;
use a3ft::study::{run_study, run_study_share, Arm, Outcome, Share, Study, StudyOptions};
use a3ft::train::run_config::BaseCheckpoint;
use a3ft::train::run_config::Hyper;
use a3ft::util::precision::Precision;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct StudyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub ckpt: CheckpointArgs,
    /// Training images (the whole training set of the protocol)
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Held-out images of the same domain (e.g. DIR/holdout from `a3ft data fetch --holdout N`)
    #[arg(long, value_name = "DIR")]
    pub holdout: PathBuf,
    /// Study folder (study.json, runs/, report/report.md); rerun the same command to continue
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Methods, comma-separated
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "full,attention,a3ft"
    )]
    pub methods: Vec<Method>,
    /// Seeds, comma-separated (one run per method and seed)
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    pub seeds: Vec<u64>,
    /// Adapter starts to compare for adapter/a3ft (comma-separated: random, zero-scale, gate-bias:B)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "zero-scale",
        allow_hyphen_values = true
    )]
    pub adapter_starts: Vec<String>,
    #[arg(long, help = format!("Adam learning rate [default: {:e}, the paper's]", Hyper::PAPER_LR))]
    pub lr: Option<f64>,
    /// Learning rate of the modules a method adds: adapters, LoRA, DiffFit's γ (default: --lr)
    #[arg(long)]
    pub new_lr: Option<f64>,
    #[arg(long, help = format!("Images per step [default: {}, the paper's]", Hyper::PAPER_BATCH_SIZE))]
    pub batch_size: Option<usize>,
    /// Domain guidance weights w to sweep on each run (comma-separated; 1 = off is always tried): the one with the lowest held-out loss of the guided model gets a second final evaluation, reported as "ARM + guidance". May be added to a finished study
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub guidance: Vec<f64>,
    /// Arms that get the guidance sweep (comma-separated arm names; default: every arm)
    #[arg(long, value_delimiter = ',')]
    pub guidance_arms: Vec<String>,
    /// Gradient accumulation chunk
    #[arg(long)]
    pub microbatch: Option<usize>,
    #[arg(long, help = format!("Passes over the training images per run [default: {}, the paper's]", Hyper::PAPER_EPOCHS))]
    pub epochs: Option<u64>,
    #[arg(long, help = format!("Diffusion steps T used for fine-tuning [default: {}, the paper's; a diffusers model keeps its scheduler's]", Hyper::PAPER_DIFFUSION_STEPS))]
    pub diffusion_steps: Option<i64>,
    #[arg(long, help = format!("Noise schedule used for fine-tuning [default: {}, the paper's; a diffusers model keeps its scheduler's]", Hyper::PAPER_NOISE_SCHEDULE))]
    pub noise_schedule: Option<String>,
    /// Random horizontal flips
    #[arg(long)]
    pub flip: bool,
    /// fp32 or bf16
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    /// In-loop evaluation every K epochs (held-out loss; with --eval-samples also cFID/KID)
    #[arg(long, default_value_t = 50)]
    pub eval_every: u64,
    /// Samples per in-loop evaluation
    #[arg(long, default_value_t = 0)]
    pub eval_samples: usize,
    /// Sampler of in-loop evaluation
    #[arg(long, default_value_t = Respacing::sampling_default())]
    pub eval_respacing: Respacing,
    /// Keep each run's best checkpoint by this in-loop metric and evaluate that one
    #[arg(long, value_enum)]
    pub select: Option<a3ft::train::run_config::Selection>,
    /// Stop a run after this many evaluations without improvement of --select
    #[arg(long)]
    pub early_stop: Option<u64>,
    /// Samples of each run's final evaluation (the paper: 5000)
    #[arg(long, default_value_t = 1000)]
    pub final_samples: usize,
    /// Sampler of the final evaluation (ddimN = DDIM)
    #[arg(long, default_value_t = Respacing::sampling_default())]
    pub final_respacing: Respacing,
    /// Only rewrite the report from the runs finished so far (an arm without finished runs shows 0)
    #[arg(long, conflicts_with_all = ["shard", "worker", "status"])]
    pub report_only: bool,
    /// Do only shard I of N of the runs (run k of the study's order belongs to shard k mod N),
    /// beside the other shards' processes; `slurm`: the shard of this Slurm array task
    /// ((SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP of
    /// SLURM_ARRAY_TASK_COUNT). The process
    /// that finishes the last run writes the report
    #[arg(long, value_name = "I/N|slurm", conflicts_with_all = ["worker", "status"])]
    pub shard: Option<String>,
    /// Take the next run no other process holds, until none is left (start as many workers as
    /// there are GPUs or machines; a run whose worker died is taken over and resumed)
    #[arg(long, conflicts_with = "status")]
    pub worker: bool,
    /// Say where each run of the study stands (finished, running and where, abandoned, not
    /// started) and whether the report is written; trains nothing, takes no lock
    #[arg(long)]
    pub status: bool,
    /// Title of the report
    #[arg(long, default_value = "a3ft study")]
    pub title: String,
    /// Inception weights (default: the `make inception` cache)
    #[arg(long, value_name = "FILE")]
    pub inception: Option<PathBuf>,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

use a3ft::diffusion::respace::Respacing;

pub fn run(a: StudyArgs) -> Result<()> {
    let share = match &a.shard {
        Some(s) => Share::parse_shard(s, |v| std::env::var(v).ok())?,
        None if a.worker => Share::Worker,
        None => Share::All,
    };
    let device = a.dev.device()?;
    if a.ckpt.checkpoint.is_none() {
        bail!("a study fine-tunes a pre-trained model: give --checkpoint FILE (or a diffusers model folder)");
    }
    let (mut model, ckpt_args) = super::common::model_source(&a.model, &a.ckpt)?;
    if let Some(adapter) = &ckpt_args.adapter_file {
        bail!("--checkpoint holds A³FT adapter tensors ({}), which a study cannot start from; study its base model", adapter.display());
    }
    let ckpt = ckpt_args.checkpoint.as_ref().expect("checked above");
    if let Some(dir) = a.ckpt.checkpoint.as_ref().filter(|d| d.is_dir()) {
        if a3ft::util::paths::is_within(&a.out, dir) || a3ft::util::paths::is_within(dir, &a.out) {
            bail!(
                "--out {} overlaps the model folder {}; write the study elsewhere",
                a.out.display(),
                dir.display()
            );
        }
    }
    if model.family.is_adm() {
        model.diffusion_steps = a.diffusion_steps.unwrap_or(Hyper::PAPER_DIFFUSION_STEPS);
        model.noise_schedule = a
            .noise_schedule
            .clone()
            .unwrap_or_else(|| Hyper::PAPER_NOISE_SCHEDULE.into());
        model.dropout = 0.0;
    } else if a.diffusion_steps.is_some() || a.noise_schedule.is_some() {
        bail!("--diffusion-steps/--noise-schedule do not apply to a diffusers model: it trains with its scheduler_config.json");
    } else {
        // The scheduler's schedule and the config's dropout, as `train` (summary fields only).
        model.summarise_diffusers()?;
    }
    model.p2_gamma = 0.0;
    model.timestep_respacing = Respacing::All;
    model.resolve()?;
    // The default samplers ("50") as in `train`: DDIMPipeline's ddim50 for a diffusers model with
    // a DDIM scheduler, every step for a schedule that "50" does not fit.
    let mut respacings = [a.eval_respacing.clone(), a.final_respacing.clone()];
    for (flag, spec) in ["--eval-respacing", "--final-respacing"]
        .iter()
        .zip(respacings.iter_mut())
    {
        if *spec == Respacing::sampling_default() {
            let (chosen, every_step) = model.default_respacing(spec);
            if every_step {
                eprintln!("note: the default {flag} \"{spec}\" does not fit T = {}; using \"{chosen}\" (sampling steps)", model.diffusion_steps);
            }
            *spec = chosen;
        }
        model.validate_respacing(spec).with_context(|| {
            format!("{flag} (a schedule of T = {} steps)", model.diffusion_steps)
        })?;
    }
    let [eval_respacing, final_respacing] = respacings;
    let mut arms = Vec::new();
    for &m in &a.methods {
        if matches!(m, Method::Adapter | Method::A3ft) {
            for s in &a.adapter_starts {
                let start = AdapterStart::parse(s)
                    .map_err(|e| anyhow::anyhow!("--adapter-starts: {e:#}"))?;
                let name = if a.adapter_starts.len() == 1 {
                    m.name().to_string()
                } else {
                    format!("{}-{}", m.name(), start.name().replace(':', ""))
                };
                arms.push(Arm {
                    name,
                    method: m,
                    adapter_start: start,
                    lr: None,
                });
            }
        } else {
            arms.push(Arm::method(m));
        }
    }
    // The paper's settings (one source of defaults), then the flags given.
    let mut hyper = Hyper::paper_defaults(a.batch_size.unwrap_or(Hyper::PAPER_BATCH_SIZE), 0);
    hyper.epochs = Some(a.epochs.unwrap_or(Hyper::PAPER_EPOCHS));
    hyper.lr = a.lr.unwrap_or(hyper.lr);
    hyper.new_lr = a.new_lr;
    if a.new_lr.is_some() && !arms.iter().any(|arm| arm.method.adds_modules()) {
        bail!("--new-lr sets the learning rate of the modules a method adds (adapters, LoRA, DiffFit's γ); none of --methods adds any: use --lr");
    }
    hyper.microbatch = a.microbatch;
    hyper.flip = a.flip;
    hyper.precision = a.precision;
    hyper.sample_respacing = eval_respacing.clone();
    hyper.eval.every_epochs = Some(a.eval_every);
    hyper.eval.samples = a.eval_samples;
    hyper.eval.respacing = eval_respacing.clone();
    hyper.eval.select = a.select;
    hyper.eval.early_stop = a.early_stop;
    let study = Study {
        title: a.title.clone(),
        train: a3ft::util::paths::absolute(&a.data, "--data")?,
        holdout: a3ft::util::paths::absolute(&a.holdout, "--holdout")?,
        model,
        base: Some(BaseCheckpoint::record(
            ckpt,
            ckpt_args.checkpoint_key.as_deref(),
        )?),
        arms,
        seeds: a.seeds.clone(),
        hyper,
        final_samples: a.final_samples,
        final_respacing,
        guidance: a.guidance.clone(),
        guidance_arms: a.guidance_arms.clone(),
    };
    let signal = a3ft::train::stop_on_signals();
    let o = StudyOptions {
        out: a.out.clone(),
        device,
        inception: a
            .inception
            .as_deref()
            .map(a3ft::util::paths::absolute_if_exists),
        show_progress: true,
        preamble: String::new(),
        report_only: a.report_only,
        inception_here: share != Share::All,
    };
    if a.status {
        println!("{}", a3ft::study::status(&study, &o)?);
        return Ok(());
    }
    let outcome = match share {
        Share::All => run_study(&study, &o).map(Outcome::Report),
        share => run_study_share(&study, &o, share),
    };
    match outcome {
        Ok(Outcome::Waiting(why)) => {
            println!("{why}");
            Ok(())
        }
        Ok(Outcome::Report(report)) => {
            println!("report: {}", report.display());
            // A signal that came as the study finished: the report is whole, the status says so.
            let sig = signal.load(std::sync::atomic::Ordering::SeqCst);
            if sig != 0 {
                eprintln!("signal {sig} came as the study finished; its report is whole");
                std::process::exit(128 + sig);
            }
            Ok(())
        }
        Err(e) => {
            // Stopped by a signal (the current run saved): exit as the signal would.
            let sig = signal.load(std::sync::atomic::Ordering::SeqCst);
            if sig != 0 {
                eprintln!("error: {e:#}");
                std::process::exit(128 + sig);
            }
            Err(e)
        }
    }
}
