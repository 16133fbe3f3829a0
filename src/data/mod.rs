//! Image folders → tensors, resized as the official loader does.

pub mod datasets;
pub mod decode;
pub mod fetch;
pub mod iconify;
pub mod rasterize;
pub mod resize;
pub mod scan;
pub mod synth;
pub mod tarball;

// The layer's API: callers say `data::decode_rgb`, not where in the folder it lives.
pub use decode::{
    check_image_size, decode_bytes, decode_rgb, image_dimensions, MAX_DECODE_ALLOC,
    MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE,
};
pub use resize::{center_crop_resize, resized_dims};
pub use scan::{list_images, scan_images, Listing, IMAGE_EXTENSIONS};

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Largest training/evaluation resolution `load_folder` resizes to.
pub const MAX_RESOLUTION: u32 = 4096;
/// Largest decoded image set `load_folder` builds (the f32 tensor), 16 GiB.
pub const MAX_SET_BYTES: u64 = 16 << 30;

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
        bail!(
            "image folder {} contains no images ({})",
            dir.display(),
            IMAGE_EXTENSIONS.join(", ")
        );
    }
    let mut set = load_files(&listing.files, res, strict, &dir.display().to_string())?;
    skipped.append(&mut set.skipped);
    if set.paths.is_empty() {
        bail!(
            "no readable images in {} ({} files could not be read, e.g. {})",
            dir.display(),
            skipped.len(),
            skipped[0].1
        );
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
        crate::util::stop::check()?;
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
    Ok(ImageSet {
        images,
        paths,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::RgbImage;

    #[test]
    fn resize_and_crop_shapes() {
        let img = RgbImage::from_fn(300, 200, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 7])
        });
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
        RgbImage::from_pixel(20, 20, image::Rgb([255, 0, 0]))
            .save(dir.path().join("ok.png"))
            .unwrap();
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
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
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
        for (kind, body) in [
            (&b"IHDR"[..], &chunk[4..]),
            (b"IDAT", &[0x78, 0x9c, 0x63, 0x60][..]),
            (b"IEND", &[][..]),
        ] {
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
        RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]))
            .save(d.join("a.png"))
            .unwrap();
        RgbImage::from_pixel(8, 8, image::Rgb([4, 5, 6]))
            .save(d.join("sub/b.png"))
            .unwrap();
        std::os::unix::fs::symlink(".", d.join("loop")).unwrap();
        std::os::unix::fs::symlink("..", d.join("sub/up")).unwrap();
        std::os::unix::fs::symlink("sub", d.join("alias")).unwrap();
        std::os::unix::fs::symlink("a.png", d.join("link.png")).unwrap();
        std::os::unix::fs::symlink("missing.png", d.join("dangling.png")).unwrap();
        let listing = scan_images(&d).unwrap();
        let names: Vec<String> = listing
            .files
            .iter()
            .map(|p| p.strip_prefix(&d).unwrap().display().to_string())
            .collect();
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
        assert!(
            e.contains("big.png") && e.contains("20000×20000") && e.contains("limit"),
            "{e}"
        );
        let e = format!("{:#}", load_folder(dir.path(), 8, true).err().unwrap());
        assert!(e.contains("20000×20000"), "{e}");
        RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]))
            .save(dir.path().join("ok.png"))
            .unwrap();
        let set = load_folder(dir.path(), 8, false).unwrap();
        assert_eq!((set.images.size()[0], set.skipped.len()), (1, 1));
        // Thin images would be upscaled to a huge intermediate: skipped as well.
        RgbImage::from_pixel(60_000, 1, image::Rgb([1, 2, 3]))
            .save(dir.path().join("thin.png"))
            .unwrap();
        let set = load_folder(dir.path(), 256, false).unwrap();
        assert_eq!(set.skipped.len(), 2, "{:?}", set.skipped);
        assert!(load_folder(dir.path(), 0, false).is_err());
        assert!(load_folder(dir.path(), u32::MAX, false).is_err());
    }

    /// A JPEG encoded by the image crate, optionally with an APP1 segment holding a complete
    /// thumbnail JPEG (whose own end marker must not count for the main image).
    fn jpeg(w: u32, h: u32, thumbnail: bool) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 3 % 256) as u8,
                ((x ^ y) % 256) as u8,
            ])
        });
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&img)
            .unwrap();
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
                assert!(
                    e.contains("whole.jpg")
                        && (cut < whole.len() / 2 + 1 || e.contains("truncated JPEG")),
                    "cut at {cut} of {}: {e}",
                    whole.len()
                );
            }
        }
        // A header claiming 8000×8000 px, then almost nothing.
        let mut claim = jpeg(128, 128, false);
        let sof = claim.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        claim[sof + 5..sof + 9].copy_from_slice(&[0x1F, 0x40, 0x1F, 0x40]);
        claim.truncate(772);
        std::fs::write(dir.path().join("claim.jpg"), &claim).unwrap();
        std::fs::remove_file(dir.path().join("whole.jpg")).unwrap();
        let e = load_folder(dir.path(), 16, true)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(e.contains("truncated JPEG"), "{e}");
        // The same claim in a file that is whole (it ends with its marker), but far too small.
        let mut whole = jpeg(16, 16, false);
        let sof = whole.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        whole[sof + 5..sof + 9].copy_from_slice(&[0x1F, 0x40, 0x1F, 0x40]);
        std::fs::write(dir.path().join("claim.jpg"), &whole).unwrap();
        let e = load_folder(dir.path(), 16, true)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
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
        RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]))
            .write_to(
                &mut std::io::Cursor::new(&mut plain),
                image::ImageFormat::Png,
            )
            .unwrap();
        let mut png = plain[..33].to_vec(); // signature + IHDR
        png.extend(chunk);
        png.extend(&plain[33..]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bomb.png");
        std::fs::write(&path, png).unwrap();
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "data::tests::png_metadata_bombs_take_no_more_memory_than_their_pixels",
                "--test-threads=1",
                "--nocapture",
            ])
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
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the decode failed: {status}"
        );
        let peak_mib = usage.ru_maxrss / 1024;
        assert!(
            peak_mib < 600,
            "decoding an 8×8 PNG with a 1 GiB ICC profile peaked at {peak_mib} MiB"
        );
    }

    #[test]
    fn hidden_entries_are_not_images() {
        let dir = tempfile::tempdir().unwrap();
        RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]))
            .save(dir.path().join("a.png"))
            .unwrap();
        std::fs::create_dir(dir.path().join(".out.staging-99")).unwrap();
        RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]))
            .save(dir.path().join(".out.staging-99/000000.png"))
            .unwrap();
        RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]))
            .save(dir.path().join(".hidden.png"))
            .unwrap();
        assert_eq!(
            list_images(dir.path()).unwrap(),
            vec![dir.path().join("a.png")]
        );
    }
}
