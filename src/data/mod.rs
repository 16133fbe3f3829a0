//! Image folders → tensors, resized as the official loader does.

pub mod datasets;
pub mod fetch;
pub mod rasterize;
pub mod synth;
pub mod tarball;

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
        // Hidden entries are skipped, as clean-fid's glob does: they hold no one's images, but
        // an interrupted writer's `.NAME.staging-PID` folder would otherwise be read as data.
        entries.retain(|p| !p.file_name().is_some_and(|n| n.as_encoded_bytes().starts_with(b".")));
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

/// The limits every decoder runs under, the header pass included: a PNG's metadata chunks
/// (iCCP, zTXt) are inflated while the header is read, so a small file can claim gigabytes
/// before a single pixel is decoded.
fn decode_limits(max_alloc: u64) -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(max_alloc);
    limits
}

/// Memory the header pass may allocate (the pixels are not decoded there; only metadata such
/// as an ICC profile is, and no real one comes near this).
const MAX_HEADER_ALLOC: u64 = 64 << 20;

/// A reader of `path` under [`decode_limits`], its format guessed from the content.
fn limited_reader(path: &Path, max_alloc: u64) -> Result<image::ImageReader<std::io::BufReader<std::fs::File>>> {
    let mut reader = image::ImageReader::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read {}", path.display()))?;
    reader.limits(decode_limits(max_alloc));
    Ok(reader)
}

/// Width and height from the image header, without decoding the pixels.
pub fn image_dimensions(path: &Path) -> Result<(u32, u32)> {
    limited_reader(path, MAX_HEADER_ALLOC)?.into_dimensions().map_err(|e| anyhow::anyhow!("cannot decode image {}: {e}", path.display()))
}

/// Refuses a JPEG that ends before its end-of-image marker: the JPEG decoder fills a cut-off
/// file with grey and reports success (a header claiming 8000×8000 px in 772 bytes decodes).
/// A file whose image data is far too small for the size its header claims is refused too:
/// Huffman coding spends at least one bit on every 8×8 luma block.
fn check_jpeg_complete(path: &Path, w: u32, h: u32) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let (complete, scan_bytes) = jpeg_is_complete(std::io::BufReader::new(file)).with_context(|| format!("cannot read {}", path.display()))?;
    if !complete {
        bail!("image {} is a truncated JPEG (it ends before its end-of-image marker)", path.display());
    }
    let blocks = (w as u64).div_ceil(8) * (h as u64).div_ceil(8);
    if scan_bytes * 8 < blocks {
        bail!("image {} claims {w}×{h} pixels but holds only {scan_bytes} bytes of image data (at least one bit per 8×8 block is needed): a truncated or damaged JPEG", path.display());
    }
    Ok(())
}

/// Walks a JPEG's segments (each marker's length is skipped; the entropy-coded data after a
/// start-of-scan is read to the next marker, a data byte FF being followed by 00 or a restart
/// marker) until the end-of-image marker. Streaming, so a large file is never held in memory;
/// a thumbnail inside an EXIF segment is skipped with its segment and cannot end the walk.
fn jpeg_is_complete(r: impl std::io::Read) -> std::io::Result<(bool, u64)> {
    let mut bytes = r.bytes();
    let mut next = move || bytes.next().transpose();
    if next()? != Some(0xFF) || next()? != Some(0xD8) {
        return Ok((true, u64::MAX)); // Not a JPEG stream: nothing to check here.
    }
    let mut pending: Option<u8> = None;
    let mut scan_bytes = 0u64;
    loop {
        let marker = match pending.take() {
            Some(m) => m,
            None => {
                // Bytes between segments are tolerated (as decoders do); fill bytes FF are skipped.
                let mut b = next()?;
                while b.is_some_and(|b| b != 0xFF) {
                    b = next()?;
                }
                while b == Some(0xFF) {
                    b = next()?;
                }
                match b {
                    Some(m) => m,
                    None => return Ok((false, scan_bytes)),
                }
            }
        };
        match marker {
            0xD9 => return Ok((true, scan_bytes)),
            0x01 | 0xD0..=0xD7 => continue, // Markers without a segment.
            _ => {}
        }
        let (Some(hi), Some(lo)) = (next()?, next()?) else { return Ok((false, scan_bytes)) };
        let len = u16::from_be_bytes([hi, lo]);
        for _ in 2..len {
            if next()?.is_none() {
                return Ok((false, scan_bytes));
            }
        }
        if marker != 0xDA {
            continue;
        }
        // Entropy-coded data, up to the next marker.
        loop {
            match next()? {
                None => return Ok((false, scan_bytes)),
                Some(0xFF) => {
                    let mut b = next()?;
                    while b == Some(0xFF) {
                        b = next()?;
                    }
                    match b {
                        None => return Ok((false, scan_bytes)),
                        Some(0x00 | 0xD0..=0xD7) => {}
                        Some(m) => {
                            pending = Some(m);
                            break;
                        }
                    }
                }
                Some(_) => scan_bytes += 1,
            }
        }
    }
}

/// Decodes image bytes held in memory (an archive's file) under the same limits as a file:
/// the header's size is checked first, then the pixels are decoded within what they need.
pub fn decode_bytes(bytes: &[u8], origin: &str) -> Result<image::DynamicImage> {
    let reader = || -> Result<image::ImageReader<std::io::Cursor<&[u8]>>> {
        image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().with_context(|| format!("cannot read {origin}"))
    };
    let mut header = reader()?;
    header.limits(decode_limits(MAX_HEADER_ALLOC));
    let (w, h) = header.into_dimensions().map_err(|e| anyhow::anyhow!("cannot decode image {origin}: {e}"))?;
    check_image_size(Path::new(origin), w, h)?;
    let mut full = reader()?;
    full.limits(decode_limits((w as u64 * h as u64 * 16 + MAX_HEADER_ALLOC).min(MAX_DECODE_ALLOC)));
    full.decode().map_err(|e| anyhow::anyhow!("cannot decode image {origin}: {e}"))
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
    // What the pixels need (up to 16-bit RGBA, and a copy) plus room for the decoder's state:
    // metadata that inflates beyond that is cut off, whatever the file claims.
    let reader = limited_reader(path, (w as u64 * h as u64 * 16 + MAX_HEADER_ALLOC).min(MAX_DECODE_ALLOC))?;
    if reader.format() == Some(image::ImageFormat::Jpeg) {
        check_jpeg_complete(path, w, h)?;
    }
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

    /// The CRC-32 of a PNG chunk (type and body).
    fn crc32_of(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }

    /// PNG signature + an IHDR chunk declaring `w × h` RGB8 (valid CRC), and no image data.
    pub(crate) fn png_header_only(w: u32, h: u32) -> Vec<u8> {
        let crc32 = crc32_of;
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

    /// A JPEG encoded by the image crate, optionally with an APP1 segment holding a complete
    /// thumbnail JPEG (whose own end marker must not count for the main image).
    fn jpeg(w: u32, h: u32, thumbnail: bool) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7 % 256) as u8, (y * 3 % 256) as u8, ((x ^ y) % 256) as u8]));
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&img).unwrap();
        if thumbnail {
            let thumb = jpeg(8, 8, false);
            let mut seg = vec![0xFF, 0xE1];
            seg.extend(((thumb.len() + 2) as u16).to_be_bytes());
            seg.extend(&thumb);
            out.splice(2..2, seg);
        }
        out
    }

    #[test]
    fn truncated_jpegs_are_refused_in_every_mode() {
        let dir = tempfile::tempdir().unwrap();
        for thumbnail in [false, true] {
            let whole = jpeg(64, 48, thumbnail);
            let path = dir.path().join("whole.jpg");
            std::fs::write(&path, &whole).unwrap();
            assert_eq!(decode_rgb(&path).unwrap().dimensions(), (64, 48));
            for cut in [whole.len() - 2, whole.len() - 40, whole.len() / 2] {
                std::fs::write(&path, &whole[..cut]).unwrap();
                // Cut in the image data: the decoder alone would report success.
                let e = format!("{:#}", decode_rgb(&path).unwrap_err());
                assert!(e.contains("whole.jpg") && (cut < whole.len() / 2 + 1 || e.contains("truncated JPEG")), "cut at {cut} of {}: {e}", whole.len());
            }
        }
        // A header claiming 8000×8000 px, then almost nothing.
        let mut claim = jpeg(128, 128, false);
        let sof = claim.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        claim[sof + 5..sof + 9].copy_from_slice(&[0x1F, 0x40, 0x1F, 0x40]);
        claim.truncate(772);
        std::fs::write(dir.path().join("claim.jpg"), &claim).unwrap();
        std::fs::remove_file(dir.path().join("whole.jpg")).unwrap();
        let e = load_folder(dir.path(), 16, true).err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(e.contains("truncated JPEG"), "{e}");
        // The same claim in a file that is whole (it ends with its marker), but far too small.
        let mut whole = jpeg(16, 16, false);
        let sof = whole.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        whole[sof + 5..sof + 9].copy_from_slice(&[0x1F, 0x40, 0x1F, 0x40]);
        std::fs::write(dir.path().join("claim.jpg"), &whole).unwrap();
        let e = load_folder(dir.path(), 16, true).err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(e.contains("claims 8000×8000 pixels"), "{e}");
        std::fs::write(dir.path().join("ok.jpg"), jpeg(16, 16, false)).unwrap();
        let set = load_folder(dir.path(), 16, false).unwrap();
        assert_eq!((set.paths.len(), set.skipped.len()), (1, 1));
    }

    /// Run in a child process (this test binary again) so that its peak memory is its own.
    #[test]
    fn png_metadata_bombs_take_no_more_memory_than_their_pixels() {
        use std::io::Write;
        if let Ok(p) = std::env::var("A3FT_TEST_DECODE") {
            let p = Path::new(&p);
            assert_eq!(image_dimensions(p).unwrap(), (8, 8));
            assert_eq!(decode_rgb(p).unwrap().dimensions(), (8, 8));
            return;
        }
        // An iCCP chunk whose profile inflates to 1 GiB from about 1 MB.
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            z.write_all(&zeros).unwrap();
        }
        let mut data = b"bomb\0\0".to_vec();
        data.extend(z.finish().unwrap());
        let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
        chunk.extend(b"iCCP");
        chunk.extend(&data);
        chunk.extend(crc32_of(&[b"iCCP".as_slice(), &data].concat()).to_be_bytes());
        let mut plain = Vec::new();
        RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3])).write_to(&mut std::io::Cursor::new(&mut plain), image::ImageFormat::Png).unwrap();
        let mut png = plain[..33].to_vec(); // signature + IHDR
        png.extend(chunk);
        png.extend(&plain[33..]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bomb.png");
        std::fs::write(&path, png).unwrap();
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "data::tests::png_metadata_bombs_take_no_more_memory_than_their_pixels", "--test-threads=1", "--nocapture"])
            .env("A3FT_TEST_DECODE", &path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value, and wait4 writes only into the two
        // out-parameters, which live for the call.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let waited = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
        assert_eq!(waited, child.id() as i32);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the decode failed: {status}");
        let peak_mib = usage.ru_maxrss / 1024;
        assert!(peak_mib < 600, "decoding an 8×8 PNG with a 1 GiB ICC profile peaked at {peak_mib} MiB");
    }

    #[test]
    fn hidden_entries_are_not_images() {
        let dir = tempfile::tempdir().unwrap();
        RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3])).save(dir.path().join("a.png")).unwrap();
        std::fs::create_dir(dir.path().join(".out.staging-99")).unwrap();
        RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3])).save(dir.path().join(".out.staging-99/000000.png")).unwrap();
        RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3])).save(dir.path().join(".hidden.png")).unwrap();
        assert_eq!(list_images(dir.path()).unwrap(), vec![dir.path().join("a.png")]);
    }
}
