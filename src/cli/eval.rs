//! `a3ft eval`: clean-FID, KID, memorisation (and held-out figures for a run or checkpoint).

use super::common::{CheckpointArgs, DeviceArgs, ModelArgs};
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
    #[arg(long, value_name = "DIR", conflicts_with_all = ["run", "checkpoint"])]
    pub generated: Option<PathBuf>,
    /// Training run: sample --num-samples images from it (and report held-out figures)
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["checkpoint", "preset", "model_config"])]
    pub run: Option<PathBuf>,
    /// A model to sample --num-samples images from (with --preset or --model-config, as `sample` takes it)
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub ckpt: CheckpointArgs,
    /// Domain guidance weight w: sample ε_base + w·(ε_run − ε_base) with the run's base checkpoint as the source (1 = off, 0 = the base's noise prediction); the held-out loss is the guided model's
    #[arg(long, requires = "run", allow_negative_numbers = true)]
    pub guidance: Option<f64>,
    /// Reference images (usually the training set)
    #[arg(long, value_name = "DIR")]
    pub reference: PathBuf,
    #[arg(long, allow_negative_numbers = true, help = format!("Images to sample from a run or checkpoint [default: {DEFAULT_RUN_SAMPLES}]"))]
    pub num_samples: Option<usize>,
    /// Sampler respacing for --run or --checkpoint (ddimN = DDIM)
    #[arg(long, default_value_t = a3ft::diffusion::respace::Respacing::sampling_default(), allow_hyphen_values = true)]
    pub respacing: a3ft::diffusion::respace::Respacing,
    /// Held-out images (with --run or --checkpoint): denoising loss and bits/dim on a fixed timestep grid, and clean-FID/KID against them [default for --run: the run's own held-out images, where it had some and they are unchanged]
    #[arg(long, value_name = "DIR")]
    pub holdout: Option<PathBuf>,
    /// Inception weights (default: the cache filled by `make inception`)
    #[arg(long, value_name = "FILE")]
    pub inception: Option<PathBuf>,
    /// Memorisation threshold: RMS pixel distance (0–1 scale) below which a sample counts as a copy
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub memo_threshold: f64,
    /// Seed of the samples and held-out noise of --checkpoint, and of KID's subsets
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
        bail!(
            "--reference {} holds {} image(s); FID and KID need at least 2",
            dir.display(),
            listing.files.len()
        );
    }
    Ok(listing.files)
}

/// What is scored: images already made, or a model that samples them (with held-out images
/// to compute its held-out figures on, in [-1, 1], and the seed of their noise).
enum Scored {
    Generated {
        dir: PathBuf,
        folder: metrics::SampleFolder,
    },
    Model {
        load: ModelToLoad,
        num_samples: usize,
        holdout: Option<HeldOut>,
        heldout_seed: u64,
    },
}

/// Held-out images: at the model's size for the loss, and as files for FID/KID, read as
/// `--reference` is read, so that the two FIDs compare.
struct HeldOut {
    images: Tensor,
    dir: PathBuf,
    files: Vec<PathBuf>,
}

enum ModelToLoad {
    Run(PathBuf),
    Checkpoint(a3ft::model::config::ModelConfig, CheckpointArgs),
}

pub fn run(a: EvalArgs) -> Result<()> {
    // Flags, folders and the model are checked before the Inception network is loaded.
    if !(a.memo_threshold.is_finite() && (0.0..=1.0).contains(&a.memo_threshold)) {
        bail!(
            "--memo-threshold must be an RMS pixel distance between 0 and 1, got {}",
            a3ft::util::fmt_num(a.memo_threshold)
        );
    }
    let scored = scored(&a)?;
    let ref_files = reference_files(&a.reference)?;
    let device = a.dev.device()?;
    let net = Inception::load(a.inception.as_deref(), device)?;
    let ref_feats = metrics::files_features(&net, &a.reference, &ref_files, true)?;
    let mut out = json!({});
    let (gen_feats, gen_images, res, holdout) = match scored {
        Scored::Generated { dir, folder } => {
            let feats = metrics::files_features(&net, &dir, &folder.files, false)?;
            // Memorisation compares pixels at a bounded size: each image is decoded and resized
            // on its own, so memory follows the number of images, not their size.
            let res = folder.min_side.min(metrics::memorization::MAX_RESOLUTION);
            (
                feats,
                files_at(
                    &folder.files,
                    res,
                    &format!("--generated {}", dir.display()),
                )?,
                res,
                None,
            )
        }
        Scored::Model {
            load,
            num_samples,
            holdout,
            heldout_seed,
        } => {
            let model = match load {
                ModelToLoad::Run(run) => a3ft::train::run_model::load_guided(
                    &a3ft::train::run_dir::RunDir::new(&run),
                    None,
                    device,
                    a.guidance,
                )?,
                ModelToLoad::Checkpoint(config, ckpt) => {
                    super::common::build_model(&config, &Default::default(), &ckpt, device)?
                }
            };
            let nhwc = a3ft::train::evaluate::sample_for_evaluation(
                &model,
                &a.respacing,
                num_samples,
                a.seed as i64,
                !a.json,
            )?;
            let feats = net.features_rgb(&metrics::nhwc_to_rgb(&nhwc), 32, None)?;
            if let Some(set) = &holdout {
                // The grid and noise of in-loop evaluation, so the figures compare with metrics.jsonl.
                let d = a3ft::diffusion::Diffusion::from_config(
                    &model.config,
                    Some(&a3ft::diffusion::respace::Respacing::All),
                    device,
                )?;
                let ho = metrics::heldout::heldout(
                    &model,
                    &d,
                    &set.images,
                    a3ft::train::evaluate::HELDOUT_GRID,
                    heldout_seed,
                    64,
                )?;
                out["heldout"] = serde_json::to_value(ho)?;
            }
            let res = (model.config.image_size as u32).min(metrics::memorization::MAX_RESOLUTION);
            (
                feats,
                nhwc.permute([0, 3, 1, 2]).to_kind(Kind::Float),
                res,
                holdout,
            )
        }
    };
    let training = folder_at(&a.reference, res)?;
    let scores = a3ft::train::evaluate::score(
        &gen_images,
        &training,
        Some((&gen_feats, &ref_feats)),
        a.memo_threshold,
        a.seed,
    )?;
    let (fid_value, kid_value, memo) = (
        scores.fid.unwrap_or(f64::NAN),
        scores.kid.unwrap_or(f64::NAN),
        scores.memorization,
    );
    out["fid"] = fid_value.into();
    out["kid"] = kid_value.into();
    out["num_generated"] = gen_feats.size()[0].into();
    out["num_reference"] = ref_feats.size()[0].into();
    out["memorization"] = serde_json::to_value(&memo)?;
    // Against images the model never saw, FID/KID measure what it generalises to, not only
    // how close it came to its training images.
    if let Some(h) = holdout.filter(|h| h.files.len() >= 2) {
        let held_feats = metrics::files_features(&net, &h.dir, &h.files, true)?;
        out["heldout"]["fid"] = a3ft::metrics::fid::fid(&gen_feats, &held_feats)?.into();
        out["heldout"]["kid"] =
            a3ft::metrics::fid::kid(&gen_feats, &held_feats, 100, 1000, a.seed)?.into();
    }
    // A signal during the last of the work: no figures printed as if nothing had happened.
    a3ft::util::stop::check()?;
    if a.json {
        println!("{out}");
    } else {
        println!("clean-FID  {fid_value:.4}");
        println!("KID        {kid_value:.6}  (×10³: {:.3})", kid_value * 1e3);
        println!(
            "images     {} generated, {} reference",
            out["num_generated"], out["num_reference"]
        );
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
            println!(
                "held-out   loss {:.5}, mse {:.5}, {:.4} bits/dim ({} images)",
                f("loss"),
                f("mse"),
                f("bpd"),
                h["num_images"]
            );
            if h.get("fid").is_some() {
                println!(
                    "held-out   clean-FID {:.4}, KID {:.6} (samples against the held-out images)",
                    f("fid"),
                    f("kid")
                );
            }
        }
    }
    Ok(())
}

/// The images to score, checked: flags that do not apply to them are refused rather than ignored.
fn scored(a: &EvalArgs) -> Result<Scored> {
    let model_given =
        a.ckpt.checkpoint.is_some() || a.model.preset.is_some() || a.model.model_config.is_some();
    if let Some(dir) = &a.generated {
        // clap does not enforce `requires` next to `--generated` (which conflicts with the
        // model flags): a flag that only means something for a model must not be ignored silently.
        for (flag, given) in [
            ("--num-samples", a.num_samples.is_some()),
            ("--holdout", a.holdout.is_some()),
            ("--preset/--model-config", model_given),
        ] {
            if given {
                bail!("{flag} applies to --run or --checkpoint (sampling a model), not to --generated images");
            }
        }
        let folder = metrics::sample_folder(dir, "--generated")?;
        for g in &folder.grids {
            eprintln!("note: --generated: leaving out {} (the sample grid `a3ft sample` writes; not a sample)", g.display());
        }
        return Ok(Scored::Generated {
            dir: dir.clone(),
            folder,
        });
    }
    let num_samples = a.num_samples.unwrap_or(DEFAULT_RUN_SAMPLES);
    if !(2..=a3ft::model::MAX_SAMPLES).contains(&num_samples) {
        bail!(
            "--num-samples must be between 2 and {}, got {num_samples}",
            a3ft::model::MAX_SAMPLES
        );
    }
    let (load, image_size, holdout, heldout_seed) = match &a.run {
        Some(run) => {
            let rc = a3ft::train::run_dir::read_run_config(run)?;
            rc.model.resolve()?;
            rc.model
                .validate_respacing(&a.respacing)
                .context("--respacing")?;
            let holdout = match &a.holdout {
                Some(h) => Some(checked_holdout(h, &rc)?),
                None => own_holdout(&rc)?,
            };
            // The run's own seed: the held-out noise of its in-loop evaluations.
            (
                ModelToLoad::Run(run.clone()),
                rc.model.image_size,
                holdout,
                rc.hyper.seed,
            )
        }
        None => {
            if a.ckpt.checkpoint.is_none() {
                bail!("give --generated DIR, --run RUN_DIR or --checkpoint FILE (with --preset or --model-config)");
            }
            let (config, ckpt) = super::common::model_source(&a.model, &a.ckpt)?;
            config.resolve()?;
            config
                .validate_respacing(&a.respacing)
                .context("--respacing")?;
            // What a released checkpoint trained on is not known here: the user vouches that
            // --holdout holds images it never saw.
            let holdout = match &a.holdout {
                Some(h) => Some(holdout_folder(h, config.image_size)?),
                None => None,
            };
            let size = config.image_size;
            (ModelToLoad::Checkpoint(config, ckpt), size, holdout, a.seed)
        }
    };
    let batch = a3ft::train::evaluate::evaluation_batch(num_samples, image_size);
    a3ft::model::check_sample_counts(num_samples, batch, image_size, "--num-samples", "batch")?;
    Ok(Scored::Model {
        load,
        num_samples,
        holdout,
        heldout_seed,
    })
}

/// A `--holdout` folder's images at the model's size, in [-1, 1].
fn holdout_folder(h: &Path, image_size: i64) -> Result<HeldOut> {
    if !h.is_dir() {
        bail!(
            "--holdout {} does not exist or is not a folder",
            h.display()
        );
    }
    let set = a3ft::data::load_folder(h, image_size as u32, false).context("--holdout")?;
    Ok(HeldOut {
        images: set.images,
        dir: h.to_path_buf(),
        files: set.paths,
    })
}

/// `--holdout` for a run: refused where it holds images the run trained on.
fn checked_holdout(h: &Path, rc: &a3ft::train::run_config::RunConfig) -> Result<HeldOut> {
    // A loss on the images the run trained on is a training loss, whatever the flag says.
    if !h.is_dir() {
        bail!(
            "--holdout {} does not exist or is not a folder",
            h.display()
        );
    }
    if a3ft::util::paths::is_within(h, &rc.data) || a3ft::util::paths::is_within(&rc.data, h) {
        bail!("--holdout {} overlaps the run's training folder {}: held-out images must be ones it never trained on", h.display(), rc.data.display());
    }
    let set = holdout_folder(h, rc.model.image_size)?;
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
        let trained_images = if rc.hyper.eval.holdout.is_none() {
            a3ft::train::setup::split_holdout(rc, all)?.0
        } else {
            all
        };
        let trained: std::collections::HashSet<Vec<u8>> =
            a3ft::train::image_hashes(&trained_images)?
                .into_iter()
                .collect();
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
    Ok(set)
}

/// The held-out images `--run` evaluated on while it trained, where they can still be had as
/// they were: its `--holdout` folder, or the `--holdout-fraction` share of its training folder
/// (the same seeded split). A folder that is gone or changed gives no held-out figures and a note
/// saying why, not a loss on other images under the run's name.
fn own_holdout(rc: &a3ft::train::run_config::RunConfig) -> Result<Option<HeldOut>> {
    use a3ft::train::{fingerprint_of, image_hashes};
    let size = rc.model.image_size as u32;
    let e = &rc.hyper.eval;
    let (dir, flag, recorded) = match &e.holdout {
        Some(dir) => (dir, "--holdout", rc.holdout_sha256.as_ref()),
        None if e.held_out_of(rc.num_images) > 0 => (&rc.data, "--data", rc.data_sha256.as_ref()),
        None => return Ok(None),
    };
    let skip = |why: &str| -> Result<Option<HeldOut>> {
        eprintln!(
            "note: no held-out figures: the run's {flag} folder {} {why}; give --holdout DIR",
            dir.display()
        );
        Ok(None)
    };
    if !dir.is_dir() {
        return skip("is gone");
    }
    let set = a3ft::data::load_folder(dir, size, false)
        .with_context(|| format!("the run's {flag} folder {}", dir.display()))?;
    let now = fingerprint_of(&image_hashes(&set.images)?);
    if recorded.is_some_and(|r| *r != now) {
        return skip("changed since the run trained");
    }
    let held = match e.holdout {
        Some(_) => Some(HeldOut {
            images: set.images,
            dir: dir.clone(),
            files: set.paths,
        }),
        None => match a3ft::train::setup::holdout_indices(rc, set.images.size()[0])? {
            Some((_, idx)) => {
                let files = Vec::<i64>::try_from(&idx)?
                    .into_iter()
                    .map(|i| set.paths[i as usize].clone())
                    .collect();
                Some(HeldOut {
                    images: set.images.index_select(0, &idx),
                    dir: dir.clone(),
                    files,
                })
            }
            None => None,
        },
    };
    if let Some(h) = &held {
        eprintln!(
            "held-out figures on the run's own {} held-out images ({flag} {})",
            h.files.len(),
            dir.display()
        );
    }
    Ok(held)
}
