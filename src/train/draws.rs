//! Every random draw of a run, derived from `(seed, step, stream)`.
//!
//! Batch indices, flips, timesteps, noise, new-module initialisation, the held-out split and
//! evaluation samples each come from their own stream, so a resumed run needs only its
//! trainable tensors, the Adam moments, the EMA and the step to continue bit-for-bit.

use tch::{Device, Kind, Tensor};

/// The streams (the third argument of [`step_seed`]).
pub mod stream {
    /// Per-epoch permutations of the training images (`step` is the epoch).
    pub const BATCH_ORDER: u64 = 1;
    /// Flips, timesteps and noise of one optimisation step.
    pub const STEP: u64 = 2;
    /// Initialisation of modules the base checkpoint lacks (adapters, LoRA, a model from scratch).
    pub const INIT: u64 = 3;
    /// The `--holdout-fraction` split.
    pub const HOLDOUT: u64 = 4;
    /// Samples drawn for in-loop evaluation.
    pub const EVAL: u64 = 5;
}

/// Deterministic seed for `(seed, step, stream)`.
pub fn step_seed(seed: u64, step: u64, stream: u64) -> i64 {
    // SplitMix64 finaliser: nearby (seed, step) pairs give unrelated seeds.
    let mut z = seed
        ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

/// Image indices of step `k` (0-based) on `device`: a stream of per-epoch permutations,
/// `batch` at a time. Drawn on the device so the step loop never waits for a host copy.
pub fn batch_indices(seed: u64, n: usize, batch: usize, step: u64, device: Device) -> Tensor {
    let (n, start) = (n as u64, step * batch as u64);
    let end = start + batch as u64;
    let mut parts = Vec::new();
    for epoch in start / n..=(end - 1) / n {
        tch::manual_seed(step_seed(seed, epoch, stream::BATCH_ORDER));
        let perm = Tensor::randperm(n as i64, (Kind::Int64, device));
        let lo = start.max(epoch * n) - epoch * n;
        let hi = end.min((epoch + 1) * n) - epoch * n;
        parts.push(perm.narrow(0, lo as i64, (hi - lo) as i64));
    }
    Tensor::cat(&parts, 0)
}
