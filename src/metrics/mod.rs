//! Evaluation: clean-FID / KID (Inception features), held-out loss and bits/dim, memorisation.

pub mod fid;
pub mod heldout;
pub mod inception;
pub mod memorization;
pub mod resize;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Decoded RGB images of a folder (clean-fid's discovery: recursive, sorted by path).
pub fn read_folder_rgb(dir: &Path) -> Result<Vec<(usize, usize, Vec<u8>)>> {
    let files = crate::data::list_images(dir)?;
    if files.is_empty() {
        anyhow::bail!("image folder {} contains no images", dir.display());
    }
    read_files_rgb(&files)
}

/// Decoded RGB images `(w, h, bytes)` of the given files; the first unreadable file is an error.
pub fn read_files_rgb(files: &[PathBuf]) -> Result<Vec<(usize, usize, Vec<u8>)>> {
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
    files_hash(dir, &crate::data::list_images(dir)?)
}

/// SHA-256 over the names (relative to `dir`) and contents of `files`, read in a stream.
pub fn files_hash(dir: &Path, files: &[PathBuf]) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for f in files {
        crate::util::stop::check()?;
        h.update(
            f.strip_prefix(dir)
                .unwrap_or(f)
                .to_string_lossy()
                .as_bytes(),
        );
        let mut file = crate::util::files::open_regular(f)?;
        std::io::copy(&mut file, &mut h).with_context(|| format!("cannot read {}", f.display()))?;
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Inception features of a folder, cached under the cache folder by content hash.
pub fn folder_features(net: &inception::Inception, dir: &Path, use_cache: bool) -> Result<Tensor> {
    let files = crate::data::list_images(dir)?;
    if files.is_empty() {
        bail!("image folder {} contains no images", dir.display());
    }
    files_features(net, dir, &files, use_cache)
}

/// Inception features of `files` (under `dir`, which names the cache entry), decoded one
/// batch at a time so a large folder never sits in memory at full resolution.
pub fn files_features(
    net: &inception::Inception,
    dir: &Path,
    files: &[PathBuf],
    use_cache: bool,
) -> Result<Tensor> {
    const BATCH: usize = 32;
    let key = files_hash(dir, files)?;
    let cache = crate::util::cache::cache_dir()
        .join("features")
        .join(format!("{key}.safetensors"));
    if use_cache {
        if let Ok(state) = crate::io::checkpoint::load_state_dict(&cache, None) {
            if let Some(f) = state.get("features") {
                if f.size().first() == Some(&(files.len() as i64)) {
                    return Ok(f.shallow_clone());
                }
            }
        }
    }
    let pb = crate::util::progress_bar(
        files.len() as u64,
        "inception {bar:30} {pos}/{len} images ETA {eta}",
    );
    let mut feats = Vec::new();
    for chunk in files.chunks(BATCH) {
        crate::util::stop::check()?;
        // Each image is resized to 299 px right after decoding: one full-size image at a time.
        let mut data = Vec::with_capacity(chunk.len() * 3 * 299 * 299);
        for f in chunk {
            let img = crate::data::decode_rgb(f)?;
            data.extend(resize::clean_resize_rgb(
                img.as_raw(),
                img.width() as usize,
                img.height() as usize,
                299,
            ));
        }
        let x = Tensor::from_slice(&data).reshape([chunk.len() as i64, 3, 299, 299]);
        feats.push(net.features_of_resized(&x)?);
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let feats = Tensor::cat(&feats, 0);
    if use_cache {
        let mut meta = std::collections::HashMap::new();
        meta.insert("folder".to_string(), dir.display().to_string());
        let _ = crate::io::checkpoint::save_safetensors(
            &cache,
            &[("features".to_string(), feats.shallow_clone())],
            meta,
        );
    }
    Ok(feats)
}

/// The images of a folder of generated samples.
#[derive(Debug)]
pub struct SampleFolder {
    pub files: Vec<PathBuf>,
    /// The smallest side of any image (they may differ in size: clean-fid resizes each image to
    /// the Inception input on its own, and so does a3ft).
    pub min_side: u32,
    /// `grid.png` files `a3ft sample` wrote beside its samples, left out.
    pub grids: Vec<PathBuf>,
}

/// True for the `grid.png` that `a3ft sample` writes beside `samples.npz` / `000000.png`.
fn is_sample_grid(p: &Path) -> bool {
    let dir = p.parent().unwrap_or(Path::new("."));
    p.file_name()
        .is_some_and(|n| n == crate::io::images::GRID_FILE)
        && (dir.join("samples.npz").is_file() || dir.join("000000.png").is_file())
}

/// Lists a folder of generated images for evaluation: `a3ft sample`'s own `grid.png` is left
/// out (it is not a sample), and every remaining image's header must be readable and within
/// the size limits (nothing is decoded yet). At least 2 images are needed (FID/KID).
pub fn sample_folder(dir: &Path, flag: &str) -> Result<SampleFolder> {
    let listing = crate::data::scan_images(dir).with_context(|| flag.to_string())?;
    if let Some((_, why)) = listing.ignored.first() {
        bail!("{flag} {}: {why}", dir.display());
    }
    let (grids, files): (Vec<PathBuf>, Vec<PathBuf>) =
        listing.files.into_iter().partition(|p| is_sample_grid(p));
    if files.len() < 2 {
        bail!(
            "{flag} {} holds {} image(s){}; FID and KID need at least 2",
            dir.display(),
            files.len(),
            if grids.is_empty() {
                ""
            } else {
                " besides the sample grid"
            }
        );
    }
    let mut min_side = u32::MAX;
    for f in &files {
        crate::util::stop::check()?;
        let (w, h) = crate::data::image_dimensions(f)?;
        crate::data::check_image_size(f, w, h)?;
        min_side = min_side.min(w.min(h));
    }
    Ok(SampleFolder {
        files,
        min_side,
        grids,
    })
}

/// uint8-valued `[N, H, W, 3]` → `(w, h, bytes)` per image, the input of the Inception pass.
pub fn nhwc_to_rgb(nhwc: &Tensor) -> Vec<(usize, usize, Vec<u8>)> {
    (0..nhwc.size()[0])
        .map(|i| {
            let img = nhwc.get(i).to_kind(tch::Kind::Uint8).contiguous();
            let s = img.size();
            (
                s[1] as usize,
                s[0] as usize,
                Vec::<u8>::try_from(img.flatten(0, -1)).unwrap(),
            )
        })
        .collect()
}
