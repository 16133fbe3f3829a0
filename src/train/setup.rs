//! The first stage of a run: bind it to its data and its folder. The images are loaded and
//! fingerprinted (a resumed run must see the same ones), the held-out images split off, the
//! folder locked and tidied, the model, optimiser and evaluator built, the newest intact
//! checkpoint restored and the run config written beside the run.

use super::schedule::Schedule;
use super::trainer::Trainer;
use super::TrainInputs;
use crate::train::draws::{step_seed, stream};
use crate::train::evaluate::Evaluator;
use crate::train::run_config::Selection;
use crate::train::run_config::{RunConfig, RunParams};
use crate::train::run_dir::RunDir;
use crate::train::select::Selector;
use anyhow::{bail, Context, Result};
use tch::{Device, Kind, Tensor};

/// A run bound to its data and folder, at `step` (0 for a new run).
pub struct Bound {
    pub run: RunDir,
    pub rc: RunConfig,
    pub trainer: Trainer,
    pub evaluator: Evaluator,
    pub selector: Option<Selector>,
    pub schedule: Schedule,
    pub step: u64,
    /// Held while the run trains: a second trainer on the folder is refused.
    pub _lock: crate::util::lock::FolderLock,
}

/// What binding found: a run ready to train, or one already at its last step.
pub enum Binding {
    Ready(Box<Bound>),
    Done { step: u64 },
}

/// Binds the run to its data and folder.
pub fn bind(inp: &TrainInputs) -> Result<Binding> {
    let mut rc = inp.config.clone();
    rc.validate()?;
    let run = RunDir::new(&inp.run_dir);
    let device = inp.device;

    // Data: the training images, less any held-out share, fingerprinted.
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
        if inp.resume
            && rc
                .holdout_sha256
                .as_ref()
                .is_some_and(|f| *f != fingerprint)
        {
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
    let steps_per_epoch = (train_images.size()[0] as u64)
        .div_ceil(rc.hyper.batch_size.max(1) as u64)
        .max(1);
    if let Some(e) = rc.hyper.epochs {
        rc.hyper.total_steps = e
            .checked_mul(steps_per_epoch)
            .context("--epochs is too large")?;
    }
    if rc.hyper.total_steps == 0 {
        bail!("the run has no steps to take (--steps 0 or --epochs 0)");
    }

    // The folder: locked, and tidied of what a killed earlier process left.
    run.create()?;
    let lock = crate::util::lock::lock_folder(&run.root, "run")?;
    for dir in [run.root.clone(), run.checkpoints_dir()] {
        for name in crate::util::files::remove_stale_temps(&dir) {
            eprintln!(
                "removed {}, a partial file left by an interrupted earlier run",
                dir.join(name).display()
            );
        }
    }

    // Evaluator, model and optimiser; the newest intact checkpoint when resuming.
    let h = rc.hyper.clone();
    let evaluator = Evaluator::new(
        &h.eval,
        h.seed,
        &rc.data,
        &train_images,
        holdout.as_ref().map(|t| t.shallow_clone()),
        device,
    )?;
    if h.eval.select == Some(Selection::Cfid) && !evaluator.has_fid() {
        bail!("--select cfid needs clean-FID, and the Inception weights could not be loaded (see the warning above; `make inception`)");
    }
    let mut trainer = Trainer::new(&rc, train_images, device)?;
    let pr = crate::model::methods::param_report(&trainer.model, Some(rc.method));
    rc.params = Some(RunParams {
        base: pr.base_params,
        trainable: pr.trainable_params.unwrap_or(0),
    });
    let mut step = 0u64;
    if inp.resume {
        step = trainer.restore_newest(&run)?;
        if step > h.total_steps {
            bail!(
                "the run is already at step {step}, past the requested length of {} steps",
                h.total_steps
            );
        }
        if step == h.total_steps {
            eprintln!(
                "nothing to do: {} is already at step {step} of {}",
                run.root.display(),
                h.total_steps
            );
            return Ok(Binding::Done { step });
        }
        run.truncate_metrics_after(step)?;
        eprintln!("resumed {} at step {step}", run.root.display());
    }
    let selector = h
        .eval
        .select
        .map(|m| Selector::resume(&run, m, h.eval.early_stop, step))
        .transpose()?;
    if let Some(s) = &selector {
        // A run killed between a best checkpoint's save and its record gets the record now.
        s.record(&run)?;
    }
    run.write_config(&rc)?;
    if inp.show_progress {
        eprintln!(
            "training {} with method {} on {} ({} images{}), {} steps of batch {}, device {}",
            run.root.display(),
            rc.method.name(),
            rc.data.display(),
            trainer.data.size()[0],
            holdout
                .as_ref()
                .map(|h| format!(", {} held out", h.size()[0]))
                .unwrap_or_default(),
            h.total_steps,
            h.batch_size,
            crate::util::device::describe(device)
        );
    }
    let schedule = Schedule::new(&h, steps_per_epoch);
    Ok(Binding::Ready(Box::new(Bound {
        run,
        rc,
        trainer,
        evaluator,
        selector,
        schedule,
        step,
        _lock: lock,
    })))
}

/// SHA-256 of each image's uint8 pixels (`[N, 3, S, S]` in [-1, 1]).
pub fn image_hashes(images: &Tensor) -> Result<Vec<Vec<u8>>> {
    use sha2::{Digest, Sha256};
    let u8s = ((images + 1.0) * 127.5)
        .round()
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
        .contiguous();
    let n = u8s.size()[0];
    let bytes: Vec<u8> = Vec::try_from(u8s.flatten(0, -1))?;
    let per = if n > 0 { bytes.len() / n as usize } else { 0 };
    Ok(bytes
        .chunks(per.max(1))
        .map(|c| Sha256::digest(c).to_vec())
        .collect())
}

/// SHA-256 (hex) of a set's per-image hashes, in order: the fingerprint a run records of its
/// training and held-out images.
pub fn fingerprint_of(hashes: &[Vec<u8>]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(hashes.concat())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Splits off the held-out images of `--holdout-fraction` (a seeded choice of images), or
/// loads `--holdout DIR`.
pub fn split_holdout(rc: &RunConfig, images: Tensor) -> Result<(Tensor, Option<Tensor>)> {
    let e = &rc.hyper.eval;
    if let Some(dir) = &e.holdout {
        let set = crate::data::load_folder(dir, rc.model.image_size as u32, false)?;
        return Ok((images, Some(set.images)));
    }
    match holdout_indices(rc, images.size()[0])? {
        Some((kept, held)) => Ok((
            images.index_select(0, &kept),
            Some(images.index_select(0, &held)),
        )),
        None => Ok((images, None)),
    }
}

/// The `--holdout-fraction` split of a training folder of `n` images (in `load_folder` order),
/// as (kept, held) indices; `None` where the run holds nothing out of its folder. One seeded
/// permutation, so the images and their files split the same way.
pub fn holdout_indices(rc: &RunConfig, n: i64) -> Result<Option<(Tensor, Tensor)>> {
    let e = &rc.hyper.eval;
    match e.holdout_fraction {
        Some(f) if f > 0.0 && e.holdout.is_none() => {
            if n < 2 {
                bail!(
                    "--holdout-fraction needs at least 2 readable images in {} (found {n})",
                    rc.data.display()
                );
            }
            let k = e.held_out_of(n as usize) as i64;
            tch::manual_seed(step_seed(rc.hyper.seed, 0, stream::HOLDOUT));
            let perm = Tensor::randperm(n, (Kind::Int64, Device::Cpu));
            Ok(Some((perm.narrow(0, 0, n - k), perm.narrow(0, n - k, k))))
        }
        _ => Ok(None),
    }
}
