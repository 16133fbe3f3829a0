//! `a3ft report`: several runs → report.md with a Table-1-style table, curves over epochs
//! (the paper's Fig. 1), sample grids side by side (Fig. 3/4) and nearest neighbours (Fig. 5).

use crate::model::methods::param_report;
use crate::model::Model;
use crate::train::records::{EvalRecord, LogRecord, Metrics};
use crate::train::run_config::RunConfig;
use crate::train::run_dir::{read_run_config, EvalFigure, RunDir};
use crate::util::markdown;
use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

pub struct RunData {
    pub label: String,
    pub dir: PathBuf,
    pub config: RunConfig,
    pub trainable_params: i64,
    pub base_params: i64,
    pub train: Vec<LogRecord>,
    pub evals: Vec<EvalRecord>,
    /// The checkpoint `--select` chose, if the run selects one.
    pub selected: Option<crate::train::select::Selected>,
}

impl RunData {
    /// The evaluation the report stands on: the selected one, else the last.
    fn reported_eval(&self) -> Option<&EvalRecord> {
        match &self.selected {
            Some(s) => self.evals.iter().find(|v| v.step == s.step),
            None => self.evals.last(),
        }
    }

    /// An evaluation figure of the reported evaluation.
    fn eval_figure(&self, figure: EvalFigure) -> Option<PathBuf> {
        let run = RunDir::new(&self.dir);
        match &self.selected {
            Some(s) => Some(run.eval_figure_path(figure, s.step)).filter(|p| p.exists()),
            None => run.newest_eval_figure(figure),
        }
    }
}

pub fn load_run(dir: &Path) -> Result<RunData> {
    let config = read_run_config(dir)?;
    let (base_params, trainable_params) = match config.params {
        Some(p) => (p.base, p.trainable),
        None => {
            // Runs written before the counts were stored: rebuild the model to count.
            let extras = config.extras();
            let model = Model::new(&config.model, &extras, tch::Device::Cpu)?;
            let pr = param_report(&model, Some(config.method));
            (pr.base_params, pr.trainable_params.unwrap_or(0))
        }
    };
    let metrics = RunDir::new(dir).metrics_path();
    if !metrics.exists() {
        bail!("{} has no metrics.jsonl", dir.display());
    }
    let Metrics { log: train, evals } = Metrics::read(&metrics)?;
    let selected = crate::train::select::Selected::read(&crate::train::run_dir::RunDir::new(dir))?;
    Ok(RunData {
        selected,
        label: config.method.name().to_string(),
        dir: dir.to_path_buf(),
        trainable_params,
        base_params,
        config,
        train,
        evals,
    })
}

const COLORS: [RGBColor; 6] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// One curve of a figure, optionally with a band (x, low, high), e.g. the spread over seeds.
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub band: Vec<(f64, f64, f64)>,
}

/// Line plot of one series per run against epoch (points where the series has values).
fn plot(
    runs: &[RunData],
    title: &str,
    y_label: &str,
    series: &dyn Fn(&RunData) -> Vec<(f64, f64)>,
    path: &Path,
) -> Result<bool> {
    let lines: Vec<Line> = runs
        .iter()
        .map(|r| Line {
            label: r.label.clone(),
            points: series(r),
            band: vec![],
        })
        .collect();
    plot_lines(&lines, title, y_label, path)
}

/// Largest magnitude plotted: far beyond any loss, FID or epoch a run records.
const PLOT_LIMIT: f64 = 1e12;

/// An axis range from `lo..hi` with `frac` of its span added on each side, never empty: the
/// padding is at least a millionth of the values' size, so it is never lost to rounding.
fn padded(lo: f64, hi: f64, frac: f64, floor: f64) -> (f64, f64) {
    let pad = ((hi - lo) * frac)
        .max(lo.abs().max(hi.abs()) * 1e-6)
        .max(floor);
    if hi - lo < pad {
        (lo - pad, hi + pad)
    } else {
        (lo - (hi - lo) * frac, hi + (hi - lo) * frac)
    }
}

/// Curves (with their bands shaded) against epoch; false when there is nothing to draw.
pub fn plot_lines(given: &[Line], title: &str, y_label: &str, path: &Path) -> Result<bool> {
    // Values no run can produce (a damaged metrics file holding ±1e308) are left out, and said
    // so in the caption: an axis spanning them overflows, and the plotting library then loops.
    let plottable = |&(x, y): &(f64, f64)| {
        x.is_finite() && y.is_finite() && x.abs() <= PLOT_LIMIT && y.abs() <= PLOT_LIMIT
    };
    let lines: Vec<Line> = given
        .iter()
        .map(|l| Line {
            label: l.label.clone(),
            points: l.points.iter().copied().filter(plottable).collect(),
            band: l
                .band
                .iter()
                .copied()
                .filter(|&(x, lo, hi)| plottable(&(x, lo)) && plottable(&(x, hi)))
                .collect(),
        })
        .collect();
    let count = |ls: &[Line]| {
        ls.iter()
            .map(|l| l.points.len() + l.band.len())
            .sum::<usize>()
    };
    let left_out = count(given) - count(&lines);
    let title = if left_out == 0 {
        title.to_string()
    } else {
        format!("{title} ({left_out} values beyond ±{PLOT_LIMIT:e} left out)")
    };
    let title = title.as_str();
    let data: Vec<&Line> = lines.iter().filter(|l| !l.points.is_empty()).collect();
    if data.is_empty() {
        return Ok(false);
    }
    register_font();
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for l in &data {
        let band = l.band.iter().flat_map(|&(x, lo, hi)| [(x, lo), (x, hi)]);
        for (x, y) in l.points.iter().copied().chain(band) {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    // Padding relative to the values' size too: at 1e11 an absolute pad is below their precision.
    let (x0, x1) = padded(x0, x1, 0.0, 0.5);
    let (y0, y1) = padded(y0, y1, 0.08, 1e-9);
    // Drawn into memory, then written atomically: never through a link, never half a file.
    const W: u32 = 900;
    const H: u32 = 540;
    let mut buf = vec![255u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 26))
            .margin(18)
            .x_label_area_size(48)
            .y_label_area_size(78)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(y_label)
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        for (i, l) in data.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            if l.band.len() >= 2 {
                let outline: Vec<(f64, f64)> = l
                    .band
                    .iter()
                    .map(|&(x, lo, _)| (x, lo))
                    .chain(l.band.iter().rev().map(|&(x, _, hi)| (x, hi)))
                    .collect();
                chart
                    .draw_series(std::iter::once(Polygon::new(outline, c.mix(0.18).filled())))
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            }
            chart
                .draw_series(LineSeries::new(l.points.iter().copied(), c.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("{e:?}"))?
                .label(l.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 22, y)], c.stroke_width(3))
                });
            if l.points.len() <= 40 {
                chart
                    .draw_series(l.points.iter().map(|&p| Circle::new(p, 4, c.filled())))
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            }
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 18))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    let img = image::RgbImage::from_raw(W, H, buf).context("figure buffer has the wrong size")?;
    crate::io::images::save_png(path, &img)?;
    Ok(true)
}

/// (epoch, value) of the records that have the value, finite.
pub fn series<T>(rows: &[T], point: impl Fn(&T) -> (f64, Option<f64>)) -> Vec<(f64, f64)> {
    rows.iter()
        .map(point)
        .filter_map(|(x, y)| Some((x, y?)))
        .filter(|(_, y)| y.is_finite())
        .collect()
}

/// A figure both reports draw: its file, title, y-axis label, and the curve of one run.
pub struct Figure {
    pub file: &'static str,
    pub title: &'static str,
    pub y_label: &'static str,
    pub curve: fn(&RunData) -> Vec<(f64, f64)>,
}

/// The curves of a run report and a study report (the study draws the mean over seeds).
pub const FIGURES: [Figure; 4] = [
    Figure {
        file: "training_loss.png",
        title: "Training loss",
        y_label: "hybrid loss",
        curve: |r| smooth(series(&r.train, |v| (v.epoch, Some(v.loss))), 5),
    },
    Figure {
        file: "heldout_loss.png",
        title: "Held-out loss (fixed timestep grid)",
        y_label: "hybrid loss",
        curve: |r| series(&r.evals, |v| (v.epoch, v.holdout_loss)),
    },
    Figure {
        file: "train_heldout_gap.png",
        title: "Held-out minus training loss (overfitting gap)",
        y_label: "loss difference",
        curve: |r| series(&r.evals, |v| (v.epoch, v.gap())),
    },
    Figure {
        file: "fid.png",
        title: "In-loop clean-FID against the training images",
        y_label: "cFID",
        curve: |r| series(&r.evals, |v| (v.epoch, v.fid)),
    },
];

/// Moving average over `w` points, so noisy per-interval losses read as curves.
pub fn smooth(s: Vec<(f64, f64)>, w: usize) -> Vec<(f64, f64)> {
    if s.len() <= w {
        return s;
    }
    (0..s.len())
        .map(|i| {
            let lo = i.saturating_sub(w / 2);
            let hi = (i + w / 2 + 1).min(s.len());
            (
                s[i].0,
                s[lo..hi].iter().map(|p| p.1).sum::<f64>() / (hi - lo) as f64,
            )
        })
        .collect()
}

pub fn fmt(v: Option<f64>, digits: usize) -> String {
    v.filter(|x| x.is_finite())
        .map(|x| fixed(x, digits))
        .unwrap_or_else(|| "–".into())
}

/// `x` with `digits` decimals, or in scientific notation beyond ±1e9 (a damaged record's 1e308
/// would otherwise print as 309 digits).
pub fn fixed(x: f64, digits: usize) -> String {
    if x.abs() >= 1e9 {
        format!("{x:.digits$e}")
    } else {
        format!("{x:.digits$}")
    }
}

/// Who wrote a report folder, in its manifest.
const WRITTEN_BY: &str = "a3ft report";

/// Writes `out/report.md`, its figures and a manifest listing them, replacing only an earlier
/// report (a folder holding anything else is refused, nothing is written through a link).
/// Returns the report path.
pub fn write_report(
    run_dirs: &[PathBuf],
    out: &Path,
    title: &str,
    preamble: &str,
) -> Result<PathBuf> {
    if run_dirs.is_empty() {
        bail!("give at least one run folder");
    }
    let claimed = crate::util::owned_dir::OwnedDir::claim(out, "report", |bytes| {
        crate::util::owned_dir::listed_files(bytes, WRITTEN_BY)
    })?;
    let mut runs = run_dirs
        .iter()
        .map(|d| load_run(d))
        .collect::<Result<Vec<_>>>()?;
    claimed.publish(|dir| {
        let files = write_into(dir, &mut runs, title, preamble)?;
        let manifest = crate::util::owned_dir::manifest(WRITTEN_BY, &files);
        crate::util::owned_dir::write_files(
            dir,
            &[(crate::util::owned_dir::MANIFEST.to_string(), manifest)],
        )
    })?;
    Ok(out.join("report.md"))
}

/// The report's files, written into `out`; returns their names.
fn write_into(
    out: &Path,
    runs: &mut [RunData],
    title: &str,
    preamble: &str,
) -> Result<Vec<String>> {
    let mut files = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for r in runs.iter_mut() {
        let n = seen.entry(r.label.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            r.label = format!(
                "{} ({})",
                r.label,
                r.dir.file_name().and_then(|s| s.to_str()).unwrap_or("run")
            );
        }
    }
    let mut md = String::new();
    writeln!(md, "# {}\n", markdown::one_line(title))?;
    if !preamble.is_empty() {
        writeln!(md, "{preamble}\n")?;
    }
    writeln!(md, "## Results\n")?;
    writeln!(md, "| method | trainable params | epochs | cFID ↓ | KID ↓ | held-out loss ↓ | train loss (same grid) | held-out bits/dim ↓ | samples within threshold of a training image | median NN distance |")?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|---|")?;
    for r in runs.iter() {
        let last = r.reported_eval();
        let memo = last.and_then(|v| v.memorization.as_ref());
        let trained = r.train.last().map(|v| v.epoch);
        let epochs = match &r.selected {
            Some(s) => format!(
                "{:.1} (selected by {}; trained {})",
                s.epoch,
                s.metric.name(),
                fmt(trained, 1)
            ),
            None => fmt(trained, 1),
        };
        writeln!(
            md,
            "| {} | {} ({:.2}%) | {} | {} | {} | {} | {} | {} | {} | {} |",
            markdown::text(&r.label),
            crate::util::fmt_count(r.trainable_params),
            100.0 * r.trainable_params as f64 / r.base_params.max(1) as f64,
            epochs,
            fmt(last.and_then(|v| v.fid), 2),
            fmt(last.and_then(|v| v.kid), 4),
            fmt(last.and_then(|v| v.holdout_loss), 5),
            fmt(last.and_then(|v| v.train_grid_loss), 5),
            fmt(last.and_then(|v| v.holdout_bpd), 3),
            memo.map(|m| format!("{:.1}%", 100.0 * m.fraction_below_threshold))
                .unwrap_or_else(|| "–".into()),
            fmt(memo.map(|m| m.median_distance), 4),
        )?;
    }
    writeln!(md, "\nValues are from each run's last evaluation, or the one `--select` chose (its epoch is given). Held-out and training losses use the same fixed timestep grid and noise, so their gap measures overfitting; memorisation counts samples whose nearest training image (pixel space) lies within the RMS threshold.\n")?;
    writeln!(md, "## Curves\n")?;
    for f in &FIGURES {
        if plot(runs, f.title, f.y_label, &f.curve, &out.join(f.file))? {
            files.push(f.file.to_string());
            writeln!(md, "![{}]({})\n", f.title, f.file)?;
        }
    }
    writeln!(md, "## Samples\n")?;
    writeln!(
        md,
        "| {} |",
        runs.iter()
            .map(|r| markdown::text(&r.label))
            .collect::<Vec<_>>()
            .join(" | ")
    )?;
    writeln!(md, "|{}", "---|".repeat(runs.len()))?;
    let mut cells = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        let src = r
            .eval_figure(EvalFigure::Samples)
            .or_else(|| RunDir::new(&r.dir).newest_sample_grid());
        cells.push(match src {
            Some(p) => {
                let name = format!("samples_{i}_{}.png", r.config.method.name());
                copy_figure(&p, &out.join(&name))?;
                let cell = format!("![{}]({name})", markdown::text(&r.label));
                files.push(name);
                cell
            }
            None => "no samples".into(),
        });
    }
    writeln!(md, "| {} |\n", cells.join(" | "))?;
    writeln!(md, "## Nearest training images (memorisation)\n")?;
    writeln!(md, "Each row: a training image (left), then the 10 generated samples closest to it in pixel space, for the training images that are nearest neighbour to the most samples.\n")?;
    for (i, r) in runs.iter().enumerate() {
        if let Some(p) = r.eval_figure(EvalFigure::Nearest) {
            let name = format!("nearest_{i}_{}.png", r.config.method.name());
            copy_figure(&p, &out.join(&name))?;
            writeln!(
                md,
                "**{}**\n\n![nearest neighbours, {}]({name})\n",
                markdown::text(&r.label),
                markdown::text(&r.label)
            )?;
            files.push(name);
        }
    }
    writeln!(md, "## Runs\n")?;
    for r in runs.iter() {
        let h = &r.config.hyper;
        writeln!(
            md,
            "- {}: {}, {} images, batch {}, lr {}, {} steps, seed {}, base checkpoint {}",
            markdown::text(&r.label),
            markdown::code(&r.dir.display().to_string()),
            r.config.num_trained_images(),
            h.batch_size,
            h.lr,
            h.total_steps,
            h.seed,
            r.config
                .base_checkpoint
                .as_ref()
                .map(|b| format!(
                    "{} (sha256 {}…)",
                    markdown::code(&b.path.display().to_string()),
                    markdown::one_line(b.sha256.get(..12).unwrap_or(&b.sha256))
                ))
                .unwrap_or_else(|| "none (from scratch)".into())
        )?;
    }
    crate::util::owned_dir::write_files(out, &[("report.md".to_string(), md.into_bytes())])?;
    files.push("report.md".into());
    Ok(files)
}

/// Copies a run's figure into a report: read only from a regular file (a FIFO would block, a
/// link could bring in any file), written atomically (never through a link at `to`).
pub fn copy_figure(from: &Path, to: &Path) -> Result<()> {
    if std::fs::symlink_metadata(from).is_ok_and(|m| !m.is_file()) {
        bail!(
            "{} is not a regular file; a report copies only a run's own figures",
            from.display()
        );
    }
    crate::util::files::write_atomic(to, &crate::util::files::read_file(from)?)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drawn on another thread so that a hang fails the test instead of stalling the suite.
    fn plots_within_a_minute(points: Vec<(f64, f64)>) -> bool {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.png");
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || {
            let line = Line {
                label: "run".into(),
                points,
                band: vec![],
            };
            let _ = tx.send(plot_lines(&[line], "t", "y", &p).unwrap());
        });
        let drawn = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("plotting hung");
        assert_eq!(drawn, path.exists());
        drawn
    }

    #[test]
    fn extreme_values_never_hang_a_plot() {
        assert!(plots_within_a_minute(vec![
            (1.0, 0.5),
            (2.0, 1e308),
            (3.0, -1e308),
            (4.0, 0.4)
        ]));
        assert!(plots_within_a_minute(vec![(1.0, 1e11), (2.0, 1e11)]));
        assert!(plots_within_a_minute(vec![(1e11, 0.3)]));
        assert!(!plots_within_a_minute(vec![
            (1.0, f64::MAX),
            (f64::MIN, 0.2)
        ]));
        assert_eq!(padded(5.0, 5.0, 0.0, 0.5), (4.5, 5.5));
    }
}
