//! Checkpoint file variants and broken files (tests/fixtures/variants, made by
//! scripts/make_checkpoint_variants.py), and the preset parameter accounting.

use crate::util::{a3ft_output, draws, variant};
use a3ft::io::checkpoint::load_state_dict;
use a3ft::model::config::ModelConfig;
use a3ft::model::methods::{param_report, Method};
use a3ft::model::Model;
use tch::Device;

fn model() -> Model {
    let cfg = ModelConfig::from_file(&variant("config.json")).unwrap();
    let _draws = draws();
    Model::new(&cfg, &Default::default(), Device::Cpu).unwrap()
}

fn err_of(file: &str, key: Option<&str>) -> String {
    let mut m = model();
    format!("{:#}", m.load_checkpoint(&variant(file), key).unwrap_err())
}

#[test]
fn every_variant_loads_the_same_tensors() {
    let reference = load_state_dict(&variant("plain.pt"), None).unwrap();
    assert_eq!(reference.len(), 88);
    for (file, key) in [
        ("parameters.pt", None),
        ("shared_storage.pt", None),
        ("legacy.pt", None),
        ("file_object.pt", None),
        ("nested.pt", Some("state_dict")),
        ("bf16.pt", None),
    ] {
        let state =
            load_state_dict(&variant(file), key).unwrap_or_else(|e| panic!("{file}: {e:#}"));
        assert_eq!(state.len(), reference.len(), "{file}");
        for (k, v) in &reference {
            let got = state
                .get(k)
                .unwrap_or_else(|| panic!("{file}: missing {k}"));
            assert_eq!(got.size(), v.size(), "{file} {k}");
            let err = f64::try_from((got - v).abs().max()).unwrap();
            let tol = if file == "bf16.pt" {
                1e-2 * (1.0 + f64::try_from(v.abs().max()).unwrap())
            } else {
                0.0
            };
            assert!(err <= tol, "{file} {k}: {err}");
        }
        let mut m = model();
        m.load_state(&state, file).unwrap();
    }
}

#[test]
fn broken_files_give_clear_errors() {
    assert!(err_of("truncated.pt", None).contains("truncated.pt"));
    assert!(
        err_of("garbage.pt", None).contains("not a PyTorch"),
        "{}",
        err_of("garbage.pt", None)
    );
    assert!(err_of("empty.pt", None).contains("empty"));
    assert!(err_of("missing.pt", None).contains("cannot read checkpoint file"));
    assert!(err_of("nested.pt", None).len() > 10);
    assert!(err_of("plain.pt", Some("nope")).contains("plain.pt"));
    let e = err_of("bomb.pt", None);
    assert!(
        e.contains("bomb.pt") && e.contains("decompression bomb"),
        "{e}"
    );
    let e = err_of("malicious.pt", None);
    assert!(
        !std::path::Path::new("/tmp/a3ft-pwned").exists(),
        "pickle code was executed"
    );
    assert!(e.contains("malicious.pt"), "{e}");
}

#[test]
fn mismatches_are_reported_together() {
    let e = err_of("mismatched.pt", None);
    assert!(
        e.contains("1 missing, 1 unexpected, 1 shape mismatches"),
        "{e}"
    );
    assert!(e.contains("out.2.bias [6]"), "{e}");
    assert!(e.contains("extra.weight [3]"), "{e}");
    assert!(
        e.contains("time_embed.0.weight: checkpoint [5, 5] vs model [128, 32]"),
        "{e}"
    );
}

#[test]
fn wrong_config_for_checkpoint() {
    let cfg = ModelConfig {
        image_size: 8,
        num_channels: 64,
        channel_mult: vec![1.0],
        attention_resolutions: vec![8.0],
        ..Default::default()
    };
    let mut m = {
        let _draws = draws();
        Model::new(&cfg, &Default::default(), Device::Cpu).unwrap()
    };
    let e = format!(
        "{:#}",
        m.load_checkpoint(&variant("plain.pt"), None).unwrap_err()
    );
    assert!(e.contains("does not match the model config"), "{e}");
}

fn preset_report(name: &str, method: Option<Method>) -> a3ft::model::methods::ParamReport {
    let cfg = ModelConfig::preset(name).unwrap();
    // The paper's adapter (random start): the counts of docs/design/adapter.md's table.
    let extras = method
        .map(|m| m.extras(a3ft::model::adapter::AdapterStart::Random, 8))
        .unwrap_or_default();
    let m = {
        let _draws = draws();
        Model::new(&cfg, &extras, Device::Cpu).unwrap()
    };
    param_report(&m, method)
}

#[test]
fn preset_counts() {
    let r = preset_report("imagenet64", None);
    assert_eq!(
        (r.total_params, r.num_keys, r.attention_blocks, r.res_blocks),
        (121_063_942, 450, 15, 30)
    );
    assert_eq!(r.params_by_part["attention"], 12_558_080);
    assert_eq!(r.params_by_part["residual"], 101_823_872);
    assert_eq!(r.params_by_part["other"], 6_681_990);
    let r = preset_report("ffhq256", None);
    assert_eq!(
        (r.total_params, r.num_keys, r.attention_blocks, r.res_blocks),
        (93_563_910, 362, 4, 30)
    );
    assert_eq!(r.params_by_part["attention"], 4_206_592);
    assert_eq!(r.params_by_part["residual"], 89_017_856);
}

#[test]
fn method_trainable_counts() {
    for (m, n) in [
        (Method::Full, 121_063_942),
        (Method::Attention, 12_558_080),
        (Method::Residual, 101_823_872),
        (Method::Adapter, 2_164_832),
        (Method::A3ft, 14_722_912),
    ] {
        assert_eq!(
            preset_report("imagenet64", Some(m)).trainable_params,
            Some(n),
            "{m:?}"
        );
    }
    // The default zero-scale start adds one output scale γ per channel of each attention block
    // (7 blocks of 384 channels, 8 of 512).
    let cfg = ModelConfig::preset("imagenet64").unwrap();
    let m = {
        let _draws = draws();
        Model::new(
            &cfg,
            &Method::A3ft.extras(Default::default(), 8),
            Device::Cpu,
        )
        .unwrap()
    };
    assert_eq!(
        param_report(&m, Some(Method::A3ft)).trainable_params,
        Some(14_722_912 + 7 * 384 + 8 * 512)
    );
    let r = preset_report("imagenet64", Some(Method::A3ft));
    let t = r.trainable_by_part.unwrap();
    assert_eq!(t["adapter_fusion_cross_attention"], 642_048 + 1_052_672);
    assert_eq!(t["adapter_time_scaling"], 470_112);
    // LoRA rank 8 on qkv (C→3C) and proj_out (C→C): 8·(C+3C) + 8·(C+C) = 48·C per block.
    let lora = preset_report("imagenet64", Some(Method::Lora))
        .trainable_params
        .unwrap();
    assert_eq!(lora, 48 * (7 * 384 + 8 * 512));
    // DiffFit, counted on the official improved-diffusion model (`create_model` with these
    // flags): its 1-D parameters are its 108,038 biases and 31,616 GroupNorm scales; γ adds one
    // scale per output channel of each of the 30 ResBlocks (9,984) and 15 attention blocks (6,784).
    let r = preset_report("imagenet64", Some(Method::Difffit));
    assert_eq!(r.trainable_params, Some(108_038 + 31_616 + 9_984 + 6_784));
    assert_eq!(r.trainable_by_part.unwrap()["difffit_gamma"], 9_984 + 6_784);
}

/// An `a3ft` run exported for the official code (.pt and .safetensors) keeps its adapter under
/// `adapter.`: the export says how to run it, and a3ft loads such a file with the adapter, giving
/// the run's outputs (without the adapter tensors they differ).
#[test]
fn official_exports_of_a3ft_runs_run_with_their_adapter() {
    use tch::{Kind, Tensor};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..4u32 {
        image::RgbImage::from_fn(10, 9, |x, y| {
            image::Rgb([(x * 20) as u8, (y * 25) as u8, (i * 60) as u8])
        })
        .save(data.join(format!("{i}.png")))
        .unwrap();
    }
    let f = |p: &std::path::Path| p.display().to_string();
    let run = dir.path().join("run");
    let (config, base) = (f(&variant("config.json")), f(&variant("plain.pt")));
    let o = a3ft_output([
        "train",
        "--model-config",
        &config,
        "--checkpoint",
        &base,
        "--data",
        &f(&data),
        "--out",
        &f(&run),
        "--method",
        "a3ft",
        "--adapter-start",
        "random",
        "--batch-size",
        "2",
        "--steps",
        "2",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // From here the test builds models and draws its input in this process.
    let _draws = draws();
    let trained = a3ft::train::run_model::load_run_model(&run, None, Device::Cpu).unwrap();
    let cfg = a3ft::train::run_dir::read_run_config(&run).unwrap().model;
    let x = Tensor::randn(
        [2, 3, cfg.image_size, cfg.image_size],
        (Kind::Float, Device::Cpu),
    );
    let t = Tensor::from_slice(&[3.0f32, 700.0]);
    let out = |m: &Model| tch::no_grad(|| m.unet.forward(&x, &t, None));
    let want = out(&trained);
    for ext in ["pt", "safetensors"] {
        let file = dir.path().join(format!("export.{ext}"));
        let o = a3ft_output(["export", "--run", &f(&run), "--out", &f(&file)]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(
            err.contains("has no time-aware adapter")
                && err.contains(&format!("a3ft sample --checkpoint {}", f(&file))),
            "{ext}: the export's note: {err}"
        );
        let loaded =
            Model::from_checkpoint(&cfg, &Default::default(), &file, None, None, Device::Cpu)
                .unwrap();
        assert!(
            loaded.unet.has_adapters(),
            "{ext}: loaded without its adapter"
        );
        let diff = f64::try_from((out(&loaded) - &want).abs().max()).unwrap();
        assert!(
            diff < 1e-5,
            "{ext}: the export differs from the run by {diff}"
        );
        // The official code's view: the same file without the adapter tensors is another model.
        let mut state = load_state_dict(&file, None).unwrap();
        state.retain(|k, _| !k.starts_with("adapter."));
        let plain =
            Model::from_state(&cfg, &Default::default(), &state, "stripped", Device::Cpu).unwrap();
        let lost = f64::try_from((out(&plain) - &want).abs().max()).unwrap();
        assert!(
            lost > 1e-3,
            "{ext}: the adapter changes the output by only {lost}"
        );
        let samples = dir.path().join(format!("samples-{ext}"));
        let o = a3ft_output([
            "sample",
            "--checkpoint",
            &f(&file),
            "--model-config",
            &config,
            "--num",
            "2",
            "--respacing",
            "3",
            "--out",
            &f(&samples),
            "--device",
            "cpu",
        ]);
        assert!(
            o.status.success(),
            "{ext}: sample: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
