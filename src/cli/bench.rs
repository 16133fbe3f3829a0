//! `a3ft bench`: throughput of training steps and sampling (not a test; timings are noisy).

use super::common::{DeviceArgs, ModelArgs};
use a3ft::diffusion::Diffusion;
use a3ft::model::methods::Method;
use a3ft::model::Model;
use a3ft::util::precision::Precision;
use anyhow::Result;
use clap::{Args, Subcommand};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Images/s and seconds per training step, per method, on random data
    Train(TrainBench),
    /// Images/s of sampling (e.g. DDIM-50) with random weights
    Sample(SampleBench),
}

#[derive(Args, Debug)]
pub struct TrainBench {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Time the network of a diffusers model folder instead (its config; weights are not read)
    #[arg(long, value_name = "DIR", conflicts_with_all = ["preset", "model_config"])]
    pub diffusers: Option<std::path::PathBuf>,
    /// Methods to time, comma-separated
    #[arg(long, default_value = "full,attention,a3ft", value_delimiter = ',')]
    pub method: Vec<Method>,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Timed steps (after --warmup untimed ones)
    #[arg(long, default_value_t = 5)]
    pub steps: u64,
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// fp32 or bf16 (comma-separated to time both)
    #[arg(long, value_enum, default_value = "fp32", value_delimiter = ',')]
    pub precision: Vec<Precision>,
    /// Print one JSON object per line instead of a table
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

#[derive(Args, Debug)]
pub struct SampleBench {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Time the network of a diffusers model folder instead (its config; weights are not read)
    #[arg(long, value_name = "DIR", conflicts_with_all = ["preset", "model_config"])]
    pub diffusers: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Respacing; ddimN uses the DDIM update
    #[arg(long, default_value_t = a3ft::diffusion::respace::Respacing::Ddim(50))]
    pub respacing: a3ft::diffusion::respace::Respacing,
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Train(a) => train(a),
        BenchCmd::Sample(a) => sample(a),
    }
}

/// The config to time: a preset or config file, or a diffusers folder's.
fn config(
    model: &ModelArgs,
    diffusers: Option<&std::path::Path>,
) -> Result<a3ft::model::config::ModelConfig> {
    match diffusers {
        Some(dir) => a3ft::diffusers::Folder::config_only(dir),
        None => model.config(),
    }
}

fn train(a: TrainBench) -> Result<()> {
    let device = a.dev.device()?;
    let cfg = config(&a.model, a.diffusers.as_deref())?;
    // Every combination is checked before anything is printed or timed.
    for precision in &a.precision {
        for &m in &a.method {
            a3ft::tools::bench::bench_config(&cfg, m, a.batch_size, a.steps, a.warmup, *precision)?;
        }
    }
    if !a.json {
        println!(
            "device {}, image size {}, batch {}",
            a3ft::util::device::describe(device),
            cfg.image_size,
            a.batch_size
        );
        println!(
            "{:<10} {:<6} {:>14} {:>10} {:>10} {:>12}",
            "method", "prec", "trainable", "s/step", "img/s", "peak RSS"
        );
    }
    for precision in &a.precision {
        for &m in &a.method {
            let r = a3ft::tools::bench::bench_train(
                &cfg,
                m,
                a.batch_size,
                a.steps,
                a.warmup,
                *precision,
                device,
            )?;
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                let rss = r
                    .peak_rss_bytes
                    .map(|b| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64))
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:<10} {:<6} {:>14} {:>10.3} {:>10.2} {:>12}",
                    r.method,
                    r.precision,
                    a3ft::util::fmt_count(r.trainable_params),
                    r.seconds_per_step,
                    r.images_per_sec,
                    rss
                );
            }
        }
    }
    Ok(())
}

fn sample(a: SampleBench) -> Result<()> {
    let device = a.dev.device()?;
    let cfg = config(&a.model, a.diffusers.as_deref())?;
    a3ft::model::check_sample_counts(
        a.batch_size,
        a.batch_size,
        cfg.image_size,
        "--batch-size",
        "--batch-size",
    )?;
    let mut model = Model::new(&cfg, &Default::default(), device)?;
    model.unet.compute_kind = a.precision.kind();
    a3ft::util::device::warn_if_slow(a.precision, device);
    let diffusion = Diffusion::from_config(&cfg, Some(&a.respacing), device)?;
    let sampler = a.respacing.sampler();
    // Warm-up: one network call (cuDNN autotuning, allocator).
    tch::no_grad(|| {
        let x = Tensor::randn(
            [a.batch_size as i64, 3, cfg.image_size, cfg.image_size],
            (Kind::Float, device),
        );
        let _ = model.unet.forward(
            &x,
            &Tensor::zeros([a.batch_size as i64], (Kind::Float, device)),
            None,
        );
    });
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
    let start = Instant::now();
    // Returns uint8 images on the CPU, so the GPU work is finished when it returns.
    let _ = model.sample_images(&diffusion, a.batch_size, a.batch_size, sampler, 0, false)?;
    let secs = start.elapsed().as_secs_f64();
    let ips = a.batch_size as f64 / secs;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"respacing": a.respacing.to_string(), "precision": a.precision, "batch_size": a.batch_size, "seconds": secs, "images_per_sec": ips})
        );
    } else {
        println!(
            "sampling {} ({} steps), batch {}, {}: {:.2}s, {:.2} images/s",
            a.respacing, diffusion.num_timesteps, a.batch_size, a.precision, secs, ips
        );
    }
    Ok(())
}
