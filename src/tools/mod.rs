//! Tools beside the training path: throughput benchmarks and `debug step` (one network call
//! on a given x_t, t, for parity checks against other code).

pub mod bench;
pub mod debug_step;
