//! `a3ft study` through the binary: arms × seeds, mean ± sd table, resumable.

use crate::util::{a3ft_output, stderr, variant, write_images, write_images_from};
use std::path::Path;

/// Runs the binary; whether it succeeded, and its stderr.
fn a3ft(args: &[&str]) -> (bool, String) {
    let o = a3ft_output(args);
    (o.status.success(), stderr(&o))
}

#[test]
fn study_table_has_mean_and_sd_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, holdout, out) = (
        tmp.path().join("train"),
        tmp.path().join("holdout"),
        tmp.path().join("study"),
    );
    write_images(&train, 4);
    write_images_from(&holdout, 2, 10);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let args = [
        "study",
        "--model-config",
        &s(&variant("config.json")),
        "--checkpoint",
        &s(&variant("plain.pt")),
        "--data",
        &s(&train),
        "--holdout",
        &s(&holdout),
        "--out",
        &s(&out),
        "--methods",
        "full,a3ft",
        "--adapter-starts",
        "random,gate-bias:-4",
        "--seeds",
        "0,1",
        "--epochs",
        "2",
        "--batch-size",
        "2",
        "--eval-every",
        "1",
        "--final-samples",
        "4",
        "--final-respacing",
        "5",
        "--inception",
        "/nonexistent/inception.pt",
        "--device",
        "cpu",
    ];
    let (ok, err) = a3ft(&args);
    assert!(ok, "{err}");
    let md = std::fs::read_to_string(out.join("report/report.md")).unwrap();
    for arm in ["| full |", "| a3ft-random |", "| a3ft-gate-bias-4 |"] {
        let row = md
            .lines()
            .find(|l| l.starts_with(arm))
            .unwrap_or_else(|| panic!("no row {arm}:\n{md}"));
        // Two seeds: the held-out loss reads "mean ± sd".
        assert!(row.contains(" ± ") && row.contains("| 2 |"), "{row}");
    }
    for run in [
        "full-s0",
        "full-s1",
        "a3ft-random-s0",
        "a3ft-gate-bias-4-s1",
    ] {
        assert!(
            out.join("runs").join(run).join("final.json").exists(),
            "{run} has no final.json"
        );
    }
    assert!(out.join("report/heldout_loss.png").exists());
    // The same command again: every run is skipped, the table is the same.
    let (ok, err) = a3ft(&args);
    assert!(ok && err.matches("skipped").count() == 6, "{err}");
    assert_eq!(
        std::fs::read_to_string(out.join("report/report.md")).unwrap(),
        md
    );
    // A study stored by an earlier a3ft (arms without adapters said "random", no EMA warm-up
    // field) continues: those are not differences in what the study is.
    let spec = out.join("study.json");
    let current = std::fs::read_to_string(&spec).unwrap();
    let mut old: serde_json::Value = serde_json::from_str(&current).unwrap();
    for arm in old["arms"].as_array_mut().unwrap() {
        if arm["method"] == "full" {
            arm["adapter_start"] = "random".into();
        }
    }
    old["hyper"].as_object_mut().unwrap().remove("ema_warmup");
    std::fs::write(&spec, serde_json::to_string_pretty(&old).unwrap()).unwrap();
    let (ok, err) = a3ft(&args);
    assert!(ok && err.matches("skipped").count() == 6, "{err}");
    // --report-only rewrites the report from what is finished, training nothing.
    let mut only: Vec<&str> = args.to_vec();
    only.push("--report-only");
    let (ok, err) = a3ft(&only);
    assert!(ok && !err.contains("skipped"), "{err}");
    assert_eq!(
        std::fs::read_to_string(out.join("report/report.md")).unwrap(),
        md
    );
    // Other options into the same folder are refused.
    let mut other: Vec<&str> = args.to_vec();
    let i = other.iter().position(|a| *a == "--epochs").unwrap();
    other[i + 1] = "3";
    let (ok, err) = a3ft(&other);
    assert!(!ok && err.contains("different study"), "{err}");
    // A seed listed twice would count one run twice in the mean ± sd.
    let mut twice: Vec<&str> = args.to_vec();
    let i = twice.iter().position(|a| *a == "--seeds").unwrap();
    twice[i + 1] = "0,0";
    let (ok, err) = a3ft(&twice);
    assert!(!ok && err.contains("--seeds"), "{err}");
    // The runs were evaluated without Inception weights (as on a GPU machine they cannot travel
    // to); their samples were kept, and --report-only where the weights are adds clean-FID/KID.
    assert!(out.join("runs/full-s0/eval/final_samples.npz").exists());
    let first: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("runs/full-s0/final.json")).unwrap(),
    )
    .unwrap();
    assert!(first.get("fid_train").is_none(), "{first}");
    let with_weights: Vec<&str> = only
        .iter()
        .copied()
        .filter(|a| *a != "--inception" && *a != "/nonexistent/inception.pt")
        .collect();
    // One run's kept samples damaged: that run is named and stays unscored, the others are scored.
    let damaged = out.join("runs/a3ft-random-s1/eval/final_samples.npz");
    let kept = std::fs::read(&damaged).unwrap();
    std::fs::write(&damaged, b"not a zip").unwrap();
    let (ok, err) = a3ft(&with_weights);
    assert!(
        ok && err
            .matches("clean-FID/KID from its kept final samples")
            .count()
            == 5,
        "{err}"
    );
    assert!(err.lines().any(|l| l.contains("a3ft-random-s1 stays unscored") && l.contains("final_samples.npz")), "{err}");
    let md = std::fs::read_to_string(out.join("report/report.md")).unwrap();
    let row = md
        .lines()
        .find(|l| l.starts_with("| a3ft-random |"))
        .unwrap();
    assert!(row.contains("(1 of 2 runs)"), "{row}");
    std::fs::write(&damaged, kept).unwrap();
    let (ok, err) = a3ft(&with_weights);
    assert!(
        ok && err
            .matches("clean-FID/KID from its kept final samples")
            .count()
            == 1,
        "{err}"
    );
    let scored: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("runs/full-s0/final.json")).unwrap(),
    )
    .unwrap();
    for key in ["fid_train", "kid_train", "fid_holdout", "kid_holdout"] {
        assert!(
            scored[key].as_f64().is_some_and(f64::is_finite),
            "{key}: {scored}"
        );
    }
    // What the first evaluation measured is kept as it was.
    assert_eq!(scored["holdout_loss"], first["holdout_loss"]);
    assert_eq!(scored["memorization"], first["memorization"]);
    // Domain guidance added to the finished study: each `full` run sweeps w on the held-out
    // loss of the guided model (1 always a candidate), and the best gets its own evaluation.
    let mut guided: Vec<&str> = with_weights.to_vec();
    guided.retain(|a| *a != "--report-only");
    guided.extend(["--guidance", "0,3", "--guidance-arms", "full"]);
    let (ok, err) = a3ft(&guided);
    assert!(ok && err.matches("guidance sweep").count() == 2, "{err}");
    for seed in [0, 1] {
        let run = out.join(format!("runs/full-s{seed}"));
        let sweep: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("guidance.json")).unwrap())
                .unwrap();
        let tried: Vec<(f64, f64)> = sweep["weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["w"].as_f64().unwrap(),
                    v["holdout_loss"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            tried.iter().map(|p| p.0).collect::<Vec<_>>(),
            [1.0, 0.0, 3.0]
        );
        let best = tried.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap().0;
        assert_eq!(sweep["chosen"].as_f64(), Some(best));
        let rec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("final-guided.json")).unwrap())
                .unwrap();
        assert_eq!(rec["guidance"].as_f64(), Some(best), "{rec}");
        // The w = 1 candidate is the run itself: its held-out loss is the plain evaluation's.
        let plain: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("final.json")).unwrap())
                .unwrap();
        assert!(
            (tried[0].1 - plain["holdout_loss"].as_f64().unwrap()).abs() < 1e-9,
            "{tried:?} vs {plain}"
        );
    }
    assert!(!out.join("runs/a3ft-random-s0/guidance.json").exists());
    let md = std::fs::read_to_string(out.join("report/report.md")).unwrap();
    assert!(
        md.lines()
            .any(|l| l.starts_with("| full + guidance |") && l.contains("| 2 |")),
        "{md}"
    );
    let mut wrong = guided.clone();
    *wrong.last_mut().unwrap() = "nope";
    let (ok, err) = a3ft(&wrong);
    assert!(!ok && err.contains("--guidance-arms"), "{err}");
    // Scored once: a second report leaves the runs alone.
    let (ok, err) = a3ft(&with_weights);
    assert!(ok && !err.contains("kept final samples"), "{err}");
}

/// A signal anywhere in a guided study's sweep or its final evaluations ends the study with 143
/// (never "stays unscored" and a report with exit 0); rerun, it finishes with every guided run
/// scored.
#[test]
fn a_signal_in_the_guided_evaluation_is_no_unscored_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, holdout, out) = (
        tmp.path().join("train"),
        tmp.path().join("holdout"),
        tmp.path().join("study"),
    );
    write_images(&train, 4);
    write_images_from(&holdout, 2, 10);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let mut args = vec![
        "study".to_string(),
        "--model-config".into(),
        s(&variant("config.json")),
        "--checkpoint".into(),
        s(&variant("plain.pt")),
        "--data".into(),
        s(&train),
        "--holdout".into(),
        s(&holdout),
        "--out".into(),
        s(&out),
        "--methods".into(),
        "full".into(),
        "--seeds".into(),
        "0".into(),
        "--epochs".into(),
        "1".into(),
        "--batch-size".into(),
        "2".into(),
        "--final-samples".into(),
        "4".into(),
        "--final-respacing".into(),
        "5".into(),
        "--device".into(),
        "cpu".into(),
    ];
    let plain: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, err) = a3ft(&plain);
    assert!(ok, "{err}");
    args.extend([
        "--guidance".into(),
        "0,3".into(),
        "--guidance-arms".into(),
        "full".into(),
    ]);
    let guided: Vec<&str> = args.iter().map(String::as_str).collect();
    let stopped = crate::cli_run::signal_at_every_check(&guided, |_| {});
    assert!(stopped >= 2, "{stopped}");
    let rec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("runs/full-s0/final-guided.json")).unwrap(),
    )
    .unwrap();
    assert!(
        rec["fid_train"].as_f64().is_some_and(f64::is_finite),
        "{rec}"
    );
}

/// A finished study rerun with other options does what they say or says why not: another
/// `--guidance` list redoes each guided run's sweep and guided evaluation (the report shows the
/// new sweep's choice; `--report-only` leaves out a sweep over other weights rather than report
/// it under the new list), `--guidance-arms` adds or drops a run's guided row, and any option
/// that changes a run is refused naming the field.
#[test]
fn a_rerun_with_other_options_redoes_or_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, holdout, out) = (
        tmp.path().join("train"),
        tmp.path().join("holdout"),
        tmp.path().join("study"),
    );
    write_images(&train, 4);
    write_images_from(&holdout, 2, 10);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (config, base, train_s, holdout_s, out_s) = (
        s(&variant("config.json")),
        s(&variant("plain.pt")),
        s(&train),
        s(&holdout),
        s(&out),
    );
    let args = |guidance: &'static str, extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "study",
            "--model-config",
            &config,
            "--checkpoint",
            &base,
            "--data",
            &train_s,
            "--holdout",
            &holdout_s,
            "--out",
            &out_s,
            "--methods",
            "full,attention",
            "--seeds",
            "0",
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--final-samples",
            "4",
            "--final-respacing",
            "5",
            "--inception",
            "/nonexistent/inception.pt",
            "--device",
            "cpu",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        if !guidance.is_empty() {
            v.extend(["--guidance".to_string(), guidance.to_string()]);
        }
        v.extend(extra.iter().map(|a| a.to_string()));
        v
    };
    let go = |a: &[String]| a3ft(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let tried = |arm: &str| -> Vec<f64> {
        let sweep: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("runs/{arm}-s0/guidance.json"))).unwrap(),
        )
        .unwrap();
        sweep["weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["w"].as_f64().unwrap())
            .collect()
    };
    let report = || std::fs::read_to_string(out.join("report/report.md")).unwrap();
    let (ok, err) = go(&args("0", &["--guidance-arms", "full"]));
    assert!(ok, "{err}");
    assert_eq!(tried("full"), [1.0, 0.0]);
    // Another list: the sweep is redone over it.
    let (ok, err) = go(&args("3,0.5", &["--guidance-arms", "full"]));
    assert!(
        ok && err.contains("--guidance changed") && err.matches("guidance sweep").count() == 1,
        "{err}"
    );
    assert_eq!(tried("full"), [1.0, 3.0, 0.5]);
    let rec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("runs/full-s0/final-guided.json")).unwrap(),
    )
    .unwrap();
    let chosen = rec["guidance"].as_f64().unwrap();
    assert!([1.0, 3.0, 0.5].contains(&chosen), "{rec}");
    assert!(
        report().contains(&format!(
            "full + guidance (w = {})",
            a3ft::util::fmt_num(chosen)
        )),
        "{}",
        report()
    );
    // The same list in another order is the same sweep: nothing is redone.
    let (ok, err) = go(&args("0.5,3", &["--guidance-arms", "full"]));
    assert!(ok && !err.contains("guidance sweep"), "{err}");
    // Another arm guided: its run gets a sweep; its row appears.
    let (ok, err) = go(&args("0.5,3", &["--guidance-arms", "full,attention"]));
    assert!(ok && err.matches("guidance sweep").count() == 1, "{err}");
    assert!(
        report()
            .lines()
            .any(|l| l.starts_with("| attention + guidance |")),
        "{}",
        report()
    );
    // --report-only with a new list trains and sweeps nothing, and reports no sweep over other weights.
    let (ok, err) = go(&args("2", &["--guidance-arms", "full", "--report-only"]));
    assert!(
        ok && !err.contains("guidance sweep") && err.contains("swept other guidance weights"),
        "{err}"
    );
    assert!(
        !report()
            .lines()
            .any(|l| l.starts_with("| full + guidance |") && l.contains("| 1 |")),
        "{}",
        report()
    );
    // Options that change the runs themselves are refused, naming the field.
    for (flag, value, field) in [
        ("--final-samples", "6", "final_samples"),
        ("--lr", "0.5", "hyper.lr"),
        ("--seeds", "1", "seeds"),
    ] {
        let mut a = args("0.5,3", &["--guidance-arms", "full"]);
        if let Some(i) = a.iter().position(|x| x == flag) {
            a[i + 1] = value.to_string();
        } else {
            a.extend([flag.to_string(), value.to_string()]);
        }
        let (ok, err) = go(&a);
        assert!(
            !ok && err.contains("different study") && err.contains(field),
            "{flag}: {err}"
        );
    }
}

/// One study's arguments into `out`, with the CPU tiny model: 2 arms × 2 seeds.
fn tiny_study(train: &Path, holdout: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let mut args: Vec<String> = [
        "study",
        "--model-config",
        &s(&variant("config.json")),
        "--checkpoint",
        &s(&variant("plain.pt")),
        "--data",
        &s(train),
        "--holdout",
        &s(holdout),
        "--out",
        &s(out),
        "--methods",
        "attention,a3ft",
        "--seeds",
        "0,1",
        "--epochs",
        "2",
        "--batch-size",
        "2",
        "--eval-every",
        "1",
        "--final-samples",
        "4",
        "--final-respacing",
        "5",
        "--inception",
        "/nonexistent/inception.pt",
        "--device",
        "cpu",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

const RUNS: [&str; 4] = ["attention-s0", "attention-s1", "a3ft-s0", "a3ft-s1"];

/// What a study's processes must agree on: each run's final.json without what the training
/// cost, and the report's tables without the cost columns.
fn results(out: &Path) -> (Vec<serde_json::Value>, Vec<String>) {
    let finals = RUNS
        .iter()
        .map(|r| {
            let mut v: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(out.join("runs").join(r).join("final.json")).unwrap(),
            )
            .unwrap();
            for cost in ["train_seconds", "images_per_sec", "peak_rss_mib"] {
                v.as_object_mut().unwrap().remove(cost);
            }
            v
        })
        .collect();
    let md = std::fs::read_to_string(out.join("report/report.md")).unwrap();
    let rows = md
        .lines()
        .filter(|l| l.starts_with("| "))
        .map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            // The results table ends with train time and peak memory.
            if cells.len() == 13 {
                cells[..11].join(" | ")
            } else {
                l.to_string()
            }
        })
        .collect();
    (finals, rows)
}

/// Runs the binary in several processes at once; their outputs in order.
fn at_once(commands: Vec<Vec<String>>) -> Vec<std::process::Output> {
    let children: Vec<_> = commands
        .into_iter()
        .map(|args| std::thread::spawn(move || crate::util::a3ft(&args).output().unwrap()))
        .collect();
    children.into_iter().map(|c| c.join().unwrap()).collect()
}

#[test]
fn shards_and_workers_split_a_study_with_the_results_of_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, holdout) = (tmp.path().join("train"), tmp.path().join("holdout"));
    write_images(&train, 4);
    write_images_from(&holdout, 2, 10);
    let one = tmp.path().join("one");
    let (ok, err) = a3ft(
        &tiny_study(&train, &holdout, &one, &[])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(ok, "{err}");
    let expected = results(&one);

    for (mode, flags) in [
        ("shards", ["--shard 0/3", "--shard 1/3", "--shard 2/3"]),
        ("workers", ["--worker", "--worker", "--worker"]),
    ] {
        let out = tmp.path().join(mode);
        let outputs = at_once(
            flags
                .iter()
                .map(|f| tiny_study(&train, &holdout, &out, &f.split(' ').collect::<Vec<_>>()))
                .collect(),
        );
        let mut trained = Vec::new();
        for o in &outputs {
            assert!(o.status.success(), "{mode}: {}", stderr(o));
            trained.extend(
                stderr(o)
                    .lines()
                    .filter(|l| l.ends_with(": training") || l.ends_with(": resuming"))
                    .map(|l| l.split("] ").nth(1).unwrap().to_string()),
            );
        }
        // Every run done once, by one of the processes.
        trained.sort();
        let mut want: Vec<String> = RUNS.iter().map(|r| format!("{r}: training")).collect();
        want.sort();
        assert_eq!(trained, want, "{mode}");
        // A process wrote the report; the others said what they left to it (or wrote it again).
        let stdout: Vec<String> = outputs
            .iter()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .collect();
        assert!(
            stdout.iter().any(|s| s.starts_with("report: ")),
            "{mode}: {stdout:?}"
        );
        assert_eq!(results(&out), expected, "{mode}");
        let status = crate::util::a3ft_output(tiny_study(&train, &holdout, &out, &["--status"]));
        let text = String::from_utf8_lossy(&status.stdout);
        assert!(
            status.status.success() && text.contains("4 of 4 runs finished"),
            "{text}{}",
            stderr(&status)
        );
        assert!(
            text.contains(&format!(
                "report: {}",
                out.join("report/report.md").display()
            )) && !text.contains("older"),
            "{text}"
        );
    }

    // A worker killed mid-run: its run is taken over, resumed, and the study completes as one
    // process completes it.
    let out = tmp.path().join("killed");
    let args = tiny_study(&train, &holdout, &out, &["--worker"]);
    let mut first = crate::util::a3ft(&args).spawn().unwrap();
    let begun = || {
        RUNS.iter().any(|r| {
            out.join("runs").join(r).join("config.json").exists()
                && !out.join("runs").join(r).join("final.json").exists()
        })
    };
    let t0 = std::time::Instant::now();
    while !begun() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(300)
                && first.try_wait().unwrap().is_none(),
            "the first worker never began a run"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let status = crate::util::a3ft_output(tiny_study(&train, &holdout, &out, &["--status"]));
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("abandoned by pid"),
        "{text}{}",
        stderr(&status)
    );
    let (ok, err) = a3ft(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok && err.contains(": resuming"), "{err}");
    assert_eq!(results(&out), expected);

    // Processes of one study agree on its options; a bad share is one line naming --shard.
    let mut other = tiny_study(
        &train,
        &holdout,
        &tmp.path().join("shards"),
        &["--shard", "0/3"],
    );
    let i = other.iter().position(|a| a == "--epochs").unwrap();
    other[i + 1] = "3".into();
    let (ok, err) = a3ft(&other.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        !ok && err.contains("different study") && err.contains("epochs"),
        "{err}"
    );
    for bad in ["3/2", "0/0", "slurm", "1/x"] {
        let mut c = crate::util::a3ft(tiny_study(
            &train,
            &holdout,
            &tmp.path().join("bad"),
            &["--shard", bad],
        ));
        for v in [
            "SLURM_ARRAY_TASK_ID",
            "SLURM_ARRAY_TASK_COUNT",
            "SLURM_ARRAY_TASK_MIN",
        ] {
            c.env_remove(v);
        }
        let o = c.output().unwrap();
        crate::util::assert_clear_error(&o, "--shard", bad);
        assert!(
            !tmp.path().join("bad").exists(),
            "--shard {bad} wrote the study folder"
        );
    }
    // A Slurm array task finds its shard in the environment.
    let out = tmp.path().join("slurm");
    let mut tasks = Vec::new();
    for id in 1..=2 {
        let mut c = crate::util::a3ft(tiny_study(&train, &holdout, &out, &["--shard", "slurm"]));
        c.env("SLURM_ARRAY_TASK_ID", id.to_string())
            .env("SLURM_ARRAY_TASK_COUNT", "2")
            .env("SLURM_ARRAY_TASK_MIN", "1")
            .env("SLURM_ARRAY_TASK_STEP", "1");
        tasks.push(std::thread::spawn(move || c.output().unwrap()));
    }
    for t in tasks {
        let o = t.join().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("of 2: 2 of the study's 4 runs")
                || stderr(&o).contains("/2: 2 of the study's 4 runs"),
            "{}",
            stderr(&o)
        );
    }
    assert_eq!(results(&out), expected);
}

#[test]
fn a_claimed_run_is_left_to_its_holder_and_a_failed_one_to_the_user() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, holdout) = (tmp.path().join("train"), tmp.path().join("holdout"));
    write_images(&train, 4);
    write_images_from(&holdout, 2, 10);
    // Another process holds attention-s0 (this test, through the lock a worker would take).
    let out = tmp.path().join("held");
    std::fs::create_dir_all(out.join(".a3ft.claims")).unwrap();
    let held = a3ft::util::lock::hold(
        &out.join(".a3ft.claims/attention-s0.lock"),
        "test",
        a3ft::util::lock::Mode::Exclusive,
        false,
    )
    .unwrap()
    .unwrap();
    let worker = tiny_study(&train, &holdout, &out, &["--worker"]);
    let o = crate::util::a3ft_output(&worker);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success()
            && text.contains("1 of 4 runs are left")
            && text.contains("attention-s0: running"),
        "{text}{}",
        stderr(&o)
    );
    assert!(!out.join("runs/attention-s0").exists() && !out.join("report").exists());
    for run in &RUNS[1..] {
        assert!(
            out.join("runs").join(run).join("final.json").exists(),
            "{run}"
        );
    }
    drop(held);
    let o = crate::util::a3ft_output(&worker);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with("report: "),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("attention-s0: training") && !stderr(&o).contains("a3ft-s0: training"),
        "{}",
        stderr(&o)
    );

    // A run that fails (a3ft's adapters diverge at this rate; attention adds no module) is marked
    // and left; the others go on, and the process ends with an error naming it.
    let out = tmp.path().join("failing");
    let o = crate::util::a3ft_output(tiny_study(
        &train,
        &holdout,
        &out,
        &["--worker", "--new-lr", "1e30"],
    ));
    assert!(
        !o.status.success()
            && stderr(&o).contains("2 of the study's runs failed here (a3ft-s0, a3ft-s1)"),
        "{}",
        stderr(&o)
    );
    assert!(out.join("runs/attention-s1/final.json").exists());
    let status = crate::util::a3ft_output(tiny_study(
        &train,
        &holdout,
        &out,
        &["--status", "--new-lr", "1e30"],
    ));
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("a3ft-s0: failed (")
            && text.contains("non-finite")
            && text.contains("2 of 4 runs finished"),
        "{text}{}",
        stderr(&status)
    );
    // Another worker leaves them too, and says so.
    let o = crate::util::a3ft_output(tiny_study(
        &train,
        &holdout,
        &out,
        &["--worker", "--new-lr", "1e30"],
    ));
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("2 of 4 runs are left"),
        "{}",
        stderr(&o)
    );
}
