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
    resolve(inner).starts_with(resolve(outer))
}

/// `p` made absolute: its longest existing prefix resolved through symlinks, the rest (a folder
/// yet to be made) applied by name, `..` taking off the last part.
pub fn resolve(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let parts: Vec<std::path::Component> = abs.components().collect();
    for keep in (1..=parts.len()).rev() {
        let prefix: PathBuf = parts[..keep].iter().collect();
        if let Ok(mut out) = std::fs::canonicalize(&prefix) {
            for c in &parts[keep..] {
                match c {
                    std::path::Component::ParentDir => {
                        out.pop();
                    }
                    std::path::Component::CurDir => {}
                    c => out.push(c.as_os_str()),
                }
            }
            return out;
        }
    }
    abs
}
