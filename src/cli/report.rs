//! `a3ft report`: turn several training runs into one report.

use anyhow::{bail, Result};
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
    for (i, r) in a.runs.iter().enumerate() {
        if a3ft::util::paths::is_within(&a.out, r) {
            bail!(
                "--out {} lies inside the run folder {}; write the report elsewhere",
                a.out.display(),
                r.display()
            );
        }
        if let Some((flag, dir)) = a3ft::train::run_dir::read_run_config(r)
            .ok()
            .as_ref()
            .and_then(|rc| rc.image_folder_holding(&a.out))
        {
            bail!("--out {} lies inside the {flag} folder {} of run {}; its figures would become images of that run", a.out.display(), dir.display(), r.display());
        }
        if a.runs[..i].iter().any(|q| {
            std::fs::canonicalize(q)
                .ok()
                .is_some_and(|q| std::fs::canonicalize(r).is_ok_and(|r| r == q))
        }) {
            bail!("run {} is listed twice", r.display());
        }
    }
    let path = a3ft::report::write_report(&a.runs, &a.out, &a.title, "")?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
