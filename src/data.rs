//! Image folders → tensors, resized as the official loader does.

use anyhow::{bail, Context, Result};
use image::{imageops::FilterType, RgbImage};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp", "gif"];

/// Largest image a3ft decodes: 8192 × 8192 pixels (64 Mpx, 192 MiB as RGB). A header that
/// declares more is refused before anything is decoded.
pub const MAX_IMAGE_PIXELS: u64 = 8192 * 8192;
/// Largest side of an image, in pixels.
pub const MAX_IMAGE_SIDE: u32 = 65_535;
/// Memory the decoder itself may allocate for one image (`image::Limits::max_alloc`).
pub const MAX_DECODE_ALLOC: u64 = 1 << 30;
/// Largest training/evaluation resolution `load_folder` resizes to.
pub const MAX_RESOLUTION: u32 = 4096;
/// Largest decoded image set `load_folder` builds (the f32 tensor), 16 GiB.
pub const MAX_SET_BYTES: u64 = 16 << 30;

/// What a folder walk found: image files (each once, sorted by path) and the entries that
/// carry an image extension but are not regular files (FIFOs, devices, dangling links).
#[derive(Debug, Default)]
pub struct Listing {
    pub files: Vec<PathBuf>,
    pub ignored: Vec<(PathBuf, String)>,
}

fn has_image_extension(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Identity of a file or folder: device and inode on Unix (hard links and bind mounts count
/// once), the canonical path elsewhere.
#[cfg(unix)]
fn identity(_path: &Path, meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn identity(path: &Path, _meta: &std::fs::Metadata) -> Option<PathBuf> {
    std::fs::canonicalize(path).ok()
}

/// Walks `dir` recursively, following symbolic links, without ever entering a folder twice
/// (so `ln -s . d/loop` neither hangs nor repeats images) and listing every image file once.
/// Real entries come first: a file or folder reached both directly and through links is
/// listed under its real path; links are followed afterwards, in sorted order.
///
/// The walk is hand-written rather than `walkdir`'s: `walkdir` detects a link back to an
/// ancestor, but two links to the same (non-ancestor) folder would still list its images twice,
/// and files reached through several links would have to be deduplicated anyway; one visited
/// set of (device, inode) covers every case without a new dependency.
pub fn scan_images(dir: &Path) -> Result<Listing> {
    if !dir.is_dir() {
        bail!("image folder {} does not exist or is not a folder", dir.display());
    }
    let mut out = Listing::default();
    let mut seen_dirs = std::collections::HashSet::new();
    let mut seen_files = std::collections::HashSet::new();
    let root_meta = std::fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    seen_dirs.insert(identity(dir, &root_meta));
    // Real folders, depth first over sorted entries (pushed reversed); links wait in `links`.
    let mut stack = vec![dir.to_path_buf()];
    let mut links = std::collections::VecDeque::new();
    loop {
        let d = if let Some(d) = stack.pop() {
            d
        } else if let Some(link) = links.pop_front() {
            let link: PathBuf = link;
            // Follows the link; a dangling link has no metadata.
            match std::fs::metadata(&link) {
                Ok(meta) if meta.is_dir() => {
                    if !seen_dirs.insert(identity(&link, &meta)) {
                        continue;
                    }
                    link
                }
                Ok(meta) => {
                    if has_image_extension(&link) {
                        if !meta.is_file() {
                            let why = format!("{} is not a regular file", link.display());
                            out.ignored.push((link, why));
                        } else if seen_files.insert(identity(&link, &meta)) {
                            out.files.push(link);
                        }
                    }
                    continue;
                }
                Err(e) => {
                    if has_image_extension(&link) {
                        let why = format!("cannot read {}: {e}", link.display());
                        out.ignored.push((link, why));
                    }
                    continue;
                }
            }
        } else {
            break;
        };
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&d)
            .with_context(|| format!("cannot list folder {}", d.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("cannot list folder {}", d.display()))?;
        entries.sort();
        let mut subdirs = Vec::new();
        for p in entries {
            let meta = match std::fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(e) => {
                    if has_image_extension(&p) {
                        let why = format!("cannot read {}: {e}", p.display());
                        out.ignored.push((p, why));
                    }
                    continue;
                }
            };
            if meta.file_type().is_symlink() {
                links.push_back(p);
            } else if meta.is_dir() {
                if seen_dirs.insert(identity(&p, &meta)) {
                    subdirs.push(p);
                }
            } else if has_image_extension(&p) {
                if !meta.is_file() {
                    let why = format!("{} is not a regular file", p.display());
                    out.ignored.push((p, why));
                } else if seen_files.insert(identity(&p, &meta)) {
                    out.files.push(p);
                }
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    out.files.sort();
    Ok(out)
}

/// Every image file under `dir` (recursively, following links, each file once), sorted by path.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(scan_images(dir)?.files)
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

/// Width and height from the image header, without decoding the pixels.
pub fn image_dimensions(path: &Path) -> Result<(u32, u32)> {
    let mut reader = image::ImageReader::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read {}", path.display()))?;
    // Only the header is read here; the limits apply to the decode below.
    reader.no_limits();
    reader.into_dimensions().map_err(|e| anyhow::anyhow!("cannot decode image {}: {e}", path.display()))
}

/// Refuses sizes above [`MAX_IMAGE_PIXELS`] / [`MAX_IMAGE_SIDE`], naming the file.
pub fn check_image_size(path: &Path, w: u32, h: u32) -> Result<()> {
    let px = w as u64 * h as u64;
    if px > MAX_IMAGE_PIXELS {
        bail!(
            "image {} is {w}×{h} pixels ({:.1} Mpx), above the limit of {:.1} Mpx (8192×8192)",
            path.display(),
            px as f64 / 1e6,
            MAX_IMAGE_PIXELS as f64 / 1e6
        );
    }
    if w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE {
        bail!("image {} is {w}×{h} pixels, above the limit of {MAX_IMAGE_SIDE} px per side", path.display());
    }
    if w == 0 || h == 0 {
        bail!("image {} is {w}×{h} pixels (empty)", path.display());
    }
    Ok(())
}

/// Decodes an image as RGB. The header's size is checked first ([`check_image_size`]), and
/// the decoder runs under `image::Limits` (at most [`MAX_DECODE_ALLOC`] bytes).
pub fn decode_rgb(path: &Path) -> Result<RgbImage> {
    let (w, h) = image_dimensions(path)?;
    check_image_size(path, w, h)?;
    let mut reader = image::ImageReader::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    let img = reader
        .decode()
        // The decoder's message already holds its source; chaining it would print it twice.
        .map_err(|e| anyhow::anyhow!("cannot decode image {}: {e}", path.display()))?;
    if (img.width(), img.height()) != (w, h) {
        bail!("image {} changed while it was read ({w}×{h}, then {}×{})", path.display(), img.width(), img.height());
    }
    Ok(img.to_rgb8())
}

/// Size of the intermediate image [`center_crop_resize`] builds (before cropping).
pub fn resized_dims(w: u32, h: u32, res: u32) -> (u64, u64) {
    let (mut w, mut h) = (w as u64, h as u64);
    let res = res.max(1) as u64;
    while w.min(h) >= 2 * res {
        w /= 2;
        h /= 2;
    }
    let scale = res as f64 / w.min(h).max(1) as f64;
    (((w as f64 * scale).round() as u64).max(res), ((h as f64 * scale).round() as u64).max(res))
}

/// Decoded images as `[N, 3, res, res]` f32 in [-1, 1], plus the files that could not be read.
pub struct ImageSet {
    pub images: Tensor,
    pub paths: Vec<PathBuf>,
    pub skipped: Vec<(PathBuf, String)>,
}

/// Decodes every image of `dir` (see [`scan_images`]) at `res × res`. Unreadable images (bad
/// data, too large, not regular files) are skipped and listed, or refused with `strict`.
pub fn load_folder(dir: &Path, res: u32, strict: bool) -> Result<ImageSet> {
    if res == 0 || res > MAX_RESOLUTION {
        bail!("image resolution {res} is outside 1..={MAX_RESOLUTION}");
    }
    let listing = scan_images(dir)?;
    let mut skipped = Vec::new();
    for (p, why) in listing.ignored {
        if strict {
            bail!("unreadable image (--strict): {why}");
        }
        skipped.push((p, why));
    }
    if listing.files.is_empty() && skipped.is_empty() {
        bail!("image folder {} contains no images ({})", dir.display(), IMAGE_EXTENSIONS.join(", "));
    }
    let mut set = load_files(&listing.files, res, strict, &dir.display().to_string())?;
    skipped.append(&mut set.skipped);
    if set.paths.is_empty() {
        bail!("no readable images in {} ({} files could not be read, e.g. {})", dir.display(), skipped.len(), skipped[0].1);
    }
    set.skipped = skipped;
    Ok(set)
}

/// [`load_folder`] for a given list of files; `origin` names them in errors. An empty result
/// is returned as is (no error) when every file was skipped.
pub fn load_files(files: &[PathBuf], res: u32, strict: bool, origin: &str) -> Result<ImageSet> {
    if res == 0 || res > MAX_RESOLUTION {
        bail!("image resolution {res} is outside 1..={MAX_RESOLUTION}");
    }
    let mut skipped = Vec::new();
    let per_image = 3 * res as u64 * res as u64;
    let set_bytes = files.len() as u64 * per_image * 4;
    if set_bytes > MAX_SET_BYTES {
        bail!(
            "{origin} holds {} images: at {res}×{res} px they need {:.1} GiB as f32, above the limit of {} GiB",
            files.len(),
            set_bytes as f64 / (1u64 << 30) as f64,
            MAX_SET_BYTES >> 30
        );
    }
    let mut data = Vec::with_capacity(files.len() * per_image as usize);
    let mut paths = Vec::new();
    for f in files {
        let f = f.clone();
        let decoded = decode_rgb(&f).and_then(|img| {
            let (rw, rh) = resized_dims(img.width(), img.height(), res);
            if rw * rh > MAX_IMAGE_PIXELS {
                bail!(
                    "image {} is {}×{}: its aspect ratio is too extreme (resizing to {res} px would build a {rw}×{rh} image)",
                    f.display(),
                    img.width(),
                    img.height()
                );
            }
            Ok(img)
        });
        match decoded {
            Ok(img) => {
                data.extend_from_slice(center_crop_resize(&img, res).as_raw());
                paths.push(f);
            }
            Err(e) if !strict => skipped.push((f, format!("{e:#}"))),
            Err(e) => return Err(e.context("unreadable image (--strict)")),
        }
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

    /// PNG signature + an IHDR chunk declaring `w × h` RGB8 (valid CRC), and no image data.
    pub(crate) fn png_header_only(w: u32, h: u32) -> Vec<u8> {
        fn crc32(data: &[u8]) -> u32 {
            let mut c = !0u32;
            for &b in data {
                c ^= b as u32;
                for _ in 0..8 {
                    c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                }
            }
            !c
        }
        let mut chunk = b"IHDR".to_vec();
        chunk.extend(w.to_be_bytes());
        chunk.extend(h.to_be_bytes());
        chunk.extend([8, 2, 0, 0, 0]);
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        // IHDR, then an IDAT holding a few bytes of an (unfinished) zlib stream, then IEND.
        for (kind, body) in [(&b"IHDR"[..], &chunk[4..]), (b"IDAT", &[0x78, 0x9c, 0x63, 0x60][..]), (b"IEND", &[][..])] {
            let mut c = kind.to_vec();
            c.extend(body);
            out.extend((body.len() as u32).to_be_bytes());
            out.extend(&c);
            out.extend(crc32(&c).to_be_bytes());
        }
        out
    }

    #[cfg(unix)]
    #[test]
    fn symlink_loops_and_duplicates_count_each_image_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("d");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3])).save(d.join("a.png")).unwrap();
        RgbImage::from_pixel(8, 8, image::Rgb([4, 5, 6])).save(d.join("sub/b.png")).unwrap();
        std::os::unix::fs::symlink(".", d.join("loop")).unwrap();
        std::os::unix::fs::symlink("..", d.join("sub/up")).unwrap();
        std::os::unix::fs::symlink("sub", d.join("alias")).unwrap();
        std::os::unix::fs::symlink("a.png", d.join("link.png")).unwrap();
        std::os::unix::fs::symlink("missing.png", d.join("dangling.png")).unwrap();
        let listing = scan_images(&d).unwrap();
        let names: Vec<String> = listing.files.iter().map(|p| p.strip_prefix(&d).unwrap().display().to_string()).collect();
        // Real paths win over links (`alias` sorts before `sub`).
        assert_eq!(names, vec!["a.png", "sub/b.png"], "{names:?}");
        assert_eq!(listing.ignored.len(), 1);
        let set = load_folder(&d, 8, false).unwrap();
        assert_eq!(set.images.size()[0], 2);
        assert_eq!(set.skipped.len(), 1);
        let e = format!("{:#}", load_folder(&d, 8, true).err().unwrap());
        assert!(e.contains("dangling.png"), "{e}");
    }

    #[test]
    fn huge_headers_are_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.png");
        std::fs::write(&big, png_header_only(20_000, 20_000)).unwrap();
        assert_eq!(image_dimensions(&big).unwrap(), (20_000, 20_000));
        let e = format!("{:#}", decode_rgb(&big).unwrap_err());
        assert!(e.contains("big.png") && e.contains("20000×20000") && e.contains("limit"), "{e}");
        let e = format!("{:#}", load_folder(dir.path(), 8, true).err().unwrap());
        assert!(e.contains("20000×20000"), "{e}");
        RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3])).save(dir.path().join("ok.png")).unwrap();
        let set = load_folder(dir.path(), 8, false).unwrap();
        assert_eq!((set.images.size()[0], set.skipped.len()), (1, 1));
        // Thin images would be upscaled to a huge intermediate: skipped as well.
        RgbImage::from_pixel(60_000, 1, image::Rgb([1, 2, 3])).save(dir.path().join("thin.png")).unwrap();
        let set = load_folder(dir.path(), 256, false).unwrap();
        assert_eq!(set.skipped.len(), 2, "{:?}", set.skipped);
        assert!(load_folder(dir.path(), 0, false).is_err());
        assert!(load_folder(dir.path(), u32::MAX, false).is_err());
    }
}
