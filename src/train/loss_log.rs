//! Training-loss means between two log lines, overall and per quarter of the timestep range,
//! accumulated on the device so the step loop never waits for a host copy.

use tch::{Device, Kind, Tensor};

pub struct LossLog {
    sums: Tensor, // [3 terms (loss, mse, vb), 5 buckets (all + 4 quartiles of t)]
    counts: Tensor,
}

/// Means of the three terms (`[term][bucket]`, NaN for an empty bucket).
pub type Means = [[f64; 5]; 3];

impl LossLog {
    pub fn new(device: Device) -> LossLog {
        LossLog {
            sums: Tensor::zeros([3, 5], (Kind::Float, device)),
            counts: Tensor::zeros([5], (Kind::Float, device)),
        }
    }

    /// Adds per-example terms `[B]` at timesteps `t` of a `num_timesteps` process.
    pub fn add(&mut self, losses: &crate::diffusion::Losses, t: &Tensor, num_timesteps: usize) {
        let (loss, mse, vb) = (&losses.loss, &losses.mse, &losses.vb);
        tch::no_grad(|| {
            let q = (t * 4)
                .floor_divide_scalar(num_timesteps as i64)
                .clamp(0, 3);
            let onehot = q.one_hot(4).to_kind(Kind::Float); // [B, 4]
            let ones = Tensor::ones([t.size()[0], 1], (Kind::Float, t.device()));
            let w = Tensor::cat(&[ones, onehot], 1); // [B, 5]
            let terms = Tensor::stack(&[loss.detach(), mse.detach(), vb.detach()], 0); // [3, B]
            let _ = self.sums.g_add_(&terms.matmul(&w));
            let _ = self
                .counts
                .g_add_(&w.sum_dim_intlist([0].as_slice(), false, Kind::Float));
        });
    }

    /// Whether every sum so far is finite (one device sync).
    pub fn finite(&self) -> bool {
        bool::try_from(self.sums.isfinite().all()).unwrap_or(false)
    }

    /// (means, all finite?) and reset.
    pub fn take(&mut self) -> (Means, bool) {
        let sums: Vec<f64> = Vec::try_from(
            self.sums
                .to_kind(Kind::Double)
                .to_device(Device::Cpu)
                .flatten(0, -1),
        )
        .unwrap_or_default();
        let counts: Vec<f64> =
            Vec::try_from(self.counts.to_kind(Kind::Double).to_device(Device::Cpu))
                .unwrap_or_default();
        let mut out = [[f64::NAN; 5]; 3];
        let mut finite = sums.len() == 15 && counts.len() == 5;
        for term in 0..3 {
            for b in 0..5 {
                let s = sums.get(term * 5 + b).copied().unwrap_or(f64::NAN);
                finite &= s.is_finite();
                if counts.get(b).is_some_and(|&c| c > 0.0) {
                    out[term][b] = s / counts[b];
                }
            }
        }
        let _ = self.sums.zero_();
        let _ = self.counts.zero_();
        (out, finite)
    }
}
