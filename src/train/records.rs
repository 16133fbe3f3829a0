//! What a run records: the lines of `metrics.jsonl` (a training log line every `--log-every`
//! steps, an evaluation line at each in-loop evaluation) and a study run's `final.json`. One
//! type each, written by the trainer and read by selection, `report` and the study report.
//!
//! Fields a record may lack are optional, so files written by earlier versions still read.

use crate::metrics::memorization::Memorization;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// A training log line: loss terms since the previous line, overall and per quarter of the
/// timestep range (`None` for a quarter no timestep fell in), and throughput.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub step: u64,
    pub epoch: f64,
    pub loss: f64,
    #[serde(default)]
    pub mse: Option<f64>,
    #[serde(default)]
    pub vb: Option<f64>,
    #[serde(default)]
    pub lr: Option<f64>,
    #[serde(default)]
    pub images_per_sec: Option<f64>,
    #[serde(default)]
    pub wall_time: Option<f64>,
    #[serde(default)]
    pub loss_q0: Option<f64>,
    #[serde(default)]
    pub loss_q1: Option<f64>,
    #[serde(default)]
    pub loss_q2: Option<f64>,
    #[serde(default)]
    pub loss_q3: Option<f64>,
    #[serde(default)]
    pub mse_q0: Option<f64>,
    #[serde(default)]
    pub mse_q1: Option<f64>,
    #[serde(default)]
    pub mse_q2: Option<f64>,
    #[serde(default)]
    pub mse_q3: Option<f64>,
    #[serde(default)]
    pub vb_q0: Option<f64>,
    #[serde(default)]
    pub vb_q1: Option<f64>,
    #[serde(default)]
    pub vb_q2: Option<f64>,
    #[serde(default)]
    pub vb_q3: Option<f64>,
    /// Mean adapter gate per width (runs with adapters), to watch the adapters open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter_gate_mean: Option<BTreeMap<String, f64>>,
}

impl LogRecord {
    /// A line from loss means `[term][bucket]` (terms loss, mse, vb; bucket 0 all timesteps,
    /// 1–4 the quarters), NaN meaning an empty bucket.
    pub fn new(
        means: &crate::train::loss_log::Means,
        step: u64,
        steps_per_epoch: u64,
        lr: f64,
        images_per_sec: f64,
        wall_time: f64,
    ) -> LogRecord {
        let v = |term: usize, bucket: usize| Some(means[term][bucket]).filter(|x| x.is_finite());
        LogRecord {
            step,
            epoch: step as f64 / steps_per_epoch as f64,
            loss: means[0][0],
            mse: v(1, 0),
            vb: v(2, 0),
            lr: Some(lr),
            images_per_sec: Some(images_per_sec),
            wall_time: Some(wall_time),
            loss_q0: v(0, 1),
            loss_q1: v(0, 2),
            loss_q2: v(0, 3),
            loss_q3: v(0, 4),
            mse_q0: v(1, 1),
            mse_q1: v(1, 2),
            mse_q2: v(1, 3),
            mse_q3: v(1, 4),
            vb_q0: v(2, 1),
            vb_q1: v(2, 2),
            vb_q2: v(2, 3),
            vb_q3: v(2, 4),
            adapter_gate_mean: None,
        }
    }
}

/// The `kind` of an evaluation line (log lines have none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvalKind {
    #[serde(rename = "eval")]
    Eval,
}

/// An in-loop evaluation: the held-out loss on a fixed timestep grid (and the same on a
/// training subset), and with samples, clean-FID/KID and memorisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub kind: EvalKind,
    pub step: u64,
    pub epoch: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_time: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_grid_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout_mse: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout_bpd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout_images: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memorization: Option<Memorization>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fid: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_samples: Option<u64>,
}

impl EvalRecord {
    /// An evaluation at `step` with nothing measured yet.
    pub fn at(step: u64, epoch: f64) -> EvalRecord {
        EvalRecord {
            kind: EvalKind::Eval,
            step,
            epoch,
            wall_time: None,
            train_grid_loss: None,
            holdout_loss: None,
            holdout_mse: None,
            holdout_bpd: None,
            holdout_images: None,
            memorization: None,
            fid: None,
            kid: None,
            eval_samples: None,
        }
    }

    /// Held-out loss minus the loss on the training subset at the same grid and noise: the
    /// generalisation gap, which grows as a run overfits.
    pub fn gap(&self) -> Option<f64> {
        Some(self.holdout_loss? - self.train_grid_loss?)
    }
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Record {
    Eval(EvalRecord),
    Log(LogRecord),
}

impl Record {
    pub fn step(&self) -> u64 {
        match self {
            Record::Eval(r) => r.step,
            Record::Log(r) => r.step,
        }
    }

    /// The line as written to `metrics.jsonl` (no newline); one write per line, so a kill
    /// never tears a line in the middle of a value.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("records serialise")
    }
}

/// A run's log and evaluation lines, in file order.
#[derive(Debug, Default)]
pub struct Metrics {
    pub log: Vec<LogRecord>,
    pub evals: Vec<EvalRecord>,
}

impl Metrics {
    /// Every line of `path`; a line that is no record is an error naming it.
    pub fn read(path: &Path) -> Result<Metrics> {
        let text = crate::util::files::read_text(path)?;
        let mut m = Metrics::default();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let rec: Record = serde_json::from_str(line).with_context(|| {
                format!(
                    "line {} of {} is not a metrics record",
                    i + 1,
                    path.display()
                )
            })?;
            m.push(rec);
        }
        Ok(m)
    }

    /// The lines of `path` that read as records, skipping any other (a line torn by a kill):
    /// for resuming, where the file is truncated to the checkpoint's step anyway.
    pub fn read_lenient(path: &Path) -> Metrics {
        let mut m = Metrics::default();
        if let Ok(text) = crate::util::files::read_text(path) {
            for rec in text
                .lines()
                .filter_map(|l| serde_json::from_str::<Record>(l).ok())
            {
                m.push(rec);
            }
        }
        m
    }

    fn push(&mut self, rec: Record) {
        match rec {
            Record::Eval(r) => self.evals.push(r),
            Record::Log(r) => self.log.push(r),
        }
    }
}

/// What a study records of a finished run in its `final.json`: the protocol's evaluation of
/// the selected (else newest) checkpoint, and what the training cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalRecord {
    pub step: u64,
    pub samples: u64,
    pub respacing: crate::diffusion::respace::Respacing,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout_bpd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memorization: Option<Memorization>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fid_train: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid_train: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fid_holdout: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid_holdout: Option<f64>,
    /// Fewer samples than drawn were scored (a transfer cut the kept samples).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scored_samples: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images_per_sec: Option<f64>,
    /// Peak resident memory of the process while training (host memory; a resumed run: its
    /// last part), MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mib: Option<f64>,
    /// Domain guidance weight of the samples and held-out loss (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_step: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopped: Option<bool>,
}

impl FinalRecord {
    pub fn new(
        step: u64,
        samples: usize,
        respacing: &crate::diffusion::respace::Respacing,
    ) -> FinalRecord {
        FinalRecord {
            step,
            samples: samples as u64,
            respacing: respacing.clone(),
            holdout_loss: None,
            holdout_bpd: None,
            memorization: None,
            fid_train: None,
            kid_train: None,
            fid_holdout: None,
            kid_holdout: None,
            scored_samples: None,
            arm: None,
            seed: None,
            train_seconds: None,
            images_per_sec: None,
            peak_rss_mib: None,
            guidance: None,
            final_step: None,
            early_stopped: None,
        }
    }

    pub fn read(path: &Path) -> Result<FinalRecord> {
        let text = crate::util::files::read_text(path)?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "invalid {} (delete it to evaluate the run again)",
                path.display()
            )
        })
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        crate::util::files::write_atomic(path, serde_json::to_string_pretty(self)?.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metrics.jsonl and final.json the project published (written by earlier versions)
    /// reads as records, and writes back to the same values.
    #[test]
    fn published_run_files_read_and_round_trip() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        let mut stack = vec![docs];
        let (mut metrics, mut finals) = (0, 0);
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                if p.is_dir() {
                    stack.push(p);
                } else if name.starts_with("metrics") && name.ends_with(".jsonl") {
                    let m = Metrics::read(&p).unwrap();
                    assert!(!m.log.is_empty(), "{}", p.display());
                    for line in std::fs::read_to_string(&p).unwrap().lines() {
                        let old: serde_json::Value = serde_json::from_str(line).unwrap();
                        let rec: Record = serde_json::from_str(line).unwrap();
                        let new: serde_json::Value = serde_json::from_str(&rec.to_line()).unwrap();
                        for (k, v) in old.as_object().unwrap() {
                            assert_eq!(&new[k], v, "{}: {k}", p.display());
                        }
                    }
                    metrics += 1;
                } else if name == "final.json" {
                    FinalRecord::read(&p).unwrap();
                    finals += 1;
                }
            }
        }
        assert!(
            metrics >= 3 && finals >= 1,
            "found {metrics} metrics files and {finals} final.json"
        );
    }
}
