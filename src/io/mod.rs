//! Files in and out: checkpoints (`.pt`, `.safetensors`), the `.pt` writer, `.npy`/`.npz`, and
//! sample images.

pub mod checkpoint;
pub mod images;
pub mod npy;
pub mod pt_writer;
