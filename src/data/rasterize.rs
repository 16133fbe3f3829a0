//! Source images (PNG with alpha, SVG) → opaque RGB squares on white at the requested size.
//!
//! Training images have no alpha channel, and dropping alpha would leave whatever colour the
//! artist kept under transparent pixels (often black); compositing on white gives the clean
//! look of an emoji or an artwork on a page.

use anyhow::{bail, Context, Result};
use image::{RgbImage, RgbaImage};

/// Largest `--size` accepted: the models train at 32–256 px, and 1024² per image keeps a
/// set of a few thousand within memory.
pub const MAX_SIZE: u32 = 1024;

pub fn check_size(size: u32) -> Result<()> {
    if size == 0 || size > MAX_SIZE {
        bail!(
            "--size {size} is out of range: give a pixel size from 1 to {MAX_SIZE} (e.g. 32 or 64)"
        );
    }
    Ok(())
}

/// "source-over" on an opaque white page, per channel in 8-bit sRGB (as browsers and PIL's
/// `alpha_composite` do): `c·a + 255·(1 − a)`, rounded. Alpha 255 keeps the colour exactly
/// and alpha 0 gives pure white.
pub fn composite_on_white(img: &RgbaImage) -> RgbImage {
    RgbImage::from_fn(img.width(), img.height(), |x, y| {
        let [r, g, b, a] = img.get_pixel(x, y).0;
        let a = a as u32;
        let mix = |c: u8| ((c as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
        image::Rgb([mix(r), mix(g), mix(b)])
    })
}

/// A raster image (PNG, any colour type) composited on white and resized to `size`×`size`.
///
/// Resizing reuses the training loader's own path (`data::center_crop_resize`): repeated
/// exact 2×2 box averaging while the image is at least twice the size, then Catmull-Rom
/// (PIL's bicubic) for what is left. So 64 → 32 is a pure area average (no ringing around
/// the sharp emoji outlines), 64 → 64 is untouched, and any other size gets the same
/// pixels `a3ft train` would have made from the 64-px file itself. Compositing comes
/// first because resizing is linear: averaging colours that sit under alpha 0 would
/// otherwise bleed them into the outline.
pub fn raster_on_white(bytes: &[u8], size: u32) -> Result<RgbImage> {
    let img = crate::data::decode_bytes(bytes, "PNG")?;
    let rgb = composite_on_white(&img.to_rgba8());
    Ok(crate::data::center_crop_resize(&rgb, size))
}

/// An SVG rendered with resvg onto a white `size`×`size` square: scaled to fit (aspect
/// kept) and centred, so a wide artwork gets white bands above and below instead of being
/// cropped. Rendering straight at the target size lets resvg's anti-aliasing do the
/// resampling, sharper than rendering large and shrinking.
pub fn svg_on_white(bytes: &[u8], size: u32) -> Result<RgbImage> {
    use resvg::{tiny_skia, usvg};
    let options = usvg::Options {
        // Never read other files or data URLs on behalf of an SVG: the data sets are
        // self-contained, and an SVG from an archive must not reach into this machine.
        image_href_resolver: usvg::ImageHrefResolver {
            resolve_data: Box::new(|_, _, _| None),
            resolve_string: Box::new(|_, _| None),
        },
        ..usvg::Options::default()
    };
    let tree = usvg::Tree::from_data(bytes, &options).context("cannot parse SVG")?;
    let (w, h) = (tree.size().width(), tree.size().height());
    let scale = size as f32 / w.max(h);
    let (dx, dy) = (
        (size as f32 - w * scale) / 2.0,
        (size as f32 - h * scale) / 2.0,
    );
    let mut pixmap =
        tiny_skia::Pixmap::new(size, size).context("cannot allocate the SVG canvas")?;
    pixmap.fill(tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        tiny_skia::Transform::from_row(scale, 0.0, 0.0, scale, dx, dy),
        &mut pixmap.as_mut(),
    );
    // On an opaque canvas every pixel stays opaque, so the premultiplied RGBA is plain RGB.
    let rgb: Vec<u8> = pixmap
        .data()
        .chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    RgbImage::from_raw(size, size, rgb).context("SVG canvas size mismatch")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compositing_and_sizes() {
        let img = RgbaImage::from_fn(2, 1, |x, _| {
            if x == 0 {
                image::Rgba([0, 0, 0, 0])
            } else {
                image::Rgba([10, 20, 30, 255])
            }
        });
        let out = composite_on_white(&img);
        assert_eq!(out.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(out.get_pixel(1, 0).0, [10, 20, 30]);
        let half = composite_on_white(&RgbaImage::from_pixel(1, 1, image::Rgba([0, 0, 0, 128])));
        assert_eq!(half.get_pixel(0, 0).0, [127, 127, 127]);
        assert!(check_size(0).is_err() && check_size(1025).is_err() && check_size(32).is_ok());
    }

    #[test]
    fn svg_fits_and_centres() {
        // A 20×10 red bar fills the width; the bands above and below stay white.
        let svg = br#"<svg xmlns="http://www.w3.org/2000/svg" width="20" height="10"><rect width="20" height="10" fill="red"/></svg>"#;
        let img = svg_on_white(svg, 16).unwrap();
        assert_eq!(img.dimensions(), (16, 16));
        assert_eq!(img.get_pixel(8, 8).0, [255, 0, 0]);
        assert_eq!(img.get_pixel(8, 1).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(8, 14).0, [255, 255, 255]);
        assert!(svg_on_white(b"not svg", 16).is_err());
    }
}
