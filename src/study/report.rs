//! The report of a study: a Table-1 style table with mean ± sd over seeds per arm, one row per
//! run below it, and curves over epochs (mean over seeds, the min–max band shaded).

use crate::report::{fmt, load_run, plot_lines, Figure, Line, RunData, FIGURES};
use crate::study::{run_dir, Study};
use crate::train::records::FinalRecord;
use crate::train::run_dir::{EvalFigure, RunDir};
use crate::util::markdown;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use tch::Device;

/// Mean and sample standard deviation (0 for a single value).
fn mean_sd(v: &[f64]) -> Option<(f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let sd = if v.len() > 1 {
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    Some((m, sd))
}

fn pm(v: &[f64], digits: usize, scale: f64) -> String {
    let v: Vec<f64> = v
        .iter()
        .filter(|x| x.is_finite())
        .map(|x| x * scale)
        .collect();
    match mean_sd(&v) {
        Some((m, _)) if v.len() == 1 => crate::report::fixed(m, digits),
        Some((m, sd)) => format!(
            "{} ± {}",
            crate::report::fixed(m, digits),
            crate::report::fixed(sd, digits)
        ),
        None => "–".into(),
    }
}

/// Mean over runs at each epoch where every run has a value, with the min–max band.
fn across_seeds(curves: &[Vec<(f64, f64)>]) -> (Vec<(f64, f64)>, Vec<(f64, f64, f64)>) {
    let mut at: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for c in curves {
        for &(x, y) in c {
            // Epochs are step / steps_per_epoch: the same in every seed, up to rounding.
            at.entry((x * 1000.0).round() as i64).or_default().push(y);
        }
    }
    let mut mean = Vec::new();
    let mut band = Vec::new();
    for (k, ys) in at {
        if ys.len() != curves.len() {
            continue;
        }
        let x = k as f64 / 1000.0;
        let m = ys.iter().sum::<f64>() / ys.len() as f64;
        mean.push((x, m));
        band.push((
            x,
            ys.iter().cloned().fold(f64::INFINITY, f64::min),
            ys.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        ));
    }
    (mean, band)
}

struct Finished {
    data: RunData,
    final_eval: FinalRecord,
}

/// Writes `out/report/report.md` with its figures; returns its path.
pub fn write(study: &Study, out: &Path, preamble: &str, _device: Device) -> Result<PathBuf> {
    let dir = out.join("report");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut by_arm: Vec<(String, Vec<Finished>)> = Vec::new();
    for arm in &study.arms {
        let mut runs = Vec::new();
        for &seed in &study.seeds {
            let rd = run_dir(out, arm, seed);
            let path = RunDir::new(&rd).final_path();
            if std::fs::symlink_metadata(&path).is_err() {
                continue;
            }
            let final_eval = FinalRecord::read(&path)?;
            let mut data = load_run(&rd)?;
            data.label = format!("{} s{seed}", arm.name);
            runs.push(Finished { data, final_eval });
        }
        by_arm.push((arm.name.clone(), runs));
    }
    // Rows of the same runs sampled with domain guidance (the curves are the arm's own).
    let mut guided: Vec<(String, Vec<Finished>)> = Vec::new();
    for arm in study.arms.iter().filter(|a| study.guided(a)) {
        let mut runs = Vec::new();
        for &seed in &study.seeds {
            let rd = run_dir(out, arm, seed);
            let path = RunDir::new(&rd).final_guided_path();
            if std::fs::symlink_metadata(&path).is_err() {
                continue;
            }
            if !crate::study::sweep_is_current(study, &RunDir::new(&rd)) {
                // Swept over other weights than the study now lists (a --report-only rerun with
                // a new --guidance): not this study's row until the sweep is redone.
                eprintln!("note: {} swept other guidance weights than --guidance lists; run the study without --report-only to redo it", rd.display());
                continue;
            }
            let final_eval = FinalRecord::read(&path)?;
            let mut data = load_run(&rd)?;
            data.label = format!(
                "{} + guidance (w = {}) s{seed}",
                arm.name,
                final_eval
                    .guidance
                    .map(crate::util::fmt_num)
                    .unwrap_or_else(|| "?".into())
            );
            runs.push(Finished { data, final_eval });
        }
        guided.push((format!("{} + guidance", arm.name), runs));
    }
    let curves_of = by_arm.len();
    by_arm.extend(guided);

    let num = |d: &Path| crate::data::list_images(d).map(|v| v.len()).unwrap_or(0);
    let h = &study.hyper;
    let mut md = String::new();
    writeln!(md, "# {}\n", markdown::one_line(&study.title))?;
    if !preamble.is_empty() {
        writeln!(md, "{preamble}\n")?;
    }
    writeln!(
        md,
        "Protocol: {} training images ({}), {} held-out images ({}); {} per run, batch {}, Adam lr {} (β {}, {}; ε {}), {}, {} precision{}{}. \
Final evaluation of each run's {} checkpoint: {} samples ({}-step {} sampler) scored with clean-FID and KID against **all training images** and against the held-out images, \
held-out loss and bits/dim on a fixed grid of 10 timesteps, and memorisation (share of samples within RMS distance {} of a training image). Seeds: {}.\n",
        num(&study.train),
        markdown::code(&study.train.display().to_string()),
        num(&study.holdout),
        markdown::code(&study.holdout.display().to_string()),
        match h.epochs {
            Some(e) => format!("{e} epochs"),
            None => format!("{} steps", h.total_steps),
        },
        h.batch_size,
        h.lr,
        h.beta1,
        h.beta2,
        h.eps,
        study.model.schedule_summary(),
        h.precision,
        if h.flip { ", random flips" } else { "" },
        h.eval.every_epochs.map(|k| format!(", in-loop evaluation every {k} epochs ({} samples)", h.eval.samples)).unwrap_or_default(),
        h.eval.select.map(|s| format!("selected (by {})", s.name())).unwrap_or_else(|| "last".into()),
        study.final_samples,
        study.final_respacing,
        study.final_respacing.sampler().name(),
        h.eval.memo_threshold.unwrap_or(crate::train::evaluate::DEFAULT_MEMO_THRESHOLD),
        study.seeds.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
    )?;

    writeln!(md, "## Results (mean ± sd over seeds)\n")?;
    writeln!(md, "| arm | trainable params | runs | cFID vs train ↓ | KID×10³ vs train ↓ | cFID vs held-out ↓ | KID×10³ vs held-out ↓ | held-out loss ↓ | held-out bits/dim ↓ | memorised | epochs | train time | peak memory |")?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")?;
    for (name, runs) in &by_arm {
        if runs.is_empty() {
            writeln!(
                md,
                "| {} | – | 0 | – | – | – | – | – | – | – | – | – | – |",
                markdown::text(name)
            )?;
            continue;
        }
        let col = |k: fn(&FinalRecord) -> Option<f64>| {
            runs.iter()
                .filter_map(|r| k(&r.final_eval))
                .collect::<Vec<_>>()
        };
        let memo: Vec<f64> = col(|f| f.memorization.as_ref().map(|m| m.fraction_below_threshold));
        let epochs: Vec<f64> = runs.iter().filter_map(selected_epoch).collect();
        let d = &runs[0].data;
        // A metric some runs lack (e.g. cFID of a run whose samples could not be scored) says
        // over how many runs its mean is.
        let pm = |v: &[f64], digits: usize, scale: f64| {
            let n = v.iter().filter(|x| x.is_finite()).count();
            let s = pm(v, digits, scale);
            if n > 0 && n < runs.len() {
                format!("{s} ({n} of {} runs)", runs.len())
            } else {
                s
            }
        };
        writeln!(
            md,
            "| {} | {} ({:.2}%) | {} | {} | {} | {} | {} | {} | {} | {}% | {} | {} s | {} |",
            markdown::text(name),
            crate::util::fmt_count(d.trainable_params),
            100.0 * d.trainable_params as f64 / d.base_params.max(1) as f64,
            runs.len(),
            pm(&col(|f| f.fid_train), 2, 1.0),
            pm(&col(|f| f.kid_train), 2, 1e3),
            pm(&col(|f| f.fid_holdout), 2, 1.0),
            pm(&col(|f| f.kid_holdout), 2, 1e3),
            pm(&col(|f| f.holdout_loss), 5, 1.0),
            pm(&col(|f| f.holdout_bpd), 3, 1.0),
            pm(&memo, 1, 100.0),
            pm(&epochs, 0, 1.0),
            pm(&col(|f| f.train_seconds), 0, 1.0),
            match col(|f| f.peak_rss_mib) {
                v if v.is_empty() => "–".to_string(),
                v => format!("{} MiB", pm(&v, 0, 1.0)),
            },
        )?;
    }
    writeln!(md, "\n### Every run\n")?;
    writeln!(md, "| run | checkpoint step | cFID vs train | KID×10³ vs train | cFID vs held-out | held-out loss | memorised | early stop |")?;
    writeln!(md, "|---|---|---|---|---|---|---|---|")?;
    for r in by_arm.iter().flat_map(|(_, r)| r) {
        let f = &r.final_eval;
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            markdown::text(&r.data.label),
            f.step,
            fmt(f.fid_train, 2),
            fmt(f.kid_train.map(|k| k * 1e3), 2),
            fmt(f.fid_holdout, 2),
            fmt(f.holdout_loss, 5),
            f.memorization
                .as_ref()
                .map(|m| format!("{:.1}%", 100.0 * m.fraction_below_threshold))
                .unwrap_or("–".into()),
            if f.early_stopped == Some(true) {
                "yes"
            } else {
                "no"
            },
        )?;
    }
    writeln!(
        md,
        "\nWhat this does not show: with {} seed(s) the ± is the spread of this budget and data, not a confidence interval; cFID from {} samples carries a small-sample bias (compare arms at equal sample counts only).\n",
        study.seeds.len(),
        study.final_samples
    )?;

    writeln!(md, "## Curves (mean over seeds, min–max shaded)\n")?;
    for Figure {
        file,
        title,
        y_label: y,
        curve: f,
    } in &FIGURES
    {
        let lines: Vec<Line> = by_arm[..curves_of]
            .iter()
            .filter(|(_, runs)| !runs.is_empty())
            .map(|(name, runs)| {
                let curves: Vec<Vec<(f64, f64)>> = runs.iter().map(|r| f(&r.data)).collect();
                let (points, band) = across_seeds(&curves);
                Line {
                    label: name.clone(),
                    points,
                    band,
                }
            })
            .collect();
        if plot_lines(&lines, title, y, &dir.join(file))? {
            writeln!(md, "![{title}]({file})\n")?;
        }
    }

    writeln!(
        md,
        "## Samples and nearest training images (first seed of each arm)\n"
    )?;
    for (i, (name, runs)) in by_arm.iter().enumerate() {
        let Some(r) = runs.first() else { continue };
        // A guided row's figures are its guided evaluation's (a run whose best w is 1 has none).
        for (what, figure) in [
            ("samples", EvalFigure::Samples),
            ("nearest", EvalFigure::Nearest),
        ] {
            let p = RunDir::new(&r.data.dir).final_figure_path(figure, i >= curves_of);
            if p.exists() {
                let file = format!("{what}_{}.png", name.replace(" + ", "+"));
                crate::report::copy_figure(&p, &dir.join(&file))?;
                writeln!(
                    md,
                    "**{}**, {what}:\n\n![{what}, {}]({file})\n",
                    markdown::text(&r.data.label),
                    markdown::text(&r.data.label)
                )?;
            }
        }
    }
    writeln!(md, "Nearest-neighbour rows: a training image (left), then the 10 samples closest to it in pixel space, for the training images nearest to the most samples.\n")?;
    let path = dir.join("report.md");
    crate::util::files::write_atomic(&path, md.as_bytes())?;
    Ok(path)
}

fn selected_epoch(r: &Finished) -> Option<f64> {
    let step = r.final_eval.step;
    r.data
        .train
        .iter()
        .find(|v| v.step == step)
        .map(|v| v.epoch)
        .or_else(|| {
            r.data
                .evals
                .iter()
                .find(|v| v.step == step)
                .map(|v| v.epoch)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_sd_and_bands() {
        assert_eq!(mean_sd(&[2.0]), Some((2.0, 0.0)));
        let (m, sd) = mean_sd(&[1.0, 3.0]).unwrap();
        assert!((m - 2.0).abs() < 1e-12 && (sd - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(pm(&[1.0, 3.0], 1, 1.0), "2.0 ± 1.4");
        let (mean, band) = across_seeds(&[vec![(1.0, 1.0), (2.0, 4.0)], vec![(1.0, 3.0)]]);
        assert_eq!(mean, vec![(1.0, 2.0)]);
        assert_eq!(band, vec![(1.0, 1.0, 3.0)]);
    }
}
