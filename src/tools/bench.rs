//! Throughput of the training step on random data (no folder, no checkpoint needed).

use crate::model::config::ModelConfig;
use crate::model::methods::Method;
use crate::train::run_config::{Hyper, RunConfig};
use crate::train::trainer::Trainer;
use crate::util::precision::Precision;
use anyhow::{bail, Result};
use serde::Serialize;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub method: String,
    pub precision: Precision,
    pub batch_size: usize,
    pub steps: u64,
    pub seconds_per_step: f64,
    pub images_per_sec: f64,
    pub trainable_params: i64,
    /// Peak resident memory of the process (CPU runs), bytes.
    pub peak_rss_bytes: Option<u64>,
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

pub use crate::util::memory::peak_rss_bytes;

/// The run config a benchmark trains with, checked with `train`'s limits (batch size, input
/// memory, precision), named by the same flags.
pub fn bench_config(
    model: &ModelConfig,
    method: Method,
    batch_size: usize,
    steps: u64,
    warmup: u64,
    precision: Precision,
) -> Result<RunConfig> {
    if !(1..=1_000_000).contains(&steps) || warmup > 1_000_000 {
        bail!("--steps must be between 1 and 1000000 and --warmup at most 1000000, got {steps} and {warmup}");
    }
    let mut model = model.clone();
    model.dropout = 0.0;
    let mut rc = RunConfig::new(
        model,
        method,
        Default::default(),
        Hyper::paper_defaults(batch_size, steps + warmup),
    );
    rc.hyper.precision = precision;
    rc.hyper.log_every = steps;
    rc.num_images = batch_size;
    rc.validate()?;
    Ok(rc)
}

/// Times `steps` training steps after `warmup` steps on random images.
pub fn bench_train(
    model: &ModelConfig,
    method: Method,
    batch_size: usize,
    steps: u64,
    warmup: u64,
    precision: Precision,
    device: Device,
) -> Result<BenchResult> {
    let rc = bench_config(model, method, batch_size, steps, warmup, precision)?;
    crate::util::memory::reset_peak_rss();
    let s = rc.model.image_size;
    let images = Tensor::rand([batch_size as i64, 3, s, s], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let mut tr = Trainer::new(&rc, images, device)?;
    let trainable_params = tr.adam.numel();
    for k in 1..=warmup {
        let _ = tr.run_step(k);
    }
    sync(device);
    let start = Instant::now();
    let mut last = None;
    for k in warmup + 1..=warmup + steps {
        last = Some(tr.run_step(k).losses.loss);
    }
    sync(device);
    let secs = start.elapsed().as_secs_f64();
    if let Some(l) = last {
        let v = f64::try_from(l.mean(Kind::Float))?;
        if !v.is_finite() {
            bail!("benchmark produced a non-finite loss");
        }
    }
    Ok(BenchResult {
        method: method.name().into(),
        precision,
        batch_size,
        steps,
        seconds_per_step: secs / steps as f64,
        images_per_sec: (steps as usize * batch_size) as f64 / secs,
        trainable_params,
        peak_rss_bytes: if device == Device::Cpu {
            peak_rss_bytes()
        } else {
            None
        },
    })
}
