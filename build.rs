//! Embeds the project venv's libtorch directory as an rpath so `target/release/a3ft` runs
//! without LD_LIBRARY_PATH. `LIBTORCH_LIB_DIR` overrides the directory (e.g. another Python).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH_LIB_DIR");
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    // The venv's Python version is whatever `python3` made it: find its site-packages.
    let python = std::fs::read_dir(root.join(".venv/lib"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with("python3")
                && root
                    .join(".venv/lib")
                    .join(n)
                    .join("site-packages/torch/lib")
                    .is_dir()
        })
        .max()
        .unwrap_or_else(|| "python3.11".into());
    let dir = std::env::var("LIBTORCH_LIB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join(format!(".venv/lib/{python}/site-packages/torch/lib")));
    // DT_RPATH (not RUNPATH) so that dlopen of libtorch_cuda from the binary also searches it.
    println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    // Relative fallbacks: the binary next to a venv or a system torch on another machine.
    println!(
        "cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../../.venv/lib/{python}/site-packages/torch/lib"
    );
}
