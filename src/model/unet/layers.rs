//! Parameterised layers whose variable names mirror the official `state_dict` keys.
//!
//! Convolutions and linear maps run in the model's compute precision (bf16 under mixed
//! precision, with fp32 master weights cast per use). GroupNorm and LayerNorm accumulate their
//! statistics in fp32 whatever the activation kind.

use tch::{nn, Kind, Tensor};

/// PyTorch's default init for Conv/Linear (kaiming-uniform with a = √5): U(±1/√fan_in) for
/// weight and bias alike.
fn default_uniform(fan_in: i64) -> nn::Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    nn::Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

fn init_or_zero(zero: bool, fan_in: i64) -> nn::Init {
    if zero {
        nn::Init::Const(0.0)
    } else {
        default_uniform(fan_in)
    }
}

/// Casts a parameter to the compute kind of the activation it meets.
pub fn cast(t: &Tensor, kind: Kind) -> Tensor {
    if t.kind() == kind {
        t.shallow_clone()
    } else {
        t.to_kind(kind)
    }
}

#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
    /// LoRA update of the weight (diffusers attention projections under `--method lora`).
    pub lora: Option<LoraDelta>,
}

impl Linear {
    pub fn new(p: nn::Path, d_in: i64, d_out: i64) -> Self {
        Self::with_init(p, d_in, d_out, false)
    }
    pub fn with_init(p: nn::Path, d_in: i64, d_out: i64, zero: bool) -> Self {
        let weight = p.var("weight", &[d_out, d_in], init_or_zero(zero, d_in));
        let bias = p.var("bias", &[d_out], init_or_zero(zero, d_in));
        Linear {
            weight,
            bias,
            lora: None,
        }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let k = x.kind();
        match &self.lora {
            None => x.linear(&cast(&self.weight, k), Some(cast(&self.bias, k))),
            Some(l) => x.linear(
                &cast(&(&self.weight + l.delta()), k),
                Some(cast(&self.bias, k)),
            ),
        }
    }
}

#[derive(Debug)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Tensor,
    stride: i64,
    padding: i64,
}

impl Conv2d {
    pub fn new(
        p: nn::Path,
        c_in: i64,
        c_out: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
        zero: bool,
    ) -> Self {
        let fan_in = c_in * kernel * kernel;
        let weight = p.var(
            "weight",
            &[c_out, c_in, kernel, kernel],
            init_or_zero(zero, fan_in),
        );
        let bias = p.var("bias", &[c_out], init_or_zero(zero, fan_in));
        Conv2d {
            weight,
            bias,
            stride,
            padding,
        }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let k = x.kind();
        x.conv2d(
            &cast(&self.weight, k),
            Some(cast(&self.bias, k)),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )
    }
}

/// Optional low-rank update `ΔW = B·A·(alpha/r)` on a 1×1 projection (LoRA).
#[derive(Debug)]
pub struct LoraDelta {
    pub down: Tensor,
    pub up: Tensor,
    pub scale: f64,
}

impl LoraDelta {
    pub fn new(p: nn::Path, d_in: i64, d_out: i64, rank: i64) -> Self {
        // B starts at zero so the base model is unchanged at the first step.
        let down = p.var("lora_down", &[rank, d_in], default_uniform(d_in));
        let up = p.var("lora_up", &[d_out, rank], nn::Init::Const(0.0));
        LoraDelta {
            down,
            up,
            scale: 1.0,
        }
    }
    /// `ΔW` as an `[out, in]` matrix in f32.
    pub fn delta(&self) -> Tensor {
        self.up.matmul(&self.down) * self.scale
    }
}

/// Official Conv1d with kernel 1 (`qkv`, `proj_out`): weight `[out, in, 1]`, applied to `[N, C, T]`.
#[derive(Debug)]
pub struct Conv1x1 {
    pub weight: Tensor,
    pub bias: Tensor,
    pub lora: Option<LoraDelta>,
}

impl Conv1x1 {
    pub fn new(p: nn::Path, c_in: i64, c_out: i64, zero: bool) -> Self {
        let weight = p.var("weight", &[c_out, c_in, 1], init_or_zero(zero, c_in));
        let bias = p.var("bias", &[c_out], init_or_zero(zero, c_in));
        Conv1x1 {
            weight,
            bias,
            lora: None,
        }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let k = x.kind();
        let w = match &self.lora {
            None => self.weight.shallow_clone(),
            Some(l) => &self.weight + l.delta().unsqueeze(-1),
        };
        x.conv1d(&cast(&w, k), Some(cast(&self.bias, k)), [1], [0], [1], 1)
    }
}

/// GroupNorm with fp32 statistics: GroupNorm(32, C, eps 1e-5) as the official `GroupNorm32`, or
/// diffusers' `nn.GroupNorm(norm_num_groups, C, eps=norm_eps)`.
///
/// The official module casts its input to fp32 and the result back. libtorch's kernels already
/// accumulate mean and variance in fp32 for bf16 input, so under bf16 the kernel runs on the bf16
/// activation directly (affine parameters cast to bf16): the same statistics, without two
/// full-size cast passes per norm in forward and backward.
#[derive(Debug)]
pub struct GroupNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    groups: i64,
    eps: f64,
}

impl GroupNorm {
    /// The official GroupNorm32: 32 groups, eps 1e-5.
    pub fn new(p: nn::Path, channels: i64) -> Self {
        Self::with(p, channels, 32, 1e-5)
    }
    pub fn with(p: nn::Path, channels: i64, groups: i64, eps: f64) -> Self {
        let weight = p.var("weight", &[channels], nn::Init::Const(1.0));
        let bias = p.var("bias", &[channels], nn::Init::Const(0.0));
        GroupNorm {
            weight,
            bias,
            groups,
            eps,
        }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        x.group_norm(
            self.groups,
            Some(cast(&self.weight, kind)),
            Some(cast(&self.bias, kind)),
            self.eps,
            true,
        )
    }
}

/// LayerNorm over the last dimension, fp32 statistics (see [`GroupNorm`]).
#[derive(Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    dim: i64,
}

impl LayerNorm {
    pub fn new(p: nn::Path, dim: i64) -> Self {
        let weight = p.var("weight", &[dim], nn::Init::Const(1.0));
        let bias = p.var("bias", &[dim], nn::Init::Const(0.0));
        LayerNorm { weight, bias, dim }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        x.layer_norm(
            [self.dim],
            Some(cast(&self.weight, kind)),
            Some(cast(&self.bias, kind)),
            1e-5,
            true,
        )
    }
}
