//! Pillow's `Image.resize(..., BICUBIC)` on 32-bit float ('F') images, reproduced exactly.
//!
//! clean-fid resizes each RGB plane as an 'F' image to 299×299. No crate reproduces Pillow's
//! coefficient layout and f64 accumulation order, hence this implementation: separable,
//! horizontal pass first, each tap sum accumulated in f64 from 0 and stored as f32.

/// Keys cubic kernel with a = −0.5 (Pillow's `bicubic_filter`).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output pixel: first input index and normalised weights (Pillow's `precompute_coeffs`).
fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut k: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) * ss))
                .collect();
            let ww: f64 = k.iter().sum();
            if ww != 0.0 {
                for w in &mut k {
                    *w /= ww;
                }
            }
            (xmin, k)
        })
        .collect()
}

/// Resizes one `h × w` float plane (row-major) to `oh × ow`.
pub fn resize_plane_f32(src: &[f32], w: usize, h: usize, ow: usize, oh: usize) -> Vec<f32> {
    assert_eq!(src.len(), w * h);
    let mut cur = src.to_vec();
    let mut cw = w;
    if ow != w {
        let coeffs = coefficients(w, ow);
        let mut out = vec![0f32; ow * h];
        for y in 0..h {
            let row = &cur[y * w..(y + 1) * w];
            for (xx, (xmin, k)) in coeffs.iter().enumerate() {
                let mut ss = 0.0f64;
                for (i, wgt) in k.iter().enumerate() {
                    ss += row[xmin + i] as f64 * wgt;
                }
                out[y * ow + xx] = ss as f32;
            }
        }
        cur = out;
        cw = ow;
    }
    if oh != h {
        let coeffs = coefficients(h, oh);
        let mut out = vec![0f32; cw * oh];
        for (yy, (ymin, k)) in coeffs.iter().enumerate() {
            for x in 0..cw {
                let mut ss = 0.0f64;
                for (i, wgt) in k.iter().enumerate() {
                    ss += cur[(ymin + i) * cw + x] as f64 * wgt;
                }
                out[yy * cw + x] = ss as f32;
            }
        }
        cur = out;
    }
    cur
}

/// clean-fid's "clean" resize of an RGB uint8 image (`h × w × 3`) to `size × size × 3` f32,
/// clipped to [0, 255], returned as planar `3 × size × size`.
pub fn clean_resize_rgb(rgb: &[u8], w: usize, h: usize, size: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(3 * size * size);
    for c in 0..3 {
        let plane: Vec<f32> = (0..w * h).map(|i| rgb[i * 3 + c] as f32).collect();
        out.extend(
            resize_plane_f32(&plane, w, h, size, size)
                .into_iter()
                .map(|v| v.clamp(0.0, 255.0)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_stays_constant_and_identity() {
        let src = vec![77.0f32; 20 * 13];
        let out = resize_plane_f32(&src, 20, 13, 299, 299);
        assert!(out.iter().all(|v| (v - 77.0).abs() < 1e-4));
        let ramp: Vec<f32> = (0..16).map(|v| v as f32).collect();
        assert_eq!(resize_plane_f32(&ramp, 4, 4, 4, 4), ramp);
    }
}
