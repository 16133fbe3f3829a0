//! `a3ft study`: the paper's Table 1 and Fig. 1 from one command.
//!
//! Arms (a method with its options) × seeds, fine-tuned from one base checkpoint on one data set
//! with one budget. Every run then gets the protocol's final evaluation (`final.json`): cFID/KID
//! of N samples against the whole training set and against held-out images, held-out loss and
//! bits/dim, memorisation. The report gives mean ± sd over seeds per arm and the curves with
//! their seed spread.
//!
//! Resumable: the options are stored in `STUDY/study.json`; running the same study again skips
//! finished runs (those with `final.json`), resumes unfinished ones and evaluates the rest.
//!
//! One process does every run unless told otherwise; with `--shard` or `--worker` (`share`)
//! many processes — on one machine or several sharing the folder — split the runs, each run
//! claimed through its own lock, and the one that finishes the last run writes the report.

pub mod demo;
pub mod report;
pub mod share;

pub use share::Share;

use crate::model::adapter::AdapterStart;
use crate::model::config::ModelConfig;
use crate::model::methods::Method;
use crate::train::evaluate::{FinalEvaluation, DEFAULT_MEMO_THRESHOLD};
use crate::train::records::FinalRecord;
use crate::train::run_config::BaseCheckpoint;
use crate::train::run_config::{Hyper, RunConfig};
use crate::train::run_dir::RunDir;
use crate::train::{train, TrainInputs};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Device;

/// One row of the table: a method and the options that distinguish it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    pub name: String,
    pub method: Method,
    /// Adapter start (adapter methods).
    #[serde(default = "AdapterStart::stored_before_choice")]
    pub adapter_start: AdapterStart,
    /// Learning rate (default: the study's).
    #[serde(default)]
    pub lr: Option<f64>,
}

impl Arm {
    pub fn method(method: Method) -> Arm {
        Arm {
            name: method.name().into(),
            method,
            adapter_start: AdapterStart::default(),
            lr: None,
        }
    }
}

/// Everything that defines a study; stored as `STUDY/study.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Study {
    pub title: String,
    /// Images trained on (the whole training set of the protocol).
    pub train: PathBuf,
    /// Held-out images of the same domain, never trained on.
    pub holdout: PathBuf,
    /// Model and the training diffusion (T, schedule).
    pub model: ModelConfig,
    pub base: Option<BaseCheckpoint>,
    pub arms: Vec<Arm>,
    pub seeds: Vec<u64>,
    /// Budget and in-loop evaluation of every run (seed and lr are set per run).
    pub hyper: Hyper,
    /// Samples of the final evaluation (the paper: 5,000 for Pokémon).
    pub final_samples: usize,
    pub final_respacing: crate::diffusion::respace::Respacing,
    /// Domain guidance weights to try on each run of `guidance_arms` (empty: none). The weight
    /// with the lowest held-out loss of the guided model (1 = off is always a candidate) gets a
    /// second final evaluation, `final-guided.json`, reported as the row "ARM + guidance".
    /// Not part of what identifies the study: a finished study can be given guidance later.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guidance: Vec<f64>,
    /// Arms whose runs get the guidance sweep (empty: every arm).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guidance_arms: Vec<String>,
}

impl Study {
    pub fn validate(&self) -> Result<()> {
        if self.arms.is_empty() || self.seeds.is_empty() {
            bail!("a study needs at least one method and one seed");
        }
        let mut names: Vec<&str> = self.arms.iter().map(|a| a.name.as_str()).collect();
        names.sort();
        names.dedup();
        if names.len() != self.arms.len() {
            bail!("study arms must have distinct names");
        }
        let mut seeds = self.seeds.clone();
        seeds.sort();
        seeds.dedup();
        if seeds.len() != self.seeds.len() {
            bail!("--seeds lists a seed twice: one run would count as two in the mean ± sd");
        }
        if self.final_samples < 2 {
            bail!(
                "--final-samples must be at least 2, got {}",
                self.final_samples
            );
        }
        let batch = 64.min(crate::model::max_sample_batch(self.model.image_size));
        crate::model::check_sample_counts(
            self.final_samples,
            batch,
            self.model.image_size,
            "--final-samples",
            "sampling batch",
        )?;
        if crate::util::paths::is_within(&self.train, &self.holdout)
            || crate::util::paths::is_within(&self.holdout, &self.train)
        {
            bail!(
                "--holdout {} overlaps --data {}: held-out images must never be trained on",
                self.holdout.display(),
                self.train.display()
            );
        }
        for (arm, seed) in self.runs() {
            self.run_config(arm, seed)
                .validate()
                .with_context(|| format!("arm {}", arm.name))?;
        }
        crate::diffusion::Diffusion::from_config(
            &self.model,
            Some(&self.final_respacing),
            Device::Cpu,
        )
        .context("--final-respacing")?;
        for &w in &self.guidance {
            crate::model::guidance::check_weight(w, "--guidance")?;
        }
        if !self.guidance.is_empty() && self.base.is_none() {
            bail!("--guidance needs a base checkpoint (the source model)");
        }
        if let Some(a) = self
            .guidance_arms
            .iter()
            .find(|a| !self.arms.iter().any(|arm| &arm.name == *a))
        {
            bail!(
                "--guidance-arms names {a:?}, which is not an arm of this study ({})",
                self.arms
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(())
    }

    /// Whether `arm`'s runs get the guidance sweep.
    pub fn guided(&self, arm: &Arm) -> bool {
        !self.guidance.is_empty()
            && (self.guidance_arms.is_empty() || self.guidance_arms.contains(&arm.name))
    }

    /// What identifies the study, for comparing a stored one with the options given: without
    /// where the Inception weights are (studies stored before held it), an adapter start only
    /// for arms with adapters (older arms without adapters say `random`, newer the default) and
    /// an EMA warm-up only with an EMA (older studies have none stored).
    fn canonical(&self) -> Study {
        let mut s = self.clone();
        s.hyper.eval.inception = None;
        s.guidance.clear();
        s.guidance_arms.clear();
        if s.hyper.ema.is_none() {
            s.hyper.ema_warmup = false;
        }
        for arm in &mut s.arms {
            if !matches!(arm.method, Method::Adapter | Method::A3ft) {
                arm.adapter_start = AdapterStart::Random;
            }
        }
        s
    }

    /// The weights a guidance sweep tries: 1 (off) first, then `guidance`.
    pub fn guidance_weights(&self) -> Vec<f64> {
        let mut weights = vec![crate::model::guidance::OFF];
        weights.extend(
            self.guidance
                .iter()
                .copied()
                .filter(|&w| crate::model::guidance::active(Some(w)).is_some()),
        );
        weights
    }

    /// (arm, seed) of every run, in the order they are trained.
    pub fn runs(&self) -> Vec<(&Arm, u64)> {
        self.arms
            .iter()
            .flat_map(|a| self.seeds.iter().map(move |&s| (a, s)))
            .collect()
    }

    pub fn run_name(arm: &Arm, seed: u64) -> String {
        format!("{}-s{seed}", arm.name)
    }

    /// The protocol's final evaluation of the run with `seed`.
    fn final_evaluation<'a>(
        &'a self,
        seed: u64,
        inception: Option<&'a Path>,
    ) -> FinalEvaluation<'a> {
        FinalEvaluation {
            train: &self.train,
            holdout: Some(&self.holdout),
            samples: self.final_samples,
            respacing: &self.final_respacing,
            inception,
            memo_threshold: self
                .hyper
                .eval
                .memo_threshold
                .unwrap_or(DEFAULT_MEMO_THRESHOLD),
            seed,
            guidance: None,
        }
    }

    fn run_config(&self, arm: &Arm, seed: u64) -> RunConfig {
        let mut h = self.hyper.clone();
        h.seed = seed;
        h.lr = arm.lr.unwrap_or(h.lr);
        // --new-lr is for the modules an arm's method adds; arms that add none train at --lr.
        if !arm.method.adds_modules() {
            h.new_lr = None;
        }
        h.eval.holdout = Some(self.holdout.clone());
        h.eval.holdout_fraction = None;
        let mut rc = RunConfig::new(self.model.clone(), arm.method, self.train.clone(), h);
        rc.adapter_start = arm.adapter_start;
        rc.base_checkpoint = self.base.clone();
        rc
    }
}

pub struct StudyOptions {
    pub out: PathBuf,
    pub device: Device,
    pub inception: Option<PathBuf>,
    pub show_progress: bool,
    /// Extra text for the report's preamble (e.g. the demo's description of its data).
    pub preamble: String,
    /// Train and evaluate nothing: rewrite the report from the runs finished so far.
    pub report_only: bool,
    /// A resumed run uses `inception`, not the path stored with it (a shared study's runs move
    /// between machines).
    pub inception_here: bool,
}

/// What a process that shares a study leaves it at.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every run finished and this process wrote the report.
    Report(PathBuf),
    /// Runs are left to other processes (or none could be claimed); says which and why.
    Waiting(String),
}

/// The study folder's files besides `runs/` and `report/`.
const STUDY_FILE: &str = "study.json";
/// Held for moments while a process checks or writes `study.json`.
const SETUP_LOCK: &str = ".a3ft.setup.lock";
/// Held by the process writing the study-level stages (guidance sweeps, report).
const STAGE_LOCK: &str = ".a3ft.stage.lock";
/// One lock file per run, held while a process trains and evaluates it.
const CLAIMS_DIR: &str = ".a3ft.claims";

/// Whether `dir` holds anything but a3ft's own lock files and the temporary file of a
/// `study.json` being written (by another process of a shared study starting at the same time).
fn holds_user_files(dir: &Path) -> Result<bool> {
    let temp = format!(".{STUDY_FILE}.tmp-");
    Ok(std::fs::read_dir(dir)?.any(|e| {
        e.is_ok_and(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            // study.json itself: written by a process starting beside this one since it looked.
            !name.starts_with(crate::util::lock::OWN_PREFIX)
                && !name.starts_with(&temp)
                && name != STUDY_FILE
        })
    }))
}

/// Checks the folder, then stores the study in it or checks it against the stored one: a folder
/// that holds no study is refused before anything is written or removed in it.
fn check_folder(study: &Study, o: &StudyOptions) -> Result<()> {
    study.validate()?;
    // Runs write samples and figures under --out: inside an image folder, later runs would train
    // (or be evaluated) on them.
    for (flag, dir) in [("--data", &study.train), ("--holdout", &study.holdout)] {
        if crate::util::paths::is_within(&o.out, dir) {
            bail!(
                "--out {} lies inside the study's {flag} folder {}; write the study elsewhere",
                o.out.display(),
                dir.display()
            );
        }
    }
    let holds_study = std::fs::symlink_metadata(o.out.join(STUDY_FILE)).is_ok();
    if !holds_study && o.out.is_dir() && holds_user_files(&o.out)? {
        bail!(
            "--out {} is not empty and holds no study; give a new or empty folder",
            o.out.display()
        );
    }
    std::fs::create_dir_all(&o.out)
        .with_context(|| format!("cannot create {}", o.out.display()))?;
    Ok(())
}

/// Under the folder's lock: `study` against the stored `study.json` (another study is refused
/// naming the fields), then stored. `same_guidance`: the guidance options must match too (the
/// processes of a shared study write one sweep).
fn store_study(study: &Study, o: &StudyOptions, same_guidance: bool) -> Result<()> {
    let spec = o.out.join(STUDY_FILE);
    if spec.exists() {
        let text = crate::util::files::read_text(&spec)?;
        let stored: Study =
            serde_json::from_str(&text).with_context(|| format!("invalid {}", spec.display()))?;
        if stored.canonical() != study.canonical() {
            bail!(
                "{} holds a different study (its study.json differs from these options in {}); use another --out, or the same options to continue it",
                o.out.display(),
                differing_fields(&stored.canonical(), &study.canonical())
            );
        }
        let set = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v.dedup();
            v
        };
        let arms = |v: &[String]| v.iter().cloned().collect::<std::collections::BTreeSet<_>>();
        if same_guidance
            && (set(&stored.guidance) != set(&study.guidance)
                || arms(&stored.guidance_arms) != arms(&study.guidance_arms))
        {
            bail!(
                "{}: --guidance/--guidance-arms differ from its study.json (--guidance {:?}, --guidance-arms {:?}); every process of a shared study gives the same, and other ones are given by a single-process run",
                o.out.display(),
                stored.guidance,
                stored.guidance_arms
            );
        }
        if stored == *study {
            return Ok(());
        }
    } else if holds_user_files(&o.out)? {
        // Filled by another process between the first check and the lock.
        bail!(
            "--out {} is not empty and holds no study; give a new or empty folder",
            o.out.display()
        );
    }
    crate::util::files::write_atomic(&spec, serde_json::to_string_pretty(study)?.as_bytes())
}

/// Trains (or resumes) run `k` of the study and gives it the protocol's final evaluation.
fn train_and_evaluate(
    study: &Study,
    o: &StudyOptions,
    k: usize,
    arm: &Arm,
    seed: u64,
) -> Result<()> {
    let n = study.runs().len();
    let name = Study::run_name(arm, seed);
    let run = RunDir::new(&run_dir(&o.out, arm, seed));
    let resume = run.exists();
    eprintln!(
        "[{}/{n}] {name}: {}",
        k + 1,
        if resume { "resuming" } else { "training" }
    );
    let config = if resume {
        let mut c = run.read_config()?;
        if o.inception_here {
            // Taken over on another machine: the Inception weights are where this one has them.
            c.hyper.eval.inception = o.inception.clone();
        }
        c
    } else {
        let mut c = study.run_config(arm, seed);
        c.hyper.eval.inception = o.inception.clone();
        c
    };
    let t0 = Instant::now();
    // The peak is the run's own: the Inception network an earlier final evaluation kept
    // loaded (about 260 MiB with TorchScript's state) is let go first, and reloaded after.
    crate::metrics::inception::Inception::release_shared();
    crate::util::memory::reset_peak_rss();
    let summary = train(TrainInputs {
        run_dir: run.root.clone(),
        config,
        device: o.device,
        resume,
        show_progress: o.show_progress,
        time_limit: None,
    })?;
    if summary.interrupted {
        bail!("study interrupted during {name} (checkpoint saved); run the same command again to continue");
    }
    let train_seconds = t0.elapsed().as_secs_f64();
    let peak_rss_mib =
        crate::util::memory::peak_rss_bytes().map(|b| b as f64 / (1u64 << 20) as f64);
    eprintln!(
        "[{}/{n}] {name}: final evaluation ({} samples)",
        k + 1,
        study.final_samples
    );
    let mut rec = study
        .final_evaluation(seed, o.inception.as_deref())
        .run(&run, o.device)?;
    rec.arm = Some(arm.name.clone());
    rec.seed = Some(seed);
    rec.train_seconds = Some(train_seconds);
    rec.images_per_sec = Some(summary.images_per_sec);
    rec.peak_rss_mib = peak_rss_mib;
    rec.final_step = Some(summary.final_step);
    rec.early_stopped = Some(summary.early_stopped);
    rec.write(&run.final_path())
}

/// What needs every run: the guidance sweeps (unless only reporting), scores of runs
/// evaluated without Inception weights, the report.
fn finish(study: &Study, o: &StudyOptions) -> Result<PathBuf> {
    if !o.report_only {
        guide_runs(study, o)?;
    }
    complete_scores(study, o)?;
    crate::study::report::write(study, &o.out, &o.preamble, o.device)
}

/// Runs (or continues) a study in this one process; returns the report path.
pub fn run_study(study: &Study, o: &StudyOptions) -> Result<PathBuf> {
    check_folder(study, o)?;
    // One process per study folder: two would write the same runs and report.
    let _lock = crate::util::lock::lock_folder(&o.out, "study")?;
    for name in crate::util::files::remove_stale_temps(&o.out) {
        eprintln!(
            "removed {}, a partial file left by an interrupted earlier study",
            o.out.join(name).display()
        );
    }
    store_study(study, o, false)?;
    let start = Instant::now();
    let runs = study.runs();
    for (k, (arm, seed)) in runs.iter().enumerate().filter(|_| !o.report_only) {
        if run_dir_of(o, arm, *seed).final_path().exists() {
            eprintln!(
                "[{}/{}] {}: finished earlier, skipped",
                k + 1,
                runs.len(),
                Study::run_name(arm, *seed)
            );
            continue;
        }
        train_and_evaluate(study, o, k, arm, *seed)?;
    }
    let report = finish(study, o)?;
    if o.report_only {
        eprintln!("report: {}", report.display());
    } else {
        eprintln!(
            "study finished in {:.0} s; report: {}",
            start.elapsed().as_secs_f64(),
            report.display()
        );
    }
    Ok(report)
}

/// Does this process's `share` of a study that other processes may be running at the same time
/// (`--shard`, `--worker`): each run it does is claimed through its lock file first, so no run
/// is done twice, and a run whose holder died is taken over and resumed from its checkpoint.
/// A run that fails is marked failed (its error beside its claim) and left, so that one bad run
/// does not stop every process; the process says so at the end. The process that finds every
/// run finished writes the report; one that finds runs still left to others says so.
pub fn run_study_share(study: &Study, o: &StudyOptions, share: Share) -> Result<Outcome> {
    use crate::util::lock::{hold, Mode};
    check_folder(study, o)?;
    // Shared: any number of these processes, never beside a single-process study of the folder.
    let why = "a3ft keeps its lock there";
    let shared = match hold(
        &o.out.join(crate::util::lock::LOCK_FILE),
        why,
        Mode::Shared,
        false,
    )? {
        Ok(f) => f,
        Err(holder) => bail!(
            "the study in {} is in use by a single a3ft process{}; wait for it or stop it",
            o.out.display(),
            named(&holder)
        ),
    };
    // No exclusive holder can exist now: a name left in the file is a dead one's.
    shared.clear();
    {
        let setup = o.out.join(SETUP_LOCK);
        // Held for moments by a starting process; waited for here with the stop checked.
        let _setup = loop {
            match hold(&setup, why, Mode::Exclusive, false)? {
                Ok(held) => break held,
                Err(_) => {
                    crate::util::stop::check()?;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        };
        store_study(study, o, true)?;
    }
    let claims = o.out.join(CLAIMS_DIR);
    std::fs::create_dir_all(&claims)
        .with_context(|| format!("cannot create {}", claims.display()))?;
    let runs = study.runs();
    let mine = runs
        .iter()
        .enumerate()
        .filter(|(k, _)| share.owns(*k))
        .count();
    match share {
        Share::Worker => eprintln!("a worker of the study's {} runs", runs.len()),
        _ if mine == 0 => eprintln!(
            "note: {} holds none of the study's {} runs (more shards than runs)",
            share.describe(),
            runs.len()
        ),
        _ => eprintln!(
            "{}: {mine} of the study's {} runs",
            share.describe(),
            runs.len()
        ),
    }
    let mut failed_here = Vec::new();
    // After each run, look again from the start: a run whose holder died since is free again.
    loop {
        crate::util::stop::check()?;
        let mut next = None;
        for (k, (arm, seed)) in runs.iter().enumerate().filter(|(k, _)| share.owns(*k)) {
            let name = Study::run_name(arm, *seed);
            if run_dir_of(o, arm, *seed).final_path().exists() || failure_path(o, &name).exists() {
                continue;
            }
            if let Ok(claim) = hold(
                &claims.join(format!("{name}.lock")),
                "a3ft claims a study's run there",
                Mode::Exclusive,
                false,
            )? {
                // Finished (or failed) by its holder between the check and the claim.
                if run_dir_of(o, arm, *seed).final_path().exists()
                    || failure_path(o, &name).exists()
                {
                    continue;
                }
                next = Some((k, *arm, *seed, claim));
                break;
            }
        }
        let Some((k, arm, seed, _claim)) = next else {
            break;
        };
        let name = Study::run_name(arm, seed);
        // The guidance sweep too, while the run is claimed: the last process is left the report.
        let done = train_and_evaluate(study, o, k, arm, seed).and_then(|()| {
            if study.guided(arm) {
                guide_run(study, o, &format!("[{}/{}]", k + 1, runs.len()), arm, seed)
            } else {
                Ok(())
            }
        });
        if let Err(e) = done {
            let e = crate::util::stop::pass_stop(e)?;
            let path = failure_path(o, &name);
            eprintln!(
                "error: {name} failed: {e:#}; other processes leave it (remove {} to try it again)",
                path.display()
            );
            crate::util::files::write_atomic(&path, format!("{e:#}\n").as_bytes())?;
            failed_here.push(name);
        }
    }
    if !failed_here.is_empty() {
        bail!("{} of the study's runs failed here ({}); the other runs went on, and `a3ft study … --status` says where they stand", failed_here.len(), failed_here.join(", "));
    }
    let left: Vec<String> = runs
        .iter()
        .filter(|(arm, seed)| !run_dir_of(o, arm, *seed).final_path().exists())
        .map(|(arm, seed)| run_state(o, arm, *seed))
        .collect();
    if !left.is_empty() {
        return Ok(Outcome::Waiting(format!(
            "{} is done; {} of {} runs are left ({}). Once they are finished, the process that finishes the last one writes the report; or rerun any shard or worker, or the same command without --shard/--worker and with --report-only (no guidance sweeps)",
            share.describe(),
            left.len(),
            runs.len(),
            left.join("; ")
        )));
    }
    let _stage = match hold(&o.out.join(STAGE_LOCK), why, Mode::Exclusive, false)? {
        Ok(f) => f,
        Err(holder) => {
            return Ok(Outcome::Waiting(format!(
                "every run is finished; another process{} is writing the report",
                named(&holder)
            )))
        }
    };
    Ok(Outcome::Report(finish(study, o)?))
}

/// ` (pid N on HOST)`, or nothing for a lock whose holder has not written its name.
fn named(holder: &str) -> String {
    if holder.is_empty() {
        String::new()
    } else {
        format!(" ({holder})")
    }
}

/// Where a shared study records that run `name` failed (its error), beside its claim.
fn failure_path(o: &StudyOptions, name: &str) -> PathBuf {
    o.out.join(CLAIMS_DIR).join(format!("{name}.failed"))
}

/// Where each run of a study stands, one line per run, for `--status`: read from the folder
/// alone (no lock is taken, so that no process is kept from a run by looking at it).
pub fn status(study: &Study, o: &StudyOptions) -> Result<String> {
    let spec = o.out.join(STUDY_FILE);
    if !spec.exists() {
        bail!(
            "--out {} holds no study yet (no {STUDY_FILE})",
            o.out.display()
        );
    }
    let stored: Study = serde_json::from_str(&crate::util::files::read_text(&spec)?)
        .with_context(|| format!("invalid {}", spec.display()))?;
    if stored.canonical() != study.canonical() {
        bail!(
            "{} holds a different study (its study.json differs from these options in {})",
            o.out.display(),
            differing_fields(&stored.canonical(), &study.canonical())
        );
    }
    let runs = study.runs();
    let done = runs
        .iter()
        .filter(|(arm, seed)| run_dir_of(o, arm, *seed).final_path().exists())
        .count();
    let mut lines = vec![format!(
        "{}: {done} of {} runs finished",
        o.out.display(),
        runs.len()
    )];
    lines.extend(
        runs.iter()
            .map(|(arm, seed)| format!("  {}", run_state(o, arm, *seed))),
    );
    let report = o.out.join("report").join("report.md");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let newest_result = runs
        .iter()
        .filter_map(|(arm, seed)| modified(&run_dir_of(o, arm, *seed).final_path()))
        .max();
    lines.push(match modified(&report) {
        None => "report: not written yet".into(),
        Some(t) if newest_result.is_some_and(|r| r > t) || done < runs.len() => format!(
            "report: {} (older than some runs' results)",
            report.display()
        ),
        Some(_) => format!("report: {}", report.display()),
    });
    Ok(lines.join("\n"))
}

/// One run's state: finished, claimed by a process (alive or not, where it can be told), begun
/// (with its newest checkpoint) or not started.
fn run_state(o: &StudyOptions, arm: &Arm, seed: u64) -> String {
    let name = Study::run_name(arm, seed);
    let run = run_dir_of(o, arm, seed);
    if run.final_path().exists() {
        return format!("{name}: finished");
    }
    if let Ok(why) = std::fs::read_to_string(failure_path(o, &name)) {
        return format!(
            "{name}: failed ({}); remove {} to try it again",
            why.trim(),
            failure_path(o, &name).display()
        );
    }
    let newest = run
        .checkpoints()
        .ok()
        .and_then(|c| c.last().map(|(s, _)| *s));
    let progress = newest
        .map(|s| format!(", checkpoint at step {s}"))
        .unwrap_or_default();
    let holder = std::fs::read_to_string(o.out.join(CLAIMS_DIR).join(format!("{name}.lock")))
        .unwrap_or_default();
    let holder = holder.trim();
    if holder.is_empty() {
        return if run.exists() {
            format!("{name}: begun{progress}, not claimed")
        } else {
            format!("{name}: not started")
        };
    }
    // `pid N on HOST`: on this host a dead holder can be told from a live one.
    let here = crate::util::lock::hostname();
    let pid = holder
        .strip_prefix("pid ")
        .and_then(|r| r.split_once(" on "))
        .filter(|(_, h)| *h == here)
        .and_then(|(p, _)| p.parse::<i32>().ok());
    match pid {
        Some(p) if !crate::util::files::process_alive(p) => format!("{name}: abandoned by {holder}{progress} (the next worker or a rerun of its shard resumes it)"),
        Some(_) => format!("{name}: running ({holder}){progress}"),
        None => format!("{name}: claimed by {holder}{progress}"),
    }
}

fn run_dir_of(o: &StudyOptions, arm: &Arm, seed: u64) -> RunDir {
    RunDir::new(&run_dir(&o.out, arm, seed))
}

/// The guidance sweep of every finished run of the guided arms: the guided model's held-out
/// loss at each weight (`guidance.json`), then the final evaluation at the best (`final-guided.json`).
fn guide_runs(study: &Study, o: &StudyOptions) -> Result<()> {
    let runs: Vec<(&Arm, u64)> = study
        .runs()
        .into_iter()
        .filter(|(arm, _)| study.guided(arm))
        .collect();
    for (i, (arm, seed)) in runs.iter().enumerate() {
        guide_run(study, o, &format!("[{}/{}]", i + 1, runs.len()), arm, *seed)?;
    }
    Ok(())
}

/// The guidance sweep of one finished run (nothing when it is not finished or its sweep is
/// current); `tag` leads its messages.
fn guide_run(study: &Study, o: &StudyOptions, tag: &str, arm: &Arm, seed: u64) -> Result<()> {
    let name = Study::run_name(arm, seed);
    let run = RunDir::new(&run_dir(&o.out, arm, seed));
    let done = run.final_guided_path();
    let plain = run.final_path();
    if !plain.exists() {
        return Ok(());
    }
    let weights = study.guidance_weights();
    if done.exists() {
        if sweep_is_current(study, &run) {
            return Ok(());
        }
        // The study now asks for other weights: what the old sweep chose is redone.
        eprintln!("{tag} {name}: --guidance changed (its sweep tried other weights); redoing the sweep and its evaluation");
        clear_guided(&run)?;
    }
    crate::util::stop::check()?;
    let (step, _) = crate::train::select::default_checkpoint(&run)?;
    eprintln!("{tag} {name}: guidance sweep over w = {weights:?} on the held-out loss");
    // Any weight other than 1 builds the source; the sweep then only changes the weight.
    let mut model = crate::train::run_model::load_guided(&run, Some(step), o.device, Some(0.0))?;
    let res = model.config.image_size as u32;
    let set = crate::data::load_folder(&study.holdout, res, false)?;
    let d = crate::diffusion::Diffusion::from_config(
        &model.config,
        Some(&crate::diffusion::respace::Respacing::All),
        o.device,
    )?;
    let mut losses = Vec::new();
    for &w in &weights {
        if let Some(g) = model.guidance.as_mut() {
            g.weight = w;
        }
        let ho = crate::metrics::heldout::heldout(
            &model,
            &d,
            &set.images,
            crate::train::evaluate::HELDOUT_GRID,
            seed,
            64,
        )?;
        losses.push(serde_json::json!({"w": w, "holdout_loss": ho.loss, "holdout_bpd": ho.bpd}));
    }
    drop(model);
    let best = weights
        .iter()
        .zip(&losses)
        .min_by(|a, b| {
            a.1["holdout_loss"]
                .as_f64()
                .unwrap_or(f64::INFINITY)
                .total_cmp(&b.1["holdout_loss"].as_f64().unwrap_or(f64::INFINITY))
        })
        .map(|(w, _)| *w)
        .unwrap_or(1.0);
    let sweep = serde_json::json!({"step": step, "weights": losses, "chosen": best, "chosen_on": "held-out loss of the guided model"});
    crate::util::files::write_atomic(
        &run.guidance_path(),
        serde_json::to_string_pretty(&sweep)?.as_bytes(),
    )?;
    let mut rec = if crate::model::guidance::active(Some(best)).is_none() {
        // w = 1 is the run itself: its plain final evaluation.
        FinalRecord::read(&plain)?
    } else {
        eprintln!("{tag} {name}: final evaluation with guidance w = {best}");
        let mut e = study.final_evaluation(seed, o.inception.as_deref());
        e.guidance = Some(best);
        let mut rec = e.run(&run, o.device)?;
        let plain = FinalRecord::read(&plain)?;
        rec.train_seconds = plain.train_seconds;
        rec.images_per_sec = plain.images_per_sec;
        rec.peak_rss_mib = plain.peak_rss_mib;
        rec.final_step = plain.final_step;
        rec.early_stopped = plain.early_stopped;
        rec
    };
    rec.arm = Some(format!("{} + guidance", arm.name));
    rec.seed = Some(seed);
    rec.guidance = Some(best);
    rec.write(&done)?;
    Ok(())
}

/// Whether the guidance sweep of `run` (its `guidance.json`) tried exactly the weights the study
/// asks for now, in any order; false when there is none or it cannot be read.
pub(crate) fn sweep_is_current(study: &Study, run: &RunDir) -> bool {
    let tried = (|| -> Option<Vec<f64>> {
        let text = crate::util::files::read_text(&run.guidance_path()).ok()?;
        let sweep: serde_json::Value = serde_json::from_str(&text).ok()?;
        sweep["weights"]
            .as_array()?
            .iter()
            .map(|v| v["w"].as_f64())
            .collect()
    })();
    let sorted = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v.dedup();
        v
    };
    tried.is_some_and(|t| sorted(&t) == sorted(&study.guidance_weights()))
}

/// Removes a run's guided evaluation: its record first (it names the rest), then the sweep and
/// the guided figures and samples, so a stopped removal never leaves a record without its files.
fn clear_guided(run: &RunDir) -> Result<()> {
    for f in run.guided_outputs() {
        match std::fs::remove_file(&f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot remove {}", f.display()))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Scores the kept final samples of runs whose final evaluation had no Inception weights
/// (e.g. made on a GPU machine they could not travel to), when the weights load here. A run
/// whose samples cannot be scored is named and left as it was; the others go on.
fn complete_scores(study: &Study, o: &StudyOptions) -> Result<()> {
    let mut unscored = Vec::new();
    for (arm, seed) in study.runs() {
        let run = RunDir::new(&run_dir(&o.out, arm, seed));
        let path = run.final_path();
        if std::fs::symlink_metadata(&path).is_err() {
            continue;
        }
        let rec = FinalRecord::read(&path)?;
        if rec.fid_train.is_none() {
            unscored.push((arm, seed, run, path, rec));
        }
    }
    if unscored.is_empty() {
        return Ok(());
    }
    let net = match crate::metrics::inception::Inception::shared(o.inception.as_deref(), o.device) {
        Ok(net) => net,
        Err(e) => {
            let e = crate::util::stop::pass_stop(e)?;
            eprintln!("note: {} run(s) have no clean-FID/KID and the Inception weights do not load here: {e:#}", unscored.len());
            return Ok(());
        }
    };
    for (arm, seed, run, path, mut rec) in unscored {
        let name = Study::run_name(arm, seed);
        if !run.final_samples_path(false).is_file() {
            eprintln!("note: {name} has no clean-FID/KID and kept no final samples ({}); it stays unscored", run.eval_dir().display());
            continue;
        }
        match study
            .final_evaluation(seed, None)
            .complete(&run, &mut rec, &net)
        {
            Ok(()) => {
                eprintln!("{name}: clean-FID/KID from its kept final samples");
                rec.write(&path)?;
            }
            Err(e) => {
                let e = crate::util::stop::pass_stop(e)?;
                eprintln!("warning: {name} stays unscored: {e:#}")
            }
        }
    }
    Ok(())
}

/// The fields (dotted JSON paths, at most five) in which two studies differ.
fn differing_fields(a: &Study, b: &Study) -> String {
    fn walk(a: &serde_json::Value, b: &serde_json::Value, path: String, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let null = serde_json::Value::Null;
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), p, out);
                }
            }
            _ if a != b => out.push(if path.is_empty() {
                "the whole study".into()
            } else {
                path
            }),
            _ => {}
        }
    }
    let mut out = Vec::new();
    let (x, y) = (
        serde_json::to_value(a).unwrap_or_default(),
        serde_json::to_value(b).unwrap_or_default(),
    );
    walk(&x, &y, String::new(), &mut out);
    let more = out.len().saturating_sub(5);
    out.truncate(5);
    if more > 0 {
        out.push(format!("{more} more"));
    }
    if out.is_empty() {
        "nothing it records".into()
    } else {
        out.join(", ")
    }
}

/// Default arms of the paper's comparison.
pub fn paper_arms() -> Vec<Arm> {
    [Method::Full, Method::Attention, Method::A3ft]
        .into_iter()
        .map(Arm::method)
        .collect()
}

/// Where a study's run of `arm` and `seed` lives.
pub fn run_dir(out: &Path, arm: &Arm, seed: u64) -> PathBuf {
    out.join("runs").join(Study::run_name(arm, seed))
}
