//! a3ft: fine-tune pre-trained unconditional diffusion models on small image sets.
pub mod adapter;
pub mod checkpoint;
pub mod config;
pub mod diffusers;
pub mod device;
pub mod diffusion;
pub mod model;
pub mod unet;
pub mod finetune;
pub mod images;
pub mod train;
pub mod run;
pub mod optim;
pub mod evaluate;
pub mod bench;
pub mod draws;
pub mod loss_log;
pub mod select;
pub mod stop;
pub mod study;
pub mod study_report;
pub mod data;

/// A progress bar with an indicatif template; hidden when stderr is not a terminal.
pub fn progress_bar(len: u64, template: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(indicatif::ProgressStyle::with_template(template).unwrap().progress_chars("=> "));
    pb
}
pub mod verify;
pub mod npy;
pub mod pt_writer;
pub mod synth;
pub mod metrics;
pub mod report;

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
pub mod demo;
pub mod fetch;
pub mod tarball;
pub mod rasterize;
pub mod owned_dir;
pub mod datasets;
