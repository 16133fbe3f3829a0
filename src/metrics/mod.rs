//! Evaluation: clean-FID / KID (Inception features), held-out loss and bits/dim, memorisation.

pub mod fid;
pub mod heldout;
pub mod inception;
pub mod memorization;
pub mod resize;

use anyhow::{Context, Result};
use std::path::Path;
use tch::Tensor;

/// Decoded RGB images of a folder (clean-fid's discovery: recursive, sorted by path).
pub fn read_folder_rgb(dir: &Path) -> Result<Vec<(usize, usize, Vec<u8>)>> {
    let files = crate::data::list_images(dir)?;
    if files.is_empty() {
        anyhow::bail!("image folder {} contains no images", dir.display());
    }
    files
        .iter()
        .map(|f| {
            let img = crate::data::decode_rgb(f)?;
            Ok((img.width() as usize, img.height() as usize, img.into_raw()))
        })
        .collect()
}

/// SHA-256 over file names and contents: the key of a folder's feature cache.
pub fn folder_hash(dir: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for f in crate::data::list_images(dir)? {
        h.update(f.strip_prefix(dir).unwrap_or(&f).to_string_lossy().as_bytes());
        h.update(std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Inception features of a folder, cached under the cache folder by content hash.
pub fn folder_features(net: &inception::Inception, dir: &Path, use_cache: bool) -> Result<Tensor> {
    let key = folder_hash(dir)?;
    let cache = inception::cache_dir().join("features").join(format!("{key}.safetensors"));
    if use_cache {
        if let Ok(state) = crate::checkpoint::load_state_dict(&cache, None) {
            if let Some(f) = state.get("features") {
                return Ok(f.shallow_clone());
            }
        }
    }
    let images = read_folder_rgb(dir)?;
    let pb = crate::progress_bar(images.len() as u64, "inception {bar:30} {pos}/{len} images ETA {eta}");
    let feats = net.features_rgb(&images, 32, Some(&pb))?;
    pb.finish_and_clear();
    if use_cache {
        let mut meta = std::collections::HashMap::new();
        meta.insert("folder".to_string(), dir.display().to_string());
        let _ = crate::checkpoint::save_safetensors(&cache, &[("features".to_string(), feats.shallow_clone())], meta);
    }
    Ok(feats)
}

/// uint8-valued `[N, H, W, 3]` → `(w, h, bytes)` per image, the input of the Inception pass.
pub fn nhwc_to_rgb(nhwc: &Tensor) -> Vec<(usize, usize, Vec<u8>)> {
    (0..nhwc.size()[0])
        .map(|i| {
            let img = nhwc.get(i).to_kind(tch::Kind::Uint8).contiguous();
            let s = img.size();
            (s[1] as usize, s[0] as usize, Vec::<u8>::try_from(img.flatten(0, -1)).unwrap())
        })
        .collect()
}
