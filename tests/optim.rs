//! Adam against `torch.optim.Adam` (goldens from scripts/make_adam_goldens.py): two
//! learning-rate groups, five steps.

use a3ft::train::optim::{Adam, Param};
use std::path::PathBuf;
use tch::{Kind, Tensor};

#[test]
fn adam_matches_torch() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/adam");
    let golden: std::collections::HashMap<String, Tensor> =
        Tensor::read_npz(dir.join("expected.npz"))
            .unwrap()
            .into_iter()
            .collect();
    let get = |k: String| {
        golden
            .get(&k)
            .unwrap_or_else(|| panic!("golden lacks {k}"))
            .to_kind(Kind::Float)
    };
    let lrs = [("a", 2e-4), ("b", 2e-4), ("c", 1e-3)];
    let tensors: Vec<Tensor> = lrs
        .iter()
        .map(|(k, _)| get(format!("init.{k}")).set_requires_grad(true))
        .collect();
    let params = lrs
        .iter()
        .zip(&tensors)
        .map(|((k, lr), t)| Param {
            name: k.to_string(),
            tensor: t.shallow_clone(),
            lr: *lr,
        })
        .collect();
    let mut adam = Adam::new(params, 0.9, 0.999, 1e-8);
    for step in 0..5 {
        let grads: Vec<Tensor> = lrs
            .iter()
            .map(|(k, _)| get(format!("grad.{k}.{step}")))
            .collect();
        adam.step(step as u64 + 1, &grads);
        for ((k, _), t) in lrs.iter().zip(&tensors) {
            let want = get(format!("param.{k}.{step}"));
            let err = f64::try_from((t - &want).abs().max()).unwrap();
            let scale = f64::try_from(want.abs().max()).unwrap();
            assert!(
                err <= 1e-6 * scale.max(1.0),
                "param {k} after step {}: max error {err}",
                step + 1
            );
        }
    }
    for (i, (k, _)) in lrs.iter().enumerate() {
        for (name, mine) in [
            ("exp_avg", &adam.exp_avg[i]),
            ("exp_avg_sq", &adam.exp_avg_sq[i]),
        ] {
            let want = get(format!("{name}.{k}"));
            let err = f64::try_from((mine - &want).abs().max()).unwrap();
            let scale = f64::try_from(want.abs().max()).unwrap();
            assert!(
                err <= 1e-5 * scale,
                "{name}.{k}: max error {err} (scale {scale})"
            );
        }
    }
}
