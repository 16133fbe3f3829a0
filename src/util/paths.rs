//! Paths made absolute for storing in a config, and whether one path lies inside another.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// `path` made absolute (through symlinks), for storing in a config: a run or study resumed
/// from another working directory must find the same folder, not one of the same name.
pub fn absolute(path: &Path, what: &str) -> Result<PathBuf> {
    std::fs::canonicalize(path).with_context(|| format!("{what} {} does not exist", path.display()))
}

/// `path` made absolute when it exists, else as given: for optional files whose absence is
/// reported later (e.g. `--inception`, which only disables FID) and for comparing paths.
pub fn absolute_if_exists(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// True when `inner` is `outer` or lies inside it (both resolved through symlinks as far as
/// they exist, so a folder that is yet to be created is compared by its nearest parent).
pub fn is_within(inner: &Path, outer: &Path) -> bool {
    fn resolve(p: &Path) -> PathBuf {
        let abs = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(p) };
        let mut tail: Vec<std::ffi::OsString> = Vec::new();
        let mut cur = abs.as_path();
        loop {
            if let Ok(c) = std::fs::canonicalize(cur) {
                let mut out = c;
                for t in tail.iter().rev() {
                    match t.to_str() {
                        Some("..") => {
                            out.pop();
                        }
                        Some(".") => {}
                        _ => out.push(t),
                    }
                }
                return out;
            }
            match (cur.parent(), cur.file_name()) {
                (Some(parent), Some(name)) => {
                    tail.push(name.to_os_string());
                    cur = parent;
                }
                _ => return abs,
            }
        }
    }
    resolve(inner).starts_with(resolve(outer))
}
