//! The official checkpoints' configs by name.

use super::config::ModelConfig;
use anyhow::{bail, Result};

pub const PRESETS: &[&str] = &["imagenet64", "ffhq256"];

impl ModelConfig {
    pub fn preset(name: &str) -> Result<Self> {
        let base = ModelConfig::default();
        match name {
            // imagenet64_uncond_100M_1500K.pt: README flags, the rest improved-diffusion defaults.
            "imagenet64" => Ok(ModelConfig {
                image_size: 64,
                num_channels: 128,
                num_res_blocks: 3,
                learn_sigma: true,
                diffusion_steps: 4000,
                noise_schedule: "cosine".into(),
                ..base
            }),
            // P2-weighting FFHQ-256 (guided-diffusion code path).
            "ffhq256" => Ok(ModelConfig {
                image_size: 256,
                num_channels: 128,
                num_res_blocks: 1,
                attention_resolutions: vec![16.0],
                num_head_channels: 64,
                learn_sigma: true,
                resblock_updown: true,
                use_scale_shift_norm: true,
                diffusion_steps: 1000,
                noise_schedule: "linear".into(),
                timestep_respacing: crate::diffusion::respace::Respacing::All,
                rescale_timesteps: false,
                rescale_learned_sigmas: true,
                p2_gamma: 1.0,
                p2_k: 1.0,
                ..base
            }),
            other => bail!(
                "unknown preset {other:?}; available presets: {}",
                PRESETS.join(", ")
            ),
        }
    }
}
