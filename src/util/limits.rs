//! Limits on model configs, checked before anything is allocated: a config (official flags or a
//! diffusers `config.json`) beyond them is refused with a message naming the key and the limit.

/// Upper limits of the size flags: far above every official model, low enough that a typo
/// (`1e7` blocks) is refused before anything is allocated.
pub const MAX_IMAGE_SIZE: i64 = 1024;

pub const MAX_NUM_CHANNELS: i64 = 1024;

pub const MAX_RES_BLOCKS: i64 = 16;

/// Most `channel_mult` levels (1024 px halved down to 1 px).
pub const MAX_LEVELS: usize = 11;

pub const MAX_CHANNEL_MULT: f64 = 16.0;

/// Most parameters of a UNet a3ft builds (8 GB in f32); the largest official models have
/// about 0.56 billion.
pub const MAX_PARAMS: u64 = 2_000_000_000;
