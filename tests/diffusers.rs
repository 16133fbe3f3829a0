//! diffusers `UNet2DModel` folders: parity with diffusers 0.42.1 (goldens made by
//! scripts/make_diffusers_goldens.py), counts, every method fine-tuning, export back to a folder
//! diffusers loads (checked by diffusers itself), and bad folders as one-line errors.

use crate::util::{a3ft_output, copy_dir, draws, fixture};
use a3ft::diffusers::Folder;
use a3ft::diffusion::Diffusion;
use a3ft::model::Model;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch::{Device, Kind, Tensor};

const CONFIGS: &[&str] = &[
    "cifar10-like",
    "church-like",
    "train-unconditional-like",
    "variants",
    "no-mid",
];

/// `tests/fixtures/diffusers/<name>`: a model folder (or `variants`).
fn model_folder(name: &str) -> PathBuf {
    fixture("diffusers").join(name)
}

fn ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn npz(path: &Path) -> std::collections::HashMap<String, Tensor> {
    a3ft::io::npy::read_npz(path).unwrap().into_iter().collect()
}

/// The goldens' tolerance: 1e-4 + 1e-4·max|ref|.
fn assert_close(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.size(), want.size(), "{what}: shape");
    let (got, want) = (got.to_kind(Kind::Double), want.to_kind(Kind::Double));
    let err = f64::try_from((&got - &want).abs().max()).unwrap();
    let tol = 1e-4 + 1e-4 * f64::try_from(want.abs().max()).unwrap();
    assert!(err <= tol, "{what}: max error {err:.3e} above {tol:.3e}");
}

fn load(name: &str) -> (Model, a3ft::model::config::ModelConfig) {
    let folder = Folder::open(&model_folder(name)).unwrap();
    let cfg = folder.model_config();
    let mut model = {
        let _draws = draws();
        Model::new(&cfg, &Default::default(), Device::Cpu).unwrap()
    };
    model.load_checkpoint(&folder.weights, None).unwrap();
    (model, cfg)
}

#[test]
fn debug_step_matches_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    for name in CONFIGS {
        let f = model_folder(name);
        let out = dir.path().join(format!("{name}.npz"));
        let p = |s: &str| f.join(s).display().to_string();
        let o = a3ft_output([
            "debug",
            "step",
            "--checkpoint",
            &p(""),
            "--x0",
            &p("x0.npy"),
            "--t",
            &p("t.npy"),
            "--noise",
            &p("noise.npy"),
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
        ]);
        ok(&o, name);
        let (got, want) = (npz(&out), npz(&f.join("golden.npz")));
        for k in ["x_t", "model_output", "mse"] {
            assert_close(&got[k], &want[k], &format!("{name} {k}"));
        }
    }
}

/// Index of model timestep `ts` in a (respaced) diffusion.
fn index_of(d: &Diffusion, ts: i64) -> Tensor {
    let all = Tensor::arange(d.num_timesteps as i64, (Kind::Int64, Device::Cpu));
    let mapped = d.model_timesteps(&all);
    let i = (0..d.num_timesteps as i64)
        .find(|&i| f64::try_from(mapped.get(i)).unwrap() == ts as f64)
        .expect("timestep kept");
    Tensor::from_slice(&[i, i, i])
}

#[test]
fn ddpm_and_ddim_steps_match_diffusers() {
    for name in CONFIGS {
        let (_, cfg) = load(name);
        let g = npz(&model_folder(name).join("golden.npz"));
        let step = |prefix: &str, respacing: &str| {
            let respacing: a3ft::diffusion::respace::Respacing = respacing.parse().unwrap();
            let d = Diffusion::from_config(&cfg, Some(&respacing), Device::Cpu).unwrap();
            let ts = i64::try_from(g[&format!("{prefix}_t")].get(0)).unwrap();
            (
                d,
                index_of(
                    &Diffusion::from_config(&cfg, Some(&respacing), Device::Cpu).unwrap(),
                    ts,
                ),
            )
        };
        for (prefix, respacing) in [("ddpm", ""), ("ddpm10", "10"), ("ddpm10last", "10")] {
            let (d, t) = step(prefix, respacing);
            let k = |s: &str| &g[&format!("{prefix}_{s}")];
            let prev = d.p_sample_with(k("output"), k("sample"), &t, true, k("noise"));
            assert_close(&prev, k("prev"), &format!("{name} {prefix} step"));
        }
        for tag in ["mid", "last"] {
            let prefix = format!("ddim_{tag}");
            let (d, t) = step(&prefix, "ddim10");
            let k = |s: &str| &g[&format!("{prefix}_{s}")];
            for (eta, key) in [(0.0, "prev_eta0"), (0.5, "prev_eta05")] {
                let prev = d.ddim_sample_with(k("output"), k("sample"), &t, true, eta, k("noise"));
                assert_close(&prev, k(key), &format!("{name} {prefix} η={eta}"));
            }
        }
    }
}

fn inspect(dir: &Path, method: Option<&str>) -> serde_json::Value {
    let d = dir.display().to_string();
    let mut args = vec!["inspect", "--checkpoint", &d, "--json"];
    if let Some(m) = method {
        args.extend(["--method", m]);
    }
    let o = a3ft_output(&args);
    ok(&o, "inspect");
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn counts_equal_diffusers_and_the_adapter_design() {
    for name in CONFIGS {
        let params: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(model_folder(name).join("params.json")).unwrap(),
        )
        .unwrap();
        let v = inspect(&model_folder(name), None);
        assert_eq!(
            v["base_params"], params["params"],
            "{name}: base parameters"
        );
        // What `attention` and `residual` train, against diffusers' own Attention and
        // ResnetBlock2D modules.
        for part in ["attention", "residual"] {
            assert_eq!(
                v["params_by_part"][part], params[part],
                "{name}: {part} parameters"
            );
        }
        let (model, _) = load(name);
        assert_eq!(
            model.spec.num_params() as i64,
            v["base_params"].as_i64().unwrap(),
            "{name}: count from the config"
        );
    }
    // cifar10-like: attention at 32 channels in down_blocks.1 (2), up_blocks.1 (3) and the mid
    // block (1); time embedding 64 wide.
    let (c, e, blocks, r) = (32i64, 64i64, 6i64, 8i64);
    let attention = blocks * (2 * c + 4 * (c * c + c));
    let shared = (e * c + c) + 3 * (c * c + c) + 2 * 2 * c;
    let gate = (e * 32 + 32) + (32 * c + c) + c;
    let count = |m: &str| {
        inspect(&model_folder("cifar10-like"), Some(m))["trainable_params"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(count("attention"), attention);
    assert_eq!(count("lora"), blocks * 4 * r * 2 * c);
    assert_eq!(count("adapter"), shared + blocks * gate);
    assert_eq!(count("a3ft"), attention + shared + blocks * gate);
    assert_eq!(count("residual"), 347_264);
    assert_eq!(count("full"), 409_219);
    // `bench` times a diffusers folder's network.
    let o = a3ft_output([
        "bench",
        "train",
        "--diffusers",
        &model_folder("cifar10-like").display().to_string(),
        "--method",
        "attention",
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--json",
        "--device",
        "cpu",
    ]);
    ok(&o, "bench --diffusers");
    let v: serde_json::Value = serde_json::from_slice(
        o.stdout
            .split(|&b| b == b'\n')
            .find(|l| l.starts_with(b"{"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(v["trainable_params"].as_i64(), Some(attention));
}

fn python() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: `make test` creates the venv with diffusers",
        p.display()
    );
    p
}

fn write_larger_images(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let img = image::RgbImage::from_fn(20, 18, |x, y| {
            image::Rgb([(x * 12) as u8, (y * 14) as u8, (i * 40) as u8])
        });
        img.save(dir.join(format!("img{i}.png"))).unwrap();
    }
}

/// Every method fine-tunes a diffusers model and exports a folder that diffusers loads and runs
/// with the outputs a3ft computes. Adapter exports keep the adapter in the UNet's weights, run by
/// the folder's runtime module (`adapter_exports_run_in_diffusers_as_trained` checks every start
/// and configuration).
#[test]
fn every_method_fine_tunes_and_exports_to_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_larger_images(&data, 6);
    let base = model_folder("variants");
    let f = |p: &Path| p.display().to_string();
    for method in [
        "full",
        "attention",
        "residual",
        "lora",
        "adapter",
        "a3ft",
        "difffit",
    ] {
        let run = dir.path().join(format!("run-{method}"));
        let o = a3ft_output([
            "train",
            "--checkpoint",
            &f(&base),
            "--data",
            &f(&data),
            "--out",
            &f(&run),
            "--method",
            method,
            "--batch-size",
            "2",
            "--steps",
            "3",
            "--lr",
            "1e-3",
            "--device",
            "cpu",
        ]);
        ok(&o, method);
        let out = dir.path().join(format!("export-{method}"));
        let o = a3ft_output(["export", "--run", &f(&run), "--out", &f(&out)]);
        ok(&o, method);
        // The method trained what it names and nothing else: compare the export with the base.
        let before = a3ft::io::checkpoint::load_state_dict(
            &base.join("unet/diffusion_pytorch_model.safetensors"),
            None,
        )
        .unwrap();
        let mut after = a3ft::io::checkpoint::load_state_dict(
            &out.join("unet/diffusion_pytorch_model.safetensors"),
            None,
        )
        .unwrap();
        let adapters = matches!(method, "adapter" | "a3ft");
        let adapter_keys = after.keys().filter(|k| k.starts_with("adapter.")).count();
        assert_eq!(
            adapter_keys > 0,
            adapters,
            "{method}: {adapter_keys} adapter tensors in the weights"
        );
        after.retain(|k, _| !k.starts_with("adapter."));
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>(),
            "{method}: exported keys"
        );
        let changed: Vec<&String> = before
            .keys()
            .filter(|k| !before[*k].equal(&after[*k]))
            .collect();
        let in_attention = |k: &str| k.contains(".attentions.");
        let in_resnet = |k: &str| {
            k.contains(".resnets.")
                || k.contains("samplers.0.")
                    && !k.ends_with(".conv.weight")
                    && !k.ends_with(".conv.bias")
        };
        let projection = |k: &str| {
            in_attention(k)
                && [".to_q.", ".to_k.", ".to_v.", ".to_out.0."]
                    .iter()
                    .any(|p| k.contains(p))
                && k.ends_with(".weight")
        };
        let expect: &dyn Fn(&str) -> bool = match method {
            "full" => &|_| true,
            "attention" | "a3ft" => &in_attention,
            "residual" => &in_resnet,
            "lora" => &projection,
            // Biases, norm scales, and the layers DiffFit's γ folds into.
            "difffit" => &|k: &str| {
                k.ends_with(".bias")
                    || ["norm1.", "norm2.", "group_norm.", "conv_norm_out."]
                        .iter()
                        .any(|n| k.contains(n))
                    || k.contains(".conv2.")
                    || k.contains(".to_out.0.")
            },
            _ => &|_| false,
        };
        assert!(
            changed.iter().all(|k| expect(k)),
            "{method}: changed outside its part: {:?}",
            changed
                .iter()
                .filter(|k| !expect(k))
                .take(3)
                .collect::<Vec<_>>()
        );
        let wanted = before.keys().filter(|k| expect(k)).count();
        assert!(
            method == "adapter" || changed.len() * 2 > wanted,
            "{method}: only {} of {wanted} tensors changed",
            changed.len()
        );
        assert!(
            method != "adapter" || changed.is_empty(),
            "adapter changed {changed:?}"
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(out.join("unet/a3ft_unet.py").exists(), adapters, "{method}");
        assert!(
            !out.join(a3ft::diffusers::ADAPTER_FILE).exists(),
            "{method}"
        );
        assert_eq!(
            err.contains("trust_remote_code=True"),
            adapters,
            "{method}: {err}"
        );
        let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
        assert!(
            readme.contains(&format!("`{method}`"))
                && readme.contains("6 images")
                && readme.contains("step 3"),
            "{method}: model card: {readme}"
        );
        let debug = |folder: &Path, tag: &str| {
            let path = dir.path().join(format!("{method}-{tag}.npz"));
            let p = |s: &str| base.join(s).display().to_string();
            ok(
                &a3ft_output([
                    "debug",
                    "step",
                    "--checkpoint",
                    &f(folder),
                    "--x0",
                    &p("x0.npy"),
                    "--t",
                    &p("t.npy"),
                    "--noise",
                    &p("noise.npy"),
                    "--out",
                    &f(&path),
                    "--device",
                    "cpu",
                ]),
                tag,
            );
            path
        };
        let with_adapter = debug(&out, "a3ft");
        let ours = with_adapter.clone();
        let theirs = dir.path().join(format!("{method}-diffusers.npz"));
        if adapters {
            check_runtime(&[[
                out.clone(),
                ours.clone(),
                base.join("t.npy"),
                theirs.clone(),
            ]]);
        } else {
            let o = Command::new(python())
                .arg(
                    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                        .join("scripts/check_diffusers_export.py"),
                )
                .args([&out, &ours, &base.join("t.npy"), &theirs])
                // Local folders only: never ask the Hub.
                .env("HF_HUB_OFFLINE", "1")
                .env("HF_HUB_DISABLE_TELEMETRY", "1")
                .output()
                .unwrap();
            ok(&o, &format!("{method}: diffusers loading the export"));
        }
        let (a, b) = (&npz(&ours)["model_output"], &npz(&theirs)["model_output"]);
        assert_close(a, b, &format!("{method}: a3ft vs diffusers on the export"));
        if method == "lora" {
            // Half-precision weights (as diffusers' fp16 releases): the same model, rounded.
            let half = dir.path().join("export-lora-f16");
            ok(
                &a3ft_output([
                    "export",
                    "--run",
                    &f(&run),
                    "--out",
                    &f(&half),
                    "--dtype",
                    "f16",
                ]),
                "f16 export",
            );
            let st = std::fs::read(half.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
            let (_, meta) = safetensors::SafeTensors::read_metadata(&st).unwrap();
            assert!(
                meta.tensors()
                    .values()
                    .all(|t| t.dtype == safetensors::Dtype::F16),
                "f16 export holds other dtypes"
            );
            let g = npz(&debug(&half, "f16"));
            let diff = f64::try_from(
                (&g["model_output"] - &npz(&ours)["model_output"])
                    .abs()
                    .max(),
            )
            .unwrap();
            assert!(diff < 0.05, "f16 export differs by {diff}");
        }
        if method == "a3ft" {
            // The run and the folder sample with the scheduler's rules; eval scores the run's samples.
            for (source, respacing) in [("--checkpoint", &out), ("--run", &run)] {
                for r in ["ddim3", "4"] {
                    let s = dir
                        .path()
                        .join(format!("samples-{}-{r}", source.trim_start_matches('-')));
                    ok(
                        &a3ft_output([
                            "sample",
                            source,
                            &f(respacing),
                            "--num",
                            "2",
                            "--respacing",
                            r,
                            "--out",
                            &f(&s),
                            "--device",
                            "cpu",
                        ]),
                        "sample",
                    );
                    let pngs = std::fs::read_dir(&s)
                        .unwrap()
                        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned());
                    assert_eq!(
                        pngs.filter(|n| n.ends_with(".png") && n != a3ft::io::images::GRID_FILE)
                            .count(),
                        2,
                        "{source} {r}"
                    );
                }
            }
            // A new run cannot start from the adapters; weights with part of an adapter are refused.
            let o = a3ft_output([
                "train",
                "--checkpoint",
                &f(&out),
                "--data",
                &f(&data),
                "--out",
                &f(&dir.path().join("again")),
                "--steps",
                "1",
                "--device",
                "cpu",
            ]);
            clear_error(&o, "adapter", "train from an A³FT export");
            let partial = dir.path().join("partial");
            copy_dir(&out, &partial);
            let weights = partial.join("unet/diffusion_pytorch_model.safetensors");
            let mut state = a3ft::io::checkpoint::load_state_dict(&weights, None).unwrap();
            let dropped = state
                .keys()
                .find(|k| k.starts_with("adapter."))
                .unwrap()
                .clone();
            state.remove(&dropped);
            let kept: Vec<(String, Tensor)> = state.into_iter().collect();
            a3ft::io::checkpoint::save_safetensors(&weights, &kept, Default::default()).unwrap();
            let p = |s: &str| base.join(s).display().to_string();
            // An older export's adapter file beside weights that hold one too: which is meant?
            let both = dir.path().join("both-adapters");
            copy_dir(&out, &both);
            std::fs::write(both.join(a3ft::diffusers::ADAPTER_FILE), b"").unwrap();
            let o = a3ft_output([
                "debug",
                "step",
                "--checkpoint",
                &f(&both),
                "--x0",
                &p("x0.npy"),
                "--t",
                &p("t.npy"),
                "--noise",
                &p("noise.npy"),
                "--out",
                &f(&dir.path().join("b.npz")),
                "--device",
                "cpu",
            ]);
            clear_error(&o, "which are meant", "two adapter sources");
            let o = a3ft_output([
                "debug",
                "step",
                "--checkpoint",
                &f(&partial),
                "--x0",
                &p("x0.npy"),
                "--t",
                &p("t.npy"),
                "--noise",
                &p("noise.npy"),
                "--out",
                &f(&dir.path().join("p.npz")),
                "--device",
                "cpu",
            ]);
            clear_error(&o, &dropped, "partial adapter file");
            clear_error(
                &a3ft_output(["report", &f(&run), "--out", &f(&run.join("report"))]),
                "inside the run",
                "report into a run",
            );
            clear_error(
                &a3ft_output([
                    "report",
                    &f(&run),
                    &f(&run),
                    "--out",
                    &f(&dir.path().join("rep")),
                ]),
                "twice",
                "a run listed twice",
            );
            let o = a3ft_output([
                "eval",
                "--run",
                &f(&run),
                "--reference",
                &f(&data),
                "--num-samples",
                "4",
                "--respacing",
                "ddim3",
                "--json",
                "--device",
                "cpu",
            ]);
            ok(&o, "eval");
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert!(v["fid"].as_f64().is_some_and(f64::is_finite), "{v}");
        }
        // The export is the trained model: a3ft's run gives the same output as the folder.
        let model = {
            let _draws = draws();
            a3ft::train::run_model::load_run_model(&run, None, Device::Cpu).unwrap()
        };
        let g = npz(&with_adapter);
        let t = a3ft::io::npy::read_npy(&base.join("t.npy"))
            .unwrap()
            .to_kind(Kind::Float);
        let from_run = tch::no_grad(|| model.unet.forward(&g["x_t"], &t, None));
        assert_close(
            &from_run,
            &g["model_output"],
            &format!("{method}: run vs export"),
        );
    }
}

/// Runs scripts/check_diffusers_runtime.py on `cases` (export folder, `debug step` output, the
/// timesteps, the script's output), local files only.
fn check_runtime(cases: &[[PathBuf; 4]]) {
    let o = Command::new(python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/check_diffusers_runtime.py"))
        .args(cases.iter().flatten())
        // Local folders only: never ask the Hub.
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .output()
        .unwrap();
    ok(
        &o,
        "diffusers running the A³FT exports with their runtime module",
    );
}

/// An A³FT export runs in diffusers as trained: for `a3ft` and `adapter` with each adapter start,
/// on each test configuration, the pipeline's UNet (its runtime module loaded with
/// trust_remote_code) gives a3ft's output on the same x_t and t, and the pipeline samples a few
/// steps. Without remote code diffusers' plain UNet2DModel loads and differs: the adapter is what
/// it loses.
#[test]
fn adapter_exports_run_in_diffusers_as_trained() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_larger_images(&data, 4);
    let f = |p: &Path| p.display().to_string();
    let mut cases = Vec::new();
    for name in CONFIGS {
        let base = model_folder(name);
        let p = |s: &str| base.join(s).display().to_string();
        for method in ["a3ft", "adapter"] {
            for start in ["zero-scale", "random", "gate-bias:-1"] {
                let tag = format!("{name}-{method}-{}", start.replace(':', ""));
                let run = dir.path().join(format!("run-{tag}"));
                // A learning rate high enough that even the zero-scale start's adapter moves the
                // output well beyond the parity tolerance in three steps.
                let o = a3ft_output([
                    "train",
                    "--checkpoint",
                    &f(&base),
                    "--data",
                    &f(&data),
                    "--out",
                    &f(&run),
                    "--method",
                    method,
                    "--adapter-start",
                    start,
                    "--batch-size",
                    "2",
                    "--steps",
                    "3",
                    "--lr",
                    "2e-2",
                    "--device",
                    "cpu",
                ]);
                ok(&o, &tag);
                let out = dir.path().join(format!("export-{tag}"));
                let o = a3ft_output(["export", "--run", &f(&run), "--out", &f(&out)]);
                ok(&o, &tag);
                let err = String::from_utf8_lossy(&o.stderr);
                assert!(
                    err.contains("trust_remote_code=True")
                        && err.contains("without the time-aware adapter"),
                    "{tag}: the export's message: {err}"
                );
                let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
                assert!(
                    readme.contains("trust_remote_code=True")
                        && readme.contains("Without remote code"),
                    "{tag}: README.md: {readme}"
                );
                let debug = dir.path().join(format!("{tag}-a3ft.npz"));
                ok(
                    &a3ft_output([
                        "debug",
                        "step",
                        "--checkpoint",
                        &f(&out),
                        "--x0",
                        &p("x0.npy"),
                        "--t",
                        &p("t.npy"),
                        "--noise",
                        &p("noise.npy"),
                        "--out",
                        &f(&debug),
                        "--device",
                        "cpu",
                    ]),
                    &tag,
                );
                cases.push([
                    out,
                    debug.clone(),
                    base.join("t.npy"),
                    dir.path().join(format!("{tag}-diffusers.npz")),
                ]);
            }
        }
    }
    check_runtime(&cases);
    for [out, debug, _, theirs] in &cases {
        let tag = out.file_name().unwrap().to_string_lossy();
        let (ours, theirs) = (npz(debug), npz(theirs));
        let (a, b) = (&ours["model_output"], &theirs["model_output"]);
        assert_close(b, a, &format!("{tag}: diffusers with the runtime vs a3ft"));
        let diff = f64::try_from((b - a).abs().max()).unwrap();
        // The comparison means something only if dropping the adapter fails it.
        let lost = f64::try_from((&theirs["plain_output"] - a).abs().max()).unwrap();
        let tol = 1e-4 + 1e-4 * f64::try_from(a.abs().max()).unwrap();
        assert!(
            lost > 10.0 * tol,
            "{tag}: the adapter changes the output by only {lost:.3e} (tolerance {tol:.1e})"
        );
        eprintln!("{tag}: max |diffusers − a3ft| {diff:.2e}, without the adapter {lost:.2e}");
    }
}

fn clear_error(o: &Output, needle: &str, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{what}: succeeded");
    assert!(!err.contains("panicked"), "{what}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{what}: {err}");
    assert!(
        lines[0].contains(needle),
        "{what}: {:?} lacks {needle:?}",
        lines[0]
    );
}

/// A copy of fixture folder `base` as `dir/name`, with the JSON object in `file` changed by `f`.
fn edited_folder(
    dir: &Path,
    base: &str,
    name: &str,
    file: &str,
    f: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>),
) -> PathBuf {
    let d = dir.join(name);
    copy_dir(&model_folder(base), &d);
    let path = d.join(file);
    let mut v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
    d
}

#[test]
fn bad_folders_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let edit =
        |name: &str, file: &str, f: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
            edited_folder(dir.path(), "no-mid", name, file, f)
        };
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            edit("unknown", "unet/config.json", &|m| {
                m.insert("cross_attention_dim".into(), 8.into());
            }),
            "cross_attention_dim",
        ),
        (
            edit("fourier", "unet/config.json", &|m| {
                m.insert("time_embedding_type".into(), "fourier".into());
            }),
            "time_embedding_type",
        ),
        (
            edit("width", "unet/config.json", &|m| {
                m.insert("block_out_channels".into(), serde_json::json!([16, 48]));
            }),
            "does not match",
        ),
        (
            edit("heads", "unet/config.json", &|m| {
                m.insert("attention_head_dim".into(), 5.into());
            }),
            "attention_head_dim",
        ),
        (
            edit("threshold", "scheduler/scheduler_config.json", &|m| {
                m.insert("thresholding".into(), true.into());
            }),
            "thresholding",
        ),
        (
            edit("learned", "scheduler/scheduler_config.json", &|m| {
                m.insert("variance_type".into(), "learned_range".into());
            }),
            "out_channels",
        ),
        (
            edit("pndm", "scheduler/scheduler_config.json", &|m| {
                m.insert("_class_name".into(), "PNDMScheduler".into());
            }),
            "PNDMScheduler",
        ),
    ];
    for (d, needle) in &cases {
        clear_error(
            &a3ft_output(["inspect", "--checkpoint", &d.display().to_string()]),
            needle,
            needle,
        );
    }
    for (name, index, needle) in [
        (
            "ldm",
            serde_json::json!({"_class_name": "LDMPipeline", "unet": ["diffusers", "UNet2DModel"], "vqvae": ["diffusers", "VQModel"], "scheduler": ["diffusers", "DDIMScheduler"]}),
            "LDMPipeline",
        ),
        (
            "vae",
            serde_json::json!({"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"], "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "DDPMScheduler"]}),
            "\"vae\"",
        ),
    ] {
        let d = dir.path().join(name);
        copy_dir(&model_folder("no-mid"), &d);
        std::fs::write(d.join("model_index.json"), index.to_string()).unwrap();
        clear_error(
            &a3ft_output(["inspect", "--checkpoint", &d.display().to_string()]),
            needle,
            name,
        );
        // Its unet/ given directly belongs to the same pipeline.
        clear_error(
            &a3ft_output([
                "inspect",
                "--checkpoint",
                &d.join("unet").display().to_string(),
            ]),
            needle,
            name,
        );
    }
    let no_sched = dir.path().join("no-sched");
    copy_dir(&model_folder("no-mid"), &no_sched);
    std::fs::remove_dir_all(no_sched.join("scheduler")).unwrap();
    clear_error(
        &a3ft_output(["inspect", "--checkpoint", &no_sched.display().to_string()]),
        "scheduler",
        "no scheduler",
    );
    let no_weights = dir.path().join("no-weights");
    copy_dir(&model_folder("no-mid"), &no_weights);
    std::fs::remove_file(no_weights.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    clear_error(
        &a3ft_output(["inspect", "--checkpoint", &no_weights.display().to_string()]),
        "no weights",
        "no weights",
    );
    let not_json = dir.path().join("not-json");
    copy_dir(&model_folder("no-mid"), &not_json);
    std::fs::write(not_json.join("unet/config.json"), "{\"sample_size\": 8,").unwrap();
    clear_error(
        &a3ft_output(["inspect", "--checkpoint", &not_json.display().to_string()]),
        "not valid JSON",
        "broken JSON",
    );
    let f = model_folder("no-mid").display().to_string();
    clear_error(
        &a3ft_output(["inspect", "--checkpoint", &f, "--preset", "imagenet64"]),
        "drop --preset",
        "folder and preset",
    );
    clear_error(
        &a3ft_output(["inspect", "--checkpoint", "/nonexistent/model"]),
        "does not exist",
        "missing path",
    );
    let official = fixture("iddpm-tiny").display().to_string();
    clear_error(
        &a3ft_output(["inspect", "--checkpoint", &official]),
        "not a UNet2DModel config",
        "official model folder",
    );
    // Both the old and the new name of one tensor: which is meant?
    let both = dir.path().join("both");
    copy_dir(&model_folder("no-mid"), &both);
    let weights = both.join("unet/diffusion_pytorch_model.safetensors");
    let mut state: Vec<(String, Tensor)> = a3ft::io::checkpoint::load_state_dict(&weights, None)
        .unwrap()
        .into_iter()
        .collect();
    let q = state
        .iter()
        .find(|(k, _)| k.ends_with("attentions.0.to_q.weight"))
        .unwrap();
    state.push((q.0.replace("to_q", "query"), q.1.zeros_like()));
    a3ft::io::checkpoint::save_safetensors(&weights, &state, Default::default()).unwrap();
    clear_error(
        &a3ft_output(["inspect", "--checkpoint", &both.display().to_string()]),
        "both",
        "old and new names",
    );
    // A config far larger than its weights is refused before the network is built.
    let big = edit("big", "unet/config.json", &|m| {
        m.insert("block_out_channels".into(), serde_json::json!([1024, 2048]));
    });
    clear_error(
        &a3ft_output(["inspect", "--checkpoint", &big.display().to_string()]),
        "describes",
        "config larger than its weights",
    );
    let d = dir.path().join("imgs");
    write_larger_images(&d, 4);
    let o = a3ft_output([
        "train",
        "--checkpoint",
        &big.display().to_string(),
        "--data",
        &d.display().to_string(),
        "--out",
        &dir.path().join("big-run").display().to_string(),
        "--steps",
        "1",
        "--device",
        "cpu",
    ]);
    clear_error(&o, "describes", "training a config larger than its weights");
    // A short schedule trains with the default sampler settings (they shrink to its length).
    let short = edit("short", "scheduler/scheduler_config.json", &|m| {
        m.insert("num_train_timesteps".into(), 20.into());
    });
    let data = dir.path().join("data");
    write_larger_images(&data, 4);
    let o = a3ft_output([
        "train",
        "--checkpoint",
        &short.display().to_string(),
        "--data",
        &data.display().to_string(),
        "--out",
        &dir.path().join("short-run").display().to_string(),
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--eval-every",
        "1",
        "--eval-samples",
        "2",
        "--device",
        "cpu",
    ]);
    ok(&o, "short schedule");
    let metrics = std::fs::read_to_string(dir.path().join("short-run/metrics.jsonl")).unwrap();
    assert!(
        metrics.contains("\"eval_samples\":2"),
        "no in-loop sampling evaluation: {metrics}"
    );
    clear_error(
        &a3ft_output([
            "train",
            "--checkpoint",
            &short.display().to_string(),
            "--data",
            &data.display().to_string(),
            "--out",
            &short.join("run").display().to_string(),
            "--steps",
            "1",
            "--device",
            "cpu",
        ]),
        "overlaps",
        "run inside the model folder",
    );
    clear_error(
        &a3ft_output([
            "sample",
            "--checkpoint",
            &f,
            "--respacing",
            "1,2",
            "--num",
            "1",
            "--out",
            &dir.path().join("s").display().to_string(),
        ]),
        "one step count",
        "section respacing",
    );
    clear_error(
        &a3ft_output([
            "train",
            "--checkpoint",
            &f,
            "--data",
            &f,
            "--out",
            &dir.path().join("r").display().to_string(),
            "--noise-schedule",
            "cosine",
        ]),
        "scheduler_config.json",
        "schedule flag",
    );
}

/// Without --respacing a model samples as its pipeline would: DDIMPipeline's 50 DDIM steps for a
/// DDIM scheduler, DDPMPipeline's every step for a DDPM one.
#[test]
fn sampling_defaults_follow_the_scheduler_class() {
    let dir = tempfile::tempdir().unwrap();
    for (name, steps) in [
        ("train-unconditional-like", "50 steps"),
        ("no-mid", "200 steps"),
    ] {
        let out = dir.path().join(name);
        let o = a3ft_output([
            "sample",
            "--checkpoint",
            &model_folder(name).display().to_string(),
            "--num",
            "1",
            "--out",
            &out.display().to_string(),
            "--device",
            "cpu",
        ]);
        ok(&o, name);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(steps), "{name}: {err}");
    }
}

/// diffusers' reserved config keys: `_use_default_values` is honoured as diffusers honours it
/// (the keys it lists take `__init__`'s defaults, whatever the file says beside them), checked
/// against diffusers itself on the UNet and the scheduler; an export writes the configs as
/// diffusers reads them (no `_use_default_values`, no value it overrode); bookkeeping keys pass;
/// any other reserved key, or a list that is not one of key names, is a one-line error.
#[test]
fn reserved_config_keys_build_what_diffusers_builds() {
    let dir = tempfile::tempdir().unwrap();
    let f = |p: &Path| p.display().to_string();
    let edit =
        |name: &str, file: &str, f: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
            edited_folder(dir.path(), "cifar10-like", name, file, f)
        };
    // The file's own (non-default) values listed as defaulted: diffusers builds
    // flip_sin_to_cos = true, freq_shift = 0, norm_eps = 1e-5 instead.
    let defaulted = edit("defaulted", "unet/config.json", &|m| {
        m.insert(
            "_use_default_values".into(),
            serde_json::json!(["flip_sin_to_cos", "freq_shift", "norm_eps"]),
        );
        m.insert("_name_or_path".into(), "some/model".into());
        m.insert("_commit_hash".into(), "0123abcd".into());
    });
    let base = model_folder("cifar10-like");
    let p = |s: &str| base.join(s).display().to_string();
    let ours = dir.path().join("ours.npz");
    ok(
        &a3ft_output([
            "debug",
            "step",
            "--checkpoint",
            &f(&defaulted),
            "--x0",
            &p("x0.npy"),
            "--t",
            &p("t.npy"),
            "--noise",
            &p("noise.npy"),
            "--out",
            &f(&ours),
            "--device",
            "cpu",
        ]),
        "debug step",
    );
    let theirs = dir.path().join("theirs.npz");
    let script = "import sys, numpy as np, torch\n\
from diffusers import UNet2DModel, DDPMScheduler\n\
folder, debug, t, out, sched = sys.argv[1:]\n\
u = UNet2DModel.from_pretrained(folder, subfolder='unet').eval()\n\
s = DDPMScheduler.from_pretrained(sched, subfolder='scheduler')\n\
x, t = torch.from_numpy(np.load(debug)['x_t']), torch.from_numpy(np.load(t))\n\
with torch.no_grad():\n    y = u(x, t).sample\n\
np.savez(out, model_output=y.numpy(), betas=s.betas.double().numpy())\n";
    let run_py = |folder: &Path, sched: &Path, debug: &Path, out: &Path| {
        let o = Command::new(python())
            .args([
                "-c",
                script,
                &f(folder),
                &f(debug),
                &p("t.npy"),
                &f(out),
                &f(sched),
            ])
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_HUB_DISABLE_TELEMETRY", "1")
            .output()
            .unwrap();
        ok(&o, "diffusers on the edited folder");
    };
    run_py(&defaulted, &defaulted, &ours, &theirs);
    let (a, b) = (npz(&ours), npz(&theirs));
    assert_close(
        &a["model_output"],
        &b["model_output"],
        "a3ft vs diffusers with _use_default_values",
    );
    // The edit matters: the file's own values give another output.
    let golden = npz(&base.join("golden.npz"));
    let diff = f64::try_from((&a["model_output"] - &golden["model_output"]).abs().max()).unwrap();
    assert!(diff > 1e-3, "_use_default_values changed nothing ({diff})");

    // The scheduler: a listed beta_end is diffusers' default 0.02 (the training noise a3ft adds).
    let sched = edit("sched", "scheduler/scheduler_config.json", &|m| {
        m.insert("beta_end".into(), 0.5.into());
        m.insert(
            "_use_default_values".into(),
            serde_json::json!(["beta_end"]),
        );
    });
    let sched_out = dir.path().join("sched.npz");
    ok(
        &a3ft_output([
            "debug",
            "step",
            "--checkpoint",
            &f(&sched),
            "--x0",
            &p("x0.npy"),
            "--t",
            &p("t.npy"),
            "--noise",
            &p("noise.npy"),
            "--out",
            &f(&sched_out),
            "--device",
            "cpu",
        ]),
        "debug step (scheduler)",
    );
    let sched_theirs = dir.path().join("sched-theirs.npz");
    run_py(&sched, &sched, &sched_out, &sched_theirs);
    // The fixture's own beta_end is the default: diffusers ends its schedule there, and a3ft
    // noises x_0 exactly as it does for the unedited folder.
    let last = f64::try_from(npz(&sched_theirs)["betas"].max()).unwrap();
    assert!((last - 0.02).abs() < 1e-9, "diffusers' last beta {last}");
    assert_close(
        &npz(&sched_out)["x_t"],
        &golden["x_t"],
        "x_t with beta_end defaulted",
    );

    // An export writes what diffusers reads, not the list.
    let data = dir.path().join("data");
    write_larger_images(&data, 2);
    let run = dir.path().join("run");
    ok(
        &a3ft_output([
            "train",
            "--checkpoint",
            &f(&defaulted),
            "--data",
            &f(&data),
            "--out",
            &f(&run),
            "--method",
            "attention",
            "--batch-size",
            "2",
            "--steps",
            "1",
            "--device",
            "cpu",
        ]),
        "train",
    );
    let out = dir.path().join("export");
    ok(
        &a3ft_output(["export", "--run", &f(&run), "--out", &f(&out)]),
        "export",
    );
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("unet/config.json")).unwrap())
            .unwrap();
    for k in [
        "_use_default_values",
        "flip_sin_to_cos",
        "freq_shift",
        "norm_eps",
    ] {
        assert!(
            written.get(k).is_none(),
            "the export's config holds {k}: {written}"
        );
    }

    // Other reserved keys and malformed lists: refused, naming the key.
    for (name, file, key, value, needle) in [
        (
            "unknown-unet",
            "unet/config.json",
            "_quantization",
            serde_json::json!({"bits": 4}),
            "\"_quantization\"",
        ),
        (
            "unknown-sched",
            "scheduler/scheduler_config.json",
            "_compatibles",
            serde_json::json!(["DDIMScheduler"]),
            "\"_compatibles\"",
        ),
        (
            "string-list",
            "unet/config.json",
            "_use_default_values",
            serde_json::json!("norm_eps"),
            "list of key names",
        ),
        (
            "null-list",
            "scheduler/scheduler_config.json",
            "_use_default_values",
            serde_json::Value::Null,
            "list of key names",
        ),
        (
            "reserved-listed",
            "unet/config.json",
            "_use_default_values",
            serde_json::json!(["_class_name"]),
            "reserved key",
        ),
    ] {
        let d = edit(name, file, &|m| {
            m.insert(key.into(), value.clone());
        });
        clear_error(
            &a3ft_output(["inspect", "--checkpoint", &f(&d)]),
            needle,
            name,
        );
    }
}

/// Runs `a3ft args`, killed (and the test failed) if it is still running after a minute: what
/// a FIFO under a file's name would otherwise make of a read.
fn a3ft_within_a_minute(args: &[&str]) -> Output {
    let mut child = crate::util::a3ft(args).spawn().unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > std::time::Duration::from_secs(60) {
            let _ = child.kill();
            panic!("a3ft {args:?} still running after a minute");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string path; mkfifo only creates the node.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {}",
        path.display()
    );
}

/// Every file a3ft reads from a base folder goes through one bounded regular-file reader: the
/// model card's README.md as a FIFO or an endless device gives an export without a licence
/// (never a hang or gigabytes of memory), its licence is found in CRLF front matter behind a
/// byte order mark; a config, scheduler config or weights file that is a FIFO or a device is a
/// one-line error naming it.
#[test]
fn base_folder_files_are_read_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let f = |p: &Path| p.display().to_string();
    let base = dir.path().join("base");
    copy_dir(&model_folder("no-mid"), &base);
    let data = dir.path().join("data");
    write_larger_images(&data, 2);
    let run = dir.path().join("run");
    ok(
        &a3ft_output([
            "train",
            "--checkpoint",
            &f(&base),
            "--data",
            &f(&data),
            "--out",
            &f(&run),
            "--method",
            "attention",
            "--batch-size",
            "2",
            "--steps",
            "1",
            "--device",
            "cpu",
        ]),
        "train",
    );
    let readme = base.join("README.md");
    let export = |tag: &str| {
        let out = dir.path().join(format!("export-{tag}"));
        let o = a3ft_within_a_minute(&["export", "--run", &f(&run), "--out", &f(&out)]);
        ok(&o, tag);
        std::fs::read_to_string(out.join("README.md")).unwrap()
    };
    std::fs::write(
        &readme,
        "\u{feff}---\r\nlicense: apache-2.0\r\ntags:\r\n- x\r\n---\r\n# A model\r\n",
    )
    .unwrap();
    assert!(
        export("crlf-bom").contains("license: apache-2.0"),
        "licence lost behind CRLF and a BOM"
    );
    std::fs::write(&readme, "---\nlicense: mit\n---\n").unwrap();
    assert!(export("plain").contains("license: mit"));
    mkfifo(&readme);
    assert!(export("fifo").contains("not recorded"), "a FIFO README");
    std::fs::remove_file(&readme).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &readme).unwrap();
    assert!(
        export("dev-zero").contains("not recorded"),
        "an endless README"
    );
    std::fs::remove_file(&readme).unwrap();

    for file in [
        "unet/config.json",
        "scheduler/scheduler_config.json",
        "unet/diffusion_pytorch_model.safetensors",
    ] {
        for special in ["fifo", "device"] {
            let d = dir
                .path()
                .join(format!("{}-{special}", file.replace('/', "-")));
            copy_dir(&model_folder("no-mid"), &d);
            let path = d.join(file);
            match special {
                "fifo" => mkfifo(&path),
                _ => {
                    std::fs::remove_file(&path).unwrap();
                    std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
                }
            }
            let o = a3ft_within_a_minute(&["inspect", "--checkpoint", &f(&d)]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                !o.status.success() && !err.contains("panicked"),
                "{file} as a {special}: {err}"
            );
            let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
            assert_eq!(lines.len(), 1, "{file} as a {special}: {err}");
            assert!(
                lines[0].contains(file.rsplit('/').next().unwrap()),
                "{file} as a {special}: {}",
                lines[0]
            );
        }
    }
}

/// Paths from the user become text in the export's model card, never Markdown or Python: an
/// `--out` and a data folder named with newlines, backticks, `|` and quotes leave the card's
/// headings, table and code blocks as a3ft wrote them, and the loading example still parses as
/// Python naming the folder exactly.
#[test]
fn user_paths_in_a_model_card_stay_text() {
    let dir = tempfile::tempdir().unwrap();
    let f = |p: &Path| p.display().to_string();
    let base = dir.path().join("base");
    copy_dir(&model_folder("no-mid"), &base);
    let data = dir.path().join("data |x| `y`\n# data");
    write_larger_images(&data, 2);
    let run = dir.path().join("run");
    ok(
        &a3ft_output([
            "train",
            "--checkpoint",
            &f(&base),
            "--data",
            &f(&data),
            "--out",
            &f(&run),
            "--method",
            "attention",
            "--batch-size",
            "2",
            "--steps",
            "1",
            "--device",
            "cpu",
        ]),
        "train",
    );
    let out = dir.path().join("out\n# injected\n```\nprint(\"x\") \\ '");
    ok(
        &a3ft_within_a_minute(&["export", "--run", &f(&run), "--out", &f(&out)]),
        "export",
    );
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        !card.lines().any(|l| l.starts_with("# injected")
            || l.starts_with("# data")
            || l == "print(\"x\") \\ '"),
        "{card}"
    );
    let headings: Vec<&str> = card.lines().filter(|l| l.starts_with('#')).collect();
    assert_eq!(
        headings,
        ["# Attention-only fine-tune of base", "## Loading"],
        "{card}"
    );
    // Every table row has the table's two cells.
    for row in card.lines().filter(|l| l.starts_with('|')) {
        let cells = row.replace("\\|", "").matches('|').count();
        assert_eq!(cells, 3, "{row}");
    }
    // The Python of the example names the folder exactly.
    let code: String = card
        .split("```python\n")
        .nth(1)
        .unwrap()
        .split("\n```")
        .next()
        .unwrap()
        .to_string();
    let call = code
        .lines()
        .find(|l| l.contains("from_pretrained("))
        .unwrap();
    let literal = call
        .split("from_pretrained(")
        .nth(1)
        .unwrap()
        .trim_end_matches(')');
    let o = std::process::Command::new(python())
        .args(["-c", &format!("import sys; sys.stdout.write({literal})")])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{literal}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), f(&out));
}
