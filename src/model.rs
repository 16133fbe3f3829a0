//! A UNet with its variables, built from a config and optionally loaded from a checkpoint.

use crate::checkpoint::{self, StateDict};
use crate::config::{ModelConfig, UNetSpec};
use crate::unet::{Extras, UNet};
use anyhow::Result;
use std::path::Path;
use tch::{nn, Device};

/// Prefixes of tensors a3ft adds to the official key set.
pub const EXTRA_PREFIXES: &[&str] = &["adapter.", "lora."];

pub struct Model {
    pub vs: nn::VarStore,
    pub unet: UNet,
    pub config: ModelConfig,
    pub spec: UNetSpec,
}

impl Model {
    /// Random init (official zero-init included) on `device`.
    pub fn new(config: &ModelConfig, extras: &Extras, device: Device) -> Result<Model> {
        let spec = config.resolve()?;
        let vs = nn::VarStore::new(device);
        let unet = UNet::new(&vs, &spec, extras);
        Ok(Model { vs, unet, config: config.clone(), spec })
    }

    /// Loads official (or exported) weights. Adapter/LoRA tensors may be absent (they keep their
    /// init); any other difference is an error listing every key.
    pub fn load_checkpoint(&mut self, path: &Path, key: Option<&str>) -> Result<()> {
        let state = checkpoint::load_state_dict(path, key)?;
        self.load_state(&state, &path.display().to_string())
    }

    pub fn load_state(&mut self, state: &StateDict, origin: &str) -> Result<()> {
        checkpoint::load_into(&mut self.vs, state, EXTRA_PREFIXES, origin)
    }

    /// The official-key part of the model's state (no adapter/LoRA tensors).
    pub fn official_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .vs
            .variables()
            .into_keys()
            .filter(|k| !EXTRA_PREFIXES.iter().any(|p| k.starts_with(p)))
            .collect();
        v.sort();
        v
    }
}

impl Model {
    /// Samples `num` images in batches; batch `b` starts from noise seeded with `seed + b`.
    /// Returns uint8 `[num, H, W, 3]` on the CPU.
    pub fn sample_images(
        &self,
        diffusion: &crate::diffusion::Diffusion,
        num: usize,
        batch_size: usize,
        sampler: crate::diffusion::sample::Sampler,
        seed: i64,
        show_progress: bool,
    ) -> tch::Tensor {
        use tch::{Kind, Tensor};
        let s = self.config.image_size;
        let device = self.vs.device();
        let batches = num.div_ceil(batch_size.max(1));
        let pb = crate::progress_bar(
            (batches * diffusion.num_timesteps) as u64,
            "sampling {msg} [{bar:30}] step {pos}/{len} {elapsed_precise} ETA {eta}",
        );
        if !show_progress {
            pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let mut out = Vec::new();
        let mut done = 0;
        for b in 0..batches {
            let n = (num - done).min(batch_size);
            pb.set_message(format!("images {done}/{num}"));
            tch::manual_seed(seed.wrapping_add(b as i64));
            let noise = Tensor::randn([n as i64, 3, s, s], (Kind::Float, device));
            let mut f = |x: &Tensor, t: &Tensor| self.unet.forward(x, t, None);
            let x = diffusion.sample_loop(&mut f, noise, sampler, true, &mut || pb.inc(1));
            out.push(crate::diffusion::sample::to_uint8_nhwc(&x).to_device(Device::Cpu));
            done += n;
        }
        pb.finish_and_clear();
        Tensor::cat(&out, 0)
    }
}

/// The sampler a respacing spec implies: `ddimN` → DDIM (η = 0), otherwise ancestral.
pub fn sampler_for(respacing: &str) -> crate::diffusion::sample::Sampler {
    use crate::diffusion::sample::Sampler;
    if respacing.starts_with("ddim") { Sampler::Ddim { eta: 0.0 } } else { Sampler::Ancestral }
}
