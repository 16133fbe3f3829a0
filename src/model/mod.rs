//! A UNet with its variables, built from a config and optionally loaded from a checkpoint.

pub mod adapter;
pub mod config;
pub mod difffit;
pub mod guidance;
pub mod methods;
pub mod presets;
pub mod schedule;
pub mod source;
pub mod spec;
pub mod unet;

use crate::io::checkpoint::{self, StateDict};
use crate::model::adapter::AdapterStart;
use crate::model::config::ModelConfig;
use crate::model::spec::UNetSpec;
use crate::model::unet::{Extras, UNet};
use crate::util::torch::catch_torch;
use anyhow::{anyhow, bail, Result};
use std::path::Path;
use tch::{nn, Device};

/// Prefixes of tensors a3ft adds to the official key set.
pub const EXTRA_PREFIXES: &[&str] = &["adapter.", "lora.", "difffit."];

pub struct Model {
    pub vs: nn::VarStore,
    pub unet: UNet,
    pub config: ModelConfig,
    pub spec: UNetSpec,
    /// Domain guidance applied when sampling ([`Model::denoise`]); `None`: the model alone.
    pub guidance: Option<guidance::DomainGuidance>,
}

impl Model {
    /// Random init (official zero-init included) on `device`.
    pub fn new(config: &ModelConfig, extras: &Extras, device: Device) -> Result<Model> {
        let spec = config.resolve()?;
        let vs = nn::VarStore::new(device);
        let unet = UNet::new(&vs, &spec, extras);
        Ok(Model {
            vs,
            unet,
            config: config.clone(),
            spec,
            guidance: None,
        })
    }

    /// Loads official (or exported) weights. Adapter/LoRA tensors may be absent (they keep their
    /// init) unless the file holds some of them, when it must hold all; any other difference is
    /// an error listing every key.
    pub fn load_checkpoint(&mut self, path: &Path, key: Option<&str>) -> Result<()> {
        let state = checkpoint::load_state_dict(path, key)?;
        self.load_state(&state, &path.display().to_string())
    }

    /// Builds the model of `config` and loads `path` into it (with the adapter tensors of
    /// `adapter_file`, an older A³FT diffusers export's `a3ft_adapter.safetensors`; `path` itself
    /// when the weights hold the adapter), checking first that
    /// the file is roughly the size the config describes ([`check_state_size`]). A file with
    /// `adapter.*` tensors (an exported adapter run) gets its adapters built to receive them.
    pub fn from_checkpoint(
        config: &ModelConfig,
        extras: &Extras,
        path: &Path,
        key: Option<&str>,
        adapter_file: Option<&Path>,
        device: Device,
    ) -> Result<Model> {
        let mut state = checkpoint::load_state_dict(path, key)?;
        // A folder whose weights hold the adapter names them as its adapter file too.
        if let Some(adapter) = adapter_file.filter(|a| *a != path) {
            for (k, t) in checkpoint::load_state_dict(adapter, None)? {
                if !k.starts_with("adapter.") {
                    bail!("{} holds {k}, not an adapter tensor", adapter.display());
                }
                state.insert(k, t);
            }
        }
        let mut extras = extras.clone();
        if extras.adapter.is_none() && state.keys().any(|k| k.starts_with("adapter.")) {
            // The start only shapes initial values, except zero-scale's extra out_scale tensors.
            let zero_scale = state
                .keys()
                .any(|k| k.starts_with("adapter.") && k.ends_with(".out_scale"));
            extras.adapter = Some(if zero_scale {
                AdapterStart::ZeroScale
            } else {
                AdapterStart::Random
            });
        }
        let origin = match adapter_file.filter(|a| *a != path) {
            Some(a) => format!("{} (with {})", path.display(), a.display()),
            None => path.display().to_string(),
        };
        Model::from_state(config, &extras, &state, &origin, device)
    }

    /// Builds the model of `config` for weights `state` (read from `origin`) and loads them,
    /// after [`check_state_size`]: a config far larger than its weights is never allocated.
    pub fn from_state(
        config: &ModelConfig,
        extras: &Extras,
        state: &StateDict,
        origin: &str,
        device: Device,
    ) -> Result<Model> {
        check_state_size(config, state, origin)?;
        let mut model = Model::new(config, extras, device)?;
        model.load_state(state, origin)?;
        Ok(model)
    }

    pub fn load_state(&mut self, state: &StateDict, origin: &str) -> Result<()> {
        // Adapter/LoRA tensors may be absent from a base checkpoint, but a file that holds some
        // must hold all of them (a missing one would silently keep its random init).
        let optional: Vec<&str> = EXTRA_PREFIXES
            .iter()
            .copied()
            .filter(|p| !state.keys().any(|k| k.starts_with(p)))
            .collect();
        match self.spec {
            UNetSpec::Adm(_) => checkpoint::load_into(&mut self.vs, state, &optional, origin),
            UNetSpec::Diffusers(_) => {
                // Older diffusers releases named the attention projections differently.
                let renamed = crate::diffusers::upgrade_keys(
                    state
                        .iter()
                        .map(|(k, t)| (k.clone(), t.shallow_clone()))
                        .collect(),
                )
                .map_err(|e| anyhow!("checkpoint {origin}: {e}"))?;
                checkpoint::load_into(&mut self.vs, &renamed, &optional, origin)
            }
        }
    }
}

/// Refuses a config whose network is far larger than the weights meant for it before it is
/// built (a mistyped width would otherwise allocate gigabytes only to report a shape mismatch).
/// Small differences are left to the key-by-key comparison, which names them.
pub fn check_state_size(cfg: &ModelConfig, state: &StateDict, origin: &str) -> Result<()> {
    let stored: u64 = state
        .iter()
        .filter(|(k, _)| !EXTRA_PREFIXES.iter().any(|p| k.starts_with(p)))
        .map(|(_, t)| t.numel() as u64)
        .sum();
    let wanted = cfg.resolve()?.num_params();
    if wanted > 2 * stored + (1 << 20) {
        bail!(
            "checkpoint {origin} does not match the model config: the config describes {} parameters, the file holds {}",
            crate::util::fmt_count(wanted.min(i64::MAX as u64) as i64),
            crate::util::fmt_count(stored as i64)
        );
    }
    Ok(())
}

/// Most images one sampling command may ask for.
pub const MAX_SAMPLES: usize = 100_000;
/// Most images in one sampling batch.
pub const MAX_SAMPLE_BATCH: usize = 1024;
/// Most pixels in one sampling batch (batch size × image_size²): 256 images at 256 px.
pub const MAX_BATCH_PIXELS: u64 = 1 << 24;
/// Most bytes of sampled images (uint8) held in memory at once.
pub const MAX_SAMPLE_BYTES: u64 = 16 << 30;

/// Largest sampling batch at `image_size` ([`MAX_SAMPLE_BATCH`], fewer for large images).
pub fn max_sample_batch(image_size: i64) -> usize {
    let px = image_size.max(1) as u64 * image_size.max(1) as u64;
    (MAX_BATCH_PIXELS / px).clamp(1, MAX_SAMPLE_BATCH as u64) as usize
}

/// Refuses sample counts and batch sizes that cannot be meant (or would not fit in memory)
/// before anything is allocated. `num_flag`/`batch_flag` name the options in the message.
pub fn check_sample_counts(
    num: usize,
    batch_size: usize,
    image_size: i64,
    num_flag: &str,
    batch_flag: &str,
) -> Result<()> {
    if num == 0 {
        bail!("{num_flag} must be at least 1");
    }
    if num > MAX_SAMPLES {
        bail!("{num_flag} {num} is above the limit of {MAX_SAMPLES} images per command");
    }
    let px = image_size.max(1) as u64 * image_size.max(1) as u64;
    let bytes = num as u64 * px * 3;
    if bytes > MAX_SAMPLE_BYTES {
        bail!(
            "{num_flag} {num} at {image_size}×{image_size} px needs {:.1} GiB of images, above the limit of {} GiB",
            bytes as f64 / (1u64 << 30) as f64,
            MAX_SAMPLE_BYTES >> 30
        );
    }
    if batch_size == 0 {
        bail!("{batch_flag} must be at least 1");
    }
    let max_batch = max_sample_batch(image_size);
    if batch_size > max_batch {
        bail!(
            "{batch_flag} {batch_size} is above the limit of {max_batch} images per batch at {image_size}×{image_size} px"
        );
    }
    Ok(())
}

impl Model {
    /// The network's output at `(x_t, t)` for sampling: with [`Model::guidance`] when set.
    pub fn denoise(&self, x: &tch::Tensor, t: &tch::Tensor) -> tch::Tensor {
        match &self.guidance {
            Some(g) => g.forward(&self.unet, x, t),
            None => self.unet.forward(x, t, None),
        }
    }

    /// Samples `num` images in batches; batch `b` starts from noise seeded with `seed + b`.
    /// Returns uint8 `[num, H, W, 3]` on the CPU.
    ///
    /// Checked: the counts ([`check_sample_counts`]), the sampler (η in [0, 1]), a libtorch
    /// failure (out of memory, …) as an error, and an error instead of images when the sampler
    /// produces NaN or infinite values (they would otherwise become black pixels).
    pub fn sample_images(
        &self,
        diffusion: &crate::diffusion::Diffusion,
        num: usize,
        batch_size: usize,
        sampler: crate::diffusion::sample::Sampler,
        seed: i64,
        show_progress: bool,
    ) -> Result<tch::Tensor> {
        check_sample_counts(
            num,
            batch_size,
            self.config.image_size,
            "number of samples",
            "sampling batch size",
        )?;
        sampler.validate()?;
        catch_torch("sampling failed", || {
            self.sample_batches(diffusion, num, batch_size, sampler, seed, show_progress)
        })?
    }

    fn sample_batches(
        &self,
        diffusion: &crate::diffusion::Diffusion,
        num: usize,
        batch_size: usize,
        sampler: crate::diffusion::sample::Sampler,
        seed: i64,
        show_progress: bool,
    ) -> Result<tch::Tensor> {
        use tch::{Kind, Tensor};
        let s = self.config.image_size;
        let device = self.vs.device();
        let batch_size = batch_size.max(1);
        let batches = num.div_ceil(batch_size);
        let pb = crate::util::progress_bar(
            (batches * diffusion.num_timesteps) as u64,
            "sampling {msg} [{bar:30}] step {pos}/{len} {elapsed_precise} ETA {eta}",
        );
        if !show_progress {
            pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let mut out = Vec::new();
        let mut done = 0;
        for b in 0..batches {
            crate::util::stop::check()?;
            let n = (num - done).min(batch_size);
            pb.set_message(format!("images {done}/{num}"));
            tch::manual_seed(seed.wrapping_add(b as i64));
            let noise = Tensor::randn([n as i64, 3, s, s], (Kind::Float, device));
            let mut f = |x: &Tensor, t: &Tensor| self.denoise(x, t);
            let x = diffusion.sample_loop(&mut f, noise, sampler, true, &mut || pb.inc(1));
            let bad = i64::try_from(x.isfinite().logical_not().sum(Kind::Int64))?;
            if bad > 0 {
                pb.finish_and_clear();
                bail!(
                    "sampling produced {bad} non-finite values (NaN/Inf) in images {done}..{} (batch {b}); no images were written (check the checkpoint, the respacing and eta)",
                    done + n
                );
            }
            // Pixels as each code base writes them: the official sampler truncates, diffusers'
            // pipelines round.
            let pixels = match self.spec {
                UNetSpec::Adm(_) => crate::diffusion::sample::to_uint8_nhwc(&x),
                UNetSpec::Diffusers(_) => crate::diffusion::sample::to_uint8_nhwc_rounded(&x),
            };
            out.push(pixels.to_device(Device::Cpu));
            done += n;
        }
        pb.finish_and_clear();
        Ok(Tensor::cat(&out, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_panics_become_one_line_errors() {
        let e = catch_torch("reshaping failed", || {
            tch::Tensor::zeros([2], (tch::Kind::Float, Device::Cpu)).reshape([3])
        })
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.starts_with("reshaping failed: ") && msg.contains("shape") && !msg.contains('\n'),
            "{msg}"
        );
        assert_eq!(catch_torch("x", || 7).unwrap(), 7);
    }

    #[test]
    fn sample_counts_are_bounded() {
        for (num, batch, size, needle) in [
            (0, 1, 64, "--num must"),
            (1_000_000_000_000, 1, 64, "--num 1000000000000"),
            (90_000, 16, 256, "GiB"),
            (1, 0, 64, "--batch-size must"),
            (1, 1_000_000_000_000, 64, "--batch-size 1000000000000"),
            (1, 300, 256, "limit of 256"),
        ] {
            let e = check_sample_counts(num, batch, size, "--num", "--batch-size")
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{e}");
        }
        check_sample_counts(16, 16, 256, "--num", "--batch-size").unwrap();
        assert_eq!(max_sample_batch(1024), 16);
    }
}
