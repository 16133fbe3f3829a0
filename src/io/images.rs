//! Writing sample images: per-image PNGs, a grid, and the official `samples.npz`.

use crate::util::files::write_atomic;
use crate::util::owned_dir::MANIFEST;
use anyhow::{bail, Context, Result};
use image::{ImageFormat, RgbImage};
use std::io::Cursor;
use std::path::Path;
use tch::{Kind, Tensor};

/// uint8 `[H, W, 3]` → image.
pub fn to_image(hwc: &Tensor) -> Result<RgbImage> {
    let s = hwc.size();
    if s.len() != 3 || s[2] != 3 {
        bail!("expected an [H, W, 3] image, got {s:?}");
    }
    let data: Vec<u8> = Vec::try_from(hwc.to_kind(Kind::Uint8).contiguous().flatten(0, -1))?;
    RgbImage::from_raw(s[1] as u32, s[0] as u32, data).context("image buffer size mismatch")
}

pub fn png_bytes(img: &RgbImage) -> Result<Vec<u8>> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, ImageFormat::Png)?;
    Ok(buf.into_inner())
}

pub fn save_png(path: &Path, img: &RgbImage) -> Result<()> {
    // write_atomic names the file already: a second "cannot write" would repeat it.
    write_atomic(path, &png_bytes(img)?)
}

/// Tiles uint8 `[N, H, W, 3]` images into a near-square grid with a 2-px border.
pub fn grid(nhwc: &Tensor, cols: Option<usize>) -> Result<RgbImage> {
    let s = nhwc.size();
    let (n, h, w) = (s[0] as usize, s[1] as u32, s[2] as u32);
    let cols = cols
        .unwrap_or_else(|| (n as f64).sqrt().ceil().max(1.0) as usize)
        .max(1);
    let rows = n.div_ceil(cols);
    let pad = 2u32;
    let mut canvas = RgbImage::from_pixel(
        cols as u32 * (w + pad) + pad,
        rows as u32 * (h + pad) + pad,
        image::Rgb([255, 255, 255]),
    );
    for i in 0..n {
        let img = to_image(&nhwc.get(i as i64))?;
        let (r, c) = ((i / cols) as u32, (i % cols) as u32);
        image::imageops::replace(
            &mut canvas,
            &img,
            (pad + c * (w + pad)) as i64,
            (pad + r * (h + pad)) as i64,
        );
    }
    Ok(canvas)
}

/// The sample grid `save_samples` writes beside the samples (not a sample itself).
pub const GRID_FILE: &str = "grid.png";

/// Whether `name` is a file `save_samples` writes.
pub fn is_sample_output(name: &str) -> bool {
    name == GRID_FILE
        || name == "samples.npz"
        || name
            .strip_suffix(".png")
            .is_some_and(|s| s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit()))
}

/// `save_samples` writes last a manifest (`owned_dir::MANIFEST`) naming the files it wrote:
/// only files listed there are ever replaced by a later `a3ft sample --force` (numbered PNGs
/// alone could be anyone's).
const WRITTEN_BY: &str = "a3ft sample";

/// Claims `dir` for `a3ft sample` (see [`crate::util::owned_dir::OwnedDir`]): absent, empty, or
/// holding only the files an earlier `a3ft sample` listed in its manifest.
pub fn claim_sample_folder(dir: &Path) -> Result<crate::util::owned_dir::OwnedDir> {
    crate::util::owned_dir::OwnedDir::claim(dir, "sample", |bytes| {
        let listed = crate::util::owned_dir::listed_files(bytes, WRITTEN_BY)?;
        if let Some(odd) = listed.iter().find(|n| !is_sample_output(n)) {
            bail!("its manifest lists {odd}, which `a3ft sample` never writes");
        }
        Ok(listed)
    })
}

/// Writes `DIR/000000.png …`, `DIR/grid.png`, `DIR/samples.npz` (`arr_0`, uint8 NHWC), then
/// the manifest that lists them.
pub fn save_samples(dir: &Path, nhwc: &Tensor) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create output folder {}", dir.display()))?;
    let mut files = Vec::new();
    for i in 0..nhwc.size()[0] {
        crate::util::stop::check()?;
        let name = format!("{i:06}.png");
        save_png(&dir.join(&name), &to_image(&nhwc.get(i))?)?;
        files.push(name);
    }
    let g = grid(&nhwc.narrow(0, 0, nhwc.size()[0].min(64)), None)?;
    save_png(&dir.join(GRID_FILE), &g)?;
    write_npz_atomic(&dir.join("samples.npz"), &[("arr_0", nhwc)])?;
    files.extend([GRID_FILE.to_string(), "samples.npz".to_string()]);
    write_atomic(
        &dir.join(MANIFEST),
        &crate::util::owned_dir::manifest(WRITTEN_BY, &files),
    )
}

/// Writes named arrays as the .npz `path` through `write_atomic`'s temporary file, removed
/// again if the write fails: readers never see half a file.
pub fn write_npz_atomic<S: AsRef<str>, T: AsRef<Tensor>>(
    path: &Path,
    arrays: &[(S, T)],
) -> Result<()> {
    let tmp = crate::util::files::temp_path(path);
    let written = (|| -> Result<()> {
        crate::util::files::injected_full_disk()?;
        let f = std::fs::File::create(&tmp)?;
        let mut w = crate::io::npy::write_npz(std::io::BufWriter::new(f), arrays)?;
        std::io::Write::flush(&mut w)?;
        w.get_ref().sync_all()?;
        drop(w);
        std::fs::rename(&tmp, path)?;
        Ok(())
    })()
    .with_context(|| format!("cannot write {}", path.display()));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
