//! The model being trained and one optimisation step, as improved-diffusion's `TrainLoop`:
//! `run_step` = `forward_backward` (loss and gradients, microbatch by microbatch) + `optimize`
//! (Adam, then the EMA); `save` and `restore` write and read the run's checkpoints.

use crate::diffusion::Diffusion;
use crate::train::draws::{batch_indices, step_seed, stream};
use crate::model::methods::{apply_method, part_of, Method};
use crate::model::Model;
use crate::train::optim::{Adam, Ema, Param};
use crate::train::run_dir::{build_with_base, read_base, RunDir};
use crate::train::run_config::{Hyper, RunConfig};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Per-example loss terms of one step and its timesteps, each `[B]`.
pub struct StepTerms {
    pub loss: Tensor,
    pub mse: Tensor,
    pub vb: Tensor,
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
        if let Some(w) = h.eval.guidance.filter(|w| *w != 1.0) {
            model.guidance = Some(crate::model::guidance::DomainGuidance::snapshot(&model, rc.method, w)?);
        }
        model.unet.compute_kind = crate::util::device::parse_precision(&h.precision)?;
        crate::util::device::warn_if_slow(model.unet.compute_kind, device);
        model.unet.train = true;
        let trainable = apply_method(&mut model, rc.method);
        if trainable.is_empty() {
            bail!("method {} has no trainable parameters in this model", rc.method.name());
        }
        let vars = model.vs.variables();
        let params = trainable
            .iter()
            .map(|n| {
                let lr = if part_of(&model, n).is_new() { h.new_lr.unwrap_or(h.lr) } else { h.lr };
                Param { name: n.clone(), tensor: vars[n].shallow_clone(), lr }
            })
            .collect();
        let adam = Adam::new(params, h.beta1, h.beta2, h.eps);
        let ema = h.ema.map(|rate| Ema::new(&adam, rate, h.ema_warmup));
        let diffusion = Diffusion::from_config(&rc.model, Some(""), device)?;
        Ok(Trainer { model, diffusion, adam, ema, data: images.to_device(device), hyper: h.clone(), method: rc.method })
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
        let t = Tensor::randint(self.diffusion.num_timesteps as i64, [b], (Kind::Int64, device));
        let noise = x0.randn_like();
        (x0, t, noise)
    }

    /// Loss terms `[B]` and the gradients of the batch-mean loss, accumulated over microbatches.
    fn forward_backward(&self, x0: &Tensor, t: &Tensor, noise: &Tensor) -> ((Tensor, Tensor, Tensor), Vec<Tensor>) {
        let h = &self.hyper;
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
    pub fn save(&self, run: &RunDir, step: u64) -> Result<PathBuf> {
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
        meta.insert("method".to_string(), self.method.name().to_string());
        meta.insert("a3ft_version".to_string(), env!("CARGO_PKG_VERSION").to_string());
        let path = run.checkpoint_path(step);
        crate::io::checkpoint::save_safetensors(&path, &tensors, meta)?;
        Ok(path)
    }

    /// Loads a checkpoint written by `save`; returns its step.
    fn restore(&mut self, path: &Path, named: u64) -> Result<u64> {
        let meta = crate::io::checkpoint::safetensors_metadata(path)?;
        let step: u64 = meta.get("step").and_then(|s| s.parse().ok()).with_context(|| format!("{} has no step", path.display()))?;
        if step != named {
            // A copied or renamed file: resuming would silently go back (or forward) in the run.
            bail!("it holds step {step}, not the {named} of its name");
        }
        let state = crate::io::checkpoint::load_state_dict(path, None)?;
        let get = |k: String| state.get(&k).with_context(|| format!("{} lacks {k}", path.display()));
        // Exactly the run's tensors: one it does not train would be ignored here but applied by
        // the commands that load the run (they refuse such a file as well).
        let ours: std::collections::HashSet<&str> = self.adam.params.iter().map(|p| p.name.as_str()).collect();
        for k in state.keys() {
            let name = ["model.", "ema.", "optim.exp_avg.", "optim.exp_avg_sq."].iter().find_map(|p| k.strip_prefix(p));
            if !name.is_some_and(|n| ours.contains(n)) {
                bail!("it holds {k}, which `{}` does not train", self.method.name());
            }
        }
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
    pub fn restore_newest(&mut self, run: &RunDir) -> Result<u64> {
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
                    // A signal while reading is no damage: nothing is set aside.
                    let e = crate::util::stop::pass_stop(e)?;
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

    /// A grid of `sample_count` samples at `samples/step_XXXXXX.png`, drawn in eval mode.
    pub fn sample_grid(&mut self, run: &RunDir, step: u64) -> Result<()> {
        let h = &self.hyper;
        self.model.unet.train = false;
        let imgs = crate::train::evaluate::sample_for_evaluation(&self.model, &h.sample_respacing, h.sample_count, h.seed as i64, false);
        self.model.unet.train = true;
        let g = crate::io::images::grid(&imgs?, None)?;
        crate::io::images::save_png(&run.sample_grid_path(step), &g)
    }

    /// Mean adapter gate per width over 16 timesteps (logged to watch the adapters open).
    pub fn adapter_gates(&self) -> std::collections::BTreeMap<String, f64> {
        let device = self.data.device();
        tch::no_grad(|| {
            let ts = Tensor::linspace(0.0, (self.diffusion.num_timesteps - 1) as f64, 16, (Kind::Float, device)).to_kind(Kind::Int64);
            let emb = self.model.unet.embed(&self.diffusion.model_timesteps(&ts), None);
            self.model.unet.adapter_gates(&emb)
        })
        .into_iter()
        .collect()
    }
}

