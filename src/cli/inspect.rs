//! `a3ft inspect`: parameter counts by part, keys, blocks, checkpoint match.

use super::common::{CheckpointArgs, ModelArgs};
use a3ft::model::methods::{param_report, Method};
use a3ft::model::spec::UNetSpec;
use a3ft::model::Model;
use anyhow::Result;
use clap::Args;
use tch::Device;

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub ckpt: CheckpointArgs,
    /// Also count what this fine-tuning method trains (adds its adapter/LoRA modules)
    #[arg(long, value_enum)]
    pub method: Option<Method>,
    /// LoRA rank (with --method lora)
    #[arg(long, default_value_t = a3ft::train::run_config::RunConfig::DEFAULT_LORA_RANK, allow_negative_numbers = true)]
    pub lora_rank: i64,
    /// Adapter start (with --method adapter/a3ft): random, zero-scale (adds one scale per channel
    /// of every attention block; the default, as in `train`) or gate-bias:B
    #[arg(long, allow_hyphen_values = true)]
    pub adapter_start: Option<String>,
    /// Print one JSON object instead of a table
    #[arg(long)]
    pub json: bool,
    /// With --json: also list every state_dict key with its shape
    #[arg(long, requires = "json")]
    pub keys: bool,
}

pub fn run(a: InspectArgs) -> Result<()> {
    if a.method == Some(Method::Lora) && !(1..=1024).contains(&a.lora_rank) {
        anyhow::bail!(
            "--lora-rank must be between 1 and 1024, got {}",
            a.lora_rank
        );
    }
    let (cfg, ckpt) = super::common::model_source(&a.model, &a.ckpt)?;
    let start = match &a.adapter_start {
        Some(s) => a3ft::model::adapter::AdapterStart::parse(s)
            .map_err(|e| anyhow::anyhow!("--adapter-start: {e:#}"))?,
        None => Default::default(),
    };
    if a.adapter_start.is_some() && !matches!(a.method, Some(Method::Adapter | Method::A3ft)) {
        eprintln!("note: --adapter-start only changes the counts of --method adapter or a3ft");
    }
    let extras = a
        .method
        .map(|m| m.extras(start, a.lora_rank))
        .unwrap_or_default();
    // Shapes only matter here; build on the CPU.
    let (model, checkpoint_matches) = match &ckpt.checkpoint {
        Some(p) => (
            Model::from_checkpoint(
                &cfg,
                &extras,
                p,
                ckpt.checkpoint_key.as_deref(),
                ckpt.adapter_file.as_deref(),
                Device::Cpu,
            )?,
            Some(true),
        ),
        None => (Model::new(&cfg, &extras, Device::Cpu)?, None),
    };
    let report = param_report(&model, a.method);
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        if a.keys {
            let keys: serde_json::Map<String, serde_json::Value> = model
                .vs
                .variables()
                .into_iter()
                .map(|(k, t)| (k, t.size().into()))
                .collect();
            v["keys"] = keys.into();
        }
        if let Some(m) = checkpoint_matches {
            v["checkpoint_matches"] = m.into();
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let pct = |n: i64| 100.0 * n as f64 / report.base_params as f64;
    match &model.spec {
        UNetSpec::Diffusers(d) => println!(
            "model: diffusers UNet2DModel, {} px, block_out_channels {:?}, {} layers per block; {}",
            cfg.image_size,
            d.block_out_channels,
            d.layers_per_block,
            cfg.schedule_summary()
        ),
        UNetSpec::Adm(s) => println!(
            "model: {} px, {} channels, mult {:?}, {} res blocks/level",
            cfg.image_size, cfg.num_channels, s.channel_mult, cfg.num_res_blocks
        ),
    }
    println!("state_dict keys: {}", report.num_keys);
    println!(
        "attention blocks: {}   residual blocks: {}",
        report.attention_blocks, report.res_blocks
    );
    println!("{:<34} {:>14} {:>8}", "part", "params", "% base");
    for (part, n) in &report.params_by_part {
        println!(
            "{:<34} {:>14} {:>7.2}%",
            part,
            a3ft::util::fmt_count(*n),
            pct(*n)
        );
    }
    println!(
        "{:<34} {:>14}",
        "total",
        a3ft::util::fmt_count(report.total_params)
    );
    if let (Some(m), Some(t)) = (report.method, report.trainable_params) {
        println!(
            "trainable with --method {}: {} ({:.2}% of the base model)",
            m.name(),
            a3ft::util::fmt_count(t),
            pct(t)
        );
    }
    if let Some(p) = &ckpt.checkpoint {
        println!("checkpoint {}: every key matched", p.display());
    }
    Ok(())
}
