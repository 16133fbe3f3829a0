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
