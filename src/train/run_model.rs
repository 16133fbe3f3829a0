//! A run's model: the base checkpoint with the run's trained tensors, and the one rule a run
//! checkpoint is checked by, for every command that reads one (`train --resume`, `sample`,
//! `eval`, `export`, a study's final evaluation).

use crate::io::checkpoint::{load_state_dict, StateDict};
use crate::model::methods::Method;
use crate::model::Model;
use crate::train::run_config::RunConfig;
use crate::train::run_dir::RunDir;
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// What a run checkpoint holds of each trained tensor, as its key prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The trained values.
    Model,
    /// Their exponential moving average (runs with `--ema`).
    Ema,
    /// Adam's first moment.
    ExpAvg,
    /// Adam's second moment.
    ExpAvgSq,
}

impl Part {
    pub const ALL: [Part; 4] = [Part::Model, Part::Ema, Part::ExpAvg, Part::ExpAvgSq];

    pub fn prefix(self) -> &'static str {
        match self {
            Part::Model => "model.",
            Part::Ema => "ema.",
            Part::ExpAvg => "optim.exp_avg.",
            Part::ExpAvgSq => "optim.exp_avg_sq.",
        }
    }

    /// `prefix` + `name`: the key of tensor `name`'s part in the file.
    pub fn key(self, name: &str) -> String {
        format!("{}{name}", self.prefix())
    }
}

/// The tensors a run trains, by name, with their shapes: what its checkpoints may hold.
pub type Trained = BTreeMap<String, Vec<i64>>;

/// A run checkpoint read and checked: it holds the step its name says (in its metadata, as
/// `Trainer::save` writes it), and only parts of tensors the run trains, each of that tensor's
/// shape and finite. Everything is checked before a caller copies anything, so a bad file
/// leaves a model or a trainer untouched; every message names the file.
pub struct RunCheckpoint {
    pub step: u64,
    pub path: PathBuf,
    state: StateDict,
}

impl RunCheckpoint {
    /// Reads `path`, the checkpoint of step `named` of a run that trains `trained` with `method`.
    pub fn read(
        path: &Path,
        named: u64,
        trained: &Trained,
        method: Method,
    ) -> Result<RunCheckpoint> {
        let shown = path.display();
        let meta = crate::io::checkpoint::safetensors_metadata(path)?;
        let Some(step) = meta.get("step").and_then(|s| s.parse::<u64>().ok()) else {
            bail!("checkpoint {shown} records no step: it is damaged or was not written by a3ft");
        };
        if step != named {
            // A copied or renamed file would silently stand in for another step.
            bail!("checkpoint {shown} holds step {step}, not the {named} of its name");
        }
        let state = load_state_dict(path, None)?;
        for (k, t) in &state {
            // A tensor the run does not train would silently replace a frozen base weight.
            let name = Part::ALL.iter().find_map(|p| k.strip_prefix(p.prefix()));
            let Some(shape) = name.and_then(|n| trained.get(n)) else {
                bail!("checkpoint {shown} holds {k}, which `{}` does not train: it is damaged or belongs to another run", method.name());
            };
            if t.size() != *shape {
                bail!(
                    "checkpoint {shown}: {k} has shape {:?}, the model {shape:?}",
                    t.size()
                );
            }
            crate::util::stop::check()?;
            if !bool::try_from(t.isfinite().all())? {
                bail!("checkpoint {shown}: {k} holds non-finite values (NaN or infinity)");
            }
        }
        Ok(RunCheckpoint {
            step,
            path: path.to_path_buf(),
            state,
        })
    }

    /// Whether the file holds `part` of any tensor.
    pub fn has(&self, part: Part) -> bool {
        self.state.keys().any(|k| k.starts_with(part.prefix()))
    }

    /// `part` of every tensor in `trained`, by name; all of them, or an error saying how many
    /// are missing (a missing one would silently keep the base checkpoint's value).
    pub fn part<'a>(
        &'a self,
        part: Part,
        trained: &'a Trained,
        method: Method,
    ) -> Result<BTreeMap<&'a str, &'a Tensor>> {
        let missing: Vec<&String> = trained
            .keys()
            .filter(|n| !self.state.contains_key(&part.key(n)))
            .collect();
        if let Some(first) = missing.first() {
            bail!(
                "checkpoint {} lacks {} of the {} tensors that `{}` trains (e.g. {}): it is damaged or belongs to another run",
                self.path.display(),
                missing.len(),
                trained.len(),
                method.name(),
                part.key(first)
            );
        }
        Ok(trained
            .keys()
            .map(|n| (n.as_str(), &self.state[&part.key(n)]))
            .collect())
    }
}

/// The run's model with its base checkpoint (verified) loaded, or from scratch without one.
/// The checkpoint is read and its size checked against the config before the network is built.
pub fn model_with_base(rc: &RunConfig, device: Device) -> Result<Model> {
    build_with_base(rc, read_base(rc)?.as_ref(), device)
}

/// The run's base checkpoint, verified and read, with its path for messages (`None`: from
/// scratch). Apart from [`build_with_base`] so that a caller can seed the random initialisation
/// of new modules right before the network is built, after the file I/O.
pub fn read_base(rc: &RunConfig) -> Result<Option<(StateDict, String)>> {
    let Some(b) = &rc.base_checkpoint else {
        return Ok(None);
    };
    b.verify()?;
    Ok(Some((
        load_state_dict(&b.path, b.key.as_deref())?,
        b.path.display().to_string(),
    )))
}

/// The run's model built for `base` (from [`read_base`]) and loaded with it.
pub fn build_with_base(
    rc: &RunConfig,
    base: Option<&(StateDict, String)>,
    device: Device,
) -> Result<Model> {
    match base {
        None => Model::new(&rc.model, &rc.extras(), device),
        Some((state, origin)) => Model::from_state(&rc.model, &rc.extras(), state, origin, device),
    }
}

/// The tensors `method` trains in `model`, with their shapes.
pub fn trained(model: &Model, method: Method) -> Trained {
    model
        .vs
        .variables()
        .into_iter()
        .filter(|(k, _)| crate::model::methods::is_trainable(model, method, k))
        .map(|(k, t)| (k, t.size()))
        .collect()
}

/// Base model + the run's trained tensors of `step` (default:
/// [`crate::train::select::default_checkpoint`]);
/// the EMA's values when the run keeps an EMA.
pub fn load(run: &RunDir, step: Option<u64>, device: Device) -> Result<Model> {
    load_guided(run, step, device, None)
}

/// [`load`] with domain guidance of weight `guidance` (`None` or 1: none) against the run's
/// base checkpoint, whose values of the trained tensors are kept before the run's are loaded.
pub fn load_guided(
    run: &RunDir,
    step: Option<u64>,
    device: Device,
    guidance: Option<f64>,
) -> Result<Model> {
    let rc = run.read_config()?;
    let mut model = model_with_base(&rc, device)?;
    if let Some(w) = crate::model::guidance::active(guidance) {
        crate::model::guidance::check_weight(w, "--guidance")?;
        if rc.base_checkpoint.is_none() {
            bail!("--guidance needs a run fine-tuned from a base checkpoint (the source model); {} was trained from scratch", run.root.display());
        }
        model.guidance = Some(crate::model::guidance::DomainGuidance::snapshot(
            &model, rc.method, w,
        )?);
    }
    let (named, path) = match step {
        Some(_) => run.find_checkpoint(step)?,
        None => crate::train::select::default_checkpoint(run)?,
    };
    let trained = trained(&model, rc.method);
    let ckpt = RunCheckpoint::read(&path, named, &trained, rc.method)?;
    let part = if ckpt.has(Part::Ema) {
        Part::Ema
    } else {
        Part::Model
    };
    let values = ckpt.part(part, &trained, rc.method)?;
    let vars = model.vs.variables();
    tch::no_grad(|| {
        for (name, t) in values {
            vars[name].shallow_clone().copy_(&t.to_device(device));
        }
    });
    Ok(model)
}

/// [`load`] of the run folder at `run`.
pub fn load_run_model(run: &Path, step: Option<u64>, device: Device) -> Result<Model> {
    load(&RunDir::new(run), step, device)
}
