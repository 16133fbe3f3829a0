//! The demo pipeline end to end at a tiny budget (synthetic data, three methods, evaluation,
//! report), so CI keeps `make demo` working.

use crate::util::draws;
use a3ft::study::demo::{run_demo, Budget, DemoOptions};
use tch::Device;

#[test]
fn demo_pipeline_tiny_budget() {
    // The demo trains in this process: it draws from libtorch's generator (what it asserts does
    // not depend on the draws), never during a test that holds `util::seeded`.
    let _draws = draws();
    let tmp = tempfile::tempdir().unwrap();
    let mut o = DemoOptions::new(tmp.path().to_path_buf(), Budget::Tiny, Device::Cpu);
    o.show_progress = false;
    let report = run_demo(&o).unwrap();
    let md = std::fs::read_to_string(&report).unwrap();
    for method in ["| full |", "| attention |", "| a3ft |"] {
        assert!(
            md.contains(method),
            "report lacks a row for {method}:\n{md}"
        );
    }
    // Trainable counts of the demo model: attention 184,448 and a3ft 274,784 (zero-scale start:
    // the paper's 274,080 plus γ, one per attention-block channel) of 1,828,742.
    assert!(
        md.contains("184,448") && md.contains("274,784") && md.contains("1,828,742"),
        "{md}"
    );
    let dir = report.parent().unwrap();
    for f in ["training_loss.png", "heldout_loss.png"] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    for m in ["full", "attention", "a3ft"] {
        let run = tmp
            .path()
            .join("study-tiny-synthetic/runs")
            .join(format!("{m}-s0"));
        let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        let eval = metrics
            .lines()
            .filter(|l| l.contains("\"kind\":\"eval\""))
            .next_back()
            .expect("an eval line");
        let v: serde_json::Value = serde_json::from_str(eval).unwrap();
        assert!(v["holdout_loss"].as_f64().unwrap().is_finite());
        assert!(v["memorization"]["median_distance"].as_f64().unwrap() > 0.0);
        let fin: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("final.json")).unwrap())
                .unwrap();
        assert!(fin["holdout_loss"].as_f64().unwrap().is_finite());
        assert!(
            fin["fid_train"].as_f64().unwrap().is_finite()
                && fin["fid_holdout"].as_f64().unwrap().is_finite()
        );
    }
    // The demo is a study: running it again skips the finished runs and rewrites the same table.
    let again = run_demo(&o).unwrap();
    let md2 = std::fs::read_to_string(&again).unwrap();
    let table = |m: &str| {
        m.lines()
            .filter(|l| {
                l.starts_with("| full") || l.starts_with("| attention") || l.starts_with("| a3ft")
            })
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(table(&md), table(&md2));
}
