//! A run folder, the one owner of its layout:
//!
//! ```text
//! RUN_DIR/config.json                      the RunConfig (options as JSON beside the run)
//! RUN_DIR/checkpoints/step_XXXXXX.safetensors   trained tensors, Adam moments, EMA, step
//! RUN_DIR/metrics.jsonl                    one JSON object per log line or evaluation
//! RUN_DIR/samples/step_XXXXXX.png          sample grids (--sample-every)
//! RUN_DIR/eval/                            evaluation samples and nearest-neighbour figures
//! ```
//!
//! It also holds what ties a run to its inputs: the base checkpoint's SHA-256, checked on
//! every load, and the base model + run tensors that `sample`, `eval` and `export` use.

use crate::checkpoint::{load_state_dict, sha256_file, write_atomic, StateDict};
use crate::model::Model;
use crate::run_config::RunConfig;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::Device;

#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

/// The pre-trained weights a run starts from, recorded so a changed file is noticed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseCheckpoint {
    pub path: PathBuf,
    pub sha256: String,
    pub key: Option<String>,
}

impl BaseCheckpoint {
    /// Records `path` (made absolute) and its SHA-256.
    pub fn record(path: &Path, key: Option<&str>) -> Result<BaseCheckpoint> {
        let abs = std::fs::canonicalize(path).with_context(|| format!("checkpoint {} does not exist", path.display()))?;
        Ok(BaseCheckpoint { sha256: sha256_file(&abs)?, path: abs, key: key.map(String::from) })
    }

    /// Fails unless the file is still there with the recorded contents: a replaced base
    /// would silently give garbage (the run's tensors were trained against the old one).
    pub fn verify(&self) -> Result<()> {
        if !self.path.exists() {
            bail!("the run's base checkpoint {} is missing (moved or deleted?)", self.path.display());
        }
        let now = sha256_file(&self.path)?;
        if now != self.sha256 {
            bail!(
                "the run's base checkpoint {} has changed since the run started (SHA-256 {}…, recorded {}…); restore the original file",
                self.path.display(),
                &now[..12],
                &self.sha256[..12.min(self.sha256.len())]
            );
        }
        Ok(())
    }
}

impl RunDir {
    pub fn new(root: &Path) -> RunDir {
        RunDir { root: root.to_path_buf() }
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.json")
    }

    pub fn exists(&self) -> bool {
        self.config_path().exists()
    }

    pub fn read_config(&self) -> Result<RunConfig> {
        let p = self.config_path();
        if p.exists() && !p.is_file() {
            // A FIFO or device under this name would block the read forever.
            bail!("{} is not a regular file; is {} a run folder?", p.display(), self.root.display());
        }
        let text = std::fs::read_to_string(&p);
        if crate::diffusers::is_model_folder(&self.root) && !text.as_deref().is_ok_and(|t| t.contains("\"a3ft_version\"")) {
            bail!("{} is a diffusers model folder, not a training run; give it as --checkpoint {}", self.root.display(), self.root.display());
        }
        let text = text.with_context(|| format!("cannot read {}; is {} a run folder?", p.display(), self.root.display()))?;
        serde_json::from_str(&text).with_context(|| format!("invalid run config {}", p.display()))
    }

    pub fn write_config(&self, rc: &RunConfig) -> Result<()> {
        write_atomic(&self.config_path(), serde_json::to_string_pretty(rc)?.as_bytes())
    }

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    pub fn checkpoint_path(&self, step: u64) -> PathBuf {
        self.checkpoints_dir().join(format!("step_{step:06}.safetensors"))
    }

    /// Creates the folders a training run writes into.
    pub fn create(&self) -> Result<()> {
        std::fs::create_dir_all(self.checkpoints_dir()).with_context(|| format!("cannot create the run's folder {}", self.checkpoints_dir().display()))
    }

    /// Every `checkpoints/step_XXXXXX.safetensors`, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<(u64, PathBuf)>> {
        let dir = self.checkpoints_dir();
        let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
            .with_context(|| format!("{} has no checkpoints folder; is it a run folder?", self.root.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?;
                let n = name.strip_prefix("step_")?.strip_suffix(".safetensors")?.parse().ok()?;
                Some((n, p))
            })
            .collect();
        found.sort();
        Ok(found)
    }

    /// The newest checkpoint, or the one of `step`.
    pub fn find_checkpoint(&self, step: Option<u64>) -> Result<(u64, PathBuf)> {
        let mut found = self.checkpoints()?;
        match step {
            Some(s) => found
                .into_iter()
                .find(|(n, _)| *n == s)
                .with_context(|| format!("run {} has no checkpoint for step {s}", self.root.display())),
            None => found.pop().with_context(|| format!("run {} has no checkpoints yet", self.root.display())),
        }
    }

    pub fn metrics_path(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    /// Appends one record to metrics.jsonl.
    pub fn append_metrics(&self, rec: &crate::train::records::Record) -> Result<()> {
        let path = self.metrics_path();
        self.check_metrics_file()?;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        // One write per line: serde's Display writes token by token, and a kill between two
        // of those writes would leave a torn line for readers that do not expect one.
        f.write_all(format!("{}\n", rec.to_line()).as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// metrics.jsonl, where it exists, must be a regular file of the run: never a link (which
    /// could point out of the run) nor a FIFO (which would block).
    fn check_metrics_file(&self) -> Result<()> {
        let path = self.metrics_path();
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if !meta.is_file() => {
                bail!("{} is not a regular file (a link, FIFO or folder); a run's metrics are written only into the run", path.display())
            }
            _ => Ok(()),
        }
    }

    /// Drops the records of steps after `step` (and any torn last line): a run killed after
    /// logging past its last checkpoint logs those steps again when it resumes.
    pub fn truncate_metrics_after(&self, step: u64) -> Result<()> {
        let path = self.metrics_path();
        self.check_metrics_file()?;
        if !path.exists() {
            return Ok(());
        }
        let text = crate::checkpoint::read_text(&path)?;
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<crate::train::records::Record>(l).is_ok_and(|r| r.step() <= step)
            })
            .collect();
        let mut out = kept.join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        if out != text {
            write_atomic(&path, out.as_bytes())?;
        }
        Ok(())
    }

    pub fn samples_dir(&self) -> PathBuf {
        self.root.join("samples")
    }

    pub fn eval_dir(&self) -> PathBuf {
        self.root.join("eval")
    }

    /// The checkpoint commands use when no step is given: the one `--select` chose, else the
    /// newest. Says which on stderr.
    pub fn default_checkpoint(&self) -> Result<(u64, PathBuf)> {
        if let Some(s) = crate::select::Selected::read(self)? {
            let found = self.find_checkpoint(Some(s.step)).with_context(|| {
                format!("selected.json of {} chose step {}, whose checkpoint is gone; pass --step N for another", self.root.display(), s.step)
            })?;
            eprintln!("using the selected checkpoint of {}: step {} (epoch {:.1}, best {} {:.5})", self.root.display(), s.step, s.epoch, s.metric.name(), s.value);
            return Ok(found);
        }
        self.find_checkpoint(None)
    }

    /// Base model + the run's trained tensors of `step` (default: `default_checkpoint`); EMA
    /// tensors when the run keeps an EMA.
    pub fn load_model(&self, step: Option<u64>, device: Device) -> Result<Model> {
        let rc = self.read_config()?;
        let model = model_with_base(&rc, device)?;
        let (named, path) = match step {
            Some(_) => self.find_checkpoint(step)?,
            None => self.default_checkpoint()?,
        };
        // A copied or renamed checkpoint would silently stand in for another step.
        let stored = crate::checkpoint::safetensors_metadata(&path)?.get("step").and_then(|s| s.parse::<u64>().ok());
        if stored.is_some_and(|s| s != named) {
            bail!("checkpoint {} holds step {}, not the {named} of its name", path.display(), stored.unwrap_or_default());
        }
        let state = load_state_dict(&path, None)?;
        let prefix = if state.keys().any(|k| k.starts_with("ema.")) { "ema." } else { "model." };
        let vars = model.vs.variables();
        // Every tensor the run trains must be in the file: a missing one would silently keep
        // the base checkpoint's value (`train --resume` calls such a file damaged, too).
        let mut missing: Vec<&String> = vars.keys().filter(|k| crate::finetune::is_trainable(&model, rc.method, k) && !state.contains_key(&format!("{prefix}{k}"))).collect();
        if !missing.is_empty() {
            missing.sort();
            bail!(
                "checkpoint {} lacks {} of the {} tensors a {} run trains (e.g. {prefix}{}): it is damaged or belongs to another run",
                path.display(),
                missing.len(),
                vars.keys().filter(|k| crate::finetune::is_trainable(&model, rc.method, k)).count(),
                rc.method.name(),
                missing[0]
            );
        }
        tch::no_grad(|| -> Result<()> {
            for (k, t) in &state {
                if let Some(name) = k.strip_prefix(prefix) {
                    let mut v = vars.get(name).with_context(|| format!("{}: tensor {name} is not in the model", path.display()))?.shallow_clone();
                    if v.size() != t.size() {
                        bail!("{}: {name} has shape {:?}, the model {:?}", path.display(), t.size(), v.size());
                    }
                    v.copy_(&t.to_device(device));
                }
            }
            Ok(())
        })?;
        Ok(model)
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
    let Some(b) = &rc.base_checkpoint else { return Ok(None) };
    b.verify()?;
    Ok(Some((load_state_dict(&b.path, b.key.as_deref())?, b.path.display().to_string())))
}

/// The run's model built for `base` (from [`read_base`]) and loaded with it.
pub fn build_with_base(rc: &RunConfig, base: Option<&(StateDict, String)>, device: Device) -> Result<Model> {
    match base {
        None => Model::new(&rc.model, &rc.extras(), device),
        Some((state, origin)) => Model::from_state(&rc.model, &rc.extras(), state, origin, device),
    }
}

/// Shorthands for the commands that take a run folder.
pub fn read_run_config(run: &Path) -> Result<RunConfig> {
    RunDir::new(run).read_config()
}

pub fn find_checkpoint(run: &Path, step: Option<u64>) -> Result<(u64, PathBuf)> {
    RunDir::new(run).find_checkpoint(step)
}

pub fn load_run_model(run: &Path, step: Option<u64>, device: Device) -> Result<Model> {
    RunDir::new(run).load_model(step, device)
}

/// Name of the lock file `lock_folder` holds.
pub const LOCK_FILE: &str = ".a3ft.lock";

/// An exclusive lock on a folder, released when dropped (or when the process dies).
pub struct FolderLock {
    _file: std::fs::File,
}

/// Takes the folder's lock, or says which process holds it: two trainers on one run would
/// interleave their checkpoints and metrics.
pub fn lock_folder(dir: &Path, what: &str) -> Result<FolderLock> {
    use std::io::{Read, Seek};
    use std::os::unix::io::AsRawFd;
    let path = dir.join(LOCK_FILE);
    if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) {
        bail!("{} is not a regular file (a3ft keeps its lock there); remove it", path.display());
    }
    let mut file = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        bail!("the {what} in {} is in use by another a3ft process (pid {}); wait for it or stop it", dir.display(), pid.trim());
    }
    let written = file.set_len(0).and_then(|_| file.rewind()).and_then(|_| write!(file, "{}", std::process::id()));
    written.with_context(|| format!("cannot write {}", path.display()))?;
    Ok(FolderLock { _file: file })
}

/// `path` made absolute (through symlinks), for storing in a config: a run or study resumed
/// from another working directory must find the same folder, not one of the same name.
pub fn absolute(path: &Path, what: &str) -> Result<PathBuf> {
    std::fs::canonicalize(path).with_context(|| format!("{what} {} does not exist", path.display()))
}

/// `path` made absolute when it exists, else as given: for optional files whose absence is
/// reported later (e.g. `--inception`, which only disables FID) and for comparing paths.
pub fn absolute_if_exists(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// True when `inner` is `outer` or lies inside it (both resolved through symlinks as far as
/// they exist, so a folder that is yet to be created is compared by its nearest parent).
pub fn is_within(inner: &Path, outer: &Path) -> bool {
    fn resolve(p: &Path) -> PathBuf {
        let abs = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(p) };
        let mut tail: Vec<std::ffi::OsString> = Vec::new();
        let mut cur = abs.as_path();
        loop {
            if let Ok(c) = std::fs::canonicalize(cur) {
                let mut out = c;
                for t in tail.iter().rev() {
                    match t.to_str() {
                        Some("..") => {
                            out.pop();
                        }
                        Some(".") => {}
                        _ => out.push(t),
                    }
                }
                return out;
            }
            match (cur.parent(), cur.file_name()) {
                (Some(parent), Some(name)) => {
                    tail.push(name.to_os_string());
                    cur = parent;
                }
                _ => return abs,
            }
        }
    }
    resolve(inner).starts_with(resolve(outer))
}
