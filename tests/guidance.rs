//! DiffFit (γ folded into exports the official code and diffusers load unchanged) and domain
//! guidance (w = 1 is the run, w = 0 its base, between the mix of two separate passes).

use crate::util::{a3ft_output, draws, fixture, seeded, variant, write_images};
use a3ft::model::Model;
use a3ft::train::run_dir::RunDir;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn f(p: &Path) -> String {
    p.display().to_string()
}

/// Trains `method` for 3 steps at a high learning rate (so every trained tensor moves) from
/// `base` (`--model-config config` for an official checkpoint).
fn train(dir: &Path, method: &str, base: &Path, config: Option<&Path>) -> PathBuf {
    let data = dir.join("data");
    if !data.exists() {
        write_images(&data, 4);
    }
    let run = dir.join(format!("run-{method}"));
    let mut args = vec![
        "train".to_string(),
        "--checkpoint".into(),
        f(base),
        "--data".into(),
        f(&data),
        "--out".into(),
        f(&run),
    ];
    if let Some(c) = config {
        args.extend(["--model-config".into(), f(c)]);
    }
    args.extend(
        [
            "--method",
            method,
            "--batch-size",
            "2",
            "--steps",
            "3",
            "--lr",
            "1e-2",
            "--device",
            "cpu",
        ]
        .map(String::from),
    );
    // --new-lr only where the method adds modules (`train` refuses it elsewhere: it would do nothing).
    if !matches!(method, "full" | "attention" | "residual") {
        args.extend(["--new-lr".to_string(), "5e-2".to_string()]);
    }
    let o = a3ft_output(&args);
    assert!(
        o.status.success(),
        "{method}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    run
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from((a - b).abs().max()).unwrap()
}

#[test]
fn difffit_gamma_folds_into_the_exported_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (config, base) = (variant("config.json"), variant("plain.pt"));
    let run = train(dir.path(), "difffit", &base, Some(&config));
    let _draws = draws();
    let trained = a3ft::train::run_model::load(&RunDir::new(&run), None, Device::Cpu).unwrap();
    let vars = trained.vs.variables();
    let gammas: Vec<&String> = vars.keys().filter(|k| k.starts_with("difffit.")).collect();
    // One γ per ResBlock and attention block.
    assert_eq!(
        gammas.len(),
        trained.unet.blocks.residual.len() + trained.unet.blocks.attention.len()
    );
    assert!(
        gammas
            .iter()
            .all(|k| vars[*k].ne(1.0).any().int64_value(&[]) == 1),
        "a γ stayed at 1"
    );
    let cfg = a3ft::train::run_dir::read_run_config(&run).unwrap().model;
    let x = Tensor::randn(
        [2, 3, cfg.image_size, cfg.image_size],
        (Kind::Float, Device::Cpu),
    );
    let t = Tensor::from_slice(&[3.0f32, 70.0]);
    let out = |m: &Model| tch::no_grad(|| m.unet.forward(&x, &t, None));
    let want = out(&trained);
    let base_state = a3ft::io::checkpoint::load_state_dict(&base, None).unwrap();
    for ext in ["pt", "safetensors"] {
        let file = dir.path().join(format!("export.{ext}"));
        let o = a3ft_output(["export", "--run", &f(&run), "--out", &f(&file)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let state = a3ft::io::checkpoint::load_state_dict(&file, None).unwrap();
        // The official key set, nothing more: the official code loads it as it is.
        assert_eq!(
            state.keys().collect::<Vec<_>>(),
            base_state.keys().collect::<Vec<_>>(),
            "{ext}: keys"
        );
        // Frozen: every weight but the norms' scales and the layers γ folds into.
        for (k, v) in &state {
            let folded = k.contains("out_layers.3.") || k.contains("proj_out.");
            if !k.ends_with(".bias") && v.dim() > 1 && !folded {
                assert!(v.equal(&base_state[k]), "{ext}: frozen {k} changed");
            }
        }
        let plain =
            Model::from_state(&cfg, &Default::default(), &state, "export", Device::Cpu).unwrap();
        let diff = max_diff(&out(&plain), &want);
        assert!(
            diff < 1e-5,
            "{ext}: the folded export differs from the run by {diff}"
        );
    }
    // Without the fold the same tensors are another model.
    let mut unfolded = std::collections::HashMap::new();
    for (k, v) in &vars {
        if !k.starts_with("difffit.") {
            unfolded.insert(k.clone(), v.detach().copy());
        }
    }
    let plain = Model::from_state(
        &cfg,
        &Default::default(),
        &unfolded.into_iter().collect(),
        "unfolded",
        Device::Cpu,
    )
    .unwrap();
    assert!(max_diff(&out(&plain), &want) > 1e-4, "γ changed nothing");
}

/// The guided output against two separate models: the base checkpoint and the run.
fn check_mix(run: &Path, base: &Model, what: &str) {
    let rd = RunDir::new(run);
    let ft = a3ft::train::run_model::load(&rd, None, Device::Cpu).unwrap();
    let s = ft.config.image_size;
    let x = Tensor::randn([2, 3, s, s], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[5.0f32, 60.0]);
    let (e_ft, e_src) = tch::no_grad(|| {
        (
            ft.unet.forward(&x, &t, None),
            base.unet.forward(&x, &t, None),
        )
    });
    assert!(
        max_diff(&e_ft, &e_src) > 1e-4,
        "{what}: the run equals its base"
    );
    for w in [0.0, 0.5, 2.0] {
        let g = a3ft::train::run_model::load_guided(&rd, None, Device::Cpu, Some(w)).unwrap();
        let got = tch::no_grad(|| g.denoise(&x, &t));
        let eps = &e_src.narrow(1, 0, 3) + (e_ft.narrow(1, 0, 3) - e_src.narrow(1, 0, 3)) * w;
        let want = if e_ft.size()[1] > 3 {
            Tensor::cat(&[eps, e_ft.narrow(1, 3, e_ft.size()[1] - 3)], 1)
        } else {
            eps
        };
        let d = max_diff(&got, &want);
        assert!(
            d < 1e-5,
            "{what} w = {w}: guided output differs from the mix of two passes by {d}"
        );
        if w == 0.0 {
            assert!(
                got.narrow(1, 0, 3).equal(&e_src.narrow(1, 0, 3)),
                "{what}: w = 0 is not the base's prediction"
            );
        }
        // The network is the run again afterwards.
        assert!(
            tch::no_grad(|| g.unet.forward(&x, &t, None)).equal(&e_ft),
            "{what} w = {w}: the run's tensors were not put back"
        );
    }
    let one = a3ft::train::run_model::load_guided(&rd, None, Device::Cpu, Some(1.0)).unwrap();
    assert!(
        one.guidance.is_none() && tch::no_grad(|| one.denoise(&x, &t)).equal(&e_ft),
        "{what}: w = 1 is not the run"
    );
}

#[test]
fn domain_guidance_is_the_mix_of_source_and_fine_tuned() {
    let dir = tempfile::tempdir().unwrap();
    let (config, base_file) = (variant("config.json"), variant("plain.pt"));
    let runs: Vec<(&str, PathBuf)> = ["full", "a3ft", "lora", "difffit", "attention"]
        .iter()
        .map(|m| (*m, train(dir.path(), m, &base_file, Some(&config))))
        .collect();
    // Sampling below seeds the generator and compares the draws: the generator is this test's alone.
    let _seeded = seeded();
    let cfg = a3ft::train::run_dir::read_run_config(&runs[0].1)
        .unwrap()
        .model;
    let base = Model::from_checkpoint(
        &cfg,
        &Default::default(),
        &base_file,
        None,
        None,
        Device::Cpu,
    )
    .unwrap();
    for (m, run) in &runs {
        check_mix(run, &base, m);
    }
    // Sampling: w = 1 is the run's sampling bitwise; a guided sampler is another.
    let rd = RunDir::new(&runs[1].1);
    let five = a3ft::diffusion::respace::Respacing::steps(5);
    let d = a3ft::diffusion::Diffusion::from_config(&cfg, Some(&five), Device::Cpu).unwrap();
    let sample = |m: &Model| m.sample_images(&d, 3, 3, five.sampler(), 7, false).unwrap();
    let plain = sample(&a3ft::train::run_model::load(&rd, None, Device::Cpu).unwrap());
    assert!(sample(
        &a3ft::train::run_model::load_guided(&rd, None, Device::Cpu, Some(1.0)).unwrap()
    )
    .equal(&plain));
    assert!(!sample(
        &a3ft::train::run_model::load_guided(&rd, None, Device::Cpu, Some(3.0)).unwrap()
    )
    .equal(&plain));
}

/// A diffusers model with a fixed variance: sampling a run at w = 0 is sampling its base folder.
#[test]
fn guidance_zero_samples_the_base_model() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("diffusers").join("cifar10-like");
    for method in ["a3ft", "difffit", "lora"] {
        let run = train(dir.path(), method, &base, None);
        {
            let _draws = draws();
            check_mix(
                &run,
                &{
                    let folder = a3ft::diffusers::Folder::open(&base).unwrap();
                    let mut m =
                        Model::new(&folder.model_config(), &Default::default(), Device::Cpu)
                            .unwrap();
                    m.load_checkpoint(&folder.weights, None).unwrap();
                    m
                },
                method,
            );
        }
        let sample = |args: &[&str], out: &str| {
            let out = dir.path().join(format!("{method}-{out}"));
            let mut all = vec![
                "sample",
                "--num",
                "2",
                "--respacing",
                "4",
                "--seed",
                "3",
                "--device",
                "cpu",
                "--out",
            ];
            let o = f(&out);
            all.push(&o);
            all.extend(args);
            let r = a3ft_output(&all);
            assert!(
                r.status.success(),
                "{method}: {}",
                String::from_utf8_lossy(&r.stderr)
            );
            (0..2)
                .map(|i| std::fs::read(out.join(format!("{i:06}.png"))).unwrap())
                .collect::<Vec<_>>()
        };
        let (r, b) = (f(&run), f(&base));
        let from_base = sample(&["--checkpoint", &b], "base");
        assert_eq!(
            sample(&["--run", &r, "--guidance", "0"], "w0"),
            from_base,
            "{method}: w = 0 differs from the base"
        );
        assert_ne!(
            sample(&["--run", &r], "run"),
            from_base,
            "{method}: the run samples as its base"
        );
    }
    // A run from scratch has no source; weights out of range are refused.
    let o = a3ft_output([
        "sample",
        "--run",
        &f(&dir.path().join("run-a3ft")),
        "--guidance",
        "nan",
        "--out",
        &f(&dir.path().join("x")),
    ]);
    crate::util::assert_clear_error(&o, "--guidance", "NaN weight");
}
