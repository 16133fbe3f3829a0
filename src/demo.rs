//! `a3ft demo`: the paper's experiment in miniature. A small source model pre-trained by a3ft on
//! synthetic shapes (assets/demo-source.safetensors) is fine-tuned on a small synthetic target
//! domain (stylised faces) with `full`, `attention` and `a3ft` under the same budget; each run is
//! evaluated on held-out faces and against its training set, and one report compares them.

use crate::config::ModelConfig;
use crate::finetune::Method;
use crate::synth::{write_domain, Domain};
use crate::run::base_checkpoint;
use crate::study::{run_study, Arm, Study, StudyOptions};
use crate::train::{EvalOptions, Hyper};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;
use tch::Device;

pub const ASSETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets");

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Budget {
    /// CI smoke test: a few steps, the whole pipeline
    Tiny,
    /// ≲ 10 minutes on 2 CPU cores: the pipeline end to end
    Fast,
    /// The overfitting question: 500 epochs per method (about 1 h 40 min for all three on 2 CPU
    /// cores, 3–4 minutes on one H200)
    Full,
}

pub struct Plan {
    pub train_images: usize,
    pub holdout_images: usize,
    pub batch: usize,
    pub steps: u64,
    pub eval_every_epochs: u64,
    pub eval_samples: usize,
    pub eval_respacing: &'static str,
}

impl Budget {
    pub fn plan(self) -> Plan {
        match self {
            Budget::Tiny => Plan { train_images: 16, holdout_images: 8, batch: 8, steps: 4, eval_every_epochs: 2, eval_samples: 8, eval_respacing: "5" },
            Budget::Fast => Plan { train_images: 64, holdout_images: 32, batch: 16, steps: 80, eval_every_epochs: 10, eval_samples: 32, eval_respacing: "25" },
            Budget::Full => Plan { train_images: 64, holdout_images: 64, batch: 32, steps: 1000, eval_every_epochs: 50, eval_samples: 128, eval_respacing: "50" },
        }
    }
}

pub struct DemoOptions {
    pub out: PathBuf,
    pub budget: Budget,
    pub device: Device,
    pub source_checkpoint: PathBuf,
    pub model_config: PathBuf,
    pub inception: Option<PathBuf>,
    pub methods: Vec<Method>,
    pub show_progress: bool,
}

impl DemoOptions {
    pub fn new(out: PathBuf, budget: Budget, device: Device) -> DemoOptions {
        DemoOptions {
            out,
            budget,
            device,
            source_checkpoint: Path::new(ASSETS).join("demo-source.safetensors"),
            model_config: Path::new(ASSETS).join("demo-model.json"),
            inception: None,
            methods: vec![Method::Full, Method::Attention, Method::A3ft],
            show_progress: true,
        }
    }
}

/// Marker of a folder the demo owns: it replaces its data and runs on every start, so it
/// must never do that to a folder that holds anything else.
const DEMO_MARKER: &str = ".a3ft-demo";

fn claim_output_folder(out: &Path) -> Result<()> {
    let marker = out.join(DEMO_MARKER);
    if out.exists() && !marker.exists() {
        let mut entries = std::fs::read_dir(out).with_context(|| format!("cannot list --out {}", out.display()))?;
        if entries.next().is_some() {
            bail!("--out {} is not empty and was not written by `a3ft demo`; the demo replaces its contents, so give a new or empty folder", out.display());
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    crate::checkpoint::write_atomic(&marker, b"a3ft demo output: the demo may replace everything in this folder\n")
}

/// Runs the demo; returns the report path.
pub fn run_demo(o: &DemoOptions) -> Result<PathBuf> {
    let start = Instant::now();
    let plan = o.budget.plan();
    if !o.source_checkpoint.exists() {
        bail!("demo source model {} is missing (it ships with the repository)", o.source_checkpoint.display());
    }
    let model = ModelConfig::from_file(&o.model_config)?;
    let size = model.image_size as u32;
    claim_output_folder(&o.out)?;
    let data = o.out.join("data");
    let (train_dir, holdout_dir) = (data.join("train"), data.join("holdout"));
    for d in [&train_dir, &holdout_dir] {
        if d.exists() {
            std::fs::remove_dir_all(d)?;
        }
    }
    // Training faces are images 0.., held-out faces images 100000.. of the same stream.
    write_domain(Domain::Target, plan.train_images, size, 7, 0, &train_dir)?;
    write_domain(Domain::Target, plan.holdout_images, size, 7, 100_000, &holdout_dir)?;
    write_domain(Domain::Source, 16, size, 1, 0, &data.join("source_examples"))?;
    eprintln!(
        "demo ({:?}): {} target training images, {} held-out, {} steps of batch {} per method on {}",
        o.budget,
        plan.train_images,
        plan.holdout_images,
        plan.steps,
        plan.batch,
        crate::device::describe(o.device)
    );
    let mut m = model.clone();
    m.diffusion_steps = 1000;
    m.noise_schedule = "cosine".into();
    let study = Study {
        title: format!("a3ft demo: fine-tuning a small source model on {} faces", plan.train_images),
        train: train_dir.clone(),
        holdout: holdout_dir.clone(),
        model: m,
        base: Some(base_checkpoint(&o.source_checkpoint, None)?),
        arms: o.methods.iter().copied().map(Arm::method).collect(),
        seeds: vec![0],
        hyper: Hyper {
            flip: true,
            log_every: (plan.steps / 40).max(1),
            sample_respacing: plan.eval_respacing.into(),
            eval: EvalOptions {
                every_epochs: Some(plan.eval_every_epochs),
                samples: plan.eval_samples,
                respacing: plan.eval_respacing.into(),
                inception: o.inception.clone(),
                ..EvalOptions::default()
            },
            ..Hyper::paper_defaults(plan.batch, plan.steps)
        },
        final_samples: plan.eval_samples,
        final_respacing: plan.eval_respacing.into(),
    };
    let mut pre = String::new();
    pre.push_str(&format!(
        "Budget `{:?}`: a {}-parameter source UNet (`assets/demo-model.json`, pre-trained by a3ft on 20,000 synthetic shape images, \
`scripts/pretrain-demo-source.sh`) fine-tuned on **{} synthetic faces** ({} held out), {} steps of batch {} \
({:.0} epochs) per method, Adam lr 2e-4, hybrid loss, T = 1000 cosine. Evaluation every {} epochs: {} samples \
({}-step ancestral sampler) against the training faces; held-out loss on {} faces.\n\n",
        o.budget,
        crate::fmt_count(crate::finetune::param_report(&crate::model::Model::new(&model, &Default::default(), Device::Cpu)?, None).base_params),
        plan.train_images,
        plan.holdout_images,
        plan.steps,
        plan.batch,
        plan.steps as f64 * plan.batch as f64 / plan.train_images as f64,
        plan.eval_every_epochs,
        plan.eval_samples,
        plan.eval_respacing,
        plan.holdout_images
    ));
    let report = run_study(
        &study,
        &StudyOptions {
            out: o.out.join("study"),
            device: o.device,
            inception: o.inception.clone(),
            show_progress: o.show_progress,
            interrupt: Arc::new(AtomicBool::new(false)),
            preamble: pre,
        },
    )?;
    eprintln!("demo finished in {:.0} s; report: {}", start.elapsed().as_secs_f64(), report.display());
    Ok(report)
}
