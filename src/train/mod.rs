//! Fine-tuning (or pre-training) a run, in three stages read top to bottom: bind the run to
//! its data and folder ([`setup`]), loop over steps ([`Loop`]), finish with a summary.
//!
//! The loop follows improved-diffusion's `TrainLoop`: each step is `run_step` (= forward_backward
//! + optimize, in [`trainer`]), then the log, evaluation, samples and checkpoint that the
//! [`schedule`] says are due. Every random draw comes from [`crate::train::draws`], so a resumed run
//! continues bit-for-bit. A stop (a signal, through [`crate::util::stop`], or the time limit) saves
//! the step and ends the run; a resumed run goes on from there.

pub mod draws;
pub mod evaluate;
pub mod loss_log;
pub mod optim;
pub mod records;
pub mod run_config;
pub mod run_dir;
pub mod run_model;
pub mod schedule;
pub mod select;
pub mod setup;
pub mod trainer;

pub use setup::{fingerprint_of, image_hashes};

use crate::train::loss_log::LossLog;
use crate::train::run_config::RunConfig;
use crate::train::run_dir::RunDir;
use crate::train::select::Selected;
use anyhow::Result;
use records::{EvalRecord, LogRecord, Record};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;
use tch::Device;

/// What `train` needs beyond the run config.
pub struct TrainInputs {
    pub run_dir: PathBuf,
    pub config: RunConfig,
    pub device: Device,
    /// Resume from the newest intact checkpoint in `run_dir`.
    pub resume: bool,
    pub show_progress: bool,
    /// Save and stop once this much wall time has passed (a compute budget).
    pub time_limit: Option<std::time::Duration>,
}

/// Outcome of a training run.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub final_step: u64,
    /// Stopped early by a signal or the time limit (a checkpoint was saved).
    pub interrupted: bool,
    /// Stopped by `--early-stop`.
    pub early_stopped: bool,
    /// The checkpoint `--select` chose.
    pub selected: Option<Selected>,
    pub seconds: f64,
    pub images_per_sec: f64,
    pub last_loss: f64,
}

/// SIGINT, SIGTERM and SIGHUP request a stop (train saves after the current step and stops)
/// and record which signal came (0 while none has); a second one exits at once.
pub fn stop_on_signals() -> std::sync::Arc<std::sync::atomic::AtomicI32> {
    crate::util::stop::watch_signals("saving a checkpoint after this step").1
}

/// Trains (or resumes) a run. Writes config.json, metrics.jsonl, checkpoints and sample grids.
pub fn train(inp: TrainInputs) -> Result<TrainSummary> {
    // Bind: data, fingerprints, lock, model, resume.
    let bound = match setup::bind(&inp)? {
        setup::Binding::Ready(bound) => *bound,
        setup::Binding::Done { step } => {
            return Ok(TrainSummary {
                final_step: step,
                interrupted: false,
                early_stopped: false,
                selected: None,
                seconds: 0.0,
                images_per_sec: 0.0,
                last_loss: f64::NAN,
            });
        }
    };
    // Loop, then finish.
    let mut l = Loop::new(bound, &inp);
    let ended = l.run()?;
    Ok(l.finish(ended))
}

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Completed,
    /// A signal or the time limit; the step was saved.
    Stopped {
        out_of_time: bool,
    },
    EarlyStopped,
}

/// The loop's state between steps.
struct Loop {
    b: setup::Bound,
    show_progress: bool,
    time_limit: Option<std::time::Duration>,
    log: LossLog,
    start: Instant,
    /// Since the last log line: when it began and how many images it trained on.
    interval: (Instant, u64),
    last_loss: f64,
    images_per_sec: f64,
    pb: Option<indicatif::ProgressBar>,
}

impl Loop {
    fn new(b: setup::Bound, inp: &TrainInputs) -> Loop {
        let device = b.trainer.data.device();
        Loop {
            b,
            show_progress: inp.show_progress,
            time_limit: inp.time_limit,
            log: LossLog::new(device),
            start: Instant::now(),
            interval: (Instant::now(), 0),
            last_loss: f64::NAN,
            images_per_sec: 0.0,
            pb: None,
        }
    }

    fn run(&mut self) -> Result<Ended> {
        let total = self.b.schedule.total;
        let spe = self.b.schedule.steps_per_epoch;
        // On the CPU a finiteness check is cheap; on a GPU it is a sync, so only at log lines.
        let check_every = if self.b.trainer.data.device() == Device::Cpu {
            1
        } else {
            self.b.schedule.log_every
        };
        while self.b.step < total {
            if self.show_progress && (self.pb.is_none() || self.b.step.is_multiple_of(spe)) {
                self.pb = Some(epoch_bar(self.pb.take(), self.b.step, spe, total));
            }
            // Step.
            let terms = self.b.trainer.run_step(self.b.step + 1);
            self.b.step += 1;
            let step = self.b.step;
            self.interval.1 += self.b.trainer.hyper.batch_size as u64;
            self.log.add(
                &terms.losses,
                &terms.t,
                self.b.trainer.diffusion.num_timesteps,
            );
            let out_of_time = self.time_limit.is_some_and(|l| self.start.elapsed() >= l);
            let mut stopping = crate::util::stop::requested() || out_of_time;
            let due = self
                .b
                .schedule
                .due(step, stopping, self.b.evaluator.enabled());
            if step.is_multiple_of(check_every) && !due.log && !self.log.finite() {
                anyhow::bail!(non_finite_message(&self.b.run, &self.b.trainer.hyper, step));
            }

            // Log.
            if due.log {
                self.write_log(step)?;
            }
            if let Some(p) = &self.pb {
                p.inc(1);
                p.set_message(format!(
                    "step {step}/{total} loss {:.4} {:.1} img/s",
                    self.last_loss, self.images_per_sec
                ));
            }

            // Evaluate and sample; a failure there must not lose the steps since the last save.
            let (mut keep, mut early_stop) = (false, false);
            match self.evaluate_and_sample(step, due) {
                Ok(verdict) => (keep, early_stop) = verdict,
                // A signal during evaluation or sampling: that work is dropped, the step is saved below.
                Err(e) if crate::util::stop::is_stopped(&e) => stopping = true,
                Err(e) => {
                    let saved = match self.log.finite().then(|| self.save(step)) {
                        Some(Ok(())) => format!("saved checkpoint at step {step}"),
                        None => "nothing saved".into(),
                        // A full disk fails both for one cause: say it once.
                        Some(Err(s))
                            if s.root_cause().to_string() == e.root_cause().to_string() =>
                        {
                            format!("the checkpoint of step {step} could not be saved either (same cause)")
                        }
                        Some(Err(s)) => format!(
                            "the checkpoint of step {step} could not be saved either: {s:#}"
                        ),
                    };
                    let last = self
                        .b
                        .run
                        .find_checkpoint(None)
                        .map(|(s, _)| format!("step {s}"))
                        .unwrap_or_else(|_| "none".into());
                    return Err(anyhow::anyhow!(
                        "{e:#}; {saved}; last checkpoint: {last}; continue with --resume {}",
                        self.b.run.root.display()
                    ));
                }
            }

            // Save (also the best checkpoint so far, and before an early stop).
            if due.save || stopping || keep || early_stop {
                // Never write a checkpoint from weights a non-finite loss has already corrupted.
                if !self.log.finite() {
                    anyhow::bail!(non_finite_message(&self.b.run, &self.b.trainer.hyper, step));
                }
                self.save(step)?;
            } else if due.evaluate {
                // No new best: the selection names a checkpoint already on disk.
                self.record_selection()?;
            }
            if stopping {
                return Ok(Ended::Stopped { out_of_time });
            }
            if early_stop {
                return Ok(Ended::EarlyStopped);
            }
        }
        Ok(Ended::Completed)
    }

    /// The step's checkpoint, then the selection that may name it (never the other way round).
    fn save(&self, step: u64) -> Result<()> {
        self.b.trainer.save(&self.b.run, step)?;
        self.record_selection()
    }

    fn record_selection(&self) -> Result<()> {
        self.b
            .selector
            .as_ref()
            .map_or(Ok(()), |s| s.record(&self.b.run))
    }

    /// A log line of the loss means since the last one (an error when one is not finite).
    fn write_log(&mut self, step: u64) -> Result<()> {
        let (means, finite) = self.log.take();
        if !finite {
            anyhow::bail!(non_finite_message(&self.b.run, &self.b.trainer.hyper, step));
        }
        self.last_loss = means[0][0];
        self.images_per_sec =
            self.interval.1 as f64 / self.interval.0.elapsed().as_secs_f64().max(1e-9);
        let tr = &self.b.trainer;
        let mut rec = LogRecord::new(
            &means,
            step,
            self.b.schedule.steps_per_epoch,
            tr.hyper.lr,
            self.images_per_sec,
            self.start.elapsed().as_secs_f64(),
        );
        if tr.model.unet.has_adapters() {
            rec.adapter_gate_mean = Some(tr.adapter_gates());
        }
        self.b.run.append_metrics(&Record::Log(rec))?;
        self.interval = (Instant::now(), 0);
        Ok(())
    }

    /// The evaluation and sample grid that are due; returns (a new best checkpoint to keep,
    /// early stop).
    fn evaluate_and_sample(&mut self, step: u64, due: schedule::Due) -> Result<(bool, bool)> {
        let mut verdict = (false, false);
        if due.evaluate {
            if let Some(p) = &self.pb {
                p.set_message(format!("step {step}/{} evaluating…", self.b.schedule.total));
            }
            let b = &mut self.b;
            let mut rec = EvalRecord::at(step, b.schedule.epoch_of(step));
            b.trainer.model.unet.train = false;
            let measured = b.evaluator.evaluate(
                &b.trainer.model,
                &b.trainer.diffusion,
                &b.run,
                step,
                &mut rec,
            );
            b.trainer.model.unet.train = true;
            measured?;
            rec.wall_time = Some(self.start.elapsed().as_secs_f64());
            b.run.append_metrics(&Record::Eval(rec.clone()))?;
            if let Some(sel) = &mut b.selector {
                let v = sel.observe(&rec)?;
                verdict = (v.improved, v.stop);
            }
        }
        if due.sample {
            self.b.trainer.sample_grid(&self.b.run, step)?;
        }
        Ok(verdict)
    }

    /// The summary, after saying why the run ended.
    fn finish(mut self, ended: Ended) -> TrainSummary {
        if let Some(p) = self.pb.take() {
            p.finish();
        }
        let step = self.b.step;
        match ended {
            Ended::Stopped { out_of_time } => {
                let why = if out_of_time {
                    "time limit reached"
                } else {
                    "interrupted"
                };
                eprintln!(
                    "\n{why}: saved checkpoint at step {step}; continue with --resume {}",
                    self.b.run.root.display()
                );
            }
            Ended::EarlyStopped => {
                let b = self
                    .b
                    .selector
                    .as_ref()
                    .and_then(|s| s.best())
                    .expect("a stop follows a best evaluation");
                eprintln!(
                    "\nearly stop: {} did not improve in {} evaluations; best {:.5} at epoch {:.1} (step {})",
                    b.metric.name(),
                    self.b.rc.hyper.eval.early_stop.unwrap_or(0),
                    b.value,
                    b.epoch,
                    b.step
                );
            }
            Ended::Completed => {}
        }
        TrainSummary {
            final_step: step,
            interrupted: matches!(ended, Ended::Stopped { .. }),
            early_stopped: ended == Ended::EarlyStopped,
            selected: self.b.selector.and_then(|s| s.best().cloned()),
            seconds: self.start.elapsed().as_secs_f64(),
            images_per_sec: self.images_per_sec,
            last_loss: self.last_loss,
        }
    }
}

/// The progress bar of the epoch that `step` starts (finishing the previous one).
fn epoch_bar(
    prev: Option<indicatif::ProgressBar>,
    step: u64,
    steps_per_epoch: u64,
    total: u64,
) -> indicatif::ProgressBar {
    if let Some(p) = prev {
        p.finish();
    }
    let epoch = step / steps_per_epoch;
    let in_epoch = steps_per_epoch.min(total - epoch * steps_per_epoch);
    let p = crate::util::progress_bar(
        in_epoch,
        &format!(
            "epoch {}/{} {{bar:25}} {{pos}}/{{len}} {{msg}}",
            epoch + 1,
            total.div_ceil(steps_per_epoch)
        ),
    );
    p.set_position(step - epoch * steps_per_epoch);
    p
}

fn non_finite_message(run: &RunDir, h: &crate::train::run_config::Hyper, step: u64) -> String {
    let last = run
        .find_checkpoint(None)
        .map(|(s, _)| format!("step {s}"))
        .unwrap_or_else(|_| "none".into());
    let lr = crate::util::fmt_num(h.lr);
    // Name the rate most likely at fault first: the larger one.
    let lower = match h.new_lr.map(crate::util::fmt_num) {
        Some(new) if h.new_lr > Some(h.lr) => {
            format!("a lower --new-lr (now {new}) or --lr (now {lr})")
        }
        Some(new) => format!("a lower --lr (now {lr}) or --new-lr (now {new})"),
        None => format!("a lower --lr (now {lr})"),
    };
    let precision = if h.precision == crate::util::precision::Precision::Fp32 {
        ""
    } else {
        " or --precision fp32"
    };
    format!("non-finite loss at or before step {step}; stopped without saving (last good checkpoint: {last}). Try {lower}{precision}")
}
