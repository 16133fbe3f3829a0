//! An exclusive lock on a folder (a run, a study): one a3ft process writes it at a time.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::Path;

/// Name of the lock file `lock_folder` holds.
pub const LOCK_FILE: &str = ".a3ft.lock";

/// An exclusive lock on a folder, released when dropped (or when the process dies).
pub struct FolderLock {
    _file: std::fs::File,
}

/// Takes the folder's lock, or says which process holds it: two trainers on one run would
/// interleave their checkpoints and metrics.
pub fn lock_folder(dir: &Path, what: &str) -> Result<FolderLock> {
    use std::io::{Read, Seek};
    use std::os::unix::io::AsRawFd;
    let path = dir.join(LOCK_FILE);
    if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) {
        bail!("{} is not a regular file (a3ft keeps its lock there); remove it", path.display());
    }
    let mut file = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock only operates on the descriptor, which `file` keeps open for the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        bail!("the {what} in {} is in use by another a3ft process (pid {}); wait for it or stop it", dir.display(), pid.trim());
    }
    let written = file.set_len(0).and_then(|_| file.rewind()).and_then(|_| write!(file, "{}", std::process::id()));
    written.with_context(|| format!("cannot write {}", path.display()))?;
    Ok(FolderLock { _file: file })
}
