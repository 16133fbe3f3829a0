//! The model being trained and one optimisation step, as improved-diffusion's `TrainLoop`:
//! `run_step` = `forward_backward` (loss and gradients, microbatch by microbatch) + `optimize`
//! (Adam, then the EMA); `save` and `restore` write and read the run's checkpoints.

use crate::diffusion::{Diffusion, Losses};
use crate::model::methods::{apply_method, part_of, Method};
use crate::model::Model;
use crate::train::draws::{batch_indices, step_seed, stream};
use crate::train::optim::{Adam, Ema, Param};
use crate::train::run_config::{Hyper, RunConfig};
use crate::train::run_dir::RunDir;
use crate::train::run_model::{build_with_base, read_base, Part, RunCheckpoint, Trained};
use anyhow::{bail, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Per-example loss terms of one step and its timesteps, each `[B]`.
pub struct StepTerms {
    pub losses: Losses,
    pub t: Tensor,
}

/// The model being trained, its optimiser, the training images on the device and the
/// hyper-parameters that drive a step.
pub struct Trainer {
    pub model: Model,
    pub diffusion: Diffusion,
    pub adam: Adam,
    pub ema: Option<Ema>,
    pub data: Tensor,
    pub hyper: Hyper,
    pub method: Method,
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
        // The source of domain guidance: the trained tensors as the base checkpoint has them,
        // kept before a resumed run's values are loaded.
        if let Some(w) = crate::model::guidance::active(h.eval.guidance) {
            model.guidance = Some(crate::model::guidance::DomainGuidance::snapshot(
                &model, rc.method, w,
            )?);
        }
        model.unet.compute_kind = h.precision.kind();
        crate::util::device::warn_if_slow(h.precision, device);
        model.unet.train = true;
        let trainable = apply_method(&mut model, rc.method);
        if trainable.is_empty() {
            bail!(
                "method {} has no trainable parameters in this model",
                rc.method.name()
            );
        }
        let vars = model.vs.variables();
        let params = trainable
            .iter()
            .map(|n| {
                let lr = if part_of(&model, n).is_new() {
                    h.new_lr.unwrap_or(h.lr)
                } else {
                    h.lr
                };
                Param {
                    name: n.clone(),
                    tensor: vars[n].shallow_clone(),
                    lr,
                }
            })
            .collect();
        let adam = Adam::new(params, h.beta1, h.beta2, h.eps);
        let ema = h.ema.map(|rate| Ema::new(&adam, rate, h.ema_warmup));
        let diffusion = Diffusion::from_config(
            &rc.model,
            Some(&crate::diffusion::respace::Respacing::All),
            device,
        )?;
        Ok(Trainer {
            model,
            diffusion,
            adam,
            ema,
            data: images.to_device(device),
            hyper: h.clone(),
            method: rc.method,
        })
    }

    /// One optimisation step (1-based `step`): draw the batch, forward_backward, optimize.
    pub fn run_step(&mut self, step: u64) -> StepTerms {
        let (x0, t, noise) = self.draw_batch(step);
        let (losses, grads) = self.forward_backward(&x0, &t, &noise);
        self.optimize(step, &grads);
        StepTerms { losses, t }
    }

    /// Images (flipped when asked), timesteps and noise of `step`, all from `(seed, step)`.
    fn draw_batch(&self, step: u64) -> (Tensor, Tensor, Tensor) {
        let h = &self.hyper;
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
        let t = Tensor::randint(
            self.diffusion.num_timesteps as i64,
            [b],
            (Kind::Int64, device),
        );
        let noise = x0.randn_like();
        (x0, t, noise)
    }

    /// Loss terms `[B]` and the gradients of the batch-mean loss, accumulated over microbatches.
    fn forward_backward(&self, x0: &Tensor, t: &Tensor, noise: &Tensor) -> (Losses, Vec<Tensor>) {
        let h = &self.hyper;
        let b = h.batch_size as i64;
        let micro = h.microbatch.unwrap_or(h.batch_size).clamp(1, h.batch_size) as i64;
        let mut parts = Vec::new();
        let mut grads: Option<Vec<Tensor>> = None;
        let mut start = 0;
        while start < b {
            let len = micro.min(b - start);
            let (x0m, tm, nm) = (
                x0.narrow(0, start, len),
                t.narrow(0, start, len),
                noise.narrow(0, start, len),
            );
            let l = self
                .diffusion
                .training_losses(|x, t| self.model.unet.forward(x, t, None), &x0m, &tm, &nm)
                .losses;
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
            parts.push(l.detach());
            start += len;
        }
        (Losses::cat(&parts), grads.unwrap_or_default())
    }

    /// Adam, then the EMA.
    fn optimize(&mut self, step: u64, grads: &[Tensor]) {
        self.adam.step(step, grads);
        if let Some(ema) = &mut self.ema {
            ema.update(&self.adam, step);
        }
    }

    /// Trained tensors, Adam moments, EMA and the step, as one safetensors file.
    pub fn save(&self, run: &RunDir, step: u64) -> Result<PathBuf> {
        let mut tensors = Vec::new();
        for (i, p) in self.adam.params.iter().enumerate() {
            tensors.push((Part::Model.key(&p.name), p.tensor.detach()));
            tensors.push((
                Part::ExpAvg.key(&p.name),
                self.adam.exp_avg[i].shallow_clone(),
            ));
            tensors.push((
                Part::ExpAvgSq.key(&p.name),
                self.adam.exp_avg_sq[i].shallow_clone(),
            ));
            if let Some(ema) = &self.ema {
                tensors.push((Part::Ema.key(&p.name), ema.values[i].shallow_clone()));
            }
        }
        let mut meta = HashMap::new();
        meta.insert("step".to_string(), step.to_string());
        meta.insert("method".to_string(), self.method.name().to_string());
        meta.insert(
            "a3ft_version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        );
        let path = run.checkpoint_path(step);
        crate::io::checkpoint::save_safetensors(&path, &tensors, meta)?;
        Ok(path)
    }

    /// Loads a checkpoint written by `save` (checked as every run checkpoint is, and holding
    /// every part the trainer keeps); returns its step.
    fn restore(&mut self, path: &Path, named: u64) -> Result<u64> {
        let trained: Trained = self
            .adam
            .params
            .iter()
            .map(|p| (p.name.clone(), p.tensor.size()))
            .collect();
        let ckpt = RunCheckpoint::read(path, named, &trained, self.method)?;
        // Everything is checked before anything is copied, so a bad file leaves the state untouched.
        let model = ckpt.part(Part::Model, &trained, self.method)?;
        let exp_avg = ckpt.part(Part::ExpAvg, &trained, self.method)?;
        let exp_avg_sq = ckpt.part(Part::ExpAvgSq, &trained, self.method)?;
        let ema = self
            .ema
            .as_ref()
            .map(|_| ckpt.part(Part::Ema, &trained, self.method))
            .transpose()?;
        tch::no_grad(|| {
            for (i, p) in self.adam.params.iter().enumerate() {
                let name = p.name.as_str();
                p.tensor.shallow_clone().copy_(model[name]);
                self.adam.exp_avg[i].copy_(exp_avg[name]);
                self.adam.exp_avg_sq[i].copy_(exp_avg_sq[name]);
                if let (Some(ema), Some(values)) = (&mut self.ema, &ema) {
                    ema.values[i].copy_(values[name]);
                }
            }
        });
        Ok(ckpt.step)
    }

    /// Restores the newest intact checkpoint; a damaged newer one is set aside (renamed
    /// `*.corrupt`) with a warning. Step 0 when the run has none yet.
    pub fn restore_newest(&mut self, run: &RunDir) -> Result<u64> {
        let found = run.checkpoints().unwrap_or_default();
        if found.is_empty() {
            // Only damaged checkpoints (set aside earlier): never silently restart from step 0.
            let aside: Vec<String> = std::fs::read_dir(run.checkpoints_dir())
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.ends_with(".corrupt"))
                        .collect()
                })
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
                    // A signal while reading is no damage: nothing is set aside.
                    let e = crate::util::stop::pass_stop(e)?;
                    // Never over an earlier set-aside file of the same name.
                    let aside = (0..)
                        .map(|k| {
                            path.with_extension(if k == 0 {
                                "safetensors.corrupt".to_string()
                            } else {
                                format!("safetensors.{k}.corrupt")
                            })
                        })
                        .find(|p| std::fs::symlink_metadata(p).is_err())
                        .expect("an unused name");
                    let _ = std::fs::rename(path, &aside);
                    // The cause names the file.
                    damaged.push(format!(
                        "{e:#}; the damaged file is set aside as {}",
                        aside.display()
                    ));
                }
            }
        }
        if !damaged.is_empty() {
            bail!(
                "no intact checkpoint in {}: {}",
                run.root.display(),
                damaged.join("; ")
            );
        }
        Ok(0)
    }

    /// A grid of `sample_count` samples at `samples/step_XXXXXX.png`, drawn in eval mode.
    pub fn sample_grid(&mut self, run: &RunDir, step: u64) -> Result<()> {
        let h = &self.hyper;
        self.model.unet.train = false;
        let imgs = crate::train::evaluate::sample_for_evaluation(
            &self.model,
            &h.sample_respacing,
            h.sample_count,
            h.seed as i64,
            false,
        );
        self.model.unet.train = true;
        let g = crate::io::images::grid(&imgs?, None)?;
        crate::io::images::save_png(&run.sample_grid_path(step), &g)
    }

    /// Mean adapter gate per width over 16 timesteps (logged to watch the adapters open).
    pub fn adapter_gates(&self) -> std::collections::BTreeMap<String, f64> {
        let device = self.data.device();
        tch::no_grad(|| {
            let ts = Tensor::linspace(
                0.0,
                (self.diffusion.num_timesteps - 1) as f64,
                16,
                (Kind::Float, device),
            )
            .to_kind(Kind::Int64);
            let emb = self
                .model
                .unet
                .embed(&self.diffusion.model_timesteps(&ts), None);
            self.model.unet.adapter_gates(&emb)
        })
        .into_iter()
        .collect()
    }
}
