//! Finding the images of a folder: recursive, following links, each file once, hidden
//! entries skipped (as clean-fid's glob does).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp", "gif"];

/// What a folder walk found: image files (each once, sorted by path) and the entries that
/// carry an image extension but are not regular files (FIFOs, devices, dangling links).
#[derive(Debug, Default)]
pub struct Listing {
    pub files: Vec<PathBuf>,
    pub ignored: Vec<(PathBuf, String)>,
}

fn has_image_extension(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Identity of a file or folder: device and inode on Unix (hard links and bind mounts count
/// once), the canonical path elsewhere.
#[cfg(unix)]
fn identity(_path: &Path, meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn identity(path: &Path, _meta: &std::fs::Metadata) -> Option<PathBuf> {
    std::fs::canonicalize(path).ok()
}

/// Walks `dir` recursively, following symbolic links, without ever entering a folder twice
/// (so `ln -s . d/loop` neither hangs nor repeats images) and listing every image file once.
/// Real entries come first: a file or folder reached both directly and through links is
/// listed under its real path; links are followed afterwards, in sorted order.
///
/// The walk is hand-written rather than `walkdir`'s: `walkdir` detects a link back to an
/// ancestor, but two links to the same (non-ancestor) folder would still list its images twice,
/// and files reached through several links would have to be deduplicated anyway; one visited
/// set of (device, inode) covers every case without a new dependency.
pub fn scan_images(dir: &Path) -> Result<Listing> {
    if !dir.is_dir() {
        bail!(
            "image folder {} does not exist or is not a folder",
            dir.display()
        );
    }
    let mut out = Listing::default();
    let mut seen_dirs = std::collections::HashSet::new();
    let mut seen_files = std::collections::HashSet::new();
    let root_meta =
        std::fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    seen_dirs.insert(identity(dir, &root_meta));
    // Real folders, depth first over sorted entries (pushed reversed); links wait in `links`.
    let mut stack = vec![dir.to_path_buf()];
    let mut links = std::collections::VecDeque::new();
    loop {
        let d = if let Some(d) = stack.pop() {
            d
        } else if let Some(link) = links.pop_front() {
            let link: PathBuf = link;
            // Follows the link; a dangling link has no metadata.
            match std::fs::metadata(&link) {
                Ok(meta) if meta.is_dir() => {
                    if !seen_dirs.insert(identity(&link, &meta)) {
                        continue;
                    }
                    link
                }
                Ok(meta) => {
                    if has_image_extension(&link) {
                        if !meta.is_file() {
                            let why = format!("{} is not a regular file", link.display());
                            out.ignored.push((link, why));
                        } else if seen_files.insert(identity(&link, &meta)) {
                            out.files.push(link);
                        }
                    }
                    continue;
                }
                Err(e) => {
                    if has_image_extension(&link) {
                        let why = format!("cannot read {}: {e}", link.display());
                        out.ignored.push((link, why));
                    }
                    continue;
                }
            }
        } else {
            break;
        };
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&d)
            .with_context(|| format!("cannot list folder {}", d.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("cannot list folder {}", d.display()))?;
        // Hidden entries are skipped, as clean-fid's glob does: they hold no one's images, but
        // an interrupted writer's `.NAME.staging-PID` folder would otherwise be read as data.
        entries.retain(|p| {
            !p.file_name()
                .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."))
        });
        entries.sort();
        let mut subdirs = Vec::new();
        for p in entries {
            let meta = match std::fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(e) => {
                    if has_image_extension(&p) {
                        let why = format!("cannot read {}: {e}", p.display());
                        out.ignored.push((p, why));
                    }
                    continue;
                }
            };
            if meta.file_type().is_symlink() {
                links.push_back(p);
            } else if meta.is_dir() {
                if seen_dirs.insert(identity(&p, &meta)) {
                    subdirs.push(p);
                }
            } else if has_image_extension(&p) {
                if !meta.is_file() {
                    let why = format!("{} is not a regular file", p.display());
                    out.ignored.push((p, why));
                } else if seen_files.insert(identity(&p, &meta)) {
                    out.files.push(p);
                }
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    out.files.sort();
    Ok(out)
}

/// Every image file under `dir` (recursively, following links, each file once), sorted by path.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(scan_images(dir)?.files)
}
