//! The model config of a diffusers folder (the folder itself is read by `crate::diffusers`).

use super::config::{Family, ModelConfig};
use anyhow::Result;
use std::path::Path;

/// The model configs of a diffusers folder (the folder itself is read by `crate::diffusers`).
impl crate::diffusers::Folder {
    /// The model config a3ft builds from this folder.
    pub fn model_config(&self) -> crate::model::config::ModelConfig {
        crate::model::config::ModelConfig {
            image_size: self.image_size,
            family: Family::Diffusers(self.files.clone()),
            ..Default::default()
        }
    }

    /// The model config of a folder whose weights are not needed (timing the network).
    pub fn config_only(dir: &Path) -> Result<crate::model::config::ModelConfig> {
        let (_, files, _, image_size) = Self::read_configs(dir)?;
        Ok(ModelConfig {
            image_size,
            family: Family::Diffusers(files),
            ..Default::default()
        })
    }
}
