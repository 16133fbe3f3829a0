//! `a3ft debug step`: one forward pass and loss on given inputs, for verifying conversions.

use super::common::{read_npy, CheckpointArgs, DeviceArgs, ModelArgs};
use a3ft::diffusion::Diffusion;
use a3ft::model::unet::Extras;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

#[derive(Subcommand, Debug)]
pub enum DebugCmd {
    /// Run q_sample, the model, the training loss terms and p_mean_variance on fixed inputs and
    /// write every intermediate as float32 arrays to an .npz file
    Step(StepArgs),
}

#[derive(Args, Debug)]
pub struct StepArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub ckpt: CheckpointArgs,
    /// x0 images, [B,3,S,S] float32 in [-1,1]
    #[arg(long)]
    pub x0: PathBuf,
    /// Diffusion steps, [B] int64, raw (rescale_timesteps is applied by the tool)
    #[arg(long)]
    pub t: PathBuf,
    /// Noise ε used for x_t, [B,3,S,S] float32
    #[arg(long)]
    pub noise: PathBuf,
    /// Output .npz: x_t, model_output (network at raw t, as the golden fixtures), model_output_scaled, mse, vb, loss, mean, log_variance, pred_xstart, mean_clipped, pred_xstart_clipped
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

pub fn run(cmd: DebugCmd) -> Result<()> {
    let DebugCmd::Step(a) = cmd;
    for (flag, path) in [("--x0", &a.x0), ("--t", &a.t), ("--noise", &a.noise)] {
        // A FIFO would block the reader forever; a folder is a usage mistake.
        if path.exists() && !path.is_file() {
            bail!("{flag} {} is not a regular file", path.display());
        }
    }
    check_out(&a.out)?;
    let device = a.dev.device()?;
    if a.ckpt.checkpoint.is_none() {
        bail!("debug step needs --checkpoint");
    }
    let (cfg, ckpt) = super::common::model_source(&a.model, &a.ckpt)?;
    let model = super::common::build_model(&cfg, &Extras::default(), &ckpt, device)?;
    let x0 = read_npy(&a.x0, "x0")?
        .to_kind(Kind::Float)
        .to_device(device);
    let t = read_npy(&a.t, "t")?.to_kind(Kind::Int64).to_device(device);
    let noise = read_npy(&a.noise, "noise")?
        .to_kind(Kind::Float)
        .to_device(device);
    let s = cfg.image_size;
    if x0.size() != noise.size()
        || x0.dim() != 4
        || x0.size()[1..] != [3, s, s]
        || t.size() != [x0.size()[0]]
    {
        bail!(
            "shape mismatch: x0 {:?} and noise {:?} must be [B,3,{s},{s}] and t {:?} must be [B]",
            x0.size(),
            noise.size(),
            t.size()
        );
    }
    if x0.size()[0] == 0 {
        bail!("x0 {} holds an empty batch", a.x0.display());
    }
    for (what, path, v) in [("x0", &a.x0, &x0), ("noise", &a.noise, &noise)] {
        if !bool::try_from(v.isfinite().all())? {
            bail!("{what} {} contains NaN or infinite values", path.display());
        }
    }
    let diffusion = Diffusion::from_config(
        &cfg,
        Some(&a3ft::diffusion::respace::Respacing::All),
        device,
    )?;
    let max_t = i64::try_from(t.max())?;
    if max_t >= diffusion.num_timesteps as i64 || i64::try_from(t.min())? < 0 {
        bail!(
            "t must lie in [0, {}), got max {max_t}",
            diffusion.num_timesteps
        );
    }
    let mut arrays = a3ft::tools::debug_step::debug_step(&model, &diffusion, &x0, &t, &noise);
    // The mark of this command's output: only a file holding it is ever replaced (goldens of
    // the official code hold the same arrays, and must never be).
    arrays.push((MARK, Tensor::from(1i64)));
    if let Some(dir) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    a3ft::io::images::write_npz_atomic(&a.out, &arrays)?;
    // The arrays are written as computed, for inspection; a non-finite output is still a failure.
    if let Some((name, _)) = arrays
        .iter()
        .find(|(_, v)| !bool::try_from(v.isfinite().all()).unwrap_or(false))
    {
        bail!(
            "{name} holds NaN or infinite values (all arrays are written to {} as computed)",
            a.out.display()
        );
    }
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

/// The array that marks a `debug step` output.
const MARK: &str = "a3ft_debug_step";

/// `--out` may replace only an earlier `debug step` output: any other file there (an input
/// array, a checkpoint, the user's own data) is never overwritten.
fn check_out(out: &Path) -> Result<()> {
    if !out.exists() && out.symlink_metadata().is_err() {
        return Ok(());
    }
    let earlier = std::fs::symlink_metadata(out).is_ok_and(|m| m.is_file())
        && Tensor::read_npz(out).is_ok_and(|arrays| arrays.iter().any(|(n, _)| n == MARK));
    if !earlier {
        bail!("--out {} already exists and is not an earlier `debug step` output; it is never overwritten, choose another name", out.display());
    }
    Ok(())
}
