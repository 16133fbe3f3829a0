//! `a3ft eval`: clean-FID, KID, memorisation (and held-out figures for a run).

use super::common::DeviceArgs;
use a3ft::metrics::{self, inception::Inception};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Images sampled from `--run` unless `--num-samples` says otherwise (optional so that it can be
/// refused with `--generated`).
pub const DEFAULT_RUN_SAMPLES: usize = 256;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Folder of generated images
    #[arg(long, value_name = "DIR", conflicts_with = "run", required_unless_present = "run")]
    pub generated: Option<PathBuf>,
    /// Training run: sample --num-samples images from it (and report held-out figures)
    #[arg(long, value_name = "RUN_DIR")]
    pub run: Option<PathBuf>,
    /// Domain guidance weight w: sample ε_base + w·(ε_run − ε_base) with the run's base checkpoint as the source (1 = off, 0 = the base's noise prediction); the held-out loss is the guided model's
    #[arg(long, requires = "run", allow_negative_numbers = true)]
    pub guidance: Option<f64>,
    /// Reference images (usually the training set)
    #[arg(long, value_name = "DIR")]
    pub reference: PathBuf,
    #[arg(long, allow_negative_numbers = true, requires = "run", help = format!("Images to sample from a run [default: {DEFAULT_RUN_SAMPLES}]"))]
    pub num_samples: Option<usize>,
    /// Sampler respacing for --run (ddimN = DDIM)
    #[arg(long, default_value = a3ft::diffusion::sample::DEFAULT_RESPACING, allow_hyphen_values = true)]
    pub respacing: String,
    /// Held-out images (with --run): denoising loss and bits/dim on a fixed timestep grid [default: the run's own held-out images, where it had some and they are unchanged]
    #[arg(long, value_name = "DIR", requires = "run")]
    pub holdout: Option<PathBuf>,
    /// Inception weights (default: the cache filled by `make inception`)
    #[arg(long, value_name = "FILE")]
    pub inception: Option<PathBuf>,
    /// Memorisation threshold: RMS pixel distance (0–1 scale) below which a sample counts as a copy
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub memo_threshold: f64,
    /// KID subset sampling seed
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub seed: u64,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

/// uint8-valued `[N, 3, S, S]` tensor of a folder at resolution `s` (the training loader's resize).
fn folder_at(dir: &std::path::Path, s: u32) -> Result<Tensor> {
    let set = a3ft::data::load_folder(dir, s, false)?;
    Ok(((set.images + 1.0) * 127.5).round())
}

/// The same for given files (all must be readable).
fn files_at(files: &[PathBuf], s: u32, origin: &str) -> Result<Tensor> {
    let set = a3ft::data::load_files(files, s, true, origin)?;
    Ok(((set.images + 1.0) * 127.5).round())
}

/// Reference images: at least 2 (FID/KID), listed before anything heavy is loaded.
fn reference_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let listing = a3ft::data::scan_images(dir).context("--reference")?;
    for (_, why) in &listing.ignored {
        eprintln!("warning: --reference: skipping {why}");
    }
    if listing.files.len() < 2 {
        bail!("--reference {} holds {} image(s); FID and KID need at least 2", dir.display(), listing.files.len());
    }
    Ok(listing.files)
}

pub fn run(a: EvalArgs) -> Result<()> {
    // Flags, folders and the run are checked before the Inception network is loaded.
    if !(a.memo_threshold.is_finite() && (0.0..=1.0).contains(&a.memo_threshold)) {
        bail!("--memo-threshold must be an RMS pixel distance between 0 and 1, got {}", a3ft::util::fmt_num(a.memo_threshold));
    }
    // clap does not enforce `requires = "run"` next to `--generated` (which conflicts with it):
    // a flag that only means something for a run must not be ignored silently.
    if a.generated.is_some() {
        for (flag, given) in [("--num-samples", a.num_samples.is_some()), ("--holdout", a.holdout.is_some())] {
            if given {
                bail!("{flag} applies to --run (sampling a run), not to --generated images");
            }
        }
    }
    let num_samples = a.num_samples.unwrap_or(DEFAULT_RUN_SAMPLES);
    if !(2..=a3ft::model::MAX_SAMPLES).contains(&num_samples) {
        bail!("--num-samples must be between 2 and {}, got {num_samples}", a3ft::model::MAX_SAMPLES);
    }
    let ref_files = reference_files(&a.reference)?;
    let generated = match &a.generated {
        Some(dir) => {
            let folder = metrics::sample_folder(dir, "--generated")?;
            for g in &folder.grids {
                eprintln!("note: --generated: leaving out {} (the sample grid `a3ft sample` writes; not a sample)", g.display());
            }
            Some(folder)
        }
        None => None,
    };
    let mut holdout_set = None;
    let mut run_seed = 0;
    if let Some(run) = &a.run {
        let rc = a3ft::train::run_dir::read_run_config(run)?;
        rc.model.resolve()?;
        run_seed = rc.hyper.seed;
        let batch = a3ft::train::evaluate::evaluation_batch(num_samples, rc.model.image_size);
        a3ft::model::check_sample_counts(num_samples, batch, rc.model.image_size, "--num-samples", "batch")?;
        rc.model.validate_respacing(&a.respacing).context("--respacing")?;
        if let Some(h) = &a.holdout {
            if !h.is_dir() {
                bail!("--holdout {} does not exist or is not a folder", h.display());
            }
            // A loss on the images the run trained on is a training loss, whatever the flag says.
            if a3ft::util::paths::is_within(h, &rc.data) || a3ft::util::paths::is_within(&rc.data, h) {
                bail!("--holdout {} overlaps the run's training folder {}: held-out images must be ones it never trained on", h.display(), rc.data.display());
            }
            let set = a3ft::data::load_folder(h, rc.model.image_size as u32, false)?;
            let held = a3ft::train::image_hashes(&set.images)?;
            if rc.data_sha256.as_ref() == Some(&a3ft::train::fingerprint_of(&held)) {
                bail!("--holdout {} holds the same images as the run's training folder {}: held-out images must be ones it never trained on", h.display(), rc.data.display());
            }
            // Image by image, where the training folder is still there: a subset of it (or a mix)
            // would report a partly-training loss as held-out.
            if rc.data.is_dir() {
                let all = a3ft::data::load_folder(&rc.data, rc.model.image_size as u32, false)?.images;
                // A run that held a share of its folder out trained on the rest only: its own
                // held-out images are welcome here.
                let images = if rc.hyper.eval.holdout.is_none() { a3ft::train::setup::split_holdout(&rc, all)?.0 } else { all };
                let trained: std::collections::HashSet<Vec<u8>> = a3ft::train::image_hashes(&images)?.into_iter().collect();
                let shared = held.iter().filter(|x| trained.contains(*x)).count();
                if shared > 0 {
                    bail!(
                        "{shared} of the {} --holdout images in {} are images the run trained on (pixel-identical at {} px, in {}): held-out images must be ones it never trained on",
                        held.len(),
                        h.display(),
                        rc.model.image_size,
                        rc.data.display()
                    );
                }
            }
            holdout_set = Some(set.images);
        } else {
            holdout_set = own_holdout(&rc)?;
        }
    }
    let device = a.dev.device()?;
    let net = Inception::load(a.inception.as_deref(), device)?;
    let ref_feats = metrics::files_features(&net, &a.reference, &ref_files, true)?;
    let mut out = json!({});
    let (gen_feats, gen_images, res) = match (&generated, &a.run) {
        (Some(folder), None) => {
            let dir = a.generated.as_deref().unwrap_or(Path::new("."));
            let feats = metrics::files_features(&net, dir, &folder.files, false)?;
            // Memorisation compares pixels at a bounded size: each image is decoded and resized
            // on its own, so memory follows the number of images, not their size.
            let res = folder.min_side.min(metrics::memorization::MAX_RESOLUTION);
            (feats, files_at(&folder.files, res, &format!("--generated {}", dir.display()))?, res)
        }
        (None, Some(run)) => {
            let model = a3ft::train::run_dir::RunDir::new(run).load_model_guided(None, device, a.guidance)?;
            let nhwc = a3ft::train::evaluate::sample_for_evaluation(&model, &a.respacing, num_samples, a.seed as i64, !a.json)?;
            let feats = net.features_rgb(&metrics::nhwc_to_rgb(&nhwc), 32, None)?;
            if let Some(set) = &holdout_set {
                // The grid and noise of in-loop evaluation, so the figures compare with metrics.jsonl.
                let d = a3ft::diffusion::Diffusion::from_config(&model.config, Some(""), device)?;
                let ho = metrics::heldout::heldout(&model, &d, set, a3ft::train::evaluate::HELDOUT_GRID, run_seed, 64)?;
                out["heldout"] = serde_json::to_value(ho)?;
            }
            (feats, nhwc.permute([0, 3, 1, 2]).to_kind(Kind::Float), (model.config.image_size as u32).min(metrics::memorization::MAX_RESOLUTION))
        }
        _ => bail!("give --generated DIR or --run RUN_DIR"),
    };
    let training = folder_at(&a.reference, res)?;
    let scores = a3ft::train::evaluate::score(&gen_images, &training, Some((&gen_feats, &ref_feats)), a.memo_threshold, a.seed)?;
    let (fid_value, kid_value, memo) = (scores.fid.unwrap_or(f64::NAN), scores.kid.unwrap_or(f64::NAN), scores.memorization);
    out["fid"] = fid_value.into();
    out["kid"] = kid_value.into();
    out["num_generated"] = gen_feats.size()[0].into();
    out["num_reference"] = ref_feats.size()[0].into();
    out["memorization"] = serde_json::to_value(&memo)?;
    if a.json {
        println!("{out}");
    } else {
        println!("clean-FID  {fid_value:.4}");
        println!("KID        {kid_value:.6}  (×10³: {:.3})", kid_value * 1e3);
        println!("images     {} generated, {} reference", out["num_generated"], out["num_reference"]);
        println!(
            "memorisation ({} px): nearest training image at RMS distance median {:.4}, min {:.4}; {:.1}% of samples below {}",
            res,
            memo.median_distance,
            memo.min_distance,
            100.0 * memo.fraction_below_threshold,
            memo.threshold
        );
        if let Some(h) = out.get("heldout") {
            let f = |k: &str| h[k].as_f64().unwrap_or(f64::NAN);
            println!("held-out   loss {:.5}, mse {:.5}, {:.4} bits/dim ({} images)", f("loss"), f("mse"), f("bpd"), h["num_images"]);
        }
    }
    Ok(())
}

/// The held-out images `--run` evaluated on while it trained, where they can still be had as
/// they were: its `--holdout` folder, or the `--holdout-fraction` share of its training folder
/// (the same seeded split). A folder that is gone or changed gives no held-out figures and a note
/// saying why, not a loss on other images under the run's name.
fn own_holdout(rc: &a3ft::train::run_config::RunConfig) -> Result<Option<Tensor>> {
    use a3ft::train::{fingerprint_of, image_hashes};
    let size = rc.model.image_size as u32;
    let e = &rc.hyper.eval;
    let (dir, flag, recorded) = match &e.holdout {
        Some(dir) => (dir, "--holdout", rc.holdout_sha256.as_ref()),
        None if e.held_out_of(rc.num_images) > 0 => (&rc.data, "--data", rc.data_sha256.as_ref()),
        None => return Ok(None),
    };
    let skip = |why: &str| -> Result<Option<Tensor>> {
        eprintln!("note: no held-out figures: the run's {flag} folder {} {why}; give --holdout DIR", dir.display());
        Ok(None)
    };
    if !dir.is_dir() {
        return skip("is gone");
    }
    let set = a3ft::data::load_folder(dir, size, false).with_context(|| format!("the run's {flag} folder {}", dir.display()))?;
    let now = fingerprint_of(&image_hashes(&set.images)?);
    if recorded.is_some_and(|r| *r != now) {
        return skip("changed since the run trained");
    }
    let held = match e.holdout {
        Some(_) => Some(set.images),
        None => a3ft::train::setup::split_holdout(rc, set.images)?.1,
    };
    if let Some(h) = &held {
        eprintln!("held-out figures on the run's own {} held-out images ({flag} {})", h.size()[0], dir.display());
    }
    Ok(held)
}
