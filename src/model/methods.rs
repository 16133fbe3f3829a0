//! Fine-tuning methods → trainable parameter sets, and parameter accounting.

use crate::model::unet::Extras;
use crate::model::Model;

use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Every parameter (naïve fine-tuning)
    Full,
    /// Attention blocks only (norm, qkv, proj_out; diffusers: group_norm, to_q/k/v, to_out.0)
    Attention,
    /// Residual blocks only
    Residual,
    /// Time-aware adapters only
    Adapter,
    /// A³FT: attention blocks + time-aware adapters
    A3ft,
    /// Low-rank updates on every attention block's qkv and proj_out (diffusers: to_q/k/v, to_out.0; base frozen)
    Lora,
    /// DiffFit: every bias and normalisation scale, plus a per-channel scale γ on each block's residual branch
    Difffit,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Full => "full",
            Method::Attention => "attention",
            Method::Residual => "residual",
            Method::Adapter => "adapter",
            Method::A3ft => "a3ft",
            Method::Lora => "lora",
            Method::Difffit => "difffit",
        }
    }

    /// Whether the method adds modules to the official network (what `--new-lr` trains).
    pub fn adds_modules(self) -> bool {
        let e = self.extras(crate::model::adapter::AdapterStart::Random, 1);
        e.adapter.is_some() || e.lora_rank.is_some() || e.difffit
    }

    /// Modules this method adds to the official network.
    pub fn extras(
        self,
        adapter_start: crate::model::adapter::AdapterStart,
        lora_rank: i64,
    ) -> Extras {
        Extras {
            adapter: matches!(self, Method::Adapter | Method::A3ft).then_some(adapter_start),
            lora_rank: (self == Method::Lora).then_some(lora_rank),
            difffit: self == Method::Difffit,
        }
    }
}

/// The part of the network a parameter belongs to (inspect's table, `params_by_part`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    /// An attention block of the official network.
    Attention,
    /// A residual block of the official network.
    Residual,
    /// Any other official parameter (time embedding, input/output convolutions, norms).
    Other,
    /// The adapter's fusion cross-attention, shared by blocks of one width (`adapter.shared.*`).
    AdapterFusion,
    /// The adapter's per-block time-aware scaling (`adapter.scale.*`).
    AdapterScale,
    /// Low-rank updates (`lora.*`).
    Lora,
    /// DiffFit's per-block scales (`difffit.*`).
    DiffFitGamma,
}

impl Part {
    /// The name reports and inspect print.
    pub fn name(self) -> &'static str {
        match self {
            Part::Attention => "attention",
            Part::Residual => "residual",
            Part::Other => "other",
            Part::AdapterFusion => "adapter_fusion_cross_attention",
            Part::AdapterScale => "adapter_time_scaling",
            Part::Lora => "lora",
            Part::DiffFitGamma => "difffit_gamma",
        }
    }

    /// The time-aware adapter's parameters (`adapter.*`).
    pub fn is_adapter(self) -> bool {
        matches!(self, Part::AdapterFusion | Part::AdapterScale)
    }

    /// A module a method adds to the network (adapter, LoRA, DiffFit's γ): what `--new-lr` trains.
    pub fn is_new(self) -> bool {
        !self.is_base()
    }

    /// A parameter of the official network: neither an adapter nor a low-rank update.
    pub fn is_base(self) -> bool {
        matches!(self, Part::Attention | Part::Residual | Part::Other)
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// Which part of the network a parameter belongs to.
pub fn part_of(model: &Model, name: &str) -> Part {
    let in_block = |prefix: &str| {
        name.len() > prefix.len()
            && name.starts_with(prefix)
            && name.as_bytes()[prefix.len()] == b'.'
    };
    if name.starts_with("adapter.shared.") {
        Part::AdapterFusion
    } else if name.starts_with("adapter.scale.") {
        Part::AdapterScale
    } else if name.starts_with("lora.") {
        Part::Lora
    } else if name.starts_with("difffit.") {
        Part::DiffFitGamma
    } else if model.unet.blocks.attention.iter().any(|(p, _)| in_block(p)) {
        Part::Attention
    } else if model.unet.blocks.residual.iter().any(|p| in_block(p)) {
        Part::Residual
    } else {
        Part::Other
    }
}

/// Whether `method` trains parameters of `part` (DiffFit: of `part`'s biases and norm scales,
/// see [`is_trainable`]).
fn trains(method: Method, part: Part) -> bool {
    match method {
        Method::Full => part.is_base(),
        Method::Attention => part == Part::Attention,
        Method::Residual => part == Part::Residual,
        Method::Adapter => part.is_adapter(),
        Method::A3ft => part == Part::Attention || part.is_adapter(),
        Method::Lora => part == Part::Lora,
        Method::Difffit => part == Part::DiffFitGamma || part.is_base(),
    }
}

/// Whether `method` trains the parameter `name`.
pub fn is_trainable(model: &Model, method: Method, name: &str) -> bool {
    let part = part_of(model, name);
    trains(method, part)
        && (method != Method::Difffit || !part.is_base() || model.unet.blocks.is_bias_or_norm(name))
}

/// Sets `requires_grad` on every variable (frozen ones get no gradient at all) and returns the
/// sorted names of the trainable ones.
pub fn apply_method(model: &mut Model, method: Method) -> Vec<String> {
    let mut trainable = Vec::new();
    let vars = model.vs.variables();
    for (name, var) in &vars {
        let on = is_trainable(model, method, name);
        let _ = var.shallow_clone().set_requires_grad(on);
        if on {
            trainable.push(name.clone());
        }
    }
    trainable.sort();
    trainable
}

#[derive(Debug, Clone, Serialize)]
pub struct ParamReport {
    pub total_params: i64,
    pub base_params: i64,
    pub num_keys: usize,
    pub attention_blocks: usize,
    pub res_blocks: usize,
    /// Parameters per [`Part`], keyed (and so ordered) by its name.
    pub params_by_part: BTreeMap<String, i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<Method>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trainable_params: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trainable_by_part: Option<BTreeMap<String, i64>>,
}

pub fn param_report(model: &Model, method: Option<Method>) -> ParamReport {
    let mut by_part = BTreeMap::new();
    let mut trainable_by_part = BTreeMap::new();
    let (mut total, mut base, mut keys, mut trainable) = (0i64, 0i64, 0usize, 0i64);
    for (name, var) in model.vs.variables() {
        let n = var.numel() as i64;
        let part = part_of(model, &name);
        *by_part.entry(part.name().to_string()).or_insert(0) += n;
        total += n;
        if part.is_base() {
            base += n;
            keys += 1;
        }
        if let Some(m) = method {
            if is_trainable(model, m, &name) {
                trainable += n;
                *trainable_by_part
                    .entry(part.name().to_string())
                    .or_insert(0) += n;
            }
        }
    }
    ParamReport {
        total_params: total,
        base_params: base,
        num_keys: keys,
        attention_blocks: model.unet.blocks.attention.len(),
        res_blocks: model.unet.blocks.residual.len(),
        params_by_part: by_part,
        method,
        trainable_params: method.map(|_| trainable),
        trainable_by_part: method.map(|_| trainable_by_part),
    }
}

/// Full state_dict of a fine-tuned model: the official keys (LoRA merged into qkv/proj_out
/// weights, DiffFit's γ folded into the layer before it) plus, for adapter methods, the
/// `adapter.*` tensors.
pub fn export_state(model: &Model) -> Vec<(String, tch::Tensor)> {
    use crate::model::difffit;
    let vars = model.vs.variables();
    let diffusers = matches!(model.spec, crate::model::spec::UNetSpec::Diffusers(_));
    // Layer key prefix → the γ that folds into it.
    let mut gammas = std::collections::HashMap::new();
    for (block, attention) in model
        .unet
        .blocks
        .attention
        .iter()
        .map(|(b, _)| (b, true))
        .chain(model.unet.blocks.residual.iter().map(|b| (b, false)))
    {
        if let Some(g) = vars.get(&format!("difffit.{block}.gamma")) {
            gammas.insert(difffit::fold_target(block, attention, diffusers), g);
        }
    }
    let mut out: Vec<(String, tch::Tensor)> = Vec::new();
    let mut names: Vec<&String> = vars
        .keys()
        .filter(|k| !k.starts_with("lora.") && !k.starts_with("difffit."))
        .collect();
    names.sort();
    for name in names {
        let mut t = vars[name].detach().copy();
        if let Some(base) = name.strip_suffix(".weight") {
            let down = vars.get(&format!("lora.{base}.lora_down"));
            let up = vars.get(&format!("lora.{base}.lora_up"));
            if let (Some(down), Some(up)) = (down, up) {
                // [out, in] onto a Conv1d `[out, in, 1]` or Linear `[out, in]` weight.
                t = tch::no_grad(|| &t + up.matmul(down).reshape(t.size()));
            }
        }
        let layer = name
            .strip_suffix(".weight")
            .or_else(|| name.strip_suffix(".bias"));
        if let Some(gamma) = layer.and_then(|l| gammas.get(l)) {
            t = difffit::fold(&t, gamma);
        }
        out.push((name.clone(), t));
    }
    out
}
