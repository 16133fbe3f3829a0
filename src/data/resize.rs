//! Resizing as the official loader does: halve by box averaging while at least twice the
//! size, then bicubic, then a centre crop.

use image::{imageops::FilterType, RgbImage};

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
        image::Rgb([
            ((acc[0] + 2) / 4) as u8,
            ((acc[1] + 2) / 4) as u8,
            ((acc[2] + 2) / 4) as u8,
        ])
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

/// Size of the intermediate image [`center_crop_resize`] builds (before cropping).
pub fn resized_dims(w: u32, h: u32, res: u32) -> (u64, u64) {
    let (mut w, mut h) = (w as u64, h as u64);
    let res = res.max(1) as u64;
    while w.min(h) >= 2 * res {
        w /= 2;
        h /= 2;
    }
    let scale = res as f64 / w.min(h).max(1) as f64;
    (
        ((w as f64 * scale).round() as u64).max(res),
        ((h as f64 * scale).round() as u64).max(res),
    )
}
