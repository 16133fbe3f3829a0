//! The run config: everything that defines a run, stored as `RUN_DIR/config.json` beside it
//! (as EDM keeps its options), with the hyper-parameters, their paper defaults, and the checks
//! that refuse a bad value before any work starts.

use crate::diffusion::respace::Respacing;
use crate::io::checkpoint::sha256_file;
use crate::model::adapter::AdapterStart;
use crate::model::config::ModelConfig;
use crate::model::methods::Method;
use crate::train::records::EvalRecord;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything that defines a run; stored as `RUN_DIR/config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    pub a3ft_version: String,
    /// Resolved model + diffusion flags used for training.
    pub model: ModelConfig,
    pub method: Method,
    pub lora_rank: i64,
    /// How the adapters start (adapter methods).
    #[serde(default = "AdapterStart::stored_before_choice")]
    pub adapter_start: AdapterStart,
    /// Runs written before `adapter_start` existed: `Some(b)` is the gate-bias start.
    #[serde(default, skip_serializing)]
    pub adapter_gate_bias: Option<f64>,
    pub base_checkpoint: Option<BaseCheckpoint>,
    pub data: PathBuf,
    /// Readable images in `data` (training plus any `--holdout-fraction` share); set by `train`.
    /// The run trains on `num_trained_images()` of them.
    pub num_images: usize,
    /// SHA-256 of the decoded training pixels; set by `train`, checked on resume.
    #[serde(default)]
    pub data_sha256: Option<String>,
    /// SHA-256 of the decoded `--holdout` pixels; set by `train`, checked on resume (a changed
    /// held-out folder would mix two sets in one held-out curve).
    #[serde(default)]
    pub holdout_sha256: Option<String>,
    pub hyper: Hyper,
    /// Parameter counts of the built model (base network, trained by the method); set by `train`
    /// so that reports need not rebuild the model.
    #[serde(default)]
    pub params: Option<RunParams>,
}

impl RunConfig {
    /// The adapter start, including that of runs stored before `adapter_start` existed.
    pub fn adapter_start(&self) -> AdapterStart {
        self.adapter_gate_bias
            .map(AdapterStart::GateBias)
            .unwrap_or(self.adapter_start)
    }

    /// The images the run trains on: `num_images` less the `--holdout-fraction` share.
    pub fn num_trained_images(&self) -> usize {
        self.num_images - self.hyper.eval.held_out_of(self.num_images)
    }

    /// The run's image folder (`--data` or `--holdout`, named by its flag) that `out` lies in,
    /// if any. Image folders are read recursively, so anything written there becomes training
    /// or held-out images of the run.
    pub fn image_folder_holding(
        &self,
        out: &std::path::Path,
    ) -> Option<(&'static str, &std::path::Path)> {
        [
            ("--data", Some(&self.data)),
            ("--holdout", self.hyper.eval.holdout.as_ref()),
        ]
        .into_iter()
        .find_map(|(flag, dir)| {
            dir.filter(|d| crate::util::paths::is_within(out, d))
                .map(|d| (flag, d.as_path()))
        })
    }

    /// The modules the method adds to the official network.
    pub fn extras(&self) -> crate::model::unet::Extras {
        self.method.extras(self.adapter_start(), self.lora_rank)
    }

    /// The LoRA rank of `--method lora` unless told otherwise.
    pub const DEFAULT_LORA_RANK: i64 = 8;
    /// The method `train` uses unless told otherwise.
    pub const DEFAULT_METHOD: Method = Method::A3ft;

    /// A run of `method` on `data` with the given hyper-parameters and the paper's other
    /// choices (LoRA rank 8, default adapter start, no base checkpoint until one is set).
    pub fn new(model: ModelConfig, method: Method, data: PathBuf, hyper: Hyper) -> RunConfig {
        RunConfig {
            a3ft_version: env!("CARGO_PKG_VERSION").into(),
            model,
            method,
            lora_rank: Self::DEFAULT_LORA_RANK,
            adapter_start: AdapterStart::default(),
            adapter_gate_bias: None,
            base_checkpoint: None,
            data,
            num_images: 0,
            data_sha256: None,
            holdout_sha256: None,
            hyper,
            params: None,
        }
    }
}

/// Largest batch `train` accepts, and the most memory one batch of input images may take:
/// a mistyped size must fail at once, not after minutes of swapping.
pub const MAX_BATCH: usize = 1 << 16;
pub const MAX_BATCH_INPUT_BYTES: f64 = 4.0 * (1u64 << 30) as f64;

impl RunConfig {
    /// Refuses values that would panic, run away or train silently wrong, naming the flag.
    pub fn validate(&self) -> Result<()> {
        let h = &self.hyper;
        let positive = |flag: &str, v: f64| -> Result<()> {
            if !(v.is_finite() && v > 0.0) {
                bail!(
                    "{flag} must be a positive finite number, got {}",
                    crate::util::fmt_num(v)
                );
            }
            Ok(())
        };
        positive("--lr", h.lr)?;
        if let Some(w) = h.eval.guidance {
            crate::model::guidance::check_weight(w, "--guidance")?;
            if crate::model::guidance::active(Some(w)).is_some() && self.base_checkpoint.is_none() {
                bail!("--guidance needs a base checkpoint to guide against (the source model); this run trains from scratch");
            }
        }
        if let Some(v) = h.new_lr {
            positive("--new-lr", v)?;
        }
        for (name, v) in [("beta1", h.beta1), ("beta2", h.beta2)] {
            if !(0.0..1.0).contains(&v) {
                bail!(
                    "Adam {name} must lie in [0, 1), got {}",
                    crate::util::fmt_num(v)
                );
            }
        }
        positive("Adam eps", h.eps)?;
        if let Some(r) = h.ema {
            if !(0.0..1.0).contains(&r) {
                bail!(
                    "--ema must lie in [0, 1) (e.g. 0.9999), got {}",
                    crate::util::fmt_num(r)
                );
            }
        }
        if h.batch_size == 0 || h.batch_size > MAX_BATCH {
            bail!(
                "--batch-size must be between 1 and {MAX_BATCH}, got {}",
                h.batch_size
            );
        }
        let s = self.model.image_size.max(0) as f64;
        let bytes = h.batch_size as f64 * 3.0 * s * s * 4.0;
        if bytes > MAX_BATCH_INPUT_BYTES {
            bail!(
                "--batch-size {} at {}×{} px needs {:.1} GiB for the input images alone (limit 4 GiB); use a smaller batch",
                h.batch_size,
                s,
                s,
                bytes / (1u64 << 30) as f64
            );
        }
        if let Some(m) = h.microbatch {
            if m == 0 || m > h.batch_size {
                bail!(
                    "--microbatch must be between 1 and --batch-size ({}), got {m}",
                    h.batch_size
                );
            }
        }
        if !(1..=1024).contains(&self.lora_rank) {
            bail!(
                "--lora-rank must be between 1 and 1024, got {}",
                self.lora_rank
            );
        }
        if let AdapterStart::GateBias(b) = self.adapter_start() {
            if !(b.is_finite() && b.abs() <= crate::model::adapter::MAX_GATE_BIAS) {
                bail!(
                    "--adapter-gate-bias must be a number within ±{}, got {}",
                    crate::model::adapter::MAX_GATE_BIAS,
                    crate::util::fmt_num(b)
                );
            }
        }
        for (flag, v) in [
            ("--log-every", Some(h.log_every)),
            ("--save-every", h.save_every),
            ("--sample-every", h.sample_every),
            ("--eval-every", h.eval.every_epochs),
        ] {
            if v == Some(0) {
                bail!("{flag} must be at least 1");
            }
        }
        if h.sample_count == 0 || h.sample_count > 1024 {
            bail!(
                "--sample-count must be between 1 and 1024, got {}",
                h.sample_count
            );
        }
        if h.eval.samples > 100_000 {
            bail!(
                "--eval-samples must be at most 100000, got {}",
                h.eval.samples
            );
        }
        if let Some(f) = h.eval.holdout_fraction {
            if !(f > 0.0 && f < 1.0) {
                bail!(
                    "--holdout-fraction must lie strictly between 0 and 1, got {}",
                    crate::util::fmt_num(f)
                );
            }
        }
        if let Some(t) = h.eval.memo_threshold {
            if !(t.is_finite() && t >= 0.0) {
                bail!(
                    "the memorisation threshold must be a non-negative number, got {}",
                    crate::util::fmt_num(t)
                );
            }
        }
        if let Some(e) = h.epochs {
            if e == 0 || e > 10_000_000 {
                bail!("--epochs must be between 1 and 10000000, got {e}");
            }
        }
        for (flag, spec) in [
            ("--sample-respacing", &h.sample_respacing),
            ("--eval-respacing", &h.eval.respacing),
        ] {
            // Checked now, not at the first grid or evaluation hours into the run.
            self.model
                .validate_respacing(spec)
                .map_err(|e| anyhow::anyhow!("{flag}: {e:#}"))?;
        }
        let e = &h.eval;
        match e.select {
            Some(Selection::HeldoutLoss) if e.holdout.is_none() && e.holdout_fraction.is_none() => {
                bail!("--select heldout-loss needs held-out images: --holdout DIR or --holdout-fraction F")
            }
            Some(Selection::Cfid) if e.samples == 0 => {
                bail!("--select cfid needs --eval-samples N")
            }
            Some(s) if e.every_epochs.is_none() => bail!(
                "--select {} needs in-loop evaluation: --eval-every K",
                s.name()
            ),
            _ => {}
        }
        match e.early_stop {
            Some(0) => bail!("--early-stop must be at least 1 evaluation"),
            Some(_) if e.select.is_none() => bail!(
                "--early-stop needs --select heldout-loss or --select cfid (the metric to watch)"
            ),
            _ => {}
        }
        if let Some(dir) = &h.eval.holdout {
            if crate::util::paths::is_within(dir, &self.data)
                || crate::util::paths::is_within(&self.data, dir)
            {
                bail!(
                    "--holdout {} overlaps --data {}: held-out images must never be trained on",
                    dir.display(),
                    self.data.display()
                );
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct RunParams {
    pub base: i64,
    pub trainable: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hyper {
    pub lr: f64,
    /// Learning rate of the modules a method adds (adapter, LoRA, DiffFit's γ); `None`: `lr`.
    /// Older runs call it `adapter_lr` (it then applied to the adapter alone, the only new module).
    #[serde(alias = "adapter_lr")]
    pub new_lr: Option<f64>,
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
    /// EMA rate ramp `min(rate, (1 + n) / (10 + n))` (see `optim::Ema`); runs made before it
    /// existed resume without it.
    #[serde(default)]
    pub ema_warmup: bool,
    pub flip: bool,
    /// Refuse unreadable images (otherwise they are skipped with a warning).
    #[serde(default)]
    pub strict: bool,
    pub seed: u64,
    pub precision: crate::util::precision::Precision,
    pub log_every: u64,
    pub save_every: Option<u64>,
    pub sample_every: Option<u64>,
    pub sample_respacing: Respacing,
    pub sample_count: usize,
    #[serde(default)]
    pub eval: EvalOptions,
}

impl Hyper {
    /// The paper's batch size and run length (Pokémon-833 at 64 px: batch 128, 500 epochs).
    pub const PAPER_BATCH_SIZE: usize = 128;
    pub const PAPER_EPOCHS: u64 = 500;
    /// The paper's Adam learning rate.
    pub const PAPER_LR: f64 = 2e-4;
    /// The paper fine-tunes with T = 1000 cosine, whatever the checkpoint was trained with.
    pub const PAPER_DIFFUSION_STEPS: i64 = 1000;
    pub const PAPER_NOISE_SCHEDULE: &'static str = "cosine";
    /// The paper's plain hybrid loss: no P2 weighting.
    pub const PAPER_P2_GAMMA: f64 = 0.0;

    /// The paper's settings (Adam 2e-4, β (0.9, 0.999), ε 1e-8, no EMA, no flips, fp32) for a
    /// given batch and length; logging every 10 steps, nothing else scheduled. The one source of
    /// defaults: the CLI, the demo and the benchmarks start from it.
    pub fn paper_defaults(batch_size: usize, total_steps: u64) -> Hyper {
        Hyper {
            lr: Self::PAPER_LR,
            new_lr: None,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            batch_size,
            microbatch: None,
            epochs: None,
            total_steps,
            ema: None,
            ema_warmup: true,
            flip: false,
            strict: false,
            seed: 0,
            precision: crate::util::precision::Precision::Fp32,
            log_every: 10,
            save_every: None,
            sample_every: None,
            sample_respacing: Respacing::sampling_default(),
            sample_count: 16,
            eval: EvalOptions::default(),
        }
    }
}

impl Default for EvalOptions {
    /// Off, with the sampler every evaluation defaults to.
    fn default() -> EvalOptions {
        EvalOptions {
            every_epochs: None,
            samples: 0,
            respacing: Respacing::sampling_default(),
            holdout: None,
            holdout_fraction: None,
            inception: None,
            memo_threshold: None,
            select: None,
            early_stop: None,
            guidance: None,
        }
    }
}

impl EvalOptions {
    /// How many of `n` readable images `--holdout-fraction` holds out of the training folder
    /// (none with `--holdout DIR` or no fraction): at least one, and at least one left to train
    /// on. The one rule of the split and of every count of trained images.
    pub fn held_out_of(&self, n: usize) -> usize {
        match self.holdout_fraction {
            Some(f) if f > 0.0 && self.holdout.is_none() && n >= 2 => {
                ((n as f64 * f).round() as usize).clamp(1, n - 1)
            }
            _ => 0,
        }
    }
}

/// The metric a run is selected on (lower is better for both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Selection {
    /// Held-out loss on the fixed timestep grid (needs --holdout or --holdout-fraction)
    HeldoutLoss,
    /// clean-FID of in-loop samples against the training images (needs --eval-samples)
    Cfid,
}

impl Selection {
    /// The metrics.jsonl field of an evaluation record.
    pub fn field(self) -> &'static str {
        match self {
            Selection::HeldoutLoss => "holdout_loss",
            Selection::Cfid => "fid",
        }
    }

    /// The value an evaluation has of this metric.
    pub fn value(self, rec: &EvalRecord) -> Option<f64> {
        match self {
            Selection::HeldoutLoss => rec.holdout_loss,
            Selection::Cfid => rec.fid,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Selection::HeldoutLoss => "heldout-loss",
            Selection::Cfid => "cfid",
        }
    }
}

/// In-loop evaluation (`--eval-every` and friends).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EvalOptions {
    /// Evaluate every K epochs (and at the end).
    pub every_epochs: Option<u64>,
    /// Samples for FID/KID/memorisation at each evaluation (0 = held-out loss only).
    pub samples: usize,
    /// Respacing of the evaluation sampler.
    pub respacing: Respacing,
    /// Held-out images (never trained on).
    pub holdout: Option<PathBuf>,
    /// Or: hold out this fraction of the training folder.
    pub holdout_fraction: Option<f64>,
    /// Inception weights (default: the `make inception` cache); FID/KID are skipped when absent.
    pub inception: Option<PathBuf>,
    /// Memorisation threshold (RMS pixel distance, 0–1 scale).
    pub memo_threshold: Option<f64>,
    /// Keep the checkpoint with the best value of this metric (`selected.json`).
    pub select: Option<Selection>,
    /// Stop after this many evaluations without improvement of `select`.
    pub early_stop: Option<u64>,
    /// Domain guidance weight of the evaluations' samples and held-out loss (`None` or 1: off),
    /// the base checkpoint being the source model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guidance: Option<f64>,
}

/// The pre-trained weights a run starts from, recorded so a changed file is noticed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseCheckpoint {
    pub path: PathBuf,
    pub sha256: String,
    pub key: Option<String>,
}

impl BaseCheckpoint {
    /// Records `path` (made absolute) and its SHA-256.
    pub fn record(path: &Path, key: Option<&str>) -> Result<BaseCheckpoint> {
        let abs = std::fs::canonicalize(path)
            .with_context(|| format!("checkpoint {} does not exist", path.display()))?;
        Ok(BaseCheckpoint {
            sha256: sha256_file(&abs)?,
            path: abs,
            key: key.map(String::from),
        })
    }

    /// Fails unless the file is still there with the recorded contents: a replaced base
    /// would silently give garbage (the run's tensors were trained against the old one).
    pub fn verify(&self) -> Result<()> {
        if !self.path.exists() {
            bail!(
                "the run's base checkpoint {} is missing (moved or deleted?)",
                self.path.display()
            );
        }
        let now = sha256_file(&self.path)?;
        if now != self.sha256 {
            bail!(
                "the run's base checkpoint {} has changed since the run started (SHA-256 {}…, recorded {}…); restore the original file",
                self.path.display(),
                &now[..12],
                &self.sha256[..12.min(self.sha256.len())]
            );
        }
        Ok(())
    }
}
