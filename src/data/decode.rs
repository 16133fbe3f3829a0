//! Decoding one image under limits: the header's size is checked first, every decoder runs
//! with bounded memory (metadata bombs included), and a truncated JPEG is refused.

use anyhow::{bail, Context, Result};
use image::RgbImage;
use std::path::Path;

/// Largest image a3ft decodes: 8192 × 8192 pixels (64 Mpx, 192 MiB as RGB). A header that
/// declares more is refused before anything is decoded.
pub const MAX_IMAGE_PIXELS: u64 = 8192 * 8192;

/// Largest side of an image, in pixels.
pub const MAX_IMAGE_SIDE: u32 = 65_535;

/// Memory the decoder itself may allocate for one image (`image::Limits::max_alloc`).
pub const MAX_DECODE_ALLOC: u64 = 1 << 30;

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

/// A file of images, buffered.
fn open_file(path: &Path) -> Result<std::io::BufReader<std::fs::File>> {
    Ok(std::io::BufReader::new(crate::util::files::open_regular(
        path,
    )?))
}

/// A reader of `source` under [`decode_limits`], its format guessed from the content.
fn limited<R: std::io::BufRead + std::io::Seek>(
    source: R,
    origin: &str,
    max_alloc: u64,
) -> Result<image::ImageReader<R>> {
    let mut reader = image::ImageReader::new(source)
        .with_guessed_format()
        .with_context(|| format!("cannot read {origin}"))?;
    reader.limits(decode_limits(max_alloc));
    Ok(reader)
}

/// Width and height from the image header, without decoding the pixels.
pub fn image_dimensions(path: &Path) -> Result<(u32, u32)> {
    let origin = path.display().to_string();
    limited(open_file(path)?, &origin, MAX_HEADER_ALLOC)?
        .into_dimensions()
        .map_err(|e| anyhow::anyhow!("cannot decode image {origin}: {e}"))
}

/// Refuses a JPEG that ends before its end-of-image marker: the JPEG decoder fills a cut-off
/// file with grey and reports success (a header claiming 8000×8000 px in 772 bytes decodes).
/// A file whose image data is far too small for the size its header claims is refused too:
/// Huffman coding spends at least one bit on every 8×8 luma block.
fn check_jpeg_complete(source: impl std::io::Read, origin: &str, w: u32, h: u32) -> Result<()> {
    let (complete, scan_bytes) =
        jpeg_is_complete(source).with_context(|| format!("cannot read {origin}"))?;
    if !complete {
        bail!("image {origin} is a truncated JPEG (it ends before its end-of-image marker)");
    }
    let blocks = (w as u64).div_ceil(8) * (h as u64).div_ceil(8);
    if scan_bytes * 8 < blocks {
        bail!("image {origin} claims {w}×{h} pixels but holds only {scan_bytes} bytes of image data (at least one bit per 8×8 block is needed): a truncated or damaged JPEG");
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
        let (Some(hi), Some(lo)) = (next()?, next()?) else {
            return Ok((false, scan_bytes));
        };
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

/// Decodes image bytes held in memory (an archive's file) under the same limits as a file.
pub fn decode_bytes(bytes: &[u8], origin: &str) -> Result<image::DynamicImage> {
    decode_limited(|| Ok(std::io::Cursor::new(bytes)), origin)
}

/// One image decoded under limits from a source that can be read again from its start (a file,
/// bytes): the header's size is checked first, a JPEG must be whole, and the decoder may
/// allocate what the pixels need (up to 16-bit RGBA, and a copy) plus room for its state —
/// metadata that inflates beyond that is cut off, whatever the file claims.
fn decode_limited<R: std::io::BufRead + std::io::Seek>(
    open: impl Fn() -> Result<R>,
    origin: &str,
) -> Result<image::DynamicImage> {
    let (w, h) = limited(open()?, origin, MAX_HEADER_ALLOC)?
        .into_dimensions()
        .map_err(|e| anyhow::anyhow!("cannot decode image {origin}: {e}"))?;
    check_image_size(Path::new(origin), w, h)?;
    let reader = limited(
        open()?,
        origin,
        (w as u64 * h as u64 * 16 + MAX_HEADER_ALLOC).min(MAX_DECODE_ALLOC),
    )?;
    if reader.format() == Some(image::ImageFormat::Jpeg) {
        check_jpeg_complete(open()?, origin, w, h)?;
    }
    let img = reader
        .decode()
        // The decoder's message already holds its source; chaining it would print it twice.
        .map_err(|e| anyhow::anyhow!("cannot decode image {origin}: {e}"))?;
    if (img.width(), img.height()) != (w, h) {
        bail!(
            "image {origin} changed while it was read ({w}×{h}, then {}×{})",
            img.width(),
            img.height()
        );
    }
    Ok(img)
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
        bail!(
            "image {} is {w}×{h} pixels, above the limit of {MAX_IMAGE_SIDE} px per side",
            path.display()
        );
    }
    if w == 0 || h == 0 {
        bail!("image {} is {w}×{h} pixels (empty)", path.display());
    }
    Ok(())
}

/// Decodes an image as RGB. The header's size is checked first ([`check_image_size`]), and
/// the decoder runs under `image::Limits` (at most [`MAX_DECODE_ALLOC`] bytes).
pub fn decode_rgb(path: &Path) -> Result<RgbImage> {
    Ok(decode_limited(|| open_file(path), &path.display().to_string())?.to_rgb8())
}
