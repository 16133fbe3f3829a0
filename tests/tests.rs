//! Every integration test, in one binary (as ripgrep's tests/tests.rs): libtorch is linked once,
//! and the modules share the helpers of `util`. `autotests = false` in Cargo.toml: a file in
//! tests/ is built only when it is named here.
//!
//! The modules share one process, so what is process-wide is shared too: libtorch's random
//! generator (see `util::seeded` and `util::draws`), the panic hook and the environment. No test
//! sets an environment variable, changes the current directory or requests `a3ft::util::stop`
//! in this process; children get their own (`Command::env`, `Command::current_dir`).

mod util;

mod checkpoints;
mod cli_fuzz;
mod cli_run;
mod data_fetch;
mod demo;
mod diffusers;
mod eval;
mod guidance;
mod optim;
mod parity;
mod study;
mod train;
