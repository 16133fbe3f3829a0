//! Fine-tuning (or pre-training): the training loop, read top to bottom.
//!
//! The loop follows improved-diffusion's `TrainLoop`: `run_step` = `forward_backward` (loss
//! and gradients, microbatch by microbatch) + `optimize` (Adam, then the EMA); then log,
//! evaluate, sample and save on their schedules. Every random draw comes from
//! [`crate::draws`], so a resumed run continues bit-for-bit.

use crate::diffusion::Diffusion;
use crate::draws::{batch_indices, stream};
use crate::evaluate::Evaluator;
use crate::finetune::apply_method;
use crate::loss_log::{LossLog, Means};
use crate::model::Model;
use crate::run_config::{RunConfig, RunParams};
use crate::optim::{Adam, Ema, Param};
use crate::run::{build_with_base, read_base, RunDir};
use crate::select::{Selected, Selection, Selector};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

use crate::draws::step_seed;

/// What `train` needs beyond the run config.
pub struct TrainInputs {
    pub run_dir: PathBuf,
    pub config: RunConfig,
    pub device: Device,
    /// Resume from the newest intact checkpoint in `run_dir`.
    pub resume: bool,
    pub show_progress: bool,
    /// Set by a signal (Ctrl-C, SIGTERM, SIGHUP): save and stop.
    pub interrupt: Arc<AtomicBool>,
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

/// Per-example loss terms of one step and its timesteps, each `[B]`.
pub struct StepTerms {
    pub loss: Tensor,
    pub mse: Tensor,
    pub vb: Tensor,
    pub t: Tensor,
}

/// The model being trained, its optimiser and the training images on the device.
pub struct Trainer {
    pub model: Model,
    pub diffusion: Diffusion,
    pub adam: Adam,
    pub ema: Option<Ema>,
    pub data: Tensor,
    pub rc: RunConfig,
}

impl Trainer {
    /// Model (base weights loaded, method applied), optimiser, EMA and the data on `device`.
    pub fn new(rc: &RunConfig, images: Tensor, device: Device) -> Result<Trainer> {
        let h = &rc.hyper;
        let base = read_base(rc)?;
        // New modules (adapters, LoRA, or the whole network from scratch) start from the run's
        // seed, set right before they are built (the base file's I/O comes first).
        tch::manual_seed(step_seed(h.seed, 0, stream::INIT));
        let mut model = build_with_base(rc, base.as_ref(), device)?;
        model.unet.compute_kind = crate::device::parse_precision(&h.precision)?;
        crate::device::warn_if_slow(model.unet.compute_kind, device);
        model.unet.train = true;
        let trainable = apply_method(&mut model, rc.method);
        if trainable.is_empty() {
            bail!("method {} has no trainable parameters in this model", rc.method.name());
        }
        let vars = model.vs.variables();
        let params = trainable
            .iter()
            .map(|n| {
                let lr = if n.starts_with("adapter.") { h.adapter_lr.unwrap_or(h.lr) } else { h.lr };
                Param { name: n.clone(), tensor: vars[n].shallow_clone(), lr }
            })
            .collect();
        let adam = Adam::new(params, h.beta1, h.beta2, h.eps);
        let ema = h.ema.map(|rate| Ema::new(&adam, rate, h.ema_warmup));
        let diffusion = Diffusion::from_config(&rc.model, Some(""), device)?;
        Ok(Trainer { model, diffusion, adam, ema, data: images.to_device(device), rc: rc.clone() })
    }

    /// One optimisation step (1-based `step`): draw the batch, forward_backward, optimize.
    pub fn run_step(&mut self, step: u64) -> StepTerms {
        let (x0, t, noise) = self.draw_batch(step);
        let (terms, grads) = self.forward_backward(&x0, &t, &noise);
        self.optimize(step, &grads);
        StepTerms { loss: terms.0, mse: terms.1, vb: terms.2, t }
    }

    /// Images (flipped when asked), timesteps and noise of `step`, all from `(seed, step)`.
    fn draw_batch(&self, step: u64) -> (Tensor, Tensor, Tensor) {
        let h = &self.rc.hyper;
        let device = self.data.device();
        let n = self.data.size()[0] as usize;
        let idx = batch_indices(h.seed, n, h.batch_size, step - 1, device);
        tch::manual_seed(step_seed(h.seed, step, stream::STEP));
        let mut x0 = self.data.index_select(0, &idx);
        let b = h.batch_size as i64;
        if h.flip {
            let flip = Tensor::rand([b, 1, 1, 1], (Kind::Float, device)).lt(0.5);
            x0 = x0.flip([3]).where_self(&flip, &x0);
        }
        let t = Tensor::randint(self.diffusion.num_timesteps as i64, [b], (Kind::Int64, device));
        let noise = x0.randn_like();
        (x0, t, noise)
    }

    /// Loss terms `[B]` and the gradients of the batch-mean loss, accumulated over microbatches.
    fn forward_backward(&self, x0: &Tensor, t: &Tensor, noise: &Tensor) -> ((Tensor, Tensor, Tensor), Vec<Tensor>) {
        let h = &self.rc.hyper;
        let b = h.batch_size as i64;
        let micro = h.microbatch.unwrap_or(h.batch_size).clamp(1, h.batch_size) as i64;
        let mut terms: (Vec<Tensor>, Vec<Tensor>, Vec<Tensor>) = (vec![], vec![], vec![]);
        let mut grads: Option<Vec<Tensor>> = None;
        let mut start = 0;
        while start < b {
            let len = micro.min(b - start);
            let (x0m, tm, nm) = (x0.narrow(0, start, len), t.narrow(0, start, len), noise.narrow(0, start, len));
            let l = self.diffusion.training_losses(|x, t| self.model.unet.forward(x, t, None), &x0m, &tm, &nm).losses;
            let g = self.adam.gradients(&(l.loss.sum(Kind::Float) / b as f64));
            grads = Some(match grads {
                None => g,
                Some(acc) => acc
                    .into_iter()
                    .zip(g)
                    .map(|(a, n)| match (a.defined(), n.defined()) {
                        (true, true) => a + n,
                        (false, _) => n,
                        (true, false) => a,
                    })
                    .collect(),
            });
            terms.0.push(l.loss.detach());
            terms.1.push(l.mse.detach());
            terms.2.push(l.vb.detach());
            start += len;
        }
        let cat = |v: &[Tensor]| Tensor::cat(v, 0);
        ((cat(&terms.0), cat(&terms.1), cat(&terms.2)), grads.unwrap_or_default())
    }

    /// Adam, then the EMA.
    fn optimize(&mut self, step: u64, grads: &[Tensor]) {
        self.adam.step(step, grads);
        if let Some(ema) = &mut self.ema {
            ema.update(&self.adam, step);
        }
    }

    /// Trained tensors, Adam moments, EMA and the step, as one safetensors file.
    fn save(&self, run: &RunDir, step: u64) -> Result<PathBuf> {
        let mut tensors = Vec::new();
        for (i, p) in self.adam.params.iter().enumerate() {
            tensors.push((format!("model.{}", p.name), p.tensor.detach()));
            tensors.push((format!("optim.exp_avg.{}", p.name), self.adam.exp_avg[i].shallow_clone()));
            tensors.push((format!("optim.exp_avg_sq.{}", p.name), self.adam.exp_avg_sq[i].shallow_clone()));
            if let Some(ema) = &self.ema {
                tensors.push((format!("ema.{}", p.name), ema.values[i].shallow_clone()));
            }
        }
        let mut meta = HashMap::new();
        meta.insert("step".to_string(), step.to_string());
        meta.insert("method".to_string(), self.rc.method.name().to_string());
        meta.insert("a3ft_version".to_string(), env!("CARGO_PKG_VERSION").to_string());
        let path = run.checkpoint_path(step);
        crate::checkpoint::save_safetensors(&path, &tensors, meta)?;
        Ok(path)
    }

    /// Loads a checkpoint written by `save`; returns its step.
    fn restore(&mut self, path: &Path, named: u64) -> Result<u64> {
        let meta = crate::checkpoint::safetensors_metadata(path)?;
        let step: u64 = meta.get("step").and_then(|s| s.parse().ok()).with_context(|| format!("{} has no step", path.display()))?;
        if step != named {
            // A copied or renamed file: resuming would silently go back (or forward) in the run.
            bail!("it holds step {step}, not the {named} of its name");
        }
        let state = crate::checkpoint::load_state_dict(path, None)?;
        let get = |k: String| state.get(&k).with_context(|| format!("{} lacks {k}", path.display()));
        // Check everything before copying anything, so a bad file leaves the state untouched.
        for p in &self.adam.params {
            for k in [format!("model.{}", p.name), format!("optim.exp_avg.{}", p.name), format!("optim.exp_avg_sq.{}", p.name)]
                .into_iter()
                .chain(self.ema.as_ref().map(|_| format!("ema.{}", p.name)))
            {
                let t = get(k.clone())?;
                if t.size() != p.tensor.size() {
                    bail!("{}: {k} has shape {:?}, the model {:?}", path.display(), t.size(), p.tensor.size());
                }
                if !bool::try_from(t.isfinite().all())? {
                    bail!("{}: {k} holds non-finite values", path.display());
                }
            }
        }
        tch::no_grad(|| -> Result<()> {
            for (i, p) in self.adam.params.iter().enumerate() {
                p.tensor.shallow_clone().copy_(get(format!("model.{}", p.name))?);
                self.adam.exp_avg[i].copy_(get(format!("optim.exp_avg.{}", p.name))?);
                self.adam.exp_avg_sq[i].copy_(get(format!("optim.exp_avg_sq.{}", p.name))?);
                if let Some(ema) = &mut self.ema {
                    ema.values[i].copy_(get(format!("ema.{}", p.name))?);
                }
            }
            Ok(())
        })?;
        Ok(step)
    }

    /// Restores the newest intact checkpoint; a damaged newer one is set aside (renamed
    /// `*.corrupt`) with a warning. Step 0 when the run has none yet.
    fn restore_newest(&mut self, run: &RunDir) -> Result<u64> {
        let found = run.checkpoints().unwrap_or_default();
        if found.is_empty() {
            // Only damaged checkpoints (set aside earlier): never silently restart from step 0.
            let aside: Vec<String> = std::fs::read_dir(run.checkpoints_dir())
                .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".corrupt")).collect())
                .unwrap_or_default();
            if !aside.is_empty() {
                bail!(
                    "no intact checkpoint in {} (damaged: {}); delete the .corrupt files to start the run over from step 0",
                    run.checkpoints_dir().display(),
                    aside.join(", ")
                );
            }
        }
        let mut damaged = Vec::new();
        for (named, path) in found.iter().rev() {
            match self.restore(path, *named) {
                Ok(step) => {
                    for bad in &damaged {
                        eprintln!("warning: {bad}");
                    }
                    return Ok(step);
                }
                Err(e) => {
                    // Never over an earlier set-aside file of the same name.
                    let aside = (0..)
                        .map(|k| path.with_extension(if k == 0 { "safetensors.corrupt".to_string() } else { format!("safetensors.{k}.corrupt") }))
                        .find(|p| std::fs::symlink_metadata(p).is_err())
                        .expect("an unused name");
                    let _ = std::fs::rename(path, &aside);
                    damaged.push(format!("checkpoint {} is damaged ({e:#}); set aside as {}", path.display(), aside.display()));
                }
            }
        }
        if !damaged.is_empty() {
            bail!("no intact checkpoint in {}: {}", run.root.display(), damaged.join("; "));
        }
        Ok(0)
    }

    /// A grid of `sample_count` samples at `samples/step_XXXXXX.png`.
    fn sample_grid(&mut self, run: &RunDir, step: u64) -> Result<()> {
        let h = &self.rc.hyper;
        let d = Diffusion::from_config(&self.rc.model, Some(&h.sample_respacing), self.data.device())?;
        let sampler = crate::model::sampler_for(&h.sample_respacing);
        let batch = h.sample_count.min(crate::model::max_sample_batch(self.rc.model.image_size)).max(1);
        let imgs = self.model.sample_images(&d, h.sample_count, batch, sampler, h.seed as i64, false)?;
        let g = crate::images::grid(&imgs, None)?;
        crate::images::save_png(&run.samples_dir().join(format!("step_{step:06}.png")), &g)
    }

    /// Mean adapter gate per width over 16 timesteps (logged to watch the adapters open).
    fn adapter_gates(&self) -> serde_json::Value {
        let device = self.data.device();
        let gates: serde_json::Map<String, serde_json::Value> = tch::no_grad(|| {
            let ts = Tensor::linspace(0.0, (self.diffusion.num_timesteps - 1) as f64, 16, (Kind::Float, device)).to_kind(Kind::Int64);
            let emb = self.model.unet.embed(&self.diffusion.model_timesteps(&ts), None);
            self.model.unet.adapter_gates(&emb)
        })
        .into_iter()
        .map(|(k, v)| (k, v.into()))
        .collect();
        gates.into()
    }
}

/// Trains (or resumes) a run. Writes config.json, metrics.jsonl, checkpoints and sample grids.
pub fn train(inp: TrainInputs) -> Result<TrainSummary> {
    let mut rc = inp.config.clone();
    rc.validate()?;
    let run = RunDir::new(&inp.run_dir);
    let device = inp.device;

    // Data: the training images, less any held-out share.
    let set = crate::data::load_folder(&rc.data, rc.model.image_size as u32, rc.hyper.strict)?;
    for (p, why) in &set.skipped {
        eprintln!("skipped unreadable image {}: {why}", p.display());
    }
    if inp.resume && rc.num_images != 0 && set.paths.len() != rc.num_images {
        bail!(
            "the data folder {} changed since the run started ({} readable images then, {} now); resuming would train on other batches: restore the folder or start a new run",
            rc.data.display(),
            rc.num_images,
            set.paths.len()
        );
    }
    rc.num_images = set.paths.len();
    let hashes = image_hashes(&set.images)?;
    let fingerprint = fingerprint_of(&hashes);
    if inp.resume && rc.data_sha256.as_ref().is_some_and(|f| *f != fingerprint) {
        bail!(
            "the images in {} changed since the run started (same count, other contents); resuming would train on other data: restore the folder or start a new run",
            rc.data.display()
        );
    }
    rc.data_sha256 = Some(fingerprint);
    let (train_images, holdout) = split_holdout(&rc, set.images)?;
    if let (Some(h), Some(dir)) = (&holdout, &rc.hyper.eval.holdout) {
        let held = image_hashes(h)?;
        let fingerprint = fingerprint_of(&held);
        if inp.resume && rc.holdout_sha256.as_ref().is_some_and(|f| *f != fingerprint) {
            bail!(
                "the held-out images in {} changed since the run started; resuming would mix two held-out sets in one curve: restore the folder or start a new run",
                dir.display()
            );
        }
        rc.holdout_sha256 = Some(fingerprint);
        let train: std::collections::HashSet<Vec<u8>> = hashes.into_iter().collect();
        let shared = held.iter().filter(|x| train.contains(*x)).count();
        if shared > 0 {
            eprintln!("warning: {shared} of {} held-out images are pixel-identical to training images; the held-out loss is then partly a training loss", h.size()[0]);
        }
    }
    let steps_per_epoch = (train_images.size()[0] as u64).div_ceil(rc.hyper.batch_size.max(1) as u64).max(1);
    if let Some(e) = rc.hyper.epochs {
        rc.hyper.total_steps = e.checked_mul(steps_per_epoch).context("--epochs is too large")?;
    }
    if rc.hyper.total_steps == 0 {
        bail!("the run has no steps to take (--steps 0 or --epochs 0)");
    }
    let h = rc.hyper.clone();
    run.create()?;
    let _lock = crate::run::lock_folder(&run.root, "run")?;
    for dir in [run.root.clone(), run.checkpoints_dir()] {
        for name in crate::checkpoint::remove_stale_temps(&dir) {
            eprintln!("removed {}, a partial file left by an interrupted earlier run", dir.join(name).display());
        }
    }

    // Model, optimiser, evaluator; the run config as JSON beside the run.
    let mut evaluator = Evaluator::new(&h.eval, h.seed, &rc.data, &train_images, holdout.as_ref().map(|t| t.shallow_clone()), device)?;
    if h.eval.select == Some(Selection::Cfid) && !evaluator.has_fid() {
        bail!("--select cfid needs clean-FID, and the Inception weights could not be loaded (see the warning above; `make inception`)");
    }
    let mut tr = Trainer::new(&rc, train_images, device)?;
    let pr = crate::finetune::param_report(&tr.model, Some(rc.method));
    rc.params = Some(RunParams { base: pr.base_params, trainable: pr.trainable_params.unwrap_or(0) });
    let mut step = 0u64;
    if inp.resume {
        step = tr.restore_newest(&run)?;
        if step > h.total_steps {
            bail!("the run is already at step {step}, past the requested length of {} steps", h.total_steps);
        }
        if step == h.total_steps {
            eprintln!("nothing to do: {} is already at step {step} of {}", run.root.display(), h.total_steps);
            return Ok(TrainSummary { final_step: step, interrupted: false, early_stopped: false, selected: None, seconds: 0.0, images_per_sec: 0.0, last_loss: f64::NAN });
        }
        run.truncate_metrics_after(step)?;
        eprintln!("resumed {} at step {step}", run.root.display());
    }
    let mut selector = h.eval.select.map(|m| Selector::resume(&run, m, h.eval.early_stop, step)).transpose()?;
    tr.rc = rc.clone();
    run.write_config(&rc)?;
    if inp.show_progress {
        eprintln!(
            "training {} with method {} on {} ({} images{}), {} steps of batch {}, device {}",
            run.root.display(),
            rc.method.name(),
            rc.data.display(),
            tr.data.size()[0],
            holdout.as_ref().map(|h| format!(", {} held out", h.size()[0])).unwrap_or_default(),
            h.total_steps,
            h.batch_size,
            crate::device::describe(device)
        );
    }

    let total = h.total_steps;
    let mut log = LossLog::new(device);
    let start_time = Instant::now();
    let mut interval = (Instant::now(), 0u64);
    let mut last_loss = f64::NAN;
    let mut images_per_sec = 0.0;
    let mut interrupted = false;
    let mut early_stopped = false;
    // On the CPU a finiteness check is cheap; on a GPU it is a sync, so only at log lines.
    let check_every = if device == Device::Cpu { 1 } else { h.log_every.max(1) };
    let mut pb = None::<indicatif::ProgressBar>;
    while step < total {
        if inp.show_progress && (pb.is_none() || step % steps_per_epoch == 0) {
            pb = Some(epoch_bar(pb.take(), step, steps_per_epoch, total));
        }
        let terms = tr.run_step(step + 1);
        step += 1;
        interval.1 += h.batch_size as u64;
        log.add(&terms.loss, &terms.mse, &terms.vb, &terms.t, tr.diffusion.num_timesteps);
        let out_of_time = inp.time_limit.is_some_and(|l| start_time.elapsed() >= l);
        let mut stop = inp.interrupt.load(Ordering::SeqCst) || crate::stop::requested() || out_of_time;
        let log_now = step % h.log_every.max(1) == 0 || step == total || stop;
        if step % check_every == 0 && !log_now && !log.finite() {
            bail!(non_finite_message(&run, step));
        }

        // Log.
        if log_now {
            let (means, finite) = log.take();
            if !finite {
                bail!(non_finite_message(&run, step));
            }
            last_loss = means[0][0];
            images_per_sec = interval.1 as f64 / interval.0.elapsed().as_secs_f64().max(1e-9);
            let mut rec = log_record(&means, step, steps_per_epoch, h.lr, images_per_sec, start_time.elapsed().as_secs_f64());
            if tr.model.unet.has_adapters() {
                rec["adapter_gate_mean"] = tr.adapter_gates();
            }
            run.append_metrics(&rec)?;
            interval = (Instant::now(), 0);
        }
        if let Some(p) = &pb {
            p.inc(1);
            p.set_message(format!("step {step}/{total} loss {last_loss:.4} {images_per_sec:.1} img/s"));
        }

        // Evaluate and sample; a failure there must not lose the steps since the last save.
        let mut keep = false;
        let mut scheduled = || -> Result<()> {
            let eval_now = evaluator.enabled() && (step == total || h.eval.every_epochs.is_some_and(|k| k > 0 && step % (k * steps_per_epoch) == 0));
            if eval_now {
                if let Some(p) = &pb {
                    p.set_message(format!("step {step}/{total} evaluating…"));
                }
                tr.model.unet.train = false;
                let rec = evaluator.evaluate(&tr.model, &tr.diffusion, &run, step);
                tr.model.unet.train = true;
                let mut rec = rec?;
                rec["kind"] = "eval".into();
                rec["step"] = step.into();
                rec["epoch"] = (step as f64 / steps_per_epoch as f64).into();
                rec["wall_time"] = start_time.elapsed().as_secs_f64().into();
                run.append_metrics(&rec)?;
                if let Some(sel) = &mut selector {
                    let v = sel.observe(&run, &rec)?;
                    keep = v.improved;
                    early_stopped = v.stop;
                }
            }
            if h.sample_every.is_some_and(|k| k > 0 && step % k == 0) {
                tr.model.unet.train = false;
                let r = tr.sample_grid(&run, step);
                tr.model.unet.train = true;
                r?;
            }
            Ok(())
        };
        let scheduled = scheduled();
        if scheduled.as_ref().is_err_and(crate::stop::is_stopped) {
            // A signal during evaluation or sampling: that work is dropped, the step is saved below.
            stop = true;
        } else if let Err(e) = scheduled {
            let saved = if log.finite() { tr.save(&run, step).map(|_| format!("saved checkpoint at step {step}")) } else { Ok("nothing saved".into()) };
            return Err(e.context(format!("{}; continue with --resume {}", saved.unwrap_or_else(|s| format!("saving also failed: {s:#}")), run.root.display())));
        }

        // Save (also the best checkpoint so far, and before an early stop).
        if h.save_every.is_some_and(|k| k > 0 && step % k == 0) || step == total || stop || keep || early_stopped {
            // Never write a checkpoint from weights a non-finite loss has already corrupted.
            if !log.finite() {
                bail!(non_finite_message(&run, step));
            }
            tr.save(&run, step)?;
        }
        if stop {
            interrupted = true;
            let why = if out_of_time { "time limit reached" } else { "interrupted" };
            eprintln!("\n{why}: saved checkpoint at step {step}; continue with --resume {}", run.root.display());
            break;
        }
        if early_stopped {
            let b = selector.as_ref().and_then(|s| s.best()).expect("a stop follows a best evaluation");
            eprintln!(
                "\nearly stop: {} did not improve in {} evaluations; best {:.5} at epoch {:.1} (step {})",
                b.metric.name(),
                h.eval.early_stop.unwrap_or(0),
                b.value,
                b.epoch,
                b.step
            );
            break;
        }
    }
    if let Some(p) = pb {
        p.finish();
    }
    Ok(TrainSummary {
        final_step: step,
        interrupted,
        early_stopped,
        selected: selector.and_then(|s| s.best().cloned()),
        seconds: start_time.elapsed().as_secs_f64(),
        images_per_sec,
        last_loss,
    })
}

/// The progress bar of the epoch that `step` starts (finishing the previous one).
fn epoch_bar(prev: Option<indicatif::ProgressBar>, step: u64, steps_per_epoch: u64, total: u64) -> indicatif::ProgressBar {
    if let Some(p) = prev {
        p.finish();
    }
    let epoch = step / steps_per_epoch;
    let in_epoch = steps_per_epoch.min(total - epoch * steps_per_epoch);
    let p = crate::progress_bar(in_epoch, &format!("epoch {}/{} {{bar:25}} {{pos}}/{{len}} {{msg}}", epoch + 1, total.div_ceil(steps_per_epoch)));
    p.set_position(step - epoch * steps_per_epoch);
    p
}

/// One metrics.jsonl line: loss terms overall and per timestep quartile, throughput.
fn log_record(means: &Means, step: u64, steps_per_epoch: u64, lr: f64, images_per_sec: f64, wall_time: f64) -> serde_json::Value {
    let mut rec = serde_json::json!({
        "step": step,
        "epoch": step as f64 / steps_per_epoch as f64,
        "loss": means[0][0], "mse": means[1][0], "vb": means[2][0],
        "lr": lr,
        "images_per_sec": images_per_sec,
        "wall_time": wall_time,
    });
    for q in 0..4 {
        rec[format!("loss_q{q}")] = json_num(means[0][q + 1]);
        rec[format!("mse_q{q}")] = json_num(means[1][q + 1]);
        rec[format!("vb_q{q}")] = json_num(means[2][q + 1]);
    }
    rec
}

fn non_finite_message(run: &RunDir, step: u64) -> String {
    let last = run.find_checkpoint(None).map(|(s, _)| format!("step {s}")).unwrap_or_else(|_| "none".into());
    format!("non-finite loss at or before step {step}; stopped without saving (last good checkpoint: {last}). Try a lower --lr or --precision fp32")
}

fn json_num(v: f64) -> serde_json::Value {
    if v.is_finite() {
        v.into()
    } else {
        serde_json::Value::Null
    }
}

/// SHA-256 of each image's uint8 pixels (`[N, 3, S, S]` in [-1, 1]).
pub fn image_hashes(images: &Tensor) -> Result<Vec<Vec<u8>>> {
    use sha2::{Digest, Sha256};
    let u8s = ((images + 1.0) * 127.5).round().clamp(0.0, 255.0).to_kind(Kind::Uint8).contiguous();
    let n = u8s.size()[0];
    let bytes: Vec<u8> = Vec::try_from(u8s.flatten(0, -1))?;
    let per = if n > 0 { bytes.len() / n as usize } else { 0 };
    Ok(bytes.chunks(per.max(1)).map(|c| Sha256::digest(c).to_vec()).collect())
}

/// SHA-256 (hex) of a set's per-image hashes, in order: the fingerprint a run records of its
/// training and held-out images.
pub fn fingerprint_of(hashes: &[Vec<u8>]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(hashes.concat()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits off the held-out images of `--holdout-fraction` (a seeded choice of images), or
/// loads `--holdout DIR`.
fn split_holdout(rc: &RunConfig, images: Tensor) -> Result<(Tensor, Option<Tensor>)> {
    let e = &rc.hyper.eval;
    if let Some(dir) = &e.holdout {
        let set = crate::data::load_folder(dir, rc.model.image_size as u32, false)?;
        return Ok((images, Some(set.images)));
    }
    match e.holdout_fraction {
        Some(f) if f > 0.0 => {
            let n = images.size()[0];
            if n < 2 {
                bail!("--holdout-fraction needs at least 2 readable images in {} (found {n})", rc.data.display());
            }
            let k = ((n as f64 * f).round() as i64).clamp(1, n - 1);
            tch::manual_seed(step_seed(rc.hyper.seed, 0, stream::HOLDOUT));
            let perm = Tensor::randperm(n, (Kind::Int64, Device::Cpu));
            let held = images.index_select(0, &perm.narrow(0, n - k, k));
            let kept = images.index_select(0, &perm.narrow(0, 0, n - k));
            Ok((kept, Some(held)))
        }
        _ => Ok((images, None)),
    }
}
