//! a3ft: fine-tune pre-trained unconditional diffusion models on small image sets.
//!
//! The binary (`src/main.rs`, `src/cli/`) is a thin layer over this library. Its folders are
//! layers; each uses only those listed before it:
//!
//! - `util`: files written whole, locks, paths, signals, libtorch errors, limits, the cache.
//! - `io`: checkpoints in and out, `.npy`/`.npz`, sample images.
//! - `diffusion`: the Gaussian diffusion process, its respacing and samplers (no network).
//! - `diffusers`: diffusers model folders, their configs, keys and schedulers.
//! - `model`: the config (official flags or a diffusers folder), the U-Net, the adapter and
//!   the fine-tuning methods.
//! - `data`: image folders and the public image sets.
//! - `metrics`: clean-FID/KID, held-out loss, memorisation.
//! - `train`: a run: its folder and config, the training loop, evaluation and selection.
//! - `report`, `export`, `study`, `tools`: what is made from runs (reports, exports, studies,
//!   the demo, benchmarks and `debug step`).

pub mod data;
pub mod diffusers;
pub mod diffusion;
pub mod export;
pub mod io;
pub mod metrics;
pub mod model;
pub mod report;
pub mod study;
pub mod tools;
pub mod train;
pub mod util;
