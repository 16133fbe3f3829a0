//! `a3ft eval`: clean-FID, KID, memorisation (and held-out figures for a run).

use super::common::DeviceArgs;
use a3ft::metrics::{self, fid, inception::Inception, memorization};
use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;
use std::path::PathBuf;
use tch::{Kind, Tensor};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Folder of generated images
    #[arg(long, value_name = "DIR", conflicts_with = "run", required_unless_present = "run")]
    pub generated: Option<PathBuf>,
    /// Training run: sample --num-samples images from it (and report held-out figures)
    #[arg(long, value_name = "RUN_DIR")]
    pub run: Option<PathBuf>,
    /// Reference images (usually the training set)
    #[arg(long, value_name = "DIR")]
    pub reference: PathBuf,
    /// Images to sample from a run
    #[arg(long, default_value_t = 256)]
    pub num_samples: usize,
    /// Sampler respacing for --run (ddimN = DDIM)
    #[arg(long, default_value = "50")]
    pub respacing: String,
    /// Held-out images (with --run): denoising loss and bits/dim on a fixed timestep grid
    #[arg(long, value_name = "DIR", requires = "run")]
    pub holdout: Option<PathBuf>,
    /// Inception weights (default: the cache filled by `make inception`)
    #[arg(long, value_name = "FILE")]
    pub inception: Option<PathBuf>,
    /// Memorisation threshold: RMS pixel distance (0–1 scale) below which a sample counts as a copy
    #[arg(long, default_value_t = 0.05)]
    pub memo_threshold: f64,
    /// KID subset sampling seed
    #[arg(long, default_value_t = 0)]
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

pub fn run(a: EvalArgs) -> Result<()> {
    let device = a.dev.device()?;
    let net = Inception::load(a.inception.as_deref(), device)?;
    let ref_feats = metrics::folder_features(&net, &a.reference, true)?;
    let mut out = json!({});
    let (gen_feats, gen_images, res) = match (&a.generated, &a.run) {
        (Some(dir), None) => {
            let feats = metrics::folder_features(&net, dir, false)?;
            let imgs = metrics::read_folder_rgb(dir)?;
            let res = imgs[0].0 as u32;
            (feats, folder_at(dir, res)?, res)
        }
        (None, Some(run)) => {
            if a.num_samples < 2 {
                bail!("--num-samples must be at least 2");
            }
            let model = a3ft::run::load_run_model(run, None, device)?;
            let diffusion = a3ft::diffusion::Diffusion::from_config(&model.config, Some(&a.respacing), device)?;
            let sampler = a3ft::model::sampler_for(&a.respacing);
            let nhwc = model.sample_images(&diffusion, a.num_samples, 64, sampler, a.seed as i64, !a.json);
            let feats = net.features_rgb(&metrics::nhwc_to_rgb(&nhwc), 32, None)?;
            if let Some(h) = &a.holdout {
                let set = a3ft::data::load_folder(h, model.config.image_size as u32, false)?;
                let d = a3ft::diffusion::Diffusion::from_config(&model.config, Some(""), device)?;
                let ho = metrics::heldout::heldout(&model, &d, &set.images, 20, 0, 64)?;
                out["heldout"] = serde_json::to_value(ho)?;
            }
            (feats, nhwc.permute([0, 3, 1, 2]).to_kind(Kind::Float), model.config.image_size as u32)
        }
        _ => bail!("give --generated DIR or --run RUN_DIR"),
    };
    let fid_value = fid::fid(&gen_feats, &ref_feats)?;
    let kid_value = fid::kid(&gen_feats, &ref_feats, 100, 1000, a.seed)?;
    let training = folder_at(&a.reference, res)?;
    let (memo, _, _) = memorization::memorization(&gen_images, &training, a.memo_threshold);
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
            println!("held-out   loss {:.5}, mse {:.5}, {:.4} bits/dim ({} images)", h["loss"], h["mse"], h["bpd"], h["num_images"]);
        }
    }
    Ok(())
}
