//! Helpers shared by the test modules: fixtures, the `a3ft` binary, test images, and the lock on
//! libtorch's random generator.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `tests/fixtures/<rel>`.
pub fn fixture(rel: impl AsRef<Path>) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// `tests/fixtures/variants/<name>`: the tiny model (8 px, 100 steps, `config.json`, `plain.pt`)
/// and its checkpoint-file variants (made by scripts/make_checkpoint_variants.py).
pub fn variant(name: &str) -> PathBuf {
    fixture("variants").join(name)
}

/// The built `a3ft` binary with `args`: stdin closed, stdout and stderr captured.
pub fn a3ft<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(env!("CARGO_BIN_EXE_a3ft"));
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Runs `a3ft args` to completion (no time limit).
pub fn a3ft_output<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    a3ft(args).output().unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fails unless the command failed with one `error:` line naming `needle`, and no panic.
pub fn assert_clear_error(o: &Output, needle: &str, what: &str) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "{what}: succeeded, expected an error\n{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{what}: panicked\n{err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{what}: expected one error line\n{err}");
    assert!(
        lines[0].contains(needle),
        "{what}: error does not mention {needle:?}: {}",
        lines[0]
    );
    assert!(
        lines[0].len() < 400,
        "{what}: error line too long: {}",
        lines[0]
    );
}

/// `n` small distinct RGB images (12 × 10) `img{k}.png` in `dir`, for k = 0..n.
pub fn write_images(dir: &Path, n: usize) {
    write_images_from(dir, n, 0);
}

/// As [`write_images`], for k = offset..offset + n (the images of two calls differ).
pub fn write_images_from(dir: &Path, n: usize, offset: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let k = i + offset;
        let img = image::RgbImage::from_fn(12, 10, |x, y| {
            image::Rgb([(x * 20) as u8, (y * 25) as u8, (k * 40) as u8])
        });
        img.save(dir.join(format!("img{k}.png"))).unwrap();
    }
}

/// libtorch's random generator is one per process, and every module's tests now share that
/// process. Building a model draws from it (random init before a load), and so do `randn` and
/// training. A test that seeds it and needs its own draws to follow (bitwise resume, fixed
/// starts, anything it compares with a deterministic value) holds [`seeded`] for its whole body;
/// code that only draws holds [`draws`] while it draws, so that it never lands between another
/// test's seed and its draws. Draws that need no fixed sequence may run together.
///
/// Never take either guard while this thread holds one (a read lock taken twice can wait behind a
/// waiting writer forever).
static TORCH_RNG: RwLock<()> = RwLock::new(());

/// The generator to this test alone, for as long as the guard lives.
pub fn seeded() -> RwLockWriteGuard<'static, ()> {
    TORCH_RNG.write().unwrap_or_else(|e| e.into_inner())
}

/// Leave to draw from the generator (never during a [`seeded`] test), for as long as the guard lives.
pub fn draws() -> RwLockReadGuard<'static, ()> {
    TORCH_RNG.read().unwrap_or_else(|e| e.into_inner())
}

/// Copies a folder tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
