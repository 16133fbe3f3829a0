//! What leaves a run: a diffusers pipeline folder (with the runtime that runs the adapter) and
//! the model card every export folder carries. The official-format file is written by
//! `io::checkpoint` / `io::pt_writer`.

pub mod diffusers;
pub mod model_card;
