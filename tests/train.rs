//! Fine-tuning: frozen weights, learning, exact resume, adapter starts, export.

use crate::util::{seeded, variant};
use a3ft::model::config::ModelConfig;
use a3ft::model::methods::{apply_method, Method};
use a3ft::model::Model;
use a3ft::train::run_config::{Hyper, RunConfig};
use a3ft::train::run_dir::read_run_config;
use a3ft::train::run_model::load_run_model;
use a3ft::train::{train, TrainInputs};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Striped images (the other modules' `util::write_images` are gradients).
fn write_striped_images(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let img = image::RgbImage::from_fn(12, 10, |x, y| {
            let on = (x as usize + i) % 4 < 2 || y < 3;
            image::Rgb(if on {
                [220, (40 * i) as u8, 30]
            } else {
                [20, 60, 200 - (20 * i) as u8]
            })
        });
        img.save(dir.join(format!("img{i}.png"))).unwrap();
    }
}

fn run_config(data: &Path, method: Method, steps: u64, lr: f64) -> RunConfig {
    let mut model = ModelConfig::from_file(&variant("config.json")).unwrap();
    model.diffusion_steps = 1000;
    model.noise_schedule = "cosine".into();
    let hyper = Hyper {
        lr,
        flip: true,
        seed: 7,
        log_every: 1,
        sample_respacing: a3ft::diffusion::respace::Respacing::Ddim(5),
        sample_count: 4,
        ..Hyper::paper_defaults(4, steps)
    };
    let mut rc = RunConfig::new(model, method, data.to_path_buf(), hyper);
    rc.lora_rank = 4;
    rc.base_checkpoint =
        Some(a3ft::train::run_config::BaseCheckpoint::record(&variant("plain.pt"), None).unwrap());
    rc
}

// Every test here holds `util::seeded` for its whole body: training seeds libtorch's generator,
// and the tests compare with their own draws (bitwise resume, fixed starts).

fn go(run: &Path, config: RunConfig, resume: bool) -> a3ft::train::TrainSummary {
    train(TrainInputs {
        run_dir: run.to_path_buf(),
        config,
        device: Device::Cpu,
        resume,
        show_progress: false,
        time_limit: None,
    })
    .unwrap()
}

fn state(model: &Model) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = model
        .vs
        .variables()
        .into_iter()
        .map(|(k, t)| (k, t.detach().copy()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

#[test]
fn frozen_unchanged_trainable_changed() {
    let _seeded = seeded();
    let tmp = tempfile::tempdir().unwrap();
    write_striped_images(&tmp.path().join("data"), 4);
    let base = {
        let mut m = Model::new(
            &run_config(&tmp.path().join("data"), Method::Attention, 1, 1e-3).model,
            &Default::default(),
            Device::Cpu,
        )
        .unwrap();
        m.load_checkpoint(&variant("plain.pt"), None).unwrap();
        state(&m)
    };
    for method in [
        Method::Attention,
        Method::Residual,
        Method::A3ft,
        Method::Difffit,
    ] {
        let run = tmp.path().join(format!("run-{}", method.name()));
        go(
            &run,
            run_config(&tmp.path().join("data"), method, 4, 1e-3),
            false,
        );
        let model = load_run_model(&run, None, Device::Cpu).unwrap();
        let mut probe = load_run_model(&run, None, Device::Cpu).unwrap();
        let trainable = apply_method(&mut probe, method);
        let after = state(&model);
        let mut changed = 0;
        let mut compared = 0;
        for (name, t) in &after {
            let Some((_, b)) = base.iter().find(|(k, _)| k == name) else {
                continue;
            };
            compared += usize::from(trainable.contains(name));
            let same = t.equal(b);
            if trainable.contains(name) {
                changed += usize::from(!same);
            } else {
                assert!(same, "{method:?}: frozen tensor {name} changed");
            }
        }
        assert!(
            compared > 0 && changed > compared / 2,
            "{method:?}: only {changed} of {compared} trainable base tensors changed"
        );
    }
}

#[test]
fn loss_falls_when_overfitting() {
    let _seeded = seeded();
    let tmp = tempfile::tempdir().unwrap();
    write_striped_images(&tmp.path().join("data"), 4);
    let run = tmp.path().join("run");
    let mut cfg = run_config(&tmp.path().join("data"), Method::Full, 150, 2e-3);
    cfg.hyper.flip = false;
    go(&run, cfg, false);
    let l = losses(&run);
    let first: f64 = l[..20].iter().sum::<f64>() / 20.0;
    let last: f64 = l[l.len() - 20..].iter().sum::<f64>() / 20.0;
    assert!(
        last < 0.7 * first,
        "loss did not fall: first {first:.4}, last {last:.4}"
    );
}

#[test]
fn resume_is_bitwise_identical() {
    let _seeded = seeded();
    let tmp = tempfile::tempdir().unwrap();
    write_striped_images(&tmp.path().join("data"), 6);
    let data = tmp.path().join("data");
    let mut cfg = run_config(&data, Method::A3ft, 8, 1e-3);
    cfg.num_images = 6;
    cfg.hyper.ema = Some(0.9);
    cfg.hyper.microbatch = Some(2);
    let straight = tmp.path().join("straight");
    go(&straight, cfg.clone(), false);
    let split = tmp.path().join("split");
    let mut first = cfg.clone();
    first.hyper.total_steps = 5;
    go(&split, first, false);
    let mut rc = read_run_config(&split).unwrap();
    rc.hyper.total_steps = 8;
    go(&split, rc, true);
    let a = a3ft::io::checkpoint::load_state_dict(
        &straight.join("checkpoints/step_000008.safetensors"),
        None,
    )
    .unwrap();
    let b = a3ft::io::checkpoint::load_state_dict(
        &split.join("checkpoints/step_000008.safetensors"),
        None,
    )
    .unwrap();
    assert_eq!(a.len(), b.len());
    assert!(
        a.keys().any(|k| k.starts_with("ema."))
            && a.keys().any(|k| k.starts_with("optim.exp_avg_sq."))
    );
    for (k, v) in &a {
        assert!(
            v.equal(&b[k]),
            "resumed run differs from the uninterrupted run in {k}"
        );
    }
    assert_eq!(losses(&straight)[5..], losses(&split)[5..]);
}

fn output_change(
    config: &Path,
    checkpoint: &Path,
    start: a3ft::model::adapter::AdapterStart,
) -> f64 {
    let cfg = ModelConfig::from_file(config).unwrap();
    let mut base = Model::new(&cfg, &Default::default(), Device::Cpu).unwrap();
    base.load_checkpoint(checkpoint, None).unwrap();
    tch::manual_seed(1);
    let mut adapted = Model::new(&cfg, &Method::A3ft.extras(start, 4), Device::Cpu).unwrap();
    adapted.load_checkpoint(checkpoint, None).unwrap();
    let s = cfg.image_size;
    let x = Tensor::randn([4, 3, s, s], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[1.0f32, 250.0, 500.0, 999.0]);
    let (y0, y1) = tch::no_grad(|| {
        (
            base.unet.forward(&x, &t, None),
            adapted.unet.forward(&x, &t, None),
        )
    });
    f64::try_from((&y1 - &y0).norm() / y0.norm()).unwrap()
}

#[test]
fn adapter_starts() {
    let _seeded = seeded();
    let assets = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets");
    for (name, config, ckpt) in [
        (
            "random-weight test model",
            variant("config.json"),
            variant("plain.pt"),
        ),
        (
            "pre-trained demo source model",
            assets.join("demo-model.json"),
            assets.join("demo-source.safetensors"),
        ),
    ] {
        use a3ft::model::adapter::AdapterStart;
        let near_identity = output_change(&config, &ckpt, AdapterStart::GateBias(-4.0));
        assert!(
            near_identity < 0.01,
            "{name}: gate bias -4 changed the output by {near_identity}"
        );
        let default = output_change(&config, &ckpt, AdapterStart::Random);
        // The random start (α ≈ 0.5) acts from the first step: a clearly visible change.
        assert!(
            default > 5.0 * near_identity && default > 0.005,
            "{name}: default init changed the output by {default}"
        );
        // The zero-scale start is exactly the pre-trained network.
        let zero = output_change(&config, &ckpt, AdapterStart::ZeroScale);
        assert_eq!(
            zero, 0.0,
            "{name}: zero-scale start changed the output by {zero}"
        );
        eprintln!("{name}: relative output change at init: random {default:.4}, gate bias -4 {near_identity:.5}, zero-scale {zero}");
    }
}

#[test]
fn export_attention_run_has_official_keys() {
    let _seeded = seeded();
    let tmp = tempfile::tempdir().unwrap();
    write_striped_images(&tmp.path().join("data"), 4);
    let run = tmp.path().join("run");
    go(
        &run,
        run_config(&tmp.path().join("data"), Method::Attention, 3, 1e-3),
        false,
    );
    let model = load_run_model(&run, None, Device::Cpu).unwrap();
    let exported = a3ft::model::methods::export_state(&model);
    let out = tmp.path().join("export.pt");
    a3ft::io::pt_writer::save_pt(&out, &exported).unwrap();
    let base = a3ft::io::checkpoint::load_state_dict(&variant("plain.pt"), None).unwrap();
    let back = a3ft::io::checkpoint::load_state_dict(&out, None).unwrap();
    assert_eq!(
        back.keys().collect::<Vec<_>>(),
        base.keys().collect::<Vec<_>>()
    );
    let attention: Vec<String> = model
        .unet
        .blocks
        .attention
        .iter()
        .map(|(p, _)| format!("{p}."))
        .collect();
    let mut differing = 0;
    for (k, v) in &back {
        let same = v.equal(&base[k]);
        if attention.iter().any(|p| k.starts_with(p)) {
            differing += usize::from(!same);
        } else {
            assert!(same, "non-attention tensor {k} differs");
        }
    }
    assert!(differing > 0);
    // torch itself reads the file (the venv of `make build`).
    let py = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if py.exists() {
        let status = std::process::Command::new(py)
            .args([
                "-c",
                &format!(
                    "import torch; sd = torch.load('{}'); assert len(sd) == {}",
                    out.display(),
                    base.len()
                ),
            ])
            .status()
            .unwrap();
        assert!(status.success(), "torch.load failed on the exported file");
    }
}

#[test]
fn bad_data_folders() {
    let _seeded = seeded();
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let r = train(TrainInputs {
        run_dir: tmp.path().join("run"),
        config: run_config(&empty, Method::A3ft, 2, 1e-3),
        device: Device::Cpu,
        resume: false,
        show_progress: false,
        time_limit: None,
    });
    assert!(format!("{:#}", r.unwrap_err()).contains("contains no images"));
}

#[test]
fn non_finite_loss_stops_with_the_step() {
    let _seeded = seeded();
    let tmp = tempfile::tempdir().unwrap();
    write_striped_images(&tmp.path().join("data"), 4);
    let run = tmp.path().join("run");
    // An absurd learning rate blows the weights up within a few steps.
    let mut cfg = run_config(&tmp.path().join("data"), Method::Full, 50, 1e12);
    cfg.hyper.save_every = Some(1);
    let r = train(TrainInputs {
        run_dir: run.clone(),
        config: cfg,
        device: Device::Cpu,
        resume: false,
        show_progress: false,
        time_limit: None,
    });
    let msg = format!("{:#}", r.unwrap_err());
    assert!(msg.contains("non-finite loss at or before step"), "{msg}");
    // Every checkpoint that exists was saved before the loss went bad.
    let bad_step: u64 = msg
        .split("step ")
        .nth(1)
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (last, _) = a3ft::train::run_dir::find_checkpoint(&run, None).unwrap();
    assert!(
        last < bad_step,
        "checkpoint {last} saved at or after the bad step {bad_step}"
    );
}

/// `--epochs` counts passes over the images actually trained on (unreadable files skipped,
/// held-out share removed); `strict` travels in the run config and refuses the unreadable file;
/// the config records the parameter counts reports use.
#[test]
fn epochs_resolve_against_trained_images_and_strict_is_kept() {
    let _seeded = seeded();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_striped_images(&data, 8);
    std::fs::write(data.join("broken.png"), b"not a png").unwrap();
    let mut config = run_config(&data, Method::A3ft, 0, 1e-3);
    config.hyper.batch_size = 2;
    config.hyper.epochs = Some(2);
    config.hyper.eval.holdout_fraction = Some(0.5);
    let run = tmp.path().join("run");
    let summary = go(&run, config.clone(), false);
    // 8 readable images, 4 held out, 4 trained on: 2 steps per epoch, 2 epochs.
    assert_eq!(summary.final_step, 4);
    let stored = a3ft::train::run_dir::read_run_config(&run).unwrap();
    assert_eq!((stored.hyper.total_steps, stored.num_images), (4, 8));
    // What reports and model cards call the training data: the images trained on.
    assert_eq!(stored.num_trained_images(), 4);
    let eval = |fraction, holdout: Option<&str>| a3ft::train::run_config::EvalOptions {
        holdout_fraction: fraction,
        holdout: holdout.map(Into::into),
        ..Default::default()
    };
    for (n, fraction, held) in [
        (8, Some(0.5), 4),
        (6, Some(0.34), 2),
        (2, Some(0.01), 1),
        (2, Some(0.99), 1),
        (10, Some(0.999), 9),
        (1, Some(0.5), 0),
        (0, Some(0.5), 0),
        (8, None, 0),
        (8, Some(0.0), 0),
    ] {
        assert_eq!(
            eval(fraction, None).held_out_of(n),
            held,
            "{n} images, fraction {fraction:?}"
        );
    }
    assert_eq!(
        eval(Some(0.5), Some("elsewhere")).held_out_of(8),
        0,
        "--holdout DIR holds nothing out of --data"
    );
    let params = stored.params.expect("parameter counts stored");
    assert!(
        params.trainable > 0 && params.trainable < params.base,
        "{params:?}"
    );

    config.hyper.strict = true;
    let err = train(TrainInputs {
        run_dir: tmp.path().join("strict"),
        config,
        device: Device::Cpu,
        resume: false,
        show_progress: false,
        time_limit: None,
    })
    .expect_err("strict run must refuse the broken image");
    assert!(format!("{err:#}").contains("broken.png"), "{err:#}");
}

#[test]
fn select_keeps_the_best_evaluation_and_early_stop_stops() {
    let _seeded = seeded();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_striped_images(&data, 6);
    let run = tmp.path().join("run");
    let mut rc = run_config(&data, Method::Full, 24, 3e-3);
    rc.hyper.batch_size = 2;
    rc.hyper.eval.every_epochs = Some(2);
    rc.hyper.eval.holdout_fraction = Some(0.34);
    rc.hyper.eval.select = Some(a3ft::train::run_config::Selection::HeldoutLoss);
    rc.hyper.eval.early_stop = Some(2);
    let summary = go(&run, rc, false);
    let evals: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "eval")
        .collect();
    let best = evals
        .iter()
        .min_by(|a, b| {
            a["holdout_loss"]
                .as_f64()
                .partial_cmp(&b["holdout_loss"].as_f64())
                .unwrap()
        })
        .unwrap();
    let selected = summary.selected.expect("a selection");
    assert_eq!(Some(selected.step), best["step"].as_u64());
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("selected.json")).unwrap()).unwrap();
    assert_eq!(stored["step"].as_u64(), Some(selected.step));
    // The selected step has a checkpoint, and loading the run without a step loads it.
    let chosen = load_run_model(&run, Some(selected.step), Device::Cpu).unwrap();
    let default = load_run_model(&run, None, Device::Cpu).unwrap();
    for ((k, a), (_, b)) in state(&chosen).iter().zip(state(&default).iter()) {
        assert!(
            a.equal(b),
            "default load differs from the selected checkpoint in {k}"
        );
    }
    if summary.early_stopped {
        // Stopped after two evaluations without improvement.
        let last = evals.len() - 1;
        let best_idx = evals
            .iter()
            .position(|v| v["step"] == best["step"])
            .unwrap();
        assert_eq!(
            last - best_idx,
            2,
            "stopped {} evaluations after the best",
            last - best_idx
        );
        assert!(summary.final_step < 24);
    } else {
        assert_eq!(summary.final_step, 24);
    }
}

#[test]
fn zero_scale_start_trains_every_adapter_weight() {
    let _seeded = seeded();
    // Step 1 moves only the output scales (everything else gets zero gradient through γ = 0);
    // by step 3 every adapter tensor has moved.
    let tmp = tempfile::tempdir().unwrap();
    write_striped_images(&tmp.path().join("data"), 4);
    let run = tmp.path().join("run");
    let mut rc = run_config(&tmp.path().join("data"), Method::Adapter, 3, 1e-3);
    rc.adapter_start = a3ft::model::adapter::AdapterStart::ZeroScale;
    let init = {
        tch::manual_seed(a3ft::train::draws::step_seed(
            7,
            0,
            a3ft::train::draws::stream::INIT,
        ));
        let m = Model::new(&rc.model, &rc.extras(), Device::Cpu).unwrap();
        state(&m)
    };
    go(&run, rc, false);
    let after = state(&load_run_model(&run, None, Device::Cpu).unwrap());
    let mut moved = 0;
    for ((k, a), (_, b)) in init.iter().zip(&after) {
        if k.starts_with("adapter.") {
            assert!(!a.equal(b), "{k} did not train");
            moved += 1;
        }
    }
    assert!(moved > 0 && init.iter().any(|(k, _)| k.ends_with(".out_scale")));
}

/// A respacing of all steps means all steps in every sampler that takes one (sample grids and
/// evaluations once read an empty spec as the default "50", which a 10-step schedule refuses).
#[test]
fn all_steps_means_all_steps_in_evaluation_sampling() {
    use a3ft::diffusion::respace::Respacing;
    let mut cfg = ModelConfig::from_file(&variant("config.json")).unwrap();
    cfg.diffusion_steps = 10;
    cfg.noise_schedule = "cosine".into();
    // Random weights and noise: never between another test's seed and its draws.
    let _draws = crate::util::draws();
    let model = Model::new(&cfg, &Default::default(), Device::Cpu).unwrap();
    let imgs =
        a3ft::train::evaluate::sample_for_evaluation(&model, &Respacing::All, 2, 0, false).unwrap();
    assert_eq!(imgs.size()[0], 2);
    let e = a3ft::train::evaluate::sample_for_evaluation(
        &model,
        &Respacing::sampling_default(),
        2,
        0,
        false,
    )
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("only 10 diffusion steps"),
        "{e:#}"
    );
}
