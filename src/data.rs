//! Image folders → tensors, resized as the official loader does.

use anyhow::{bail, Context, Result};
use image::{imageops::FilterType, RgbImage};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp", "gif"];

/// Every image file under `dir` (recursively), sorted by path.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        bail!("image folder {} does not exist or is not a folder", dir.display());
    }
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))? {
            let p = entry?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Halves an image by averaging 2×2 blocks (PIL's BOX filter at an exact factor of 2).
fn box_halve(img: &RgbImage) -> RgbImage {
    let (w, h) = (img.width() / 2, img.height() / 2);
    RgbImage::from_fn(w, h, |x, y| {
        let mut acc = [0u32; 3];
        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            let p = img.get_pixel(2 * x + dx, 2 * y + dy);
            for c in 0..3 {
                acc[c] += p[c] as u32;
            }
        }
        image::Rgb([((acc[0] + 2) / 4) as u8, ((acc[1] + 2) / 4) as u8, ((acc[2] + 2) / 4) as u8])
    })
}

/// The official `center_crop_arr`: repeated 2× box downsampling while the short side is at
/// least twice the target, bicubic resize of the short side to `res`, centre crop.
pub fn center_crop_resize(img: &RgbImage, res: u32) -> RgbImage {
    let mut img = img.clone();
    while img.width().min(img.height()) >= 2 * res {
        img = box_halve(&img);
    }
    let scale = res as f64 / img.width().min(img.height()) as f64;
    let (w, h) = (
        ((img.width() as f64 * scale).round() as u32).max(res),
        ((img.height() as f64 * scale).round() as u32).max(res),
    );
    if (w, h) != img.dimensions() {
        // Catmull-Rom is the a = −0.5 cubic that PIL's BICUBIC uses.
        img = image::imageops::resize(&img, w, h, FilterType::CatmullRom);
    }
    let (x, y) = ((w - res) / 2, (h - res) / 2);
    image::imageops::crop_imm(&img, x, y, res, res).to_image()
}

pub fn decode_rgb(path: &Path) -> Result<RgbImage> {
    let img = image::ImageReader::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .with_guessed_format()?
        .decode()
        // The decoder's message already holds its source; chaining it would print it twice.
        .map_err(|e| anyhow::anyhow!("cannot decode image {}: {e}", path.display()))?;
    Ok(img.to_rgb8())
}

/// Decoded images as `[N, 3, res, res]` f32 in [-1, 1], plus the files that could not be read.
pub struct ImageSet {
    pub images: Tensor,
    pub paths: Vec<PathBuf>,
    pub skipped: Vec<(PathBuf, String)>,
}

pub fn load_folder(dir: &Path, res: u32, strict: bool) -> Result<ImageSet> {
    let files = list_images(dir)?;
    if files.is_empty() {
        bail!("image folder {} contains no images ({})", dir.display(), IMAGE_EXTENSIONS.join(", "));
    }
    let mut data = Vec::with_capacity(files.len() * (res * res * 3) as usize);
    let mut paths = Vec::new();
    let mut skipped = Vec::new();
    for f in files {
        match decode_rgb(&f) {
            Ok(img) => {
                data.extend_from_slice(center_crop_resize(&img, res).as_raw());
                paths.push(f);
            }
            Err(e) if !strict => skipped.push((f, format!("{e:#}"))),
            Err(e) => return Err(e.context("unreadable image (--strict)")),
        }
    }
    if paths.is_empty() {
        bail!("no readable images in {} ({} files could not be decoded, e.g. {})", dir.display(), skipped.len(), skipped[0].1);
    }
    let n = paths.len() as i64;
    let r = res as i64;
    let images = Tensor::from_slice(&data)
        .reshape([n, r, r, 3])
        .permute([0, 3, 1, 2])
        .to_kind(Kind::Float)
        / 127.5
        - 1.0;
    Ok(ImageSet { images, paths, skipped })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_and_crop_shapes() {
        let img = RgbImage::from_fn(300, 200, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 7]));
        let out = center_crop_resize(&img, 64);
        assert_eq!(out.dimensions(), (64, 64));
        let flat = RgbImage::from_pixel(128, 96, image::Rgb([10, 200, 30]));
        let out = center_crop_resize(&flat, 32);
        assert!(out.pixels().all(|p| p.0 == [10, 200, 30]));
    }

    #[test]
    fn folder_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_folder(dir.path(), 16, false).err().unwrap();
        assert!(format!("{e:#}").contains("contains no images"), "{e:#}");
        std::fs::write(dir.path().join("bad.png"), b"not a png").unwrap();
        let e = load_folder(dir.path(), 16, false).err().unwrap();
        assert!(format!("{e:#}").contains("no readable images"), "{e:#}");
        RgbImage::from_pixel(20, 20, image::Rgb([255, 0, 0])).save(dir.path().join("ok.png")).unwrap();
        let set = load_folder(dir.path(), 16, false).unwrap();
        assert_eq!(set.images.size(), vec![1, 3, 16, 16]);
        assert_eq!(set.skipped.len(), 1);
        assert!(load_folder(dir.path(), 16, true).is_err());
        let v = f64::try_from(set.images.select(1, 0).mean(Kind::Float)).unwrap();
        assert!((v - 1.0).abs() < 1e-6);
        assert!(load_folder(&dir.path().join("missing"), 16, false).is_err());
    }
}
