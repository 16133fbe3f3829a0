//! Pixel-space nearest neighbours between generated and training images (the paper's Fig. 5).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Per generated image: index of its nearest training image and the RMS distance between them
/// (pixel values in [0, 1], i.e. L2 / √(3·H·W)).
pub fn nearest_training(generated: &Tensor, training: &Tensor) -> (Vec<i64>, Vec<f64>) {
    let g = generated.to_kind(Kind::Double).flatten(1, -1);
    let t = training.to_kind(Kind::Double).flatten(1, -1);
    let dim = g.size()[1] as f64;
    let d = Tensor::cdist(&g, &t, 2.0, None::<i64>); // [G, T]
    let (dist, idx) = d.min_dim(1, false);
    let dist: Vec<f64> = Vec::try_from(dist / dim.sqrt()).unwrap();
    (Vec::try_from(idx).unwrap(), dist)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memorization {
    pub threshold: f64,
    /// Fraction of generated images closer than `threshold` to some training image.
    pub fraction_below_threshold: f64,
    pub min_distance: f64,
    pub median_distance: f64,
    pub mean_distance: f64,
}

/// Largest side at which images are compared, in pixels: a near-copy is still near at this
/// size, and the distance matrix's memory stays bounded whatever the images' size.
pub const MAX_RESOLUTION: u32 = 128;

/// `[N, 3, H, W]` averaged down to at most [`MAX_RESOLUTION`] (no-op at or below it).
fn bounded(images: &Tensor) -> Tensor {
    let s = images.size();
    let max = MAX_RESOLUTION as i64;
    if s[2] <= max && s[3] <= max {
        return images.shallow_clone();
    }
    let (h, w) = if s[2] >= s[3] {
        (max, (s[3] * max / s[2]).max(1))
    } else {
        ((s[2] * max / s[3]).max(1), max)
    };
    images.to_kind(Kind::Float).adaptive_avg_pool2d([h, w])
}

/// Images are uint8-valued tensors `[N, 3, H, W]` (0–255) at the training resolution (compared
/// at most at [`MAX_RESOLUTION`]).
pub fn memorization(
    generated: &Tensor,
    training: &Tensor,
    threshold: f64,
) -> (Memorization, Vec<i64>, Vec<f64>) {
    let (generated, training) = (bounded(generated), bounded(training));
    let (idx, dist) = nearest_training(
        &(generated.to_kind(Kind::Double) / 255.0),
        &(training.to_kind(Kind::Double) / 255.0),
    );
    let mut sorted = dist.clone();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len().max(1) as f64;
    let m = Memorization {
        threshold,
        fraction_below_threshold: dist.iter().filter(|&&d| d < threshold).count() as f64 / n,
        min_distance: sorted.first().copied().unwrap_or(f64::NAN),
        median_distance: sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN),
        mean_distance: dist.iter().sum::<f64>() / n,
    };
    (m, idx, dist)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn finds_a_planted_copy() {
        tch::manual_seed(0);
        let train = (Tensor::rand([20, 3, 8, 8], (Kind::Float, Device::Cpu)) * 255.0).round();
        let gen = (Tensor::rand([10, 3, 8, 8], (Kind::Float, Device::Cpu)) * 255.0).round();
        gen.get(4).copy_(&train.get(13));
        let (m, idx, dist) = memorization(&gen, &train, 0.02);
        assert_eq!(idx[4], 13);
        assert_eq!(dist[4], 0.0);
        assert!((m.fraction_below_threshold - 0.1).abs() < 1e-12);
        assert!(dist.iter().enumerate().all(|(i, &d)| i == 4 || d > 0.1));
        // Above the bounded size, images are compared averaged down, and the copy is still found.
        let train = (Tensor::rand([6, 3, 300, 200], (Kind::Float, Device::Cpu)) * 255.0).round();
        let gen = (Tensor::rand([3, 3, 300, 200], (Kind::Float, Device::Cpu)) * 255.0).round();
        gen.get(1).copy_(&train.get(5));
        let (_, idx, dist) = memorization(&gen, &train, 0.02);
        assert_eq!((idx[1], dist[1]), (5, 0.0));
        assert_eq!(bounded(&train).size(), [6, 3, 128, 85]);
    }
}
