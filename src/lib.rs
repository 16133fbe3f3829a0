//! a3ft: fine-tune pre-trained unconditional diffusion models on small image sets.
//!
//! The binary (`src/main.rs`, `src/cli/`) is a thin layer over this library, whose modules are
//! grouped below by what they do.

// The network and its diffusion: checkpoints load unchanged and compute what their code computes.
pub mod config;
pub mod unet;
pub mod adapter;
pub mod model;
pub mod diffusion;
pub mod diffusers;
pub mod checkpoint;
pub mod pt_writer;
pub mod device;

// Fine-tuning: which parameters train, the run and its loop.
pub mod finetune;
pub mod run_config;
pub mod run;
pub mod train;
pub mod optim;
pub mod draws;
pub mod loss_log;
pub mod select;
pub mod stop;

// Evaluation, experiments and reports.
pub mod evaluate;
pub mod metrics;
pub mod study;
pub mod study_report;
pub mod report;
pub mod demo;
pub mod bench;
pub mod verify;

// Images in and out: folders, public image sets, synthetic domains, sample files.
pub mod data;
pub mod datasets;
pub mod fetch;
pub mod tarball;
pub mod rasterize;
pub mod synth;
pub mod images;
pub mod npy;
pub mod owned_dir;
pub mod model_card;

/// A progress bar with an indicatif template; hidden when stderr is not a terminal.
pub fn progress_bar(len: u64, template: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(indicatif::ProgressStyle::with_template(template).unwrap().progress_chars("=> "));
    pb
}

/// 121063942 → "121,063,942".
pub fn fmt_count(n: i64) -> String {
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// A number as a user typed it, for error messages: `1e300`, not three hundred digits.
pub fn fmt_num(v: f64) -> String {
    if v != 0.0 && v.is_finite() && !(1e-4..1e6).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}
