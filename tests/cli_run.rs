//! Runs under stress, through the binary: signals, kill -9 and resume, damaged checkpoints,
//! a changed base checkpoint, resume flags, outputs that would overwrite inputs, and bad
//! training values. Each failure must be one clear line, exit non-zero, and lose nothing.

use crate::util::{a3ft, assert_clear_error, stderr, variant, write_images};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// A trainer started in the background, killed if the test fails before it ends: a trainer
/// left running would slow every later test on a small machine.
struct Spawned(Option<Child>);

impl Spawned {
    fn new(mut c: Command) -> Spawned {
        Spawned(Some(c.spawn().unwrap()))
    }
    /// Waits for it as `wait` does; it is no longer killed on drop.
    fn wait(mut self, limit: Duration) -> Output {
        wait(self.0.take().unwrap(), limit, &["train"])
    }
}

impl std::ops::Deref for Spawned {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().unwrap()
    }
}

impl std::ops::DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs to completion within `limit` (killed and failed otherwise).
fn run(args: &[&str]) -> Output {
    wait(a3ft(args).spawn().unwrap(), Duration::from_secs(120), args)
}

fn wait(mut child: Child, limit: Duration, what: &[&str]) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("a3ft {what:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    data: String,
    config: String,
    base: String,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    write_images(&root.join("data"), 4);
    std::fs::copy(variant("plain.pt"), root.join("base.pt")).unwrap();
    let s = |p: PathBuf| p.to_str().unwrap().to_string();
    Setup {
        data: s(root.join("data")),
        config: s(variant("config.json")),
        base: s(root.join("base.pt")),
        root,
        _tmp: tmp,
    }
}

impl Setup {
    fn out(&self, name: &str) -> String {
        self.root.join(name).to_str().unwrap().to_string()
    }
    /// `train` arguments for a new run in `name` with extra flags.
    fn train_args<'a>(&'a self, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec![
            "train",
            "--model-config",
            &self.config,
            "--checkpoint",
            &self.base,
            "--data",
            &self.data,
            "--out",
            out,
            "--batch-size",
            "2",
            "--method",
            "attention",
            "--device",
            "cpu",
        ];
        v.extend_from_slice(extra);
        v
    }
}

fn metric_steps(run: &str) -> Vec<u64> {
    std::fs::read_to_string(Path::new(run).join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.contains("\"kind\":\"eval\""))
        // A kill can tear the last line (resume drops it): only whole records count.
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["step"].as_u64().unwrap())
        .collect()
}

fn wait_for_metrics(run: &str, lines: usize, child: &mut Child) {
    let start = Instant::now();
    while std::fs::read_to_string(Path::new(run).join("metrics.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
        < lines
    {
        assert!(
            child.try_wait().unwrap().is_none(),
            "training ended before it was stopped"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no metrics after 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_and_sighup_save_and_exit_non_zero() {
    let s = setup();
    for (sig, code) in [
        (libc::SIGTERM, 143),
        (libc::SIGHUP, 129),
        (libc::SIGINT, 130),
    ] {
        let out = s.out(&format!("run-{sig}"));
        let mut child = Spawned::new(a3ft(
            s.train_args(&out, &["--steps", "1000000", "--log-every", "1"]),
        ));
        wait_for_metrics(&out, 3, &mut child);
        // SAFETY: kill only sends a signal to the child this test started (and still holds).
        unsafe { libc::kill(child.id() as i32, sig) };
        let o = child.wait(Duration::from_secs(60));
        assert_eq!(o.status.code(), Some(code), "signal {sig}: {}", stderr(&o));
        let ckpts: Vec<_> = std::fs::read_dir(Path::new(&out).join("checkpoints"))
            .unwrap()
            .collect();
        assert_eq!(
            ckpts.len(),
            1,
            "signal {sig}: one checkpoint expected, {}",
            stderr(&o)
        );
    }
}

#[test]
fn kill_9_then_resume_keeps_metrics_unique() {
    let s = setup();
    let out = s.out("run");
    let mut child = Spawned::new(a3ft(s.train_args(
        &out,
        &[
            "--steps",
            "1000000",
            "--log-every",
            "1",
            "--save-every",
            "7",
        ],
    )));
    wait_for_metrics(&out, 20, &mut child);
    let pid = child.id();
    drop(child); // killed (SIGKILL) and reaped
                 // A kill mid-save leaves a temporary file; plant one for sure (the dead trainer's PID), and
                 // one of a live process (this test), which must be kept.
    let ckpts = Path::new(&out).join("checkpoints");
    std::fs::write(
        ckpts.join(format!(".step_000099.safetensors.tmp-{pid}")),
        b"partial",
    )
    .unwrap();
    let live = ckpts.join(format!(".other.tmp-{}", std::process::id()));
    std::fs::write(&live, b"in use").unwrap();
    let before = metric_steps(&out);
    // Extend to a few steps past where it stopped.
    let target = (before.last().unwrap() + 5).to_string();
    let o = run(&[
        "train", "--resume", &out, "--steps", &target, "--device", "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let steps = metric_steps(&out);
    assert!(
        steps.windows(2).all(|w| w[0] < w[1]),
        "metrics steps repeat or go back: {steps:?}"
    );
    assert_eq!(*steps.last().unwrap(), target.parse::<u64>().unwrap());
    assert!(
        stderr(&o).contains("partial file left by an interrupted earlier run"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_file(&live).expect("a live process's temporary file was removed");
    let left: Vec<_> = std::fs::read_dir(&ckpts)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains(".tmp"))
        .collect();
    assert!(left.is_empty(), "partial files left after resume: {left:?}");
}

#[test]
fn damaged_newest_checkpoint_falls_back() {
    let s = setup();
    let out = s.out("run");
    let o = run(&s.train_args(&out, &["--steps", "6", "--save-every", "3"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let newest = Path::new(&out).join("checkpoints/step_000006.safetensors");
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    let o = run(&["train", "--resume", &out, "--steps", "8", "--device", "cpu"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("damaged") && err.contains("resumed") && err.contains("step 3"),
        "{err}"
    );
    assert!(Path::new(&out)
        .join("checkpoints/step_000008.safetensors")
        .exists());
    // A checkpoint whose name says another step (copied, renamed) is not resumed from.
    let ck = Path::new(&out).join("checkpoints");
    std::fs::copy(
        ck.join("step_000003.safetensors"),
        ck.join("step_000020.safetensors"),
    )
    .unwrap();
    let o = run(&[
        "train", "--resume", &out, "--steps", "10", "--device", "cpu",
    ]);
    let err = stderr(&o);
    assert!(
        o.status.success() && err.contains("holds step 3, not the 20") && err.contains("at step 8"),
        "{err}"
    );
}

#[test]
fn changed_base_checkpoint_is_refused_and_export_never_overwrites_it() {
    let s = setup();
    let out = s.out("run");
    assert!(run(&s.train_args(&out, &["--steps", "2"])).status.success());
    let base_bytes = std::fs::read(&s.base).unwrap();
    let o = run(&["export", "--run", &out, "--out", &s.base]);
    assert_clear_error(&o, "base checkpoint", "export over the base");
    assert_eq!(
        std::fs::read(&s.base).unwrap(),
        base_bytes,
        "base checkpoint changed"
    );
    let o = run(&[
        "export",
        "--run",
        &out,
        "--out",
        &format!("{out}/checkpoints/x.pt"),
    ]);
    assert_clear_error(&o, "inside the run folder", "export into the run");
    let exported = s.out("exported.pt");
    assert!(run(&["export", "--run", &out, "--out", &exported])
        .status
        .success());
    assert_clear_error(
        &run(&["export", "--run", &out, "--out", &exported]),
        "already exists",
        "export twice",
    );
    // Half-precision export: half the bytes, loads back as a checkpoint.
    let (f32_file, f16_file) = (s.out("e32.safetensors"), s.out("e16.safetensors"));
    assert!(run(&["export", "--run", &out, "--out", &f32_file])
        .status
        .success());
    assert!(
        run(&["export", "--run", &out, "--out", &f16_file, "--dtype", "f16"])
            .status
            .success()
    );
    let (n32, n16) = (
        std::fs::metadata(&f32_file).unwrap().len(),
        std::fs::metadata(&f16_file).unwrap().len(),
    );
    assert!(n16 < n32 * 6 / 10, "f16 export {n16} bytes vs f32 {n32}");
    let o = run(&[
        "inspect",
        "--model-config",
        &s.config,
        "--checkpoint",
        &f16_file,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_clear_error(
        &run(&[
            "export",
            "--run",
            &out,
            "--out",
            &s.out("x.pt"),
            "--dtype",
            "bf16",
        ]),
        "--dtype",
        "bf16 .pt",
    );
    // Another file under the base's name: the run must refuse it, not sample garbage.
    std::fs::copy(variant("mismatched.pt"), &s.base).unwrap();
    let o = run(&[
        "sample",
        "--run",
        &out,
        "--num",
        "2",
        "--respacing",
        "5",
        "--out",
        &s.out("samples"),
        "--device",
        "cpu",
    ]);
    assert_clear_error(&o, "has changed", "sample after the base changed");
}

#[test]
fn resume_applies_what_can_change_and_refuses_the_rest() {
    let s = setup();
    let out = s.out("run");
    assert!(run(&s.train_args(&out, &["--steps", "2"])).status.success());
    for (flag, value) in [
        ("--batch-size", "3"),
        ("--method", "full"),
        ("--seed", "5"),
        ("--ema", "0.9"),
        ("--noise-schedule", "linear"),
    ] {
        let o = run(&["train", "--resume", &out, flag, value, "--device", "cpu"]);
        assert_clear_error(&o, flag, &format!("resume with {flag}"));
    }
    let o = run(&[
        "train",
        "--resume",
        &out,
        "--steps",
        "4",
        "--lr",
        "1e-3",
        "--log-every",
        "2",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(&out).join("config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["hyper"]["lr"].as_f64(), Some(1e-3));
    assert_eq!(cfg["hyper"]["total_steps"].as_u64(), Some(4));
    assert_eq!(cfg["hyper"]["log_every"].as_u64(), Some(2));
    // --epochs on resume is a new length in epochs (4 images, batch 2: 2 steps each).
    assert!(
        run(&["train", "--resume", &out, "--epochs", "3", "--device", "cpu"])
            .status
            .success()
    );
    assert_eq!(*metric_steps(&out).last().unwrap(), 6);
}

#[test]
fn bad_training_values_fail_fast_with_one_line() {
    let s = setup();
    let one = s.root.join("one");
    write_images(&one, 1);
    let one = one.to_str().unwrap().to_string();
    let inside = format!("{}/run", s.data);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--lr", "nan"], "--lr"),
        (vec!["--lr=-1"], "--lr"),
        (vec!["--lr", "0"], "--lr"),
        (vec!["--new-lr", "inf"], "--new-lr"),
        // The flag's earlier name still works, and is refused by the same rule.
        (vec!["--adapter-lr", "inf"], "--new-lr"),
        (vec!["--guidance", "nan"], "--guidance"),
        (vec!["--guidance", "1e9"], "--guidance"),
        (vec!["--ema", "nan"], "--ema"),
        (vec!["--ema", "2"], "--ema"),
        (vec!["--lora-rank", "0"], "--lora-rank"),
        (vec!["--microbatch", "0"], "--microbatch"),
        (vec!["--microbatch", "3"], "--microbatch"),
        (vec!["--holdout-fraction", "nan"], "--holdout-fraction"),
        (vec!["--holdout-fraction", "1"], "--holdout-fraction"),
        (vec!["--time-limit=-1"], "--time-limit"),
        (vec!["--time-limit", "nan"], "--time-limit"),
        (vec!["--log-every", "0"], "--log-every"),
        (vec!["--save-every", "0"], "--save-every"),
        (vec!["--epochs", "0"], "--epochs"),
        (vec!["--sample-count", "0"], "--sample-count"),
        (vec!["--precision", "fp8"], "--precision"),
        (vec!["--sample-respacing", "0"], "--sample-respacing"),
        (vec!["--eval-respacing", "0"], "--eval-respacing"),
        (vec!["--adapter-gate-bias", "nan"], "--adapter-gate-bias"),
        (vec!["--holdout", &s.data], "--holdout"),
        (vec!["--time-limit", "1e300"], "got 1e300"),
        (vec!["--adapter-gate-bias", "1e300"], "got 1e300"),
        (vec!["--p2-gamma", "1e300"], "p2_gamma"),
    ];
    for (extra, needle) in cases {
        let out = s.out("bad");
        let mut args = s.train_args(&out, &["--steps", "2"]);
        // --batch-size is already in train_args; --microbatch 3 exceeds it.
        args.extend(extra.iter().copied());
        let start = Instant::now();
        let o = run(&args);
        assert_clear_error(&o, needle, &format!("{extra:?}"));
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{extra:?} took {:?}",
            start.elapsed()
        );
        assert!(
            !Path::new(&out).exists(),
            "{extra:?} left a run folder behind"
        );
    }
    // A base checkpoint that does not fit fails once the run is locked: nothing is left either.
    let bad = s.out("mismatched");
    let mut args = s.train_args(&bad, &["--steps", "2"]);
    let mismatched = variant("mismatched.pt");
    let pos = args.iter().position(|a| *a == "--checkpoint").unwrap();
    args[pos + 1] = mismatched.to_str().unwrap();
    assert_clear_error(&run(&args), "does not match", "mismatched base");
    assert!(
        !Path::new(&bad).exists(),
        "a failed new run left its folder behind"
    );
    // A run's training checkpoint given as a network: the error says what to use instead.
    let first = s.out("first");
    assert!(run(&s.train_args(&first, &["--steps", "1"]))
        .status
        .success());
    let ckpt = format!("{first}/checkpoints/step_000001.safetensors");
    let o = run(&[
        "sample",
        "--model-config",
        &s.config,
        "--checkpoint",
        &ckpt,
        "--num",
        "1",
        "--out",
        &s.out("s"),
        "--device",
        "cpu",
    ]);
    assert_clear_error(&o, "--run RUN_DIR", "run checkpoint as --checkpoint");
    // A folder of the user's that is not a run is never trained into.
    let theirs = s.root.join("theirs");
    std::fs::create_dir_all(theirs.join("samples")).unwrap();
    std::fs::write(theirs.join("metrics.jsonl"), b"my notes\n").unwrap();
    assert_clear_error(
        &run(&s.train_args(theirs.to_str().unwrap(), &["--steps", "2"])),
        "not empty",
        "train into a user's folder",
    );
    assert_eq!(
        std::fs::read(theirs.join("metrics.jsonl")).unwrap(),
        b"my notes\n"
    );
    // Sizes that would allocate without end.
    let out = s.out("big");
    let mut args = s.train_args(&out, &["--steps", "2"]);
    let pos = args.iter().position(|a| *a == "--batch-size").unwrap();
    args[pos + 1] = "1000000000000";
    assert_clear_error(&run(&args), "--batch-size", "huge batch");
    // One image cannot be split into training and held-out images.
    let o = run(&[
        "train",
        "--model-config",
        &s.config,
        "--checkpoint",
        &s.base,
        "--data",
        &one,
        "--out",
        &s.out("one-run"),
        "--holdout-fraction",
        "0.5",
        "--steps",
        "2",
        "--batch-size",
        "1",
        "--device",
        "cpu",
    ]);
    assert_clear_error(&o, "--holdout-fraction", "holdout with one image");
    // The run folder inside the data folder would feed samples back as training images.
    let o = run(&s.train_args(&inside, &["--steps", "2"]));
    assert_clear_error(&o, "inside --data", "--out inside --data");
}

#[test]
fn sample_never_mixes_or_removes_other_files() {
    let s = setup();
    let out = s.out("samples");
    let sample = |num: &str, extra: &[&str]| {
        let mut v = vec![
            "sample",
            "--model-config",
            &s.config,
            "--checkpoint",
            &s.base,
            "--num",
            num,
            "--respacing",
            "5",
            "--out",
            &out,
            "--device",
            "cpu",
        ];
        v.extend_from_slice(extra);
        run(&v)
    };
    assert!(sample("3", &[]).status.success());
    // Again into the same folder: refused without --force, replaced with it.
    assert_clear_error(&sample("3", &[]), "--force", "sample twice");
    let o = sample("2", &["--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // No stale third sample from the first run.
    assert_eq!(
        names,
        [
            "000000.png",
            "000001.png",
            "grid.png",
            "manifest.json",
            "samples.npz"
        ]
    );
    // The user's own numbered images are not samples, however they are named: only files an
    // a3ft manifest lists are ever replaced.
    let mine = s.root.join("mine");
    write_images(&mine, 3);
    for i in 0..3 {
        std::fs::rename(
            mine.join(format!("img{i}.png")),
            mine.join(format!("{i:06}.png")),
        )
        .unwrap();
    }
    let o = run(&[
        "sample",
        "--model-config",
        &s.config,
        "--checkpoint",
        &s.base,
        "--num",
        "2",
        "--respacing",
        "5",
        "--out",
        mine.to_str().unwrap(),
        "--force",
        "--device",
        "cpu",
    ]);
    assert_clear_error(
        &o,
        "did not write",
        "sample --force onto numbered user images",
    );
    assert_eq!(std::fs::read_dir(&mine).unwrap().count(), 3);
    // A folder with anything else in it (here: the user's images) is never written into.
    let o = run(&[
        "sample",
        "--model-config",
        &s.config,
        "--checkpoint",
        &s.base,
        "--num",
        "2",
        "--respacing",
        "5",
        "--out",
        &s.data,
        "--force",
        "--device",
        "cpu",
    ]);
    assert_clear_error(&o, "did not write", "sample into the data folder");
    assert_eq!(std::fs::read_dir(&s.data).unwrap().count(), 4);
}

#[test]
fn a_second_signal_mid_step_exits_at_once_without_a_crash() {
    let s = setup();
    let out = s.out("run");
    let mut args = s.train_args(&out, &["--steps", "1000000", "--log-every", "1"]);
    let pos = args.iter().position(|a| *a == "--batch-size").unwrap();
    args[pos + 1] = "512";
    let mut child = Spawned::new(a3ft(&args));
    wait_for_metrics(&out, 1, &mut child);
    // SAFETY: kill only sends a signal to the child this test started (and still holds).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(50));
    // SAFETY: kill only sends a signal to the child this test started (and still holds).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait(Duration::from_secs(60));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(143), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn runs_are_locked_and_bound_to_their_data() {
    let s = setup();
    let out = s.out("run");
    // Relative --data from one folder; --resume from another folder holding a different "data".
    let rel = run_in(
        &s.root,
        &[
            "train",
            "--model-config",
            &s.config,
            "--checkpoint",
            &s.base,
            "--data",
            "data",
            "--out",
            "run",
            "--batch-size",
            "2",
            "--method",
            "attention",
            "--steps",
            "2",
            "--device",
            "cpu",
        ],
    );
    assert!(rel.status.success(), "{}", stderr(&rel));
    let elsewhere = s.root.join("elsewhere");
    write_images(&elsewhere.join("data"), 7);
    let o = run_in(
        &elsewhere,
        &["train", "--resume", &out, "--steps", "4", "--device", "cpu"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("(4 images"),
        "resumed on other data: {}",
        stderr(&o)
    );
    // Same count, other pixels: refused.
    let img = image::RgbImage::from_fn(12, 10, |x, _| image::Rgb([x as u8, 1, 2]));
    img.save(Path::new(&s.data).join("img0.png")).unwrap();
    assert_clear_error(
        &run(&["train", "--resume", &out, "--steps", "6", "--device", "cpu"]),
        "changed",
        "changed pixels",
    );
    write_images(Path::new(&s.data), 4);
    // A second trainer on the same run is refused while the first holds it.
    let mut first = Spawned::new(a3ft([
        "train",
        "--resume",
        &out,
        "--steps",
        "1000000",
        "--log-every",
        "1",
        "--device",
        "cpu",
    ]));
    // The lock is taken before the first step: once that step is logged, it is held.
    let logged = std::fs::read_to_string(Path::new(&out).join("metrics.jsonl"))
        .unwrap()
        .lines()
        .count();
    wait_for_metrics(&out, logged + 1, &mut first);
    let o = run(&[
        "train", "--resume", &out, "--steps", "1000000", "--device", "cpu",
    ]);
    assert_clear_error(&o, "in use by another", "second trainer");
    // SAFETY: kill only sends a signal to the child this test started (and still holds).
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    let _ = first.wait(Duration::from_secs(60));
}

fn run_in(dir: &Path, args: &[&str]) -> Output {
    let mut c = a3ft(args);
    c.current_dir(dir);
    wait(c.spawn().unwrap(), Duration::from_secs(120), args)
}

#[test]
fn only_damaged_checkpoints_never_restart_silently() {
    let s = setup();
    let out = s.out("run");
    assert!(run(&s.train_args(&out, &["--steps", "2"])).status.success());
    let ck = Path::new(&out).join("checkpoints/step_000002.safetensors");
    let bytes = std::fs::read(&ck).unwrap();
    std::fs::write(&ck, &bytes[..bytes.len() / 3]).unwrap();
    for attempt in 0..2 {
        let o = run(&["train", "--resume", &out, "--steps", "4", "--device", "cpu"]);
        assert_clear_error(&o, "no intact checkpoint", &format!("attempt {attempt}"));
    }
}

#[test]
fn report_replaces_only_an_earlier_report() {
    let s = setup();
    let out = s.out("run");
    assert!(run(&s.train_args(&out, &["--steps", "2"])).status.success());
    let rep = s.out("rep");
    for attempt in 0..2 {
        let o = run(&["report", &out, "--out", &rep]);
        assert!(o.status.success(), "attempt {attempt}: {}", stderr(&o));
    }
    assert!(
        Path::new(&rep).join("report.md").is_file()
            && Path::new(&rep).join("manifest.json").is_file()
    );
    // A file of the user's in the report folder, the data folder, a link: nothing is written.
    std::fs::write(Path::new(&rep).join("notes.txt"), b"mine").unwrap();
    assert_clear_error(
        &run(&["report", &out, "--out", &rep]),
        "notes.txt",
        "report onto a user's file",
    );
    assert_eq!(
        std::fs::read(Path::new(&rep).join("notes.txt")).unwrap(),
        b"mine"
    );
    assert_clear_error(
        &run(&["report", &out, "--out", &s.data]),
        "--data",
        "report into the data folder",
    );
    assert_eq!(std::fs::read_dir(&s.data).unwrap().count(), 4);
    let linked = s.root.join("linked");
    std::fs::create_dir_all(&linked).unwrap();
    let target = s.root.join("target.png");
    std::fs::write(&target, b"keep").unwrap();
    std::os::unix::fs::symlink(&target, linked.join("training_loss.png")).unwrap();
    assert_clear_error(
        &run(&["report", &out, "--out", linked.to_str().unwrap()]),
        "manifest.json",
        "report through a link",
    );
    let folders = s.root.join("folders");
    std::fs::create_dir_all(folders.join("keep")).unwrap();
    assert_clear_error(
        &run(&["report", &out, "--out", folders.to_str().unwrap()]),
        "holds folders",
        "report over empty folders",
    );
    assert!(folders.join("keep").is_dir());
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
}

/// A FIFO under a name a3ft reads in a run would block the reader forever: each is refused,
/// naming it, at once.
#[test]
fn fifos_in_a_run_never_hang() {
    let s = setup();
    let out = s.out("run");
    assert!(
        run(&s.train_args(&out, &["--steps", "2", "--save-every", "1"]))
            .status
            .success()
    );
    let copy = |name: &str| {
        let dst = s.root.join(name);
        let o = Command::new("cp")
            .args(["-r", &out, dst.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success());
        dst
    };
    let fifo = |p: &Path| {
        let _ = std::fs::remove_file(p);
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path, which `c` keeps alive for the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    };
    let resume = |r: &Path| {
        run(&[
            "train",
            "--resume",
            r.to_str().unwrap(),
            "--steps",
            "4",
            "--device",
            "cpu",
        ])
    };
    // The newest checkpoint: set aside as damaged, and the run resumes from the one before.
    let r = copy("newest");
    fifo(&r.join("checkpoints/step_000002.safetensors"));
    let o = resume(&r);
    assert!(
        o.status.success()
            && stderr(&o).contains("not a regular file")
            && stderr(&o).contains("step 1"),
        "{}",
        stderr(&o)
    );
    let r = copy("metrics");
    fifo(&r.join("metrics.jsonl"));
    assert_clear_error(
        &resume(&r),
        "metrics.jsonl is not a regular file",
        "FIFO metrics, resume",
    );
    assert_clear_error(
        &run(&["report", r.to_str().unwrap(), "--out", &s.out("rep")]),
        "metrics.jsonl is not a regular file",
        "FIFO metrics, report",
    );
    let r = copy("selected");
    fifo(&r.join("selected.json"));
    assert_clear_error(
        &run(&[
            "sample",
            "--run",
            r.to_str().unwrap(),
            "--num",
            "1",
            "--respacing",
            "5",
            "--out",
            &s.out("s"),
            "--device",
            "cpu",
        ]),
        "selected.json",
        "FIFO selected.json",
    );
    let r = copy("lock");
    fifo(&r.join(".a3ft.lock"));
    assert_clear_error(&resume(&r), ".a3ft.lock", "FIFO lock");
}

/// A weight beyond f16's range would be written as ∞ (and the export could not be loaded).
#[test]
fn f16_export_refuses_weights_beyond_its_range() {
    let s = setup();
    let mut state = a3ft::io::checkpoint::load_state_dict(&variant("plain.pt"), None).unwrap();
    let _ = state
        .get_mut("out.2.bias")
        .unwrap()
        .view(-1)
        .get(0)
        .fill_(1e5);
    let big = s.root.join("big.safetensors");
    a3ft::io::checkpoint::save_safetensors(
        &big,
        &state.into_iter().collect::<Vec<_>>(),
        Default::default(),
    )
    .unwrap();
    let out = s.out("run");
    let mut args = s.train_args(&out, &["--steps", "1"]);
    let pos = args.iter().position(|a| *a == "--checkpoint").unwrap();
    args[pos + 1] = big.to_str().unwrap();
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let half = s.out("half.safetensors");
    assert_clear_error(
        &run(&["export", "--run", &out, "--out", &half, "--dtype", "f16"]),
        "out.2.bias",
        "f16 overflow",
    );
    assert!(!Path::new(&half).exists());
    assert!(
        run(&["export", "--run", &out, "--out", &half, "--dtype", "bf16"])
            .status
            .success()
    );
}

/// The held-out folder is bound to the run as the data folder is, and never receives its output.
#[test]
fn holdout_folder_is_bound_to_the_run() {
    let s = setup();
    let held = s.root.join("held");
    write_images(&held, 2);
    let held = held.to_str().unwrap().to_string();
    let inside = format!("{held}/run");
    assert_clear_error(
        &run(&s.train_args(&inside, &["--steps", "2", "--holdout", &held])),
        "inside --holdout",
        "--out inside --holdout",
    );
    let out = s.out("run");
    let o = run(&s.train_args(&out, &["--steps", "2", "--holdout", &held]));
    assert!(o.status.success(), "{}", stderr(&o));
    let img = image::RgbImage::from_fn(12, 10, |x, _| image::Rgb([x as u8, 9, 9]));
    img.save(Path::new(&held).join("img0.png")).unwrap();
    assert_clear_error(
        &run(&["train", "--resume", &out, "--steps", "4", "--device", "cpu"]),
        "held-out images",
        "changed held-out folder",
    );
    write_images(Path::new(&held), 2);
    let o = run(&["train", "--resume", &out, "--steps", "4", "--device", "cpu"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Outputs never land in a run's image folders, never go through a link, and never replace a
/// misnamed checkpoint's step silently.
#[test]
fn outputs_stay_out_of_image_folders_and_links() {
    let s = setup();
    let out = s.out("run");
    assert!(
        run(&s.train_args(&out, &["--steps", "2", "--save-every", "1"]))
            .status
            .success()
    );
    let inside = format!("{}/gen", s.data);
    let o = run(&[
        "sample",
        "--run",
        &out,
        "--num",
        "1",
        "--respacing",
        "5",
        "--out",
        &inside,
        "--device",
        "cpu",
    ]);
    assert_clear_error(&o, "--data", "sample into the data folder");
    assert_clear_error(
        &run(&["report", &out, "--out", &inside]),
        "--data",
        "report into the data folder",
    );
    assert!(!Path::new(&inside).exists());
    // A dangling link as --out is refused before sampling.
    let link = s.root.join("dangling");
    std::os::unix::fs::symlink(s.root.join("nowhere"), &link).unwrap();
    assert_clear_error(
        &run(&[
            "sample",
            "--run",
            &out,
            "--num",
            "1",
            "--respacing",
            "5",
            "--out",
            link.to_str().unwrap(),
            "--device",
            "cpu",
        ]),
        "dangling",
        "sample into a dangling link",
    );
    // metrics.jsonl as a link out of the run: never appended through.
    let outside = s.root.join("outside.txt");
    std::fs::write(&outside, b"mine\n").unwrap();
    let metrics = Path::new(&out).join("metrics.jsonl");
    std::fs::remove_file(&metrics).unwrap();
    std::os::unix::fs::symlink(&outside, &metrics).unwrap();
    assert_clear_error(
        &run(&["train", "--resume", &out, "--steps", "4", "--device", "cpu"]),
        "metrics.jsonl",
        "metrics through a link",
    );
    assert_eq!(std::fs::read(&outside).unwrap(), b"mine\n");
    // A checkpoint copied under another step's name is not that step.
    let ck = Path::new(&out).join("checkpoints");
    std::fs::copy(
        ck.join("step_000001.safetensors"),
        ck.join("step_000009.safetensors"),
    )
    .unwrap();
    assert_clear_error(
        &run(&[
            "export",
            "--run",
            &out,
            "--step",
            "9",
            "--out",
            &s.out("e.safetensors"),
        ]),
        "holds step 1",
        "export a misnamed checkpoint",
    );
}

/// Waits until `path` exists (the child must still run).
fn wait_for_path(path: &Path, child: &mut Child) {
    let start = Instant::now();
    while std::fs::symlink_metadata(path).is_err() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the command ended before {} appeared",
            path.display()
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Names in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn sample_output_is_whole_or_as_it_was() {
    use std::os::unix::process::ExitStatusExt;
    let s = setup();
    let out = s.out("samples");
    let args = |num: &'static str, steps: &'static str| -> Vec<String> {
        [
            "sample",
            "--model-config",
            &s.config,
            "--checkpoint",
            &s.base,
            "--num",
            num,
            "--batch-size",
            "1",
            "--respacing",
            steps,
            "--out",
            &out,
            "--device",
            "cpu",
            "--force",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let run_s = |a: Vec<String>| run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(run_s(args("3", "5")).status.success());
    let first = names_in(Path::new(&out));
    let manifest = std::fs::read(Path::new(&out).join("manifest.json")).unwrap();
    let lock = s.root.join(".samples.lock");
    let long = || {
        Spawned::new(a3ft(
            args("512", "100")
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        ))
    };

    // SIGTERM mid-run: exit 128+15, the earlier set untouched, nothing left beside it.
    let mut child = long();
    wait_for_path(&lock, &mut child);
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill only sends a signal to the child this test started (and still holds).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait(Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
    assert_eq!(names_in(Path::new(&out)), first);
    assert_eq!(
        std::fs::read(Path::new(&out).join("manifest.json")).unwrap(),
        manifest
    );
    assert_eq!(
        names_in(&s.root)
            .iter()
            .filter(|n| n.starts_with(".samples."))
            .count(),
        0,
        "{:?}",
        names_in(&s.root)
    );

    // A second writer is refused while the first runs; kill -9 leaves a staging folder that the
    // next sample removes, and the folder is whole throughout.
    let mut child = long();
    wait_for_path(&lock, &mut child);
    let o = run_s(args("2", "5"));
    assert_clear_error(
        &o,
        "being written by another a3ft process",
        "a second sample into one folder",
    );
    let staging = s.root.join(format!(".samples.staging-{}", child.id()));
    std::fs::create_dir_all(&staging).unwrap(); // as a kill during the final write would leave it
    std::fs::write(staging.join("000000.png"), b"half").unwrap();
    child.kill().unwrap();
    let status = child.0.take().unwrap().wait().unwrap();
    assert_eq!(status.signal(), Some(9));
    assert_eq!(names_in(Path::new(&out)), first);
    let o = run_s(args("2", "5"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("left by an interrupted earlier sample"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        names_in(Path::new(&out)),
        [
            "000000.png",
            "000001.png",
            "grid.png",
            "manifest.json",
            "samples.npz"
        ]
    );
    assert!(
        names_in(&s.root)
            .iter()
            .all(|n| !n.starts_with(".samples.")),
        "{:?}",
        names_in(&s.root)
    );
}

#[test]
fn run_checkpoints_and_holdout_folders_are_what_they_claim() {
    let s = setup();
    let run_dir = s.out("run");
    let o = run(&s.train_args(&run_dir, &["--epochs", "1", "--save-every", "1"]));
    assert!(o.status.success(), "{}", stderr(&o));
    // eval --holdout: the training folder itself, a folder inside it, or a copy of it.
    let copy = s.root.join("copy");
    write_images(&copy, 4);
    for holdout in [s.data.clone(), copy.to_str().unwrap().to_string()] {
        let o = run(&[
            "eval",
            "--run",
            &run_dir,
            "--reference",
            &s.data,
            "--holdout",
            &holdout,
            "--inception",
            "/nonexistent/inception.pt",
            "--device",
            "cpu",
        ]);
        assert_clear_error(
            &o,
            "never trained on",
            "eval --holdout of the training images",
        );
    }
    // A checkpoint lacking one of the run's trained tensors is refused by every command that
    // loads it, instead of standing in for it with the base weights.
    let ckpt = std::fs::read_dir(Path::new(&run_dir).join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .unwrap();
    let tensors = tch::Tensor::read_safetensors(&ckpt).unwrap();
    // Edited as a user would with a safetensors library: the metadata (the step) kept.
    let meta = a3ft::io::checkpoint::safetensors_metadata(&ckpt).unwrap();
    let rewrite = |t: &[(String, tch::Tensor)]| {
        a3ft::io::checkpoint::save_safetensors(&ckpt, t, meta.clone()).unwrap()
    };
    // A held-out folder that is a subset of the training images.
    let subset = s.root.join("subset");
    std::fs::create_dir_all(&subset).unwrap();
    std::fs::copy(Path::new(&s.data).join("img0.png"), subset.join("a.png")).unwrap();
    let o = run(&[
        "eval",
        "--run",
        &run_dir,
        "--reference",
        &s.data,
        "--holdout",
        subset.to_str().unwrap(),
        "--inception",
        "/nonexistent/inception.pt",
        "--device",
        "cpu",
    ]);
    assert_clear_error(
        &o,
        "images the run trained on",
        "eval --holdout of a subset of the training images",
    );
    // A tensor the run does not train (a frozen input conv of an attention run), added.
    let mut extra: Vec<(String, tch::Tensor)> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.shallow_clone()))
        .collect();
    let prefix = if extra.iter().any(|(k, _)| k.starts_with("ema.")) {
        "ema."
    } else {
        "model."
    };
    extra.push((
        format!("{prefix}input_blocks.0.0.weight"),
        tch::Tensor::ones([32, 3, 3, 3], (tch::Kind::Float, tch::Device::Cpu)),
    ));
    rewrite(&extra);
    let o = run(&[
        "sample",
        "--run",
        &run_dir,
        "--num",
        "2",
        "--respacing",
        "5",
        "--out",
        &s.out("samples"),
        "--device",
        "cpu",
    ]);
    assert_clear_error(
        &o,
        "does not train",
        "a checkpoint with a tensor the run does not train",
    );
    let dropped = tensors
        .iter()
        .find(|(k, _)| k.starts_with("ema.") || k.starts_with("model."))
        .unwrap()
        .0
        .clone();
    let kept: Vec<(String, tch::Tensor)> = tensors
        .iter()
        .filter(|(k, _)| *k != dropped)
        .map(|(k, t)| (k.clone(), t.shallow_clone()))
        .collect();
    rewrite(&kept);
    for args in [
        vec![
            "sample",
            "--run",
            &run_dir,
            "--num",
            "2",
            "--respacing",
            "5",
            "--out",
            &s.out("samples"),
            "--device",
            "cpu",
        ],
        vec![
            "export",
            "--run",
            &run_dir,
            "--out",
            &s.out("export.safetensors"),
        ],
        vec![
            "eval",
            "--run",
            &run_dir,
            "--reference",
            &s.data,
            "--num-samples",
            "2",
            "--respacing",
            "5",
            "--inception",
            "/nonexistent/inception.pt",
            "--device",
            "cpu",
        ],
    ] {
        let o = run(&args);
        if args[0] == "eval" {
            // eval loads the Inception weights first; the run check is covered by the others.
            assert!(!o.status.success());
            continue;
        }
        assert_clear_error(&o, "lacks 1 of the", args[0]);
        assert!(stderr(&o).contains(dropped.as_str()), "{}", stderr(&o));
    }
    // The rule `train --resume` applies is the rule of every command that loads a run: the step
    // recorded in the file, and finite values.
    let whole = tensors;
    tch::Tensor::write_safetensors(&whole, &ckpt).unwrap();
    let sample = [
        "sample",
        "--run",
        &run_dir,
        "--num",
        "2",
        "--respacing",
        "5",
        "--out",
        &s.out("samples"),
        "--device",
        "cpu",
    ];
    assert_clear_error(
        &run(&sample),
        "records no step",
        "a run checkpoint without its step",
    );
    let poisoned: Vec<(String, tch::Tensor)> =
        whole.iter().map(|(k, t)| (k.clone(), t.copy())).collect();
    let _ = poisoned[0].1.view(-1).get(0).fill_(f64::NAN);
    rewrite(&poisoned);
    let o = run(&sample);
    assert_clear_error(&o, "non-finite", "a run checkpoint holding NaN");
    assert!(stderr(&o).contains(&poisoned[0].0), "{}", stderr(&o));
}

#[test]
fn study_out_inside_its_image_folders_is_refused() {
    let s = setup();
    let holdout = s.root.join("held");
    write_images(&holdout, 2);
    for out in [
        format!("{}/study", s.data),
        format!("{}/study", holdout.display()),
    ] {
        let o = run(&[
            "study",
            "--model-config",
            &s.config,
            "--checkpoint",
            &s.base,
            "--data",
            &s.data,
            "--holdout",
            holdout.to_str().unwrap(),
            "--out",
            &out,
            "--methods",
            "attention",
            "--seeds",
            "0",
            "--epochs",
            "1",
            "--device",
            "cpu",
        ]);
        assert_clear_error(
            &o,
            "lies inside the study's",
            "study --out inside an image folder",
        );
        assert!(!Path::new(&out).exists());
    }
}

#[test]
fn data_fetch_stops_on_a_signal_and_leaves_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    // An npm that never finishes (an unreachable registry), and marks that it started.
    let started = tmp.path().join("npm-started");
    std::fs::write(
        bin.join("npm"),
        format!("#!/bin/sh\ntouch {}\nexec sleep 600\n", started.display()),
    )
    .unwrap();
    std::fs::set_permissions(bin.join("npm"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("pokemon");
    let mut c = a3ft(["data", "fetch", "pokemon", "--out", out.to_str().unwrap()]);
    c.env(
        "PATH",
        format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
    )
    .env("A3FT_CACHE", &cache);
    let mut child = Spawned::new(c);
    wait_for_path(&started, &mut child);
    // SAFETY: kill only sends a signal to the child this test started (and still holds).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait(Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
    assert!(!out.exists());
    let left: Vec<String> = names_in(tmp.path())
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(
        names_in(&cache.join("npm"))
            .iter()
            .all(|n| !n.starts_with(".pack-")),
        "{:?}",
        names_in(&cache.join("npm"))
    );
}

/// A run folder and a study folder written by the version before the house was rebuilt
/// (tests/fixtures/previous-version, made in /tmp/a3ft-prev-fixture by that binary): the run
/// resumes, and both report, with this one.
#[test]
fn folders_of_the_previous_version_resume_and_report() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("prev");
    crate::util::copy_dir(&crate::util::fixture("previous-version"), &root);
    std::fs::copy(variant("plain.pt"), root.join("base.pt")).unwrap();
    // Their configs name the folder they were made in (absolute paths, as every run's do).
    for f in [
        "run/config.json",
        "study/study.json",
        "study/runs/attention-s0/config.json",
    ] {
        let p = root.join(f);
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("/tmp/a3ft-prev-fixture", root.to_str().unwrap());
        std::fs::write(&p, text).unwrap();
    }
    let r = |p: &str| root.join(p).to_str().unwrap().to_string();
    let o = run(&[
        "train",
        "--resume",
        &r("run"),
        "--epochs",
        "3",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("resumed") && stderr(&o).contains("at step 4"),
        "{}",
        stderr(&o)
    );
    assert_eq!(*metric_steps(&r("run")).last().unwrap(), 6);
    let o = run(&["report", &r("run"), "--out", &r("report")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read_to_string(root.join("report/report.md"))
        .unwrap()
        .contains("a3ft"));
    let config = variant("config.json");
    let o = run(&[
        "study",
        "--model-config",
        config.to_str().unwrap(),
        "--checkpoint",
        &r("base.pt"),
        "--data",
        &r("data"),
        "--holdout",
        &r("holdout"),
        "--out",
        &r("study"),
        "--methods",
        "attention",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--final-samples",
        "2",
        "--final-respacing",
        "5",
        "--eval-every",
        "1",
        "--inception",
        "/nonexistent/inception.pt",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("finished earlier, skipped"),
        "{}",
        stderr(&o)
    );
    let report = std::fs::read_to_string(root.join("study/report/report.md")).unwrap();
    assert!(report.contains("| attention |"), "{report}");
}

/// A run that held a share of its folder out (`--holdout-fraction`) trained on the rest only:
/// `eval --holdout` takes its held-out images and refuses its training images.
#[test]
fn eval_holdout_tells_a_runs_own_held_out_images_from_its_training_images() {
    let s = setup();
    let run_dir = s.out("run");
    let o = run(&s.train_args(&run_dir, &["--epochs", "1", "--holdout-fraction", "0.5"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let (mut refused, mut accepted) = (0, 0);
    for i in 0..4 {
        let one = s.root.join(format!("one{i}"));
        std::fs::create_dir_all(&one).unwrap();
        std::fs::copy(
            Path::new(&s.data).join(format!("img{i}.png")),
            one.join("x.png"),
        )
        .unwrap();
        let o = run(&[
            "eval",
            "--run",
            &run_dir,
            "--reference",
            &s.data,
            "--holdout",
            one.to_str().unwrap(),
            "--inception",
            "/nonexistent/inception.pt",
            "--device",
            "cpu",
        ]);
        let e = stderr(&o);
        if e.contains("images the run trained on") {
            refused += 1;
        } else if e.contains("/nonexistent/inception.pt") {
            accepted += 1;
        }
    }
    assert_eq!((refused, accepted), (2, 2));

    // Without --holdout, the run's own held-out share is evaluated (the same seeded split), and
    // nothing once the folder no longer holds the images it trained with.
    let eval = || {
        run(&[
            "eval",
            "--run",
            &run_dir,
            "--reference",
            &s.data,
            "--num-samples",
            "4",
            "--respacing",
            "5",
            "--json",
            "--device",
            "cpu",
        ])
    };
    let o = eval();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["heldout"]["num_images"], 2, "{v}");
    assert!(
        v["heldout"]["loss"].as_f64().is_some_and(f64::is_finite),
        "{v}"
    );
    assert!(
        stderr(&o).contains("own 2 held-out images"),
        "{}",
        stderr(&o)
    );
    crate::util::write_images_from(&s.root.join("data/more"), 1, 9);
    let o = eval();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v.get("heldout").is_none(), "{v}");
    assert!(
        stderr(&o).contains("changed since the run trained"),
        "{}",
        stderr(&o)
    );
}

/// `eval --checkpoint` scores a plain model as `--run` scores a run: its samples against the
/// reference, its held-out loss, and FID/KID against the held-out images equal to scoring the
/// same samples (made by `sample`) against that folder with `--generated`.
#[test]
fn eval_scores_a_checkpoint_with_held_out_figures() {
    let s = setup();
    let held = s.root.join("held");
    crate::util::write_images_from(&held, 3, 20);
    let held = held.to_str().unwrap();
    let common = [
        "--checkpoint",
        &s.base,
        "--model-config",
        &s.config,
        "--num-samples",
        "4",
        "--respacing",
        "5",
        "--json",
        "--device",
        "cpu",
    ];
    let mut args = vec!["eval", "--reference", &s.data, "--holdout", held];
    args.extend_from_slice(&common);
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (
            v["num_generated"].as_u64(),
            v["heldout"]["num_images"].as_u64()
        ),
        (Some(4), Some(3)),
        "{v}"
    );
    assert!(
        v["heldout"]["loss"].as_f64().is_some_and(f64::is_finite),
        "{v}"
    );

    let samples = s.out("samples");
    let o = run(&[
        "sample",
        "--checkpoint",
        &s.base,
        "--model-config",
        &s.config,
        "--num",
        "4",
        "--batch-size",
        "4",
        "--respacing",
        "5",
        "--seed",
        "0",
        "--out",
        &samples,
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&[
        "eval",
        "--generated",
        &samples,
        "--reference",
        held,
        "--json",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let g: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for (k, tol) in [("fid", 1e-6), ("kid", 1e-9)] {
        let (a, b) = (v["heldout"][k].as_f64().unwrap(), g[k].as_f64().unwrap());
        assert!(
            (a - b).abs() <= tol * a.abs().max(1.0),
            "held-out {k} {a} vs --generated {b}"
        );
    }

    // Flags that name a model do not go with --generated; nothing to score is one line.
    let o = run(&[
        "eval",
        "--generated",
        &samples,
        "--reference",
        held,
        "--model-config",
        &s.config,
        "--device",
        "cpu",
    ]);
    assert_clear_error(
        &o,
        "applies to --run or --checkpoint",
        "eval --generated with --model-config",
    );
    let o = run(&["eval", "--reference", held, "--device", "cpu"]);
    assert!(!o.status.success());
    let o = run(&[
        "eval",
        "--reference",
        held,
        "--model-config",
        &s.config,
        "--device",
        "cpu",
    ]);
    assert_clear_error(
        &o,
        "--checkpoint FILE",
        "eval with a config and no checkpoint",
    );
}

/// Runs `args` with a SIGTERM injected at the N-th stop check (`A3FT_SIGNAL_AT_CHECK`), for
/// N = 1, 2, 4, … until the command finishes before its N-th check: every stopped run exits
/// 143 with nothing on stdout and one line saying it stopped, and `after` checks what it left.
/// Returns how many stopped runs there were.
pub(crate) fn signal_at_every_check(args: &[&str], mut after: impl FnMut(u64)) -> u64 {
    let mut stopped = 0;
    for k in 0..16 {
        let n = 1u64 << k;
        let mut c = a3ft(args);
        c.env("A3FT_SIGNAL_AT_CHECK", n.to_string());
        let o = wait(c.spawn().unwrap(), Duration::from_secs(120), args);
        let err = stderr(&o);
        assert!(!err.contains("panicked"), "{args:?} at check {n}: {err}");
        if o.status.success() {
            assert!(
                stopped > 0,
                "{args:?}: no stop check was reached at all: {err}"
            );
            return stopped;
        }
        assert_eq!(
            o.status.code(),
            Some(143),
            "{args:?}, signal at check {n}: {err}"
        );
        assert!(
            o.stdout.is_empty(),
            "{args:?} at check {n} printed {:?}",
            String::from_utf8_lossy(&o.stdout)
        );
        assert!(err.contains("signal 15"), "{args:?} at check {n}: {err}");
        assert!(
            !err.contains("warning") && !err.contains("unscored"),
            "{args:?}: a signal became a warning at check {n}: {err}"
        );
        after(n);
        stopped += 1;
    }
    panic!("{args:?}: still stopping after 2^15 checks");
}

/// A signal in every loop that checks for one ends `eval` (on images, on a checkpoint with
/// held-out images, on a run), `sample`, `export` and `report` with 143: nothing printed as a
/// result, and their outputs absent (they write nothing until whole).
#[test]
fn a_signal_at_any_check_ends_each_command_with_143() {
    let s = setup();
    let held = s.root.join("held");
    crate::util::write_images_from(&held, 3, 20);
    let held = held.to_str().unwrap();
    let run_dir = s.out("run");
    let o = run(&s.train_args(&run_dir, &["--steps", "2"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let samples = s.out("samples");
    let o = run(&[
        "sample",
        "--checkpoint",
        &s.base,
        "--model-config",
        &s.config,
        "--num",
        "6",
        "--batch-size",
        "2",
        "--respacing",
        "5",
        "--out",
        &samples,
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cases: Vec<(Vec<&str>, Option<String>)> = vec![
        (
            vec![
                "eval",
                "--generated",
                &samples,
                "--reference",
                held,
                "--json",
                "--device",
                "cpu",
            ],
            None,
        ),
        (
            vec![
                "eval",
                "--checkpoint",
                &s.base,
                "--model-config",
                &s.config,
                "--reference",
                &s.data,
                "--holdout",
                held,
                "--num-samples",
                "4",
                "--respacing",
                "5",
                "--json",
                "--device",
                "cpu",
            ],
            None,
        ),
        (
            vec![
                "eval",
                "--run",
                &run_dir,
                "--reference",
                &s.data,
                "--holdout",
                held,
                "--num-samples",
                "4",
                "--respacing",
                "5",
                "--device",
                "cpu",
            ],
            None,
        ),
        (
            vec![
                "sample",
                "--run",
                &run_dir,
                "--num",
                "4",
                "--batch-size",
                "2",
                "--respacing",
                "5",
                "--out",
                "OUT",
                "--device",
                "cpu",
            ],
            Some(s.out("sampled")),
        ),
        (
            vec!["export", "--run", &run_dir, "--out", "OUT"],
            Some(s.out("exported.pt")),
        ),
        (
            vec!["report", &run_dir, "--out", "OUT"],
            Some(s.out("report")),
        ),
    ];
    for (mut args, out) in cases {
        if let Some(o) = &out {
            *args.iter_mut().find(|a| **a == "OUT").unwrap() = o;
        }
        let n = signal_at_every_check(&args, |_| {
            if let Some(o) = &out {
                assert!(!Path::new(o).exists(), "{args:?}: {o} exists after a stop");
                let beside: Vec<_> = std::fs::read_dir(&s.root)
                    .unwrap()
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.contains(".a3ft-") || n.contains(".tmp"))
                    .collect();
                assert!(beside.is_empty(), "{args:?}: left {beside:?}");
            }
        });
        eprintln!("{args:?}: {n} stopped runs");
    }
}

/// A disk that fills at any write of `train --select heldout-loss` (injected: the N-th write and
/// every later one fail with ENOSPC, for every N until the run completes): the run fails with one
/// line naming the file and the cause once, leaves no partial file, and `selected.json`, when
/// there is one, names a checkpoint that is whole, so `sample` uses it; resumed on a disk with
/// room, the run finishes and its selection names a checkpoint it has.
#[test]
fn a_full_disk_at_any_write_leaves_every_record_naming_a_whole_file() {
    let s = setup();
    let held = s.root.join("held");
    crate::util::write_images_from(&held, 2, 20);
    let held = held.to_str().unwrap();
    let mut failed = 0;
    // `sample` once per distinct (selected, newest) pair of checkpoints: the case that matters is
    // a selection older than the newest checkpoint, or a newest one that the selection lacks.
    let mut sampled = std::collections::HashSet::new();
    for n in 0..200 {
        let run_dir = s.out(&format!("run{n}"));
        let args = s.train_args(
            &run_dir,
            &[
                "--epochs",
                "3",
                "--eval-every",
                "1",
                "--log-every",
                "3",
                "--holdout",
                held,
                "--select",
                "heldout-loss",
                "--sample-every",
                "5",
                "--sample-count",
                "2",
                "--sample-respacing",
                "5",
            ],
        );
        let mut c = a3ft(&args);
        c.env("A3FT_DISK_FULL_AFTER", n.to_string());
        let o = wait(c.spawn().unwrap(), Duration::from_secs(120), &args);
        if o.status.success() {
            assert!(failed > 0, "no write failed");
            eprintln!("{failed} runs met a full disk");
            return;
        }
        failed += 1;
        let err = stderr(&o);
        let what = format!("disk full after {n} writes");
        assert_clear_error(&o, "No space left on device", &what);
        assert_eq!(
            err.matches("No space left").count(),
            1,
            "{what}: the cause is repeated\n{err}"
        );
        assert!(
            !err.contains("Os {") && !err.contains("Io("),
            "{what}: a Debug error\n{err}"
        );
        let root = Path::new(&run_dir);
        if !root.exists() {
            continue;
        }
        let partial: Vec<String> = walk(root)
            .into_iter()
            .filter(|p| p.contains(".tmp-"))
            .collect();
        assert!(partial.is_empty(), "{what}: left {partial:?}");
        let selected = root.join("selected.json");
        if selected.exists() {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&selected).unwrap()).unwrap();
            let step = v["step"].as_u64().unwrap();
            assert!(
                root.join(format!("checkpoints/step_{step:06}.safetensors"))
                    .is_file(),
                "{what}: selected.json names step {step}, which has no checkpoint"
            );
            let newest = walk(&root.join("checkpoints")).into_iter().max();
            if sampled.insert((step, newest)) {
                let out = s.out(&format!("sampled{n}"));
                let o = run(&[
                    "sample",
                    "--run",
                    &run_dir,
                    "--num",
                    "2",
                    "--respacing",
                    "5",
                    "--out",
                    &out,
                    "--device",
                    "cpu",
                ]);
                assert!(
                    o.status.success(),
                    "{what}: sample refused the run: {}",
                    stderr(&o)
                );
            }
        }
        if !root.join("config.json").exists() {
            continue;
        }
        // Room again: the run resumes from what it saved (or starts over) and finishes.
        let o = run(&["train", "--resume", &run_dir, "--device", "cpu"]);
        if o.status.success() {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&selected).unwrap()).unwrap();
            let step = v["step"].as_u64().unwrap();
            assert!(
                root.join(format!("checkpoints/step_{step:06}.safetensors"))
                    .is_file(),
                "{what}, resumed: selected.json names step {step} without a checkpoint"
            );
        } else {
            // A run that failed before its first checkpoint has nothing to resume from.
            assert_clear_error(&o, "no checkpoints", &format!("{what}, resumed"));
        }
    }
    panic!("the run never finished");
}

/// `sample` and `export` on a disk that fills at any write: one line naming the file and the
/// cause once (never a Debug error), and the output absent, with nothing partial beside it.
#[test]
fn a_full_disk_at_any_write_of_sample_or_export_leaves_no_output() {
    let s = setup();
    let run_dir = s.out("run");
    assert!(run(&s.train_args(&run_dir, &["--steps", "1"]))
        .status
        .success());
    for (what, out) in [
        ("sample", s.out("sampled")),
        ("export", s.out("exported.safetensors")),
        ("export", s.out("exported-pt.pt")),
    ] {
        let args: Vec<&str> = match what {
            "sample" => vec![
                "sample",
                "--run",
                &run_dir,
                "--num",
                "3",
                "--batch-size",
                "2",
                "--respacing",
                "5",
                "--out",
                &out,
                "--device",
                "cpu",
            ],
            _ => vec!["export", "--run", &run_dir, "--out", &out],
        };
        for n in 0..100 {
            let mut c = a3ft(&args);
            c.env("A3FT_DISK_FULL_AFTER", n.to_string());
            let o = wait(c.spawn().unwrap(), Duration::from_secs(120), &args);
            if o.status.success() {
                assert!(n > 0, "{what}: wrote nothing");
                std::fs::remove_dir_all(&out)
                    .or_else(|_| std::fs::remove_file(&out))
                    .unwrap();
                break;
            }
            let err = stderr(&o);
            let tag = format!("{what}, disk full after {n} writes");
            assert_clear_error(&o, "No space left on device", &tag);
            assert_eq!(
                err.matches("No space left").count(),
                1,
                "{tag}: the cause is repeated\n{err}"
            );
            assert_eq!(
                err.matches("cannot write").count(),
                1,
                "{tag}: the file is named twice\n{err}"
            );
            assert!(
                !err.contains("Os {") && !err.contains("Io("),
                "{tag}: a Debug error\n{err}"
            );
            assert!(!Path::new(&out).exists(), "{tag}: {out} exists");
            let beside: Vec<String> = walk(&s.root)
                .into_iter()
                .filter(|p| p.contains(".tmp-") || p.contains(".staging"))
                .collect();
            assert!(beside.is_empty(), "{tag}: left {beside:?}");
        }
    }
}

/// Every path under `dir`, as text.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p.to_string_lossy().into_owned());
    }
    out
}

/// `--new-lr` is for the modules a method adds: with a method that adds none it is refused, not
/// ignored; a run it makes diverge is told to lower `--new-lr` (it names both rates and their
/// values), not `--lr` alone.
#[test]
fn new_lr_is_refused_where_it_does_nothing_and_named_where_it_diverges() {
    let s = setup();
    for method in ["full", "attention", "residual"] {
        let out = s.out(&format!("run-{method}"));
        let mut args = vec![
            "train",
            "--model-config",
            &s.config,
            "--checkpoint",
            &s.base,
            "--data",
            &s.data,
            "--out",
            &out,
            "--batch-size",
            "2",
            "--steps",
            "2",
            "--device",
            "cpu",
        ];
        args.extend(["--method", method, "--new-lr", "1e-3"]);
        assert_clear_error(
            &run(&args),
            "adds none",
            &format!("--new-lr with --method {method}"),
        );
        assert!(
            !Path::new(&out).exists(),
            "{method}: a refused run left {out}"
        );
    }
    let out = s.out("run-a3ft");
    let args = [
        "train",
        "--model-config",
        &s.config,
        "--checkpoint",
        &s.base,
        "--data",
        &s.data,
        "--out",
        &out,
        "--batch-size",
        "2",
        "--steps",
        "4",
        "--method",
        "a3ft",
        "--lr",
        "1e-4",
        "--new-lr",
        "1e30",
        "--device",
        "cpu",
    ];
    let o = run(&args);
    assert_clear_error(&o, "non-finite", "--new-lr 1e30");
    let err = stderr(&o);
    assert!(
        err.contains("lower --new-lr (now 1e30) or --lr (now 0.0001)"),
        "{err}"
    );
    // A resumed full run given --new-lr is refused the same way.
    let full = s.out("full");
    assert!(run(&[
        "train",
        "--model-config",
        &s.config,
        "--checkpoint",
        &s.base,
        "--data",
        &s.data,
        "--out",
        &full,
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--method",
        "full",
        "--device",
        "cpu"
    ])
    .status
    .success());
    assert_clear_error(
        &run(&[
            "train", "--resume", &full, "--steps", "2", "--new-lr", "1e-3", "--device", "cpu",
        ]),
        "adds none",
        "--new-lr on resume",
    );
}
