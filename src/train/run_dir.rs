//! A run folder, the one owner of its layout:
//!
//! ```text
//! RUN_DIR/config.json                      the RunConfig (options as JSON beside the run)
//! RUN_DIR/checkpoints/step_XXXXXX.safetensors   trained tensors, Adam moments, EMA, step
//! RUN_DIR/metrics.jsonl                    one JSON object per log line or evaluation
//! RUN_DIR/samples/step_XXXXXX.png          sample grids (--sample-every)
//! RUN_DIR/eval/samples_step_XXXXXX.png     in-loop evaluation: samples, and their nearest
//! RUN_DIR/eval/nearest_step_XXXXXX.png     training images (memorisation)
//! RUN_DIR/eval/final_{samples,nearest}.png, final_samples.npz      a study's final evaluation
//! RUN_DIR/eval/final_guided_{samples,nearest}.png, final_guided_samples.npz   … with guidance
//! RUN_DIR/selected.json                    the checkpoint `--select` chose (after it is saved)
//! RUN_DIR/final.json                       a study's final evaluation of the run
//! RUN_DIR/guidance.json                    a study's domain-guidance sweep of the run
//! RUN_DIR/final-guided.json                the final evaluation at the sweep's best weight
//! ```
//!
//! Building a run's model from these files is `run_model`'s; choosing its checkpoint, `select`'s.

use crate::train::run_config::RunConfig;
use crate::util::files::write_atomic;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The figures an evaluation draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalFigure {
    /// A grid of the first 64 samples.
    Samples,
    /// Training images beside the samples nearest to them.
    Nearest,
}

impl EvalFigure {
    fn name(self) -> &'static str {
        match self {
            EvalFigure::Samples => "samples",
            EvalFigure::Nearest => "nearest",
        }
    }
}

/// The last (by name, so by step) `PREFIX*.png` in `dir`.
fn newest_png(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".png"))
        })
        .collect();
    v.sort();
    v.pop()
}

#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: &Path) -> RunDir {
        RunDir {
            root: root.to_path_buf(),
        }
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
            bail!(
                "{} is not a regular file; is {} a run folder?",
                p.display(),
                self.root.display()
            );
        }
        let text = crate::util::files::read_text(&p);
        if crate::diffusers::is_model_folder(&self.root)
            && !text
                .as_deref()
                .is_ok_and(|t| t.contains("\"a3ft_version\""))
        {
            bail!(
                "{} is a diffusers model folder, not a training run; give it as --checkpoint {}",
                self.root.display(),
                self.root.display()
            );
        }
        let text = text.with_context(|| {
            format!(
                "cannot read {}; is {} a run folder?",
                p.display(),
                self.root.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("invalid run config {}", p.display()))
    }

    /// Checks that a new run may start here: the folder must be new or empty (a failed start's
    /// lock and empty `checkpoints/` aside), since the run writes `samples/`, `eval/`,
    /// `metrics.jsonl` … and would mix with, overwrite or append to files of the same names.
    pub fn check_new(&self) -> Result<()> {
        let dir = &self.root;
        if self.read_config().is_ok() {
            bail!(
                "{} already holds a run; use --resume {} or another --out",
                dir.display(),
                dir.display()
            );
        }
        if let Ok(meta) = std::fs::symlink_metadata(dir) {
            if !meta.is_dir() {
                bail!("--out {} exists and is not a folder", dir.display());
            }
            let entries = std::fs::read_dir(dir)
                .with_context(|| format!("cannot list --out {}", dir.display()))?;
            for e in entries {
                let e = e.with_context(|| format!("cannot list --out {}", dir.display()))?;
                let name = e.file_name();
                let leftover = name == crate::util::lock::LOCK_FILE
                    || name == "checkpoints"
                        && e.file_type().is_ok_and(|t| t.is_dir())
                        && std::fs::read_dir(e.path()).is_ok_and(|mut d| d.next().is_none());
                if !leftover {
                    bail!("--out {} is not empty (it holds {}) and holds no run; give a new or empty folder", dir.display(), name.to_string_lossy());
                }
            }
        }
        Ok(())
    }

    /// A new run's folder must not lie inside its training or held-out images, which its
    /// samples would join.
    pub fn check_outside_images(&self, rc: &RunConfig) -> Result<()> {
        let dir = &self.root;
        if let Some((flag, images)) = rc.image_folder_holding(dir) {
            let what = if flag == "--data" {
                "training"
            } else {
                "held-out"
            };
            bail!(
                "--out {} lies inside {flag} {}: the run's samples would become {what} images",
                dir.display(),
                images.display()
            );
        }
        Ok(())
    }

    /// Removes what a new run that failed before it started left (its lock and an empty
    /// `checkpoints/`), and the folder when that leaves it empty; a run that wrote its config is
    /// kept, with whatever it wrote.
    pub fn remove_unstarted(&self) {
        if self.exists() {
            return;
        }
        let _ = std::fs::remove_dir(self.checkpoints_dir());
        let _ = std::fs::remove_file(self.root.join(crate::util::lock::LOCK_FILE));
        let _ = std::fs::remove_dir(&self.root);
    }

    pub fn write_config(&self, rc: &RunConfig) -> Result<()> {
        write_atomic(
            &self.config_path(),
            serde_json::to_string_pretty(rc)?.as_bytes(),
        )
    }

    pub fn selected_path(&self) -> PathBuf {
        self.root.join("selected.json")
    }

    pub fn final_path(&self) -> PathBuf {
        self.root.join("final.json")
    }

    pub fn guidance_path(&self) -> PathBuf {
        self.root.join("guidance.json")
    }

    pub fn final_guided_path(&self) -> PathBuf {
        self.root.join("final-guided.json")
    }

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    pub fn checkpoint_path(&self, step: u64) -> PathBuf {
        self.checkpoints_dir()
            .join(format!("step_{step:06}.safetensors"))
    }

    /// Creates the folders a training run writes into.
    pub fn create(&self) -> Result<()> {
        std::fs::create_dir_all(self.checkpoints_dir()).with_context(|| {
            format!(
                "cannot create the run's folder {}",
                self.checkpoints_dir().display()
            )
        })
    }

    /// Every `checkpoints/step_XXXXXX.safetensors`, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<(u64, PathBuf)>> {
        let dir = self.checkpoints_dir();
        let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
            .with_context(|| {
                format!(
                    "{} has no checkpoints folder; is it a run folder?",
                    self.root.display()
                )
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?;
                let n = name
                    .strip_prefix("step_")?
                    .strip_suffix(".safetensors")?
                    .parse()
                    .ok()?;
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
            Some(s) => found.into_iter().find(|(n, _)| *n == s).with_context(|| {
                format!("run {} has no checkpoint for step {s}", self.root.display())
            }),
            None => found
                .pop()
                .with_context(|| format!("run {} has no checkpoints yet", self.root.display())),
        }
    }

    pub fn metrics_path(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    /// Appends one record to metrics.jsonl.
    pub fn append_metrics(&self, rec: &crate::train::records::Record) -> Result<()> {
        let path = self.metrics_path();
        self.check_metrics_file()?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        // One write per line: serde's Display writes token by token, and a kill between two
        // of those writes would leave a torn line for readers that do not expect one.
        crate::util::files::injected_full_disk()
            .and_then(|()| f.write_all(format!("{}\n", rec.to_line()).as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()))?;
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
        let text = crate::util::files::read_text(&path)?;
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<crate::train::records::Record>(l)
                    .is_ok_and(|r| r.step() <= step)
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

    /// The sample grid of `step` (`--sample-every`).
    pub fn sample_grid_path(&self, step: u64) -> PathBuf {
        self.samples_dir().join(format!("step_{step:06}.png"))
    }

    /// The newest sample grid, if any.
    pub fn newest_sample_grid(&self) -> Option<PathBuf> {
        newest_png(&self.samples_dir(), "step_")
    }

    pub fn eval_dir(&self) -> PathBuf {
        self.root.join("eval")
    }

    /// A figure of the in-loop evaluation at `step`.
    pub fn eval_figure_path(&self, figure: EvalFigure, step: u64) -> PathBuf {
        self.eval_dir()
            .join(format!("{}_step_{step:06}.png", figure.name()))
    }

    /// The newest in-loop evaluation figure of a kind, if any.
    pub fn newest_eval_figure(&self, figure: EvalFigure) -> Option<PathBuf> {
        newest_png(&self.eval_dir(), &format!("{}_step_", figure.name()))
    }

    /// A figure of the final evaluation, or of the guided one.
    pub fn final_figure_path(&self, figure: EvalFigure, guided: bool) -> PathBuf {
        let prefix = if guided { "final_guided" } else { "final" };
        self.eval_dir()
            .join(format!("{prefix}_{}.png", figure.name()))
    }

    /// The samples a final evaluation kept for scoring elsewhere (uint8 NHWC `arr_0`).
    pub fn final_samples_path(&self, guided: bool) -> PathBuf {
        self.eval_dir().join(if guided {
            "final_guided_samples.npz"
        } else {
            "final_samples.npz"
        })
    }

    /// Everything a guided final evaluation writes, its record first (it names the rest).
    pub fn guided_outputs(&self) -> [PathBuf; 5] {
        [
            self.final_guided_path(),
            self.guidance_path(),
            self.final_figure_path(EvalFigure::Samples, true),
            self.final_figure_path(EvalFigure::Nearest, true),
            self.final_samples_path(true),
        ]
    }
}

/// Shorthands for the commands that take a run folder.
pub fn read_run_config(run: &Path) -> Result<RunConfig> {
    RunDir::new(run).read_config()
}

pub fn find_checkpoint(run: &Path, step: Option<u64>) -> Result<(u64, PathBuf)> {
    RunDir::new(run).find_checkpoint(step)
}

#[cfg(test)]
mod tests {
    use super::RunDir;

    #[test]
    fn a_new_run_needs_a_new_or_empty_folder_and_a_failed_start_leaves_none() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::new(&tmp.path().join("run"));
        run.check_new().unwrap();
        std::fs::create_dir_all(run.checkpoints_dir()).unwrap();
        std::fs::write(run.root.join(crate::util::lock::LOCK_FILE), "1").unwrap();
        run.check_new().unwrap();
        run.remove_unstarted();
        assert!(!run.root.exists());
        std::fs::create_dir_all(&run.root).unwrap();
        std::fs::write(run.root.join("notes.txt"), "mine").unwrap();
        assert!(format!("{:#}", run.check_new().unwrap_err())
            .contains("is not empty (it holds notes.txt)"));
        run.remove_unstarted();
        assert!(
            run.root.join("notes.txt").exists(),
            "files that are not a failed start's are kept"
        );
    }
}
