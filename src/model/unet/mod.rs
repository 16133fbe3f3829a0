//! The official improved-diffusion / guided-diffusion UNet, with parameter names equal to the
//! official `state_dict` keys. Optional extras (time-aware adapters, LoRA) live under their own
//! prefixes so the official key set is untouched.

pub mod blocks;
pub mod diffusers;
pub mod layers;

use crate::model::adapter::{AdapterShared, AdapterStart, TimeScaling};
use crate::model::difffit::Gamma;
use crate::model::spec::{AdmSpec, UNetSpec};
use blocks::{AttentionBlock, Downsample, QkvOrder, ResBlock, Resample, Upsample};
use layers::{Conv2d, GroupNorm, Linear, LoraDelta};
use std::collections::BTreeMap;
use tch::{nn, Kind, Tensor};

/// Sinusoidal timestep embedding `[cos | sin]`, frequencies computed in f32 as the official code.
pub fn timestep_embedding(t: &Tensor, dim: i64) -> Tensor {
    sinusoidal_embedding(t, dim, true, 0.0)
}

/// diffusers' `get_timestep_embedding`: frequencies exp(−ln(10⁴)·i / (dim/2 − freq_shift)),
/// `[sin | cos]`, or `[cos | sin]` with `flip_sin_to_cos` (the official layout is flip, shift 0).
pub fn sinusoidal_embedding(
    t: &Tensor,
    dim: i64,
    flip_sin_to_cos: bool,
    freq_shift: f64,
) -> Tensor {
    let half = dim / 2;
    let freqs = (Tensor::arange(half, (Kind::Float, t.device())) * (-(10000f64.ln())))
        / (half as f64 - freq_shift);
    let freqs = freqs.exp();
    let args = t.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
    let emb = if flip_sin_to_cos {
        Tensor::cat(&[args.cos(), args.sin()], -1)
    } else {
        Tensor::cat(&[args.sin(), args.cos()], -1)
    };
    if dim % 2 == 1 {
        Tensor::cat(&[&emb, &emb.narrow(1, 0, 1).zeros_like()], -1)
    } else {
        emb
    }
}

#[derive(Debug)]
pub enum Layer {
    Conv(Conv2d),
    Res(ResBlock),
    Attn(Box<AttentionBlock>, String),
    Down(Downsample),
    Up(Upsample),
    /// diffusers `UNet2DModel` blocks (its `Upsample2D` is `Up`).
    ResnetBlock2D(diffusers::ResnetBlock2D),
    DiffusersAttention(Box<diffusers::Attention>, String),
    Downsample2D(diffusers::Downsample2D),
}

/// The variable path of a dotted key prefix (`"down_blocks.1.attentions.0"`) under `root`.
pub(crate) fn path_of<'a>(root: &nn::Path<'a>, name: &str) -> nn::Path<'a> {
    name.split('.').fold(root.clone(), |p, c| p / c)
}

/// Additions to the official network.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extras {
    /// Time-aware adapters, and how they start.
    pub adapter: Option<AdapterStart>,
    /// LoRA rank on every attention block's qkv and proj_out.
    pub lora_rank: Option<i64>,
    /// DiffFit's γ on every block's residual branch.
    pub difffit: bool,
}

/// Where each official block lives, for parameter accounting and method selection.
#[derive(Debug, Clone, Default)]
pub struct BlockIndex {
    /// Key prefixes (`"input_blocks.9.1"`, `"down_blocks.1.attentions.0"`) of attention blocks,
    /// with their width.
    pub attention: Vec<(String, i64)>,
    /// Key prefixes of ResBlocks.
    pub residual: Vec<String>,
    /// Keys of the normalisations' scales (`…in_layers.0.weight`, `…norm1.weight`): in both
    /// families the only one-dimensional weights, since convolutions and linear maps are ≥ 2-D.
    pub norm_weights: std::collections::BTreeSet<String>,
}

impl BlockIndex {
    /// A bias or a normalisation's scale of the official network (what DiffFit trains besides γ).
    pub fn is_bias_or_norm(&self, name: &str) -> bool {
        name.ends_with(".bias") || self.norm_weights.contains(name)
    }
}

pub struct UNet {
    pub spec: UNetSpec,
    time_embed: (Linear, Linear),
    label_emb: Option<Tensor>,
    input_blocks: Vec<Vec<Layer>>,
    middle_block: Vec<Layer>,
    output_blocks: Vec<Vec<Layer>>,
    out_norm: GroupNorm,
    out_conv: Conv2d,
    adapters_shared: BTreeMap<i64, AdapterShared>,
    adapters_scaling: BTreeMap<String, TimeScaling>,
    /// Timestep embedding layout: (`flip_sin_to_cos`, `freq_shift`); the official one is (true, 0).
    time_proj: (bool, f64),
    /// diffusers' `center_input_sample`: the network sees 2x − 1.
    center_input_sample: bool,
    pub blocks: BlockIndex,
    /// The time-aware adapters are skipped (domain guidance's source pass).
    adapters_off: std::sync::atomic::AtomicBool,
    /// Kind in which convolutions and matmuls run (Float or BFloat16).
    pub compute_kind: Kind,
    pub train: bool,
}

impl std::fmt::Debug for UNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UNet")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// Builds one family's network (`S`: its spec) and the a3ft modules inside it.
struct Builder<'a, S> {
    spec: &'a S,
    /// Width of the time embedding the adapters receive.
    emb_dim: i64,
    extras: &'a Extras,
    root: nn::Path<'a>,
    blocks: BlockIndex,
    adapters_shared: BTreeMap<i64, AdapterShared>,
    adapters_scaling: BTreeMap<String, TimeScaling>,
}

impl Builder<'_, AdmSpec> {
    fn res(&mut self, name: &str, p: nn::Path, c_in: i64, c_out: i64, r: Resample) -> Layer {
        self.blocks.residual.push(name.to_string());
        let s = self.spec;
        let mut block = ResBlock::new(
            p,
            c_in,
            c_out,
            s.time_embed_dim(),
            s.use_scale_shift_norm,
            r,
            s.dropout,
        );
        block.gamma = self.difffit_gamma(name, c_out);
        Layer::Res(block)
    }

    fn attn(&mut self, name: &str, p: nn::Path, channels: i64, upsample: bool) -> Layer {
        let s = self.spec;
        let order = if s.use_new_attention_order {
            QkvOrder::New
        } else {
            QkvOrder::Legacy
        };
        let mut block = AttentionBlock::new(p, channels, s.heads_for(channels, upsample), order);
        if let Some(rank) = self.extras.lora_rank {
            let lp = path_of(&(self.root.clone() / "lora"), name);
            block.qkv.lora = Some(LoraDelta::new(&lp / "qkv", channels, 3 * channels, rank));
            block.proj_out.lora = Some(LoraDelta::new(&lp / "proj_out", channels, channels, rank));
        }
        block.gamma = self.difffit_gamma(name, channels);
        self.add_adapter(name, channels);
        self.blocks.attention.push((name.to_string(), channels));
        Layer::Attn(Box::new(block), name.to_string())
    }
}

impl<S> Builder<'_, S> {
    /// DiffFit's γ for block `name` (`difffit.<name>.gamma`), when the method adds it.
    fn difffit_gamma(&self, name: &str, channels: i64) -> Option<Gamma> {
        self.extras
            .difffit
            .then(|| Gamma::new(path_of(&(self.root.clone() / "difffit"), name), channels))
    }

    /// The time-aware adapter of attention block `name`: its own gate, and the fusion and
    /// cross-attention shared by every block of its width.
    fn add_adapter(&mut self, name: &str, channels: i64) {
        if let Some(start) = self.extras.adapter {
            let emb = self.emb_dim;
            let shared_path = self.root.clone() / "adapter" / "shared" / format!("c{channels}");
            self.adapters_shared
                .entry(channels)
                .or_insert_with(|| AdapterShared::new(shared_path, emb, channels));
            let sp = path_of(&(self.root.clone() / "adapter" / "scale"), name);
            self.adapters_scaling
                .insert(name.to_string(), TimeScaling::new(sp, emb, channels, start));
        }
    }
}

impl UNet {
    /// Builds the network with variables in `vs` (default init; official zero-init where the
    /// official code zero-initialises).
    pub fn new(vs: &nn::VarStore, spec: &UNetSpec, extras: &Extras) -> UNet {
        let mut unet = match spec {
            UNetSpec::Adm(s) => Self::adm(vs, spec, s, extras),
            UNetSpec::Diffusers(cfg) => Self::diffusers(vs, spec, cfg, extras),
        };
        unet.blocks.norm_weights = vs
            .variables()
            .into_iter()
            .filter(|(k, t)| {
                t.dim() == 1
                    && k.ends_with(".weight")
                    && !crate::model::EXTRA_PREFIXES
                        .iter()
                        .any(|p| k.starts_with(p))
            })
            .map(|(k, _)| k)
            .collect();
        unet
    }

    /// A diffusers `UNet2DModel`.
    fn diffusers(
        vs: &nn::VarStore,
        spec: &UNetSpec,
        cfg: &crate::diffusers::config::UNet2D,
        extras: &Extras,
    ) -> UNet {
        let root = vs.root();
        let mut b = Builder {
            spec: cfg,
            emb_dim: cfg.time_embed_dim,
            extras,
            root: root.clone(),
            blocks: BlockIndex::default(),
            adapters_shared: BTreeMap::new(),
            adapters_scaling: BTreeMap::new(),
        };
        let p = b.diffusers();
        UNet {
            spec: spec.clone(),
            time_embed: p.time_embed,
            label_emb: None,
            input_blocks: p.input_blocks,
            middle_block: p.middle_block,
            output_blocks: p.output_blocks,
            out_norm: p.out_norm,
            out_conv: p.out_conv,
            adapters_shared: b.adapters_shared,
            adapters_scaling: b.adapters_scaling,
            time_proj: (cfg.flip_sin_to_cos, cfg.freq_shift),
            center_input_sample: cfg.center_input_sample,
            blocks: b.blocks,
            adapters_off: Default::default(),
            compute_kind: Kind::Float,
            train: false,
        }
    }

    /// The official improved/guided-diffusion UNet.
    fn adm(vs: &nn::VarStore, whole: &UNetSpec, spec: &AdmSpec, extras: &Extras) -> UNet {
        let root = vs.root();
        let mut b = Builder {
            spec,
            emb_dim: spec.time_embed_dim(),
            extras,
            root: root.clone(),
            blocks: BlockIndex::default(),
            adapters_shared: BTreeMap::new(),
            adapters_scaling: BTreeMap::new(),
        };
        let mc = spec.model_channels;
        let emb_dim = spec.time_embed_dim();
        let time_embed = (
            Linear::new(&root / "time_embed" / 0, mc, emb_dim),
            Linear::new(&root / "time_embed" / 2, emb_dim, emb_dim),
        );
        let label_emb = spec.num_classes.map(|n| {
            (&root / "label_emb").var(
                "weight",
                &[n, emb_dim],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            )
        });

        let ib = &root / "input_blocks";
        let mut input_blocks = vec![vec![Layer::Conv(Conv2d::new(
            &ib / 0 / 0,
            spec.in_channels,
            mc,
            3,
            1,
            1,
            false,
        ))]];
        let mut chans = vec![mc];
        let mut ch = mc;
        let mut ds = 1;
        let levels = spec.channel_mult.len();
        for level in 0..levels {
            let w = spec.level_width(level);
            for _ in 0..spec.num_res_blocks {
                let i = input_blocks.len();
                let p = &ib / i;
                let mut entry = vec![b.res(
                    &format!("input_blocks.{i}.0"),
                    &p / 0,
                    ch,
                    w,
                    Resample::None,
                )];
                ch = w;
                if spec.attention_ds.contains(&ds) {
                    entry.push(b.attn(&format!("input_blocks.{i}.1"), &p / 1, ch, false));
                }
                input_blocks.push(entry);
                chans.push(ch);
            }
            if level != levels - 1 {
                let i = input_blocks.len();
                let p = &ib / i / 0;
                let layer = if spec.resblock_updown {
                    b.res(&format!("input_blocks.{i}.0"), p, ch, ch, Resample::Down)
                } else {
                    Layer::Down(Downsample::new(p, ch))
                };
                input_blocks.push(vec![layer]);
                chans.push(ch);
                ds *= 2;
            }
        }

        let mbp = &root / "middle_block";
        let middle_block = vec![
            b.res("middle_block.0", &mbp / 0, ch, ch, Resample::None),
            b.attn("middle_block.1", &mbp / 1, ch, false),
            b.res("middle_block.2", &mbp / 2, ch, ch, Resample::None),
        ];

        let ob = &root / "output_blocks";
        let mut output_blocks = Vec::new();
        for level in (0..levels).rev() {
            let w = spec.level_width(level);
            for i in 0..=spec.num_res_blocks {
                let n = output_blocks.len();
                let p = &ob / n;
                let skip = chans
                    .pop()
                    .expect("decoder pops one skip per encoder entry");
                let mut entry = vec![b.res(
                    &format!("output_blocks.{n}.0"),
                    &p / 0,
                    ch + skip,
                    w,
                    Resample::None,
                )];
                ch = w;
                if spec.attention_ds.contains(&ds) {
                    entry.push(b.attn(&format!("output_blocks.{n}.1"), &p / 1, ch, true));
                }
                if level > 0 && i == spec.num_res_blocks {
                    let m = entry.len();
                    let layer = if spec.resblock_updown {
                        b.res(
                            &format!("output_blocks.{n}.{m}"),
                            &p / m,
                            ch,
                            ch,
                            Resample::Up,
                        )
                    } else {
                        Layer::Up(Upsample::new(&p / m, ch))
                    };
                    entry.push(layer);
                    ds /= 2;
                }
                output_blocks.push(entry);
            }
        }
        let out_norm = GroupNorm::new(&root / "out" / 0, ch);
        let out_conv = Conv2d::new(&root / "out" / 2, ch, spec.out_channels, 3, 1, 1, true);
        UNet {
            spec: whole.clone(),
            time_embed,
            label_emb,
            input_blocks,
            middle_block,
            output_blocks,
            out_norm,
            out_conv,
            adapters_shared: b.adapters_shared,
            adapters_scaling: b.adapters_scaling,
            time_proj: (true, 0.0),
            center_input_sample: false,
            blocks: b.blocks,
            adapters_off: Default::default(),
            compute_kind: Kind::Float,
            train: false,
        }
    }

    fn adapter(&self, name: &str, channels: i64) -> Option<(&AdapterShared, &TimeScaling)> {
        if self.adapters_off.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        self.adapters_scaling
            .get(name)
            .map(|s| (&self.adapters_shared[&channels], s))
    }

    fn run(&self, layers: &[Layer], h: Tensor, emb: &Tensor) -> Tensor {
        layers.iter().fold(h, |h, layer| match layer {
            Layer::Conv(c) => c.forward(&h),
            Layer::Res(r) => r.forward(&h, emb, self.train),
            Layer::Attn(a, name) => a.forward(&h, emb, self.adapter(name, a.channels)),
            Layer::Down(d) => d.forward(&h),
            Layer::Up(u) => u.forward(&h),
            Layer::ResnetBlock2D(r) => r.forward(&h, emb, self.train),
            Layer::DiffusersAttention(a, name) => {
                a.forward(&h, emb, self.adapter(name, a.channels))
            }
            Layer::Downsample2D(d) => d.forward(&h),
        })
    }

    /// Time embedding fed to every ResBlock and adapter (`[N, spec.time_embed_dim()]`, f32).
    pub fn embed(&self, t: &Tensor, y: Option<&Tensor>) -> Tensor {
        let (flip, shift) = self.time_proj;
        let temb = sinusoidal_embedding(t, self.spec.model_channels(), flip, shift);
        let emb = self
            .time_embed
            .1
            .forward(&self.time_embed.0.forward(&temb).silu());
        match (&self.label_emb, y) {
            (Some(table), Some(y)) => emb + table.index_select(0, y),
            _ => emb,
        }
    }

    /// `x` `[N, 3, H, W]` in [-1, 1]; `t` `[N]` the timesteps the network sees (already rescaled).
    /// Returns `[N, out_channels, H, W]` in f32.
    pub fn forward(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>) -> Tensor {
        let emb = self.embed(t, y);
        let mut h = if self.center_input_sample {
            x * 2.0 - 1.0
        } else {
            x.shallow_clone()
        }
        .to_kind(self.compute_kind);
        let mut stack = Vec::with_capacity(self.input_blocks.len());
        for entry in &self.input_blocks {
            h = self.run(entry, h, &emb);
            stack.push(h.shallow_clone());
        }
        h = self.run(&self.middle_block, h, &emb);
        for entry in &self.output_blocks {
            let skip = stack.pop().expect("one skip per decoder entry");
            h = self.run(entry, Tensor::cat(&[&h, &skip.to_kind(h.kind())], 1), &emb);
        }
        let h = self.out_norm.forward(&h).silu();
        self.out_conv.forward(&h).to_kind(Kind::Float)
    }

    /// Mean gate value α per attention block for the given time embedding (for logging).
    pub fn adapter_gates(&self, emb: &Tensor) -> Vec<(String, f64)> {
        self.adapters_scaling
            .iter()
            .map(|(name, s)| {
                (
                    name.clone(),
                    s.alpha(emb).mean(Kind::Float).double_value(&[]),
                )
            })
            .collect()
    }

    /// Runs the network without its time-aware adapters (`true`) or with them.
    pub fn set_adapters_off(&self, off: bool) {
        self.adapters_off
            .store(off, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn has_adapters(&self) -> bool {
        !self.adapters_scaling.is_empty()
    }
}
