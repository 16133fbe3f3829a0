//! The time-aware adapter of A³FT (see docs/design/adapter.md).
//!
//! Inserted in every attention block between the attention output `a` and `proj_out`:
//! `proj_out((1 − α)·a + α·z_out)`. Time fusion and the channel-wise cross-attention are
//! shared by all attention blocks of one width; the time-scaling gate α belongs to one block.

use crate::model::unet::layers::{LayerNorm, Linear};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

/// How the adapters start (docs/design/adapter.md, "Starts"). New runs get `ZeroScale` (the start
/// with the lowest held-out loss in both real-image studies, docs/design/adapter.md); configs written
/// before the start was stored were `Random` (`AdapterStart::stored_before_choice`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[derive(Default)]
pub enum AdapterStart {
    /// Every adapter weight randomly initialised (the paper's): α ≈ 0.5 at step 0, so the
    /// pre-trained output moves before any training.
    Random,
    /// W6 = 0, b6 = B: every gate starts at sigmoid(B) (near the identity for B ≈ −4).
    GateBias(f64),
    /// Random weights and a zero-initialised per-channel output scale γ (α·γ replaces α):
    /// exactly the identity at step 0; γ gets gradient at once, every other adapter weight
    /// from the second step on.
    #[default]
    ZeroScale,
}

impl AdapterStart {
    /// The start of runs and study arms stored without one (all made with the random start).
    pub fn stored_before_choice() -> AdapterStart {
        AdapterStart::Random
    }

    /// `random`, `zero-scale`, `gate-bias:B` or `default`.
    pub fn parse(s: &str) -> Result<AdapterStart> {
        match s {
            "random" => Ok(AdapterStart::Random),
            "default" => Ok(AdapterStart::default()),
            "zero-scale" => Ok(AdapterStart::ZeroScale),
            _ => match s.strip_prefix("gate-bias:").map(str::parse::<f64>) {
                Some(Ok(b)) if b.is_finite() && b.abs() <= MAX_GATE_BIAS => Ok(AdapterStart::GateBias(b)),
                Some(Ok(b)) => bail!("gate bias {} is out of range (within ±{MAX_GATE_BIAS}; sigmoid(±20) is already 0 or 1 in f32)", crate::util::fmt_num(b)),
                _ => bail!("unknown adapter start {s:?} (random, zero-scale, gate-bias:B or default)"),
            },
        }
    }

    /// The form `parse` reads.
    pub fn name(self) -> String {
        match self {
            AdapterStart::Random => "random".into(),
            AdapterStart::ZeroScale => "zero-scale".into(),
            AdapterStart::GateBias(b) => format!("gate-bias:{b}"),
        }
    }
}

/// Largest |B| of a gate-bias start: beyond it the gate is saturated anyway, and the bias is an
/// f32 tensor (1e39 would not fit).
pub const MAX_GATE_BIAS: f64 = 1e4;

/// Hidden width of the time-scaling MLP.
pub const TIME_SCALING_HIDDEN: i64 = 32;

/// Time fusion + channel-wise cross-attention, one per channel width.
#[derive(Debug)]
pub struct AdapterShared {
    fuse_in: Linear,
    fuse_out: Linear,
    query: Linear,
    query_norm: LayerNorm,
    out: Linear,
    out_norm: LayerNorm,
}

/// Per-block gate `α = sigmoid(W6·SiLU(W5·e + b5) + b6)`, times `out_scale` γ for the
/// zero-scale start.
#[derive(Debug)]
pub struct TimeScaling {
    hidden: Linear,
    gate: Linear,
    out_scale: Option<Tensor>,
}

impl AdapterShared {
    pub fn new(p: nn::Path, emb_dim: i64, channels: i64) -> Self {
        AdapterShared {
            fuse_in: Linear::new(&p / "fuse_in", emb_dim, channels),
            fuse_out: Linear::new(&p / "fuse_out", channels, channels),
            query: Linear::new(&p / "query", channels, channels),
            query_norm: LayerNorm::new(&p / "query_norm", channels),
            out: Linear::new(&p / "out", channels, channels),
            out_norm: LayerNorm::new(&p / "out_norm", channels),
        }
    }

    /// `(1 − α)·a + α·z_out` for attention output `a` `[N, C, L]` and time embedding `emb` `[N, D]`.
    pub fn mix(&self, a: &Tensor, emb: &Tensor, scaling: &TimeScaling) -> Tensor {
        let kind = a.kind();
        let emb = emb.to_kind(kind);
        let tau = self.fuse_out.forward(&self.fuse_in.forward(&emb).silu()); // [N, C]
        let a_t = a.transpose(1, 2); // [N, L, C]
        let z_query = self
            .query_norm
            .forward(&self.query.forward(&(&a_t + tau.unsqueeze(1))));
        // Attention between channels: tokens are the C channels, features the L positions,
        // scale 1/√L. The C×C weights are small, so plain batched matmuls (no copies: the
        // transposes are folded into the GEMMs) beat a fused kernel whose head dimension would
        // be L; the softmax runs in fp32.
        let l = a.size()[2];
        let logits = z_query.transpose(1, 2).matmul(&a.transpose(1, 2)); // [N, C, C]
        let w = (logits.to_kind(Kind::Float) * (1.0 / (l as f64).sqrt()))
            .softmax(-1, Kind::Float)
            .to_kind(kind);
        let o = w.matmul(a).transpose(1, 2); // [N, L, C]
        let z_out = self.out_norm.forward(&self.out.forward(&o)).transpose(1, 2); // [N, C, L]
        let alpha = scaling.alpha(&emb).to_kind(kind).unsqueeze(-1); // [N, C, 1]
        a * (-&alpha + 1.0) + z_out * alpha
    }
}

impl TimeScaling {
    pub fn new(p: nn::Path, emb_dim: i64, channels: i64, start: AdapterStart) -> Self {
        let hidden = Linear::new(&p / "hidden", emb_dim, TIME_SCALING_HIDDEN);
        let gate = Linear::new(&p / "gate", TIME_SCALING_HIDDEN, channels);
        if let AdapterStart::GateBias(b) = start {
            tch::no_grad(|| {
                let _ = gate.weight.shallow_clone().fill_(0.0);
                let _ = gate.bias.shallow_clone().fill_(b);
            });
        }
        let out_scale =
            (start == AdapterStart::ZeroScale).then(|| p.zeros("out_scale", &[channels]));
        TimeScaling {
            hidden,
            gate,
            out_scale,
        }
    }

    /// Gate values α in [0, 1] (α·γ for the zero-scale start), `[N, C]`, computed in fp32.
    pub fn alpha(&self, emb: &Tensor) -> Tensor {
        let emb = emb.to_kind(Kind::Float);
        let alpha = self
            .gate
            .forward(&self.hidden.forward(&emb).silu())
            .sigmoid();
        match &self.out_scale {
            Some(g) => alpha * g.to_kind(Kind::Float).unsqueeze(0),
            None => alpha,
        }
    }
}
