//! Domain guidance (Zhong et al., ICLR 2025): sample a fine-tuned model as classifier-free
//! guidance between it and its source, ε = ε_src + w (ε_ft − ε_src). w = 1 is the fine-tuned
//! model alone, w = 0 the source's noise prediction; w > 1 moves further from the source domain.
//!
//! One network serves both passes: the source is the same network with the trained tensors
//! swapped for their values before fine-tuning (the base checkpoint's for its own weights,
//! γ = 1 for DiffFit, a zero up-projection for LoRA) and the time-aware adapters switched off,
//! so memory grows by the trained part only. The swap exchanges tensor storage (`set_data`);
//! nothing is copied per step. A learned variance (the output's second half) comes from the
//! fine-tuned model.

use crate::model::methods::{is_trainable, part_of, Method, Part};
use crate::model::unet::UNet;
use crate::model::Model;
use anyhow::{bail, Result};
use std::cell::RefCell;
use tch::Tensor;

/// Largest |w| accepted: far beyond any useful value, and small enough to keep outputs finite.
pub const MAX_WEIGHT: f64 = 100.0;

/// w = 1 is the fine-tuned model alone: guidance off, as no weight is.
pub const OFF: f64 = 1.0;

/// The weight of an option that may ask for guidance when it does (the one rule of "off": no
/// weight, or w = 1).
pub fn active(weight: Option<f64>) -> Option<f64> {
    weight.filter(|w| *w != OFF)
}

pub struct DomainGuidance {
    /// w: 1 = the fine-tuned model alone.
    pub weight: f64,
    /// (a trained variable, its value in the other model); exchanged around the source pass.
    swaps: RefCell<Vec<(Tensor, Tensor)>>,
    /// The model has time-aware adapters, which the source pass switches off.
    adapters: bool,
}

impl std::fmt::Debug for DomainGuidance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainGuidance")
            .field("weight", &self.weight)
            .field("swapped", &self.swaps.borrow().len())
            .finish()
    }
}

/// Refuses a guidance weight that is not a finite number within ±[`MAX_WEIGHT`].
pub fn check_weight(w: f64, flag: &str) -> Result<()> {
    if !(w.is_finite() && w.abs() <= MAX_WEIGHT) {
        bail!(
            "{flag} must be a finite number within ±{MAX_WEIGHT} (1 = off), got {}",
            crate::util::fmt_num(w)
        );
    }
    Ok(())
}

impl DomainGuidance {
    /// Guidance for `model` fine-tuned with `method`, taking the values its trained tensors
    /// hold now as the source: call it on the model built from the base checkpoint, before the
    /// fine-tuned tensors are loaded or trained.
    pub fn snapshot(model: &Model, method: Method, weight: f64) -> Result<DomainGuidance> {
        check_weight(weight, "the guidance weight")?;
        let mut swaps = Vec::new();
        let mut names: Vec<String> = model
            .vs
            .variables()
            .into_keys()
            .filter(|k| is_trainable(model, method, k))
            .collect();
        names.sort();
        let vars = model.vs.variables();
        tch::no_grad(|| {
            for name in names {
                let part = part_of(model, &name);
                // Adapters are switched off instead; a LoRA down-projection does nothing while
                // its up-projection is zero.
                if part.is_adapter() || (part == Part::Lora && name.ends_with(".lora_down")) {
                    continue;
                }
                let var = vars[&name].shallow_clone();
                let source = var.detach().copy();
                swaps.push((var, source));
            }
        });
        Ok(DomainGuidance {
            weight,
            swaps: RefCell::new(swaps),
            adapters: model.unet.has_adapters(),
        })
    }

    /// Exchanges every trained tensor's storage with its other value.
    fn exchange(&self) {
        tch::no_grad(|| {
            for (var, other) in self.swaps.borrow_mut().iter_mut() {
                let current = var.detach();
                var.set_data(other);
                *other = current;
            }
        });
    }

    /// The source model's output: the network with the source values and no adapters.
    pub fn source_forward(&self, unet: &UNet, x: &Tensor, t: &Tensor) -> Tensor {
        /// Puts the fine-tuned model back however the pass ends (an error in libtorch unwinds).
        struct Restore<'a>(&'a DomainGuidance, &'a UNet);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                self.0.exchange();
                self.1.set_adapters_off(false);
            }
        }
        self.exchange();
        unet.set_adapters_off(self.adapters);
        let _restore = Restore(self, unet);
        unet.forward(x, t, None)
    }

    /// ε = ε_src + w (ε_ft − ε_src) on the first `x`-many channels; the rest (a learned
    /// variance) from the fine-tuned model. w = 1 runs the fine-tuned model alone.
    pub fn forward(&self, unet: &UNet, x: &Tensor, t: &Tensor) -> Tensor {
        let ft = unet.forward(x, t, None);
        if self.weight == OFF {
            return ft;
        }
        let src = self.source_forward(unet, x, t);
        let c = x.size()[1];
        let (eps_ft, eps_src) = (ft.narrow(1, 0, c), src.narrow(1, 0, c));
        let eps = &eps_src + (eps_ft - &eps_src) * self.weight;
        let rest = ft.size()[1] - c;
        if rest > 0 {
            Tensor::cat(&[eps, ft.narrow(1, c, rest)], 1)
        } else {
            eps
        }
    }

    /// Bytes the source values hold (the memory guidance adds).
    pub fn source_bytes(&self) -> u64 {
        self.swaps
            .borrow()
            .iter()
            .map(|(_, t)| t.numel() as u64 * t.kind().elt_size_in_bytes() as u64)
            .sum()
    }
}
