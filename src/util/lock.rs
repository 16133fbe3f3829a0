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
    let path = dir.join(LOCK_FILE);
    match flock(&path, "a3ft keeps its lock there")? {
        Ok(file) => Ok(FolderLock { _file: file }),
        Err(pid) => bail!("the {what} in {} is in use by another a3ft process (pid {pid}); wait for it or stop it", dir.display()),
    }
}

/// Opens (or creates) the regular file `path` and takes its exclusive flock, then writes this
/// process's id into it. `Ok(Err(pid))` when another process holds it (the pid it wrote);
/// `why` says, in the error for a non-file at `path`, what the file is for.
pub fn flock(path: &Path, why: &str) -> Result<std::result::Result<std::fs::File, String>> {
    use std::io::{Read, Seek};
    use std::os::unix::io::AsRawFd;
    if std::fs::symlink_metadata(path).is_ok_and(|m| !m.is_file()) {
        bail!("{} is not a regular file ({why}); remove it", path.display());
    }
    let mut file = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock only operates on the descriptor, which `file` keeps open for the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        return Ok(Err(pid.trim().to_string()));
    }
    let written = file.set_len(0).and_then(|_| file.rewind()).and_then(|_| write!(file, "{}", std::process::id()));
    written.with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Ok(file))
}
