//! Parity with the official code on the golden fixtures (tests/fixtures/*), from both the
//! `.pt` and the `.safetensors` file. Tolerance: max|ours − ref| ≤ 1e-4 + 1e-4·max|ref|.

use crate::util::{draws, fixture, seeded};
use a3ft::diffusion::Diffusion;
use a3ft::model::config::ModelConfig;
use a3ft::model::Model;
use tch::{Device, Kind, Tensor};

fn check(name: &str, weights: &str) {
    let dir = fixture(name);
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let mut model = {
        let _draws = draws();
        Model::new(&cfg, &Default::default(), Device::Cpu).unwrap()
    };
    model.load_checkpoint(&dir.join(weights), None).unwrap();
    let diffusion = Diffusion::from_config(
        &cfg,
        Some(&a3ft::diffusion::respace::Respacing::All),
        Device::Cpu,
    )
    .unwrap();
    let x0 = Tensor::read_npy(dir.join("x0.npy")).unwrap();
    let t = Tensor::read_npy(dir.join("t.npy"))
        .unwrap()
        .to_kind(Kind::Int64);
    let noise = Tensor::read_npy(dir.join("noise.npy")).unwrap();
    let ours = a3ft::tools::debug_step::debug_step(&model, &diffusion, &x0, &t, &noise);
    let expected = Tensor::read_npz(dir.join("expected.npz")).unwrap();
    assert!(
        expected.len() >= 8,
        "{name}: expected.npz has only {} arrays",
        expected.len()
    );
    for (key, reference) in expected {
        let mine = &ours
            .iter()
            .find(|(k, _)| *k == key)
            .unwrap_or_else(|| panic!("missing {key}"))
            .1;
        assert_eq!(
            mine.size(),
            reference.size(),
            "{name}/{weights} {key} shape"
        );
        let err = f64::try_from((mine - &reference).abs().max()).unwrap();
        let tol = 1e-4 + 1e-4 * f64::try_from(reference.abs().max()).unwrap();
        assert!(
            err <= tol,
            "{name}/{weights} {key}: max error {err:e} > tolerance {tol:e}"
        );
    }
}

#[test]
fn iddpm_tiny_pt() {
    check("iddpm-tiny", "model.pt");
}

#[test]
fn iddpm_tiny_safetensors() {
    check("iddpm-tiny", "model.safetensors");
}

#[test]
fn adm_plain_pt() {
    check("adm-plain", "model.pt");
}

#[test]
fn adm_plain_safetensors() {
    check("adm-plain", "model.safetensors");
}

// Configurations of the guided-diffusion code path beyond the shared fixtures, produced by
// scripts/make_extra_goldens.py from the official code.

/// resblock_updown, use_new_attention_order, num_head_channels, learned sigma with plain MSE.
#[test]
fn adm_updown_new_order_head_channels() {
    check("adm-updown", "model.pt");
}

/// FIXED_LARGE variance, START_X prediction, plain norm, cosine T=500.
#[test]
fn adm_fixed_large_predict_xstart() {
    check("adm-fixed-xstart", "model.pt");
}

/// RESCALED_KL loss (use_kl) with learned range, new attention order.
#[test]
fn adm_kl_loss() {
    check("adm-kl-small", "model.pt");
}

/// FIXED_SMALL variance with resblock_updown.
#[test]
fn adm_sigma_small() {
    check("adm-sigma-small", "model.pt");
}

/// The fused attention equals the official legacy and new QKV layouts written out by hand.
#[test]
fn fused_attention_matches_explicit_layouts() {
    use a3ft::model::unet::blocks::{AttentionBlock, QkvOrder};
    let _seeded = seeded();
    tch::manual_seed(3);
    for order in [QkvOrder::Legacy, QkvOrder::New] {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let (c, heads, t) = (64i64, 4i64, 10i64);
        let block = AttentionBlock::new(vs.root() / "a", c, heads, order);
        let qkv = Tensor::randn([2, 3 * c, t], (Kind::Float, Device::Cpu));
        let fused = block.attention(&qkv);
        let d = c / heads;
        let (q, k, v) = match order {
            QkvOrder::Legacy => {
                let r = qkv.reshape([2 * heads, 3 * d, t]);
                (r.narrow(1, 0, d), r.narrow(1, d, d), r.narrow(1, 2 * d, d))
            }
            QkvOrder::New => {
                let r = |i: i64| qkv.narrow(1, i * c, c).reshape([2 * heads, d, t]);
                (r(0), r(1), r(2))
            }
        };
        let scale = 1.0 / (d as f64).sqrt().sqrt();
        let w = (q * scale)
            .transpose(1, 2)
            .matmul(&(k * scale))
            .softmax(-1, Kind::Float); // [B·H, t, s]
        let explicit = v.matmul(&w.transpose(1, 2)).reshape([2, c, t]);
        let err = f64::try_from((fused - explicit).abs().max()).unwrap();
        assert!(err < 1e-5, "{order:?}: {err}");
    }
}

/// A wrong head count loads fine but changes the output: the parity tests would catch it.
#[test]
fn wrong_heads_change_output() {
    let dir = fixture("iddpm-tiny");
    let mut cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    cfg.num_heads = 1;
    let mut model = {
        let _draws = draws();
        Model::new(&cfg, &Default::default(), Device::Cpu).unwrap()
    };
    model
        .load_checkpoint(&dir.join("model.safetensors"), None)
        .unwrap();
    let diffusion = Diffusion::from_config(
        &cfg,
        Some(&a3ft::diffusion::respace::Respacing::All),
        Device::Cpu,
    )
    .unwrap();
    let x0 = Tensor::read_npy(dir.join("x0.npy")).unwrap();
    let t = Tensor::read_npy(dir.join("t.npy")).unwrap();
    let noise = Tensor::read_npy(dir.join("noise.npy")).unwrap();
    let ours = a3ft::tools::debug_step::debug_step(&model, &diffusion, &x0, &t, &noise);
    let expected = Tensor::read_npz(dir.join("expected.npz")).unwrap();
    let reference = &expected
        .iter()
        .find(|(k, _)| k == "model_output")
        .unwrap()
        .1;
    let err = f64::try_from((&ours[1].1 - reference).abs().max()).unwrap();
    assert!(err > 1e-2, "{err}");
}

/// Mixed precision (bf16 activations, fp32 statistics and master weights) follows the fp32
/// network, with and without time-aware adapters, to within bf16 rounding: 8 significant bits
/// per operation, so a few percent of the output's range after a dozen layers.
#[test]
fn bf16_forward_follows_fp32() {
    let dir = fixture("adm-updown");
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let _seeded = seeded();
    for extras in [
        Default::default(),
        a3ft::model::unet::Extras {
            adapter: Some(Default::default()),
            lora_rank: None,
            difffit: false,
        },
    ] {
        tch::manual_seed(5);
        let mut model = Model::new(&cfg, &extras, Device::Cpu).unwrap();
        model.load_checkpoint(&dir.join("model.pt"), None).unwrap();
        let x = Tensor::read_npy(dir.join("x0.npy")).unwrap();
        let t = Tensor::read_npy(dir.join("t.npy"))
            .unwrap()
            .to_kind(Kind::Float);
        let reference = model.unet.forward(&x, &t, None);
        model.unet.compute_kind = Kind::BFloat16;
        let mixed = model.unet.forward(&x, &t, None);
        assert_eq!(mixed.kind(), Kind::Float);
        let range = f64::try_from(reference.abs().max()).unwrap();
        let err = f64::try_from((&mixed - &reference).abs().max()).unwrap() / range;
        assert!(
            err < 3e-2,
            "adapters {:?}: bf16 error {err:.4} of the output range",
            extras.adapter
        );
        eprintln!(
            "adapters {:?}: bf16 max error {err:.5} of the output range",
            extras.adapter
        );
    }
}
