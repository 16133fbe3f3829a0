//! The training loop: fine-tuning (or pre-training) with exact resume, read top to bottom.
//!
//! Reproducibility: every random draw of step `k` (batch indices, flips, timesteps, noise) is
//! derived from `(seed, k)`, so a resumed run needs only the trainable tensors, the Adam
//! moments, the EMA and the step to continue bit-for-bit.

use crate::checkpoint::{self, load_state_dict, save_safetensors, sha256_file};
use crate::config::ModelConfig;
use crate::diffusion::Diffusion;
use crate::finetune::{apply_method, Method};
use crate::model::Model;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Everything that defines a run; stored as `RUN_DIR/config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    pub a3ft_version: String,
    /// Resolved model + diffusion flags used for training.
    pub model: ModelConfig,
    pub method: Method,
    pub lora_rank: i64,
    pub adapter_gate_bias: Option<f64>,
    pub base_checkpoint: Option<BaseCheckpoint>,
    pub data: PathBuf,
    /// Readable images in `data` (training plus any `--holdout-fraction` share); set by `train`.
    pub num_images: usize,
    pub hyper: Hyper,
    /// Parameter counts of the built model (base network, trained by the method); set by `train`
    /// so that reports need not rebuild the model.
    #[serde(default)]
    pub params: Option<RunParams>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct RunParams {
    pub base: i64,
    pub trainable: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaseCheckpoint {
    pub path: PathBuf,
    pub sha256: String,
    pub key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hyper {
    pub lr: f64,
    pub adapter_lr: Option<f64>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub batch_size: usize,
    pub microbatch: Option<usize>,
    /// Run length in passes over the training images; `train` turns it into `total_steps` once
    /// it knows how many images it trains on (after unreadable files and held-out images).
    #[serde(default)]
    pub epochs: Option<u64>,
    pub total_steps: u64,
    pub ema: Option<f64>,
    pub flip: bool,
    /// Refuse unreadable images (otherwise they are skipped with a warning).
    #[serde(default)]
    pub strict: bool,
    pub seed: u64,
    pub precision: String,
    pub log_every: u64,
    pub save_every: Option<u64>,
    pub sample_every: Option<u64>,
    pub sample_respacing: String,
    pub sample_count: usize,
    #[serde(default)]
    pub eval: EvalOptions,
}

impl Hyper {
    /// The paper's settings (Adam 2e-4, β (0.9, 0.999), ε 1e-8, no EMA, no flips, fp32) for a
    /// given batch and length; logging every 10 steps, nothing else scheduled.
    pub fn paper_defaults(batch_size: usize, total_steps: u64) -> Hyper {
        Hyper {
            lr: 2e-4,
            adapter_lr: None,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            batch_size,
            microbatch: None,
            epochs: None,
            total_steps,
            ema: None,
            flip: false,
            strict: false,
            seed: 0,
            precision: "fp32".into(),
            log_every: 10,
            save_every: None,
            sample_every: None,
            sample_respacing: "50".into(),
            sample_count: 16,
            eval: EvalOptions::default(),
        }
    }
}

/// In-loop evaluation (`--eval-every` and friends).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EvalOptions {
    /// Evaluate every K epochs (and at the end).
    pub every_epochs: Option<u64>,
    /// Samples for FID/KID/memorisation at each evaluation (0 = held-out loss only).
    pub samples: usize,
    /// Respacing of the evaluation sampler.
    pub respacing: String,
    /// Held-out images (never trained on).
    pub holdout: Option<PathBuf>,
    /// Or: hold out this fraction of the training folder.
    pub holdout_fraction: Option<f64>,
    /// Inception weights (default: the `make inception` cache); FID/KID are skipped when absent.
    pub inception: Option<PathBuf>,
    /// Memorisation threshold (RMS pixel distance, 0–1 scale).
    pub memo_threshold: Option<f64>,
}

/// Newest `checkpoints/step_XXXXXX.safetensors` of a run, or the requested step.
pub fn find_checkpoint(run: &Path, step: Option<u64>) -> Result<(u64, PathBuf)> {
    let dir = run.join("checkpoints");
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .with_context(|| format!("{} has no checkpoints folder; is it a run folder?", run.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            let n = name.strip_prefix("step_")?.strip_suffix(".safetensors")?.parse().ok()?;
            Some((n, p))
        })
        .collect();
    found.sort();
    match step {
        Some(s) => found
            .into_iter()
            .find(|(n, _)| *n == s)
            .with_context(|| format!("run {} has no checkpoint for step {s}", run.display())),
        None => found.pop().with_context(|| format!("run {} has no checkpoints yet", run.display())),
    }
}

pub fn read_run_config(run: &Path) -> Result<RunConfig> {
    let p = run.join("config.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}; is {} a run folder?", p.display(), run.display()))?;
    serde_json::from_str(&text).with_context(|| format!("invalid run config {}", p.display()))
}

/// Base model + the run's fine-tuned tensors (EMA ones when the run keeps an EMA).
pub fn load_run_model(run: &Path, step: Option<u64>, device: Device) -> Result<Model> {
    let rc = read_run_config(run)?;
    let mut model = Model::new(&rc.model, &rc.method.extras(rc.adapter_gate_bias, rc.lora_rank), device)?;
    load_base(&mut model, &rc)?;
    let (_, path) = find_checkpoint(run, step)?;
    let state = load_state_dict(&path, None)?;
    let prefix = if state.keys().any(|k| k.starts_with("ema.")) { "ema." } else { "model." };
    let vars = model.vs.variables();
    tch::no_grad(|| -> Result<()> {
        for (k, t) in &state {
            if let Some(name) = k.strip_prefix(prefix) {
                let mut v = vars.get(name).with_context(|| format!("{}: tensor {name} is not in the model", path.display()))?.shallow_clone();
                if v.size() != t.size() {
                    bail!("{}: {name} has shape {:?}, the model {:?}", path.display(), t.size(), v.size());
                }
                v.copy_(&t.to_device(device));
            }
        }
        Ok(())
    })?;
    Ok(model)
}

fn load_base(model: &mut Model, rc: &RunConfig) -> Result<()> {
    if let Some(b) = &rc.base_checkpoint {
        if !b.path.exists() {
            bail!("the run's base checkpoint {} is missing (moved or deleted?)", b.path.display());
        }
        model.load_checkpoint(&b.path, b.key.as_deref())?;
    }
    Ok(())
}

/// Deterministic per-step seed.
fn step_seed(seed: u64, step: u64, stream: u64) -> i64 {
    // SplitMix64 finaliser: nearby (seed, step) pairs give unrelated seeds.
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

/// Image indices of step `k` (0-based) on `device`: a stream of per-epoch permutations,
/// `batch` at a time. Drawn on the device so the step loop never waits for a host copy.
fn batch_indices(seed: u64, n: usize, batch: usize, step: u64, device: Device) -> Tensor {
    let (n, start) = (n as u64, step * batch as u64);
    let end = start + batch as u64;
    let mut parts = Vec::new();
    for epoch in start / n..=(end - 1) / n {
        tch::manual_seed(step_seed(seed, epoch, 1));
        let perm = Tensor::randperm(n as i64, (Kind::Int64, device));
        let lo = start.max(epoch * n) - epoch * n;
        let hi = end.min((epoch + 1) * n) - epoch * n;
        parts.push(perm.narrow(0, lo as i64, (hi - lo) as i64));
    }
    Tensor::cat(&parts, 0)
}

/// Adam (β1, β2, ε, no weight decay) with explicit, savable state.
///
/// Parameters sharing a learning rate are packed into one flat buffer (each variable becomes a
/// view into it), so an update is a handful of kernels instead of several per tensor, like
/// PyTorch's multi-tensor Adam. `exp_avg[i]` / `exp_avg_sq[i]` / `ema[i]` are views of the flat
/// state for parameter `i`, used for checkpoints.
pub struct Adam {
    pub params: Vec<(String, Tensor, f64)>,
    pub exp_avg: Vec<Tensor>,
    pub exp_avg_sq: Vec<Tensor>,
    pub ema: Option<Vec<Tensor>>,
    groups: Vec<Group>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

struct Group {
    lr: f64,
    members: Vec<usize>,
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    ema: Option<Tensor>,
}

impl Adam {
    pub fn new(mut params: Vec<(String, Tensor, f64)>, beta1: f64, beta2: f64, eps: f64, keep_ema: bool) -> Adam {
        let mut lrs: Vec<f64> = Vec::new();
        for (_, _, lr) in &params {
            if !lrs.contains(lr) {
                lrs.push(*lr);
            }
        }
        let n = params.len();
        let mut exp_avg = (0..n).map(|_| Tensor::new()).collect::<Vec<_>>();
        let mut exp_avg_sq = (0..n).map(|_| Tensor::new()).collect::<Vec<_>>();
        let mut ema_views = (0..n).map(|_| Tensor::new()).collect::<Vec<_>>();
        let mut groups = Vec::new();
        for lr in lrs {
            let members: Vec<usize> = (0..n).filter(|&i| params[i].2 == lr).collect();
            let flat = tch::no_grad(|| Tensor::cat(&members.iter().map(|&i| params[i].1.detach().flatten(0, -1)).collect::<Vec<_>>(), 0));
            let m = flat.zeros_like();
            let v = flat.zeros_like();
            let ema = keep_ema.then(|| flat.copy());
            let mut off = 0;
            for &i in &members {
                let p = &mut params[i].1;
                let (numel, shape) = (p.numel() as i64, p.size());
                let view = |t: &Tensor| t.narrow(0, off, numel).view(shape.as_slice());
                p.set_data(&view(&flat));
                exp_avg[i] = view(&m);
                exp_avg_sq[i] = view(&v);
                if let Some(e) = &ema {
                    ema_views[i] = view(e);
                }
                off += numel;
            }
            groups.push(Group { lr, members, param: flat, exp_avg: m, exp_avg_sq: v, ema });
        }
        Adam { params, exp_avg, exp_avg_sq, ema: keep_ema.then_some(ema_views), groups, beta1, beta2, eps }
    }

    /// One update at 1-based step `step` with `grads[i]` the gradient of `params[i]` (undefined =
    /// unused, treated as zero), as `torch.optim.Adam`; then the EMA, if kept.
    pub fn step(&mut self, step: u64, grads: &[Tensor], ema_rate: Option<f64>) {
        let bc1 = 1.0 - self.beta1.powi(step as i32);
        let bc2_sqrt = (1.0 - self.beta2.powi(step as i32)).sqrt();
        tch::no_grad(|| {
            for g in &mut self.groups {
                let flat: Vec<Tensor> = g
                    .members
                    .iter()
                    .map(|&i| {
                        let grad = &grads[i];
                        if grad.defined() { grad.flatten(0, -1) } else { self.params[i].1.zeros_like().flatten(0, -1) }
                    })
                    .collect();
                let mut grad = Tensor::cat(&flat, 0);
                let _ = g.exp_avg.lerp_(&grad, 1.0 - self.beta1);
                // In place wherever possible: on 121M parameters every temporary is a 484 MB pass.
                let _ = g.exp_avg_sq.g_mul_scalar_(self.beta2);
                let _ = grad.g_mul_scalar_((1.0 - self.beta2).sqrt());
                let _ = g.exp_avg_sq.addcmul_(&grad, &grad);
                let mut denom = g.exp_avg_sq.sqrt();
                // p −= (lr/bc1)·m / (√v/√bc2 + ε), with the step size folded into the denominator.
                let _ = denom.g_div_scalar_(bc2_sqrt).g_add_scalar_(self.eps).g_mul_scalar_(-bc1 / g.lr);
                let _ = g.param.addcdiv_(&g.exp_avg, &denom);
                if let (Some(e), Some(rate)) = (&mut g.ema, ema_rate) {
                    let _ = e.lerp_(&g.param, 1.0 - rate);
                }
            }
        });
    }

    /// Gradients of `loss` with respect to the parameters, without touching `.grad` (no zeroing
    /// pass, no accumulation pass: PyTorch's `zero_grad(set_to_none=True)` behaviour).
    pub fn gradients(&self, loss: &Tensor) -> Vec<Tensor> {
        let inputs: Vec<&Tensor> = self.params.iter().map(|(_, p, _)| p).collect();
        Tensor::run_backward(&[loss], &inputs, false, false)
    }
}
/// Sums of loss terms since the last log line, kept on the device (no per-step sync).
struct LossAccum {
    sums: Tensor, // [3 terms, 5 buckets (all + 4 quartiles)]
    counts: Tensor,
}

impl LossAccum {
    fn new(device: Device) -> LossAccum {
        LossAccum { sums: Tensor::zeros([3, 5], (Kind::Float, device)), counts: Tensor::zeros([5], (Kind::Float, device)) }
    }
    fn add(&mut self, loss: &Tensor, mse: &Tensor, vb: &Tensor, t: &Tensor, num_timesteps: usize) {
        tch::no_grad(|| {
            let q = (t * 4).floor_divide_scalar(num_timesteps as i64).clamp(0, 3);
            let onehot = q.one_hot(4).to_kind(Kind::Float); // [B, 4]
            let ones = Tensor::ones([t.size()[0], 1], (Kind::Float, t.device()));
            let w = Tensor::cat(&[ones, onehot], 1); // [B, 5]
            let terms = Tensor::stack(&[loss.detach(), mse.detach(), vb.detach()], 0); // [3, B]
            let _ = self.sums.g_add_(&terms.matmul(&w));
            let _ = self.counts.g_add_(&w.sum_dim_intlist([0].as_slice(), false, Kind::Float));
        });
    }
    fn finite(&self) -> bool {
        bool::try_from(self.sums.isfinite().all()).unwrap_or(false)
    }
    /// (means `[3][5]`, all finite?) and reset.
    fn take(&mut self) -> ([[f64; 5]; 3], bool) {
        let sums: Vec<f64> = Vec::try_from(self.sums.to_kind(Kind::Double).to_device(Device::Cpu).flatten(0, -1)).unwrap();
        let counts: Vec<f64> = Vec::try_from(self.counts.to_kind(Kind::Double).to_device(Device::Cpu)).unwrap();
        let mut out = [[f64::NAN; 5]; 3];
        let mut finite = true;
        for term in 0..3 {
            for b in 0..5 {
                let s = sums[term * 5 + b];
                finite &= s.is_finite();
                if counts[b] > 0.0 {
                    out[term][b] = s / counts[b];
                }
            }
        }
        let _ = self.sums.zero_();
        let _ = self.counts.zero_();
        (out, finite)
    }
}

/// What `train` needs beyond the run config.
pub struct TrainInputs {
    pub run_dir: PathBuf,
    pub config: RunConfig,
    pub device: Device,
    /// Resume from the newest checkpoint in `run_dir`.
    pub resume: bool,
    pub show_progress: bool,
    /// Set by Ctrl-C: save and stop.
    pub interrupt: Arc<AtomicBool>,
    /// Save and stop once this much wall time has passed (a compute budget).
    pub time_limit: Option<std::time::Duration>,
}

/// Outcome of a training run.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub final_step: u64,
    pub interrupted: bool,
    pub seconds: f64,
    pub images_per_sec: f64,
    pub last_loss: f64,
}

struct Trainer {
    model: Model,
    diffusion: Diffusion,
    adam: Adam,
    data: Tensor,
    rc: RunConfig,
    run_dir: PathBuf,
}

impl Trainer {
    /// Model (base weights loaded, method applied), optimizer, EMA and the data on `device`.
    fn new(rc: &RunConfig, run_dir: &Path, images: Tensor, device: Device) -> Result<Trainer> {
        let h = &rc.hyper;
        let extras = rc.method.extras(rc.adapter_gate_bias, rc.lora_rank);
        // New modules (adapters, LoRA, or the whole network from scratch) start from the run's seed.
        tch::manual_seed(step_seed(h.seed, 0, 3));
        let mut model = Model::new(&rc.model, &extras, device)?;
        load_base(&mut model, rc)?;
        model.unet.compute_kind = crate::device::parse_precision(&h.precision)?;
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
                (n.clone(), vars[n].shallow_clone(), lr)
            })
            .collect();
        let adam = Adam::new(params, h.beta1, h.beta2, h.eps, h.ema.is_some());
        let diffusion = Diffusion::from_config(&rc.model, Some(""), device)?;
        Ok(Trainer { model, diffusion, adam, data: images.to_device(device), rc: rc.clone(), run_dir: run_dir.to_path_buf() })
    }

    fn checkpoint_path(&self, step: u64) -> PathBuf {
        self.run_dir.join("checkpoints").join(format!("step_{step:06}.safetensors"))
    }

    fn save(&self, step: u64) -> Result<PathBuf> {
        let mut tensors = Vec::new();
        for (i, (name, p, _)) in self.adam.params.iter().enumerate() {
            tensors.push((format!("model.{name}"), p.detach()));
            tensors.push((format!("optim.exp_avg.{name}"), self.adam.exp_avg[i].shallow_clone()));
            tensors.push((format!("optim.exp_avg_sq.{name}"), self.adam.exp_avg_sq[i].shallow_clone()));
            if let Some(ema) = &self.adam.ema {
                tensors.push((format!("ema.{name}"), ema[i].shallow_clone()));
            }
        }
        let mut meta = HashMap::new();
        meta.insert("step".to_string(), step.to_string());
        meta.insert("method".to_string(), self.rc.method.name().to_string());
        meta.insert("a3ft_version".to_string(), env!("CARGO_PKG_VERSION").to_string());
        let path = self.checkpoint_path(step);
        save_safetensors(&path, &tensors, meta)?;
        Ok(path)
    }

    fn restore(&mut self, path: &Path) -> Result<u64> {
        let meta = checkpoint::safetensors_metadata(path)?;
        let step: u64 = meta.get("step").and_then(|s| s.parse().ok()).with_context(|| format!("{} has no step", path.display()))?;
        let state = load_state_dict(path, None)?;
        let get = |k: String| state.get(&k).with_context(|| format!("{} lacks {k}", path.display()));
        tch::no_grad(|| -> Result<()> {
            for (i, (name, p, _)) in self.adam.params.iter().enumerate() {
                p.shallow_clone().copy_(get(format!("model.{name}"))?);
                self.adam.exp_avg[i].copy_(get(format!("optim.exp_avg.{name}"))?);
                self.adam.exp_avg_sq[i].copy_(get(format!("optim.exp_avg_sq.{name}"))?);
                if let Some(ema) = &mut self.adam.ema {
                    ema[i].copy_(get(format!("ema.{name}"))?);
                }
            }
            Ok(())
        })?;
        Ok(step)
    }

    /// One optimisation step (1-based `step` for Adam). Returns the per-example terms and t.
    fn step(&mut self, step: u64) -> (Tensor, Tensor, Tensor, Tensor) {
        let h = &self.rc.hyper;
        let n = self.data.size()[0] as usize;
        let idx = batch_indices(h.seed, n, h.batch_size, step - 1, self.data.device());
        tch::manual_seed(step_seed(h.seed, step, 2));
        let device = self.data.device();
        let mut x0 = self.data.index_select(0, &idx);
        let b = h.batch_size as i64;
        if h.flip {
            let flip = Tensor::rand([b, 1, 1, 1], (Kind::Float, device)).lt(0.5);
            x0 = x0.flip([3]).where_self(&flip, &x0);
        }
        let t = Tensor::randint(self.diffusion.num_timesteps as i64, [b], (Kind::Int64, device));
        let noise = x0.randn_like();
        let micro = h.microbatch.unwrap_or(h.batch_size).clamp(1, h.batch_size) as i64;
        let mut terms: (Vec<Tensor>, Vec<Tensor>, Vec<Tensor>) = (vec![], vec![], vec![]);
        let mut grads: Option<Vec<Tensor>> = None;
        let mut start = 0;
        while start < b {
            let len = micro.min(b - start);
            let (x0m, tm, nm) = (x0.narrow(0, start, len), t.narrow(0, start, len), noise.narrow(0, start, len));
            let x_t = self.diffusion.q_sample(&x0m, &tm, &nm);
            let out = self.model.unet.forward(&x_t, &self.diffusion.model_timesteps(&tm), None);
            let l = self.diffusion.losses_from_output(&out, &x0m, &x_t, &tm, &nm);
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
        self.adam.step(step, &grads.expect("at least one microbatch"), h.ema);
        (Tensor::cat(&terms.0, 0), Tensor::cat(&terms.1, 0), Tensor::cat(&terms.2, 0), t)
    }

    fn sample_grid(&mut self, step: u64) -> Result<()> {
        let h = &self.rc.hyper;
        let d = Diffusion::from_config(&self.rc.model, Some(&h.sample_respacing), self.data.device())?;
        let sampler = crate::model::sampler_for(&h.sample_respacing);
        let imgs = self.model.sample_images(&d, h.sample_count, h.sample_count.max(1), sampler, h.seed as i64, false);
        let g = crate::images::grid(&imgs, None)?;
        crate::images::save_png(&self.run_dir.join("samples").join(format!("step_{step:06}.png")), &g)
    }
}

fn append_line(path: &Path, line: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(f, "{line}")?;
    Ok(())
}

/// Trains (or resumes) a run. Writes config.json, metrics.jsonl, checkpoints and sample grids.
pub fn train(inp: TrainInputs) -> Result<TrainSummary> {
    let mut rc = inp.config.clone();
    let run_dir = inp.run_dir.clone();
    let device = inp.device;

    let set = crate::data::load_folder(&rc.data, rc.model.image_size as u32, rc.hyper.strict)?;
    for (p, why) in &set.skipped {
        eprintln!("skipped unreadable image {}: {why}", p.display());
    }
    let (train_images, holdout) = split_holdout(&rc, set.images)?;
    let steps_per_epoch = (train_images.size()[0] as u64).div_ceil(rc.hyper.batch_size.max(1) as u64).max(1);
    if !inp.resume {
        // A resumed run keeps the length stored in (or extended by `--steps` in) its config.
        rc.num_images = set.paths.len();
        if let Some(e) = rc.hyper.epochs {
            rc.hyper.total_steps = e * steps_per_epoch;
        }
    }
    if rc.hyper.total_steps == 0 {
        bail!("the run has no steps to take (--steps 0 or --epochs 0)");
    }
    let h = rc.hyper.clone();
    std::fs::create_dir_all(run_dir.join("checkpoints")).with_context(|| format!("cannot create run folder {}", run_dir.display()))?;
    let mut evaluator = Evaluator::new(&rc, &train_images, holdout.as_ref().map(|t| t.shallow_clone()), device)?;
    let mut tr = Trainer::new(&rc, &run_dir, train_images, device)?;
    let pr = crate::finetune::param_report(&tr.model, Some(rc.method));
    rc.params = Some(RunParams { base: pr.base_params, trainable: pr.trainable_params.unwrap_or(0) });
    if inp.show_progress {
        eprintln!(
            "training {} with method {} on {} ({} images{}), {} steps of batch {}, device {}",
            run_dir.display(),
            rc.method.name(),
            rc.data.display(),
            tr.data.size()[0],
            holdout.as_ref().map(|h| format!(", {} held out", h.size()[0])).unwrap_or_default(),
            h.total_steps,
            h.batch_size,
            crate::device::describe(device)
        );
    }

    let mut step = 0u64;
    if inp.resume {
        if let Ok((_, path)) = find_checkpoint(&run_dir, None) {
            step = tr.restore(&path)?;
            eprintln!("resumed {} at step {step}", run_dir.display());
        }
    } else {
        let text = serde_json::to_string_pretty(&rc)?;
        checkpoint::write_atomic(&run_dir.join("config.json"), text.as_bytes())?;
    }
    let metrics_path = run_dir.join("metrics.jsonl");
    let total = h.total_steps;
    let mut acc = LossAccum::new(device);
    let start_time = Instant::now();
    let mut interval_start = Instant::now();
    let mut interval_images = 0u64;
    let mut last_loss = f64::NAN;
    let mut last_saved = step;
    let mut interrupted = false;
    let check_every = if device == Device::Cpu { 1 } else { h.log_every.max(1) };

    let mut pb = None::<indicatif::ProgressBar>;
    let mut images_per_sec = 0.0;
    while step < total {
        let epoch = step / steps_per_epoch;
        if inp.show_progress && (pb.is_none() || step % steps_per_epoch == 0) {
            if let Some(p) = pb.take() {
                p.finish();
            }
            let in_epoch = (steps_per_epoch).min(total - epoch * steps_per_epoch);
            let p = crate::progress_bar(in_epoch, &format!("epoch {}/{} {{bar:25}} {{pos}}/{{len}} {{msg}}", epoch + 1, total.div_ceil(steps_per_epoch)));
            p.set_position(step - epoch * steps_per_epoch);
            pb = Some(p);
        }
        let (loss, mse, vb, t) = tr.step(step + 1);
        step += 1;
        interval_images += h.batch_size as u64;
        acc.add(&loss, &mse, &vb, &t, tr.diffusion.num_timesteps);
        let out_of_time = inp.time_limit.is_some_and(|l| start_time.elapsed() >= l);
        let interrupt = inp.interrupt.load(Ordering::SeqCst) || out_of_time;
        let log_now = step % h.log_every.max(1) == 0 || step == total || interrupt;
        if step % check_every == 0 && !log_now && !acc.finite() {
            bail!(non_finite_message(&run_dir, step));
        }
        if log_now {
            let (means, finite) = acc.take();
            if !finite {
                bail!(non_finite_message(&run_dir, step));
            }
            last_loss = means[0][0];
            {
                let secs = interval_start.elapsed().as_secs_f64();
                images_per_sec = interval_images as f64 / secs.max(1e-9);
                let mut rec = serde_json::json!({
                    "step": step,
                    "epoch": step as f64 / steps_per_epoch as f64,
                    "loss": means[0][0], "mse": means[1][0], "vb": means[2][0],
                    "lr": h.lr,
                    "images_per_sec": images_per_sec,
                    "wall_time": start_time.elapsed().as_secs_f64(),
                });
                for q in 0..4 {
                    rec[format!("loss_q{q}")] = json_num(means[0][q + 1]);
                    rec[format!("mse_q{q}")] = json_num(means[1][q + 1]);
                    rec[format!("vb_q{q}")] = json_num(means[2][q + 1]);
                }
                if tr.model.unet.has_adapters() {
                    let emb = tch::no_grad(|| {
                        let ts = Tensor::linspace(0.0, (tr.diffusion.num_timesteps - 1) as f64, 16, (Kind::Float, device)).to_kind(Kind::Int64);
                        tr.model.unet.embed(&tr.diffusion.model_timesteps(&ts), None)
                    });
                    let gates: serde_json::Map<String, serde_json::Value> =
                        tch::no_grad(|| tr.model.unet.adapter_gates(&emb)).into_iter().map(|(k, v)| (k, v.into())).collect();
                    rec["adapter_gate_mean"] = gates.into();
                }
                append_line(&metrics_path, &rec.to_string())?;
                interval_start = Instant::now();
                interval_images = 0;
            }
        }
        if let Some(p) = &pb {
            p.inc(1);
            p.set_message(format!("step {step}/{total} loss {last_loss:.4} {images_per_sec:.1} img/s"));
        }
        let eval_now = evaluator.enabled()
            && (step == total || h.eval.every_epochs.is_some_and(|k| k > 0 && step % (k * steps_per_epoch) == 0));
        if eval_now {
            if let Some(p) = &pb {
                p.set_message(format!("step {step}/{total} evaluating…"));
            }
            tr.model.unet.train = false;
            let mut rec = evaluator.evaluate(&tr, step)?;
            tr.model.unet.train = true;
            rec["kind"] = "eval".into();
            rec["step"] = step.into();
            rec["epoch"] = (step as f64 / steps_per_epoch as f64).into();
            rec["wall_time"] = start_time.elapsed().as_secs_f64().into();
            append_line(&metrics_path, &rec.to_string())?;
        }
        if h.sample_every.is_some_and(|k| k > 0 && step % k == 0) {
            tr.model.unet.train = false;
            tr.sample_grid(step)?;
            tr.model.unet.train = true;
        }
        if h.save_every.is_some_and(|k| k > 0 && step % k == 0) || step == total || interrupt {
            // Never write a checkpoint from weights a non-finite loss has already corrupted.
            if !acc.finite() {
                bail!(non_finite_message(&run_dir, step));
            }
            tr.save(step)?;
            last_saved = step;
        }
        if interrupt {
            interrupted = true;
            let why = if out_of_time { "time limit reached" } else { "interrupted" };
            eprintln!("\n{why}: saved checkpoint at step {step}; continue with --resume {}", run_dir.display());
            break;
        }
    }
    if let Some(p) = pb {
        p.finish();
    }
    let _ = last_saved;
    Ok(TrainSummary {
        final_step: step,
        interrupted,
        seconds: start_time.elapsed().as_secs_f64(),
        images_per_sec,
        last_loss,
    })
}

fn non_finite_message(run_dir: &Path, step: u64) -> String {
    let last = find_checkpoint(run_dir, None).map(|(s, _)| format!("step {s}")).unwrap_or_else(|_| "none".into());
    format!("non-finite loss at or before step {step}; stopped without saving (last good checkpoint: {last}). Try a lower --lr or --precision fp32")
}

fn json_num(v: f64) -> serde_json::Value {
    if v.is_finite() {
        v.into()
    } else {
        serde_json::Value::Null
    }
}

/// SHA-256 record of a base checkpoint.
pub fn base_checkpoint(path: &Path, key: Option<&str>) -> Result<BaseCheckpoint> {
    let abs = std::fs::canonicalize(path).with_context(|| format!("checkpoint {} does not exist", path.display()))?;
    Ok(BaseCheckpoint { sha256: sha256_file(&abs)?, path: abs, key: key.map(String::from) })
}

/// Throughput of the training step on random data (no folder, no checkpoint needed).
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub method: String,
    pub precision: String,
    pub batch_size: usize,
    pub steps: u64,
    pub seconds_per_step: f64,
    pub images_per_sec: f64,
    pub trainable_params: i64,
    /// Peak resident memory of the process (CPU runs), bytes.
    pub peak_rss_bytes: Option<u64>,
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Peak resident set size of this process (`VmHWM`), bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Times `steps` training steps after `warmup` steps on random images.
pub fn bench_train(model: &ModelConfig, method: Method, batch_size: usize, steps: u64, warmup: u64, precision: &str, device: Device) -> Result<BenchResult> {
    let mut model = model.clone();
    model.dropout = 0.0;
    // Reset the peak-RSS counter so each benchmark in one process reports its own peak.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rc = RunConfig {
        a3ft_version: env!("CARGO_PKG_VERSION").into(),
        model: model.clone(),
        method,
        lora_rank: 8,
        adapter_gate_bias: None,
        base_checkpoint: None,
        data: PathBuf::new(),
        num_images: batch_size,
        params: None,
        hyper: Hyper { precision: precision.into(), log_every: steps, ..Hyper::paper_defaults(batch_size, steps + warmup) },
    };
    let s = model.image_size;
    let images = Tensor::rand([batch_size as i64, 3, s, s], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let mut tr = Trainer::new(&rc, Path::new(""), images, device)?;
    let trainable_params = tr.adam.params.iter().map(|(_, p, _)| p.numel() as i64).sum();
    for k in 1..=warmup {
        let _ = tr.step(k);
    }
    sync(device);
    let start = Instant::now();
    let mut last = None;
    for k in warmup + 1..=warmup + steps {
        last = Some(tr.step(k).0);
    }
    sync(device);
    let secs = start.elapsed().as_secs_f64();
    if let Some(l) = last {
        let v = f64::try_from(l.mean(Kind::Float))?;
        if !v.is_finite() {
            bail!("benchmark produced a non-finite loss");
        }
    }
    Ok(BenchResult {
        method: method.name().into(),
        precision: precision.into(),
        batch_size,
        steps,
        seconds_per_step: secs / steps as f64,
        images_per_sec: (steps as usize * batch_size) as f64 / secs,
        trainable_params,
        peak_rss_bytes: if device == Device::Cpu { peak_rss_bytes() } else { None },
    })
}

/// Splits off the held-out images of `--holdout-fraction` (a seeded choice of images).
fn split_holdout(rc: &RunConfig, images: Tensor) -> Result<(Tensor, Option<Tensor>)> {
    let e = &rc.hyper.eval;
    if let Some(dir) = &e.holdout {
        let set = crate::data::load_folder(dir, rc.model.image_size as u32, false)?;
        return Ok((images, Some(set.images)));
    }
    match e.holdout_fraction {
        Some(f) if f > 0.0 => {
            let n = images.size()[0];
            let k = ((n as f64 * f).round() as i64).clamp(1, n - 1);
            if n < 2 {
                bail!("--holdout-fraction needs at least 2 images");
            }
            tch::manual_seed(step_seed(rc.hyper.seed, 0, 4));
            let perm = Tensor::randperm(n, (Kind::Int64, Device::Cpu));
            let held = images.index_select(0, &perm.narrow(0, n - k, k));
            let kept = images.index_select(0, &perm.narrow(0, 0, n - k));
            Ok((kept, Some(held)))
        }
        _ => Ok((images, None)),
    }
}

/// In-loop evaluation state: held-out set, training subset, cached Inception features.
struct Evaluator {
    opts: EvalOptions,
    seed: u64,
    holdout: Option<Tensor>,
    train_subset: Tensor,
    train_u8: Tensor,
    inception: Option<crate::metrics::inception::Inception>,
    train_feats: Option<Tensor>,
    /// The training folder, when every image in it is trained on (no held-out fraction).
    reference_folder: Option<PathBuf>,
}

impl Evaluator {
    fn new(rc: &RunConfig, train: &Tensor, holdout: Option<Tensor>, device: Device) -> Result<Evaluator> {
        let opts = rc.hyper.eval.clone();
        let active = opts.every_epochs.is_some() || opts.samples > 0 || holdout.is_some();
        let inception = if active && opts.samples > 0 {
            match crate::metrics::inception::Inception::load(opts.inception.as_deref(), device) {
                Ok(net) => Some(net),
                Err(e) => {
                    eprintln!("warning: FID/KID disabled: {e:#}");
                    None
                }
            }
        } else {
            None
        };
        let n = train.size()[0];
        Ok(Evaluator {
            seed: rc.hyper.seed,
            holdout,
            train_subset: train.narrow(0, 0, n.min(64)),
            train_u8: ((train + 1.0) * 127.5).round(),
            inception,
            train_feats: None,
            reference_folder: (opts.holdout_fraction.unwrap_or(0.0) <= 0.0).then(|| rc.data.clone()),
            opts,
        })
    }

    fn enabled(&self) -> bool {
        self.opts.every_epochs.is_some() && (self.holdout.is_some() || self.opts.samples > 0)
    }

    fn evaluate(&mut self, tr: &Trainer, step: u64) -> Result<serde_json::Value> {
        use crate::metrics::{fid, heldout::heldout, memorization};
        let mut rec = serde_json::json!({});
        let d = &tr.diffusion;
        let grid = 10;
        let train_grid = heldout(&tr.model, d, &self.train_subset, grid, self.seed, 64)?;
        rec["train_grid_loss"] = train_grid.loss.into();
        if let Some(h) = &self.holdout {
            let ho = heldout(&tr.model, d, h, grid, self.seed, 64)?;
            rec["holdout_loss"] = ho.loss.into();
            rec["holdout_mse"] = ho.mse.into();
            rec["holdout_bpd"] = ho.bpd.into();
            rec["holdout_images"] = ho.num_images.into();
        }
        if self.opts.samples > 0 {
            let device = tr.data.device();
            let respacing = if self.opts.respacing.is_empty() { "50".to_string() } else { self.opts.respacing.clone() };
            let sd = Diffusion::from_config(&tr.rc.model, Some(&respacing), device)?;
            let seed = step_seed(self.seed, 0, 5);
            let nhwc = tr.model.sample_images(&sd, self.opts.samples, 64, crate::model::sampler_for(&respacing), seed, false);
            let nchw = nhwc.permute([0, 3, 1, 2]).to_kind(Kind::Float);
            let threshold = self.opts.memo_threshold.unwrap_or(0.05);
            let (memo, _, _) = memorization::memorization(&nchw, &self.train_u8, threshold);
            rec["memorization"] = serde_json::to_value(&memo)?;
            let eval_dir = tr.run_dir.join("eval");
            std::fs::create_dir_all(&eval_dir)?;
            crate::images::save_png(&eval_dir.join(format!("samples_step_{step:06}.png")), &crate::images::grid(&nhwc.narrow(0, 0, nhwc.size()[0].min(64)), None)?)?;
            crate::images::save_png(
                &eval_dir.join(format!("nearest_step_{step:06}.png")),
                &nearest_figure(&nchw, &self.train_u8, 4, 10)?,
            )?;
            if let Some(net) = &self.inception {
                if self.train_feats.is_none() {
                    // The whole training folder is the reference: use the on-disk feature cache.
                    self.train_feats = Some(match &self.reference_folder {
                        Some(dir) => crate::metrics::folder_features(net, dir, true)?,
                        None => net.features_rgb(&crate::metrics::nhwc_to_rgb(&self.train_u8.permute([0, 2, 3, 1])), 32, None)?,
                    });
                }
                let feats = net.features_rgb(&crate::metrics::nhwc_to_rgb(&nhwc), 32, None)?;
                let tf = self.train_feats.as_ref().unwrap();
                rec["fid"] = fid::fid(&feats, tf)?.into();
                rec["kid"] = fid::kid(&feats, tf, 100, 1000, self.seed)?.into();
            }
            rec["eval_samples"] = self.opts.samples.into();
        }
        Ok(rec)
    }
}

/// The paper's Fig. 5: rows of (training image, its `k` closest samples) for the `rows`
/// training images that are nearest neighbour to the most samples. Inputs uint8-valued NCHW.
pub fn nearest_figure(samples: &Tensor, training: &Tensor, rows: usize, k: usize) -> Result<image::RgbImage> {
    let (idx, _) = crate::metrics::memorization::nearest_training(&(samples / 255.0), &(training / 255.0));
    let mut counts = std::collections::BTreeMap::<i64, usize>::new();
    for i in &idx {
        *counts.entry(*i).or_default() += 1;
    }
    let mut order: Vec<(i64, usize)> = counts.into_iter().collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let s = samples.to_kind(Kind::Double).flatten(1, -1);
    let k = k.min(samples.size()[0] as usize);
    let mut tiles = Vec::new();
    for (ti, _) in order.into_iter().take(rows) {
        let t = training.get(ti);
        let d = (&s - t.to_kind(Kind::Double).flatten(0, -1).unsqueeze(0)).square().sum_dim_intlist([1].as_slice(), false, Kind::Double);
        let (_, nearest) = d.topk(k as i64, 0, false, true);
        tiles.push(t.unsqueeze(0));
        tiles.push(samples.index_select(0, &nearest));
    }
    if tiles.is_empty() {
        bail!("no samples for the nearest-neighbour figure");
    }
    let all = Tensor::cat(&tiles, 0).permute([0, 2, 3, 1]).to_kind(Kind::Uint8);
    crate::images::grid(&all, Some(k + 1))
}
