//! Against overfitting: keep the checkpoint with the best in-loop evaluation, and stop early
//! when evaluations stop improving (`--select`, `--early-stop`).
//!
//! The choice is recorded in `RUN_DIR/selected.json`; `sample`, `eval`, `export` and `report`
//! then use that checkpoint unless a step is given. The selector's state is rebuilt from
//! `metrics.jsonl` on resume, so a resumed run selects exactly as an uninterrupted one.

use crate::train::records::{EvalRecord, Metrics};
use crate::train::run_config::Selection;
use crate::train::run_dir::RunDir;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The checkpoint commands use when no step is given: the one `--select` chose, else the
/// newest. Says which on stderr.
pub fn default_checkpoint(run: &RunDir) -> Result<(u64, std::path::PathBuf)> {
    if let Some(s) = Selected::read(run)? {
        let found = run.find_checkpoint(Some(s.step)).with_context(|| {
            format!("selected.json of {} chose step {}, whose checkpoint is gone; pass --step N for another", run.root.display(), s.step)
        })?;
        eprintln!(
            "using the selected checkpoint of {}: step {} (epoch {:.1}, best {} {:.5})",
            run.root.display(),
            s.step,
            s.epoch,
            s.metric.name(),
            s.value
        );
        return Ok(found);
    }
    run.find_checkpoint(None)
}

/// `selected.json`: which checkpoint is the run's answer, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Selected {
    pub metric: Selection,
    pub step: u64,
    pub epoch: f64,
    pub value: f64,
    /// Evaluations since the best one (for --early-stop).
    pub evaluations_since: u64,
}

impl Selected {
    pub fn read(run: &RunDir) -> Result<Option<Selected>> {
        let p = run.selected_path();
        if !p.exists() {
            return Ok(None);
        }
        let text = crate::util::files::read_text(&p)?;
        Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("invalid {}", p.display()))?,
        ))
    }

    fn write(&self, run: &RunDir) -> Result<()> {
        crate::util::files::write_atomic(
            &run.selected_path(),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )
    }
}

/// What one evaluation means for the run.
pub struct Verdict {
    /// The best so far: save a checkpoint at this step.
    pub improved: bool,
    /// `--early-stop` patience used up.
    pub stop: bool,
}

pub struct Selector {
    metric: Selection,
    patience: Option<u64>,
    best: Option<Selected>,
    since: u64,
}

impl Selector {
    /// The state after the evaluations logged up to `step` (0 for a new run).
    pub fn resume(
        run: &RunDir,
        metric: Selection,
        patience: Option<u64>,
        step: u64,
    ) -> Result<Selector> {
        let mut s = Selector {
            metric,
            patience,
            best: None,
            since: 0,
        };
        for rec in Metrics::read_lenient(&run.metrics_path())
            .evals
            .iter()
            .filter(|r| r.step <= step)
        {
            s.consider(rec);
        }
        Ok(s)
    }

    fn consider(&mut self, rec: &EvalRecord) -> bool {
        let Some(value) = self.metric.value(rec).filter(|v| v.is_finite()) else {
            self.since += 1;
            return false;
        };
        let improved = self.best.as_ref().is_none_or(|b| value < b.value);
        if improved {
            self.best = Some(Selected {
                metric: self.metric,
                step: rec.step,
                epoch: rec.epoch,
                value,
                evaluations_since: 0,
            });
            self.since = 0;
        } else {
            self.since += 1;
        }
        improved
    }

    /// Takes an evaluation record (with `step` and `epoch`). The selection is not written here:
    /// a new best names a checkpoint that does not exist yet, so the loop saves it first and then
    /// calls [`Selector::record`].
    pub fn observe(&mut self, rec: &EvalRecord) -> Result<Verdict> {
        if self.metric.value(rec).is_none() {
            anyhow::bail!(
                "--select {} needs {} in every evaluation, and this one has none (FID needs the Inception weights: `make inception`)",
                self.metric.name(),
                self.metric.field()
            );
        }
        let improved = self.consider(rec);
        Ok(Verdict {
            improved,
            stop: self.patience.is_some_and(|p| self.since >= p),
        })
    }

    /// Writes `selected.json` for the best evaluation so far, once its checkpoint is whole on
    /// disk (a record never names a file ahead of it: on a full disk the old selection, whose
    /// checkpoint is intact, stays).
    pub fn record(&self, run: &RunDir) -> Result<()> {
        let Some(b) = &self.best else { return Ok(()) };
        if run.find_checkpoint(Some(b.step)).is_err() {
            return Ok(());
        }
        Selected {
            evaluations_since: self.since,
            ..b.clone()
        }
        .write(run)
    }

    pub fn best(&self) -> Option<&Selected> {
        self.best.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(step: u64, v: f64) -> EvalRecord {
        EvalRecord {
            holdout_loss: Some(v),
            ..EvalRecord::at(step, step as f64 / 2.0)
        }
    }

    #[test]
    fn best_patience_and_resume() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::new(tmp.path());
        let mut s = Selector::resume(&run, Selection::HeldoutLoss, Some(2), 0).unwrap();
        let values = [3.0, 2.0, 2.5, 2.0, 1.5, 1.6];
        let mut verdicts = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let r = rec(10 * (i as u64 + 1), *v);
            run.append_metrics(&crate::train::records::Record::Eval(r.clone()))
                .unwrap();
            let v = s.observe(&r).unwrap();
            verdicts.push((v.improved, v.stop));
            // The loop saves the best step's checkpoint before it records the selection.
            if v.improved {
                std::fs::create_dir_all(run.checkpoint_path(r.step).parent().unwrap()).unwrap();
                std::fs::write(run.checkpoint_path(r.step), b"").unwrap();
            }
            s.record(&run).unwrap();
        }
        // A tie is no improvement; the second non-improving evaluation stops.
        assert_eq!(
            verdicts,
            [
                (true, false),
                (true, false),
                (false, false),
                (false, true),
                (true, false),
                (false, false)
            ]
        );
        let stored = Selected::read(&run).unwrap().unwrap();
        assert_eq!(
            (stored.step, stored.value, stored.evaluations_since),
            (50, 1.5, 1)
        );
        // Rebuilt from metrics.jsonl up to step 30: best at 20, one evaluation since.
        let r = Selector::resume(&run, Selection::HeldoutLoss, Some(2), 30).unwrap();
        assert_eq!((r.best().unwrap().step, r.since), (20, 1));
        // A record without the metric is an error for the selector, not a silent skip.
        assert!(s.observe(&EvalRecord::at(70, 35.0)).is_err());
        // A best whose checkpoint is not on disk (its save failed) is not recorded: the file keeps
        // naming the last best that is.
        let r = rec(80, 0.5);
        assert!(s.observe(&r).unwrap().improved);
        s.record(&run).unwrap();
        assert_eq!(Selected::read(&run).unwrap().unwrap().step, 50);
    }
}
