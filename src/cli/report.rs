//! `a3ft report`: turn several training runs into one report.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Run folders to compare
    #[arg(required = true, value_name = "RUN_DIR")]
    pub runs: Vec<PathBuf>,
    /// Output folder (report.md and its figures)
    #[arg(long)]
    pub out: PathBuf,
    /// Report title
    #[arg(long, default_value = "a3ft report")]
    pub title: String,
}

pub fn run(a: ReportArgs) -> Result<()> {
    let path = a3ft::report::write_report(&a.runs, &a.out, &a.title, "")?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
