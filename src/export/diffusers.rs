//! A run as a diffusers pipeline folder. Runs with an adapter become a diffusers custom
//! component: the adapter stays in the UNet's weights and a small Python module, generated from
//! one template (`runtime_template.py`), runs it (docs/design/diffusers.md says why this design).

use crate::diffusers::{DiffusersFiles, ADAPTER_FILE, RUNTIME_CLASS, RUNTIME_MODULE};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

/// One template for every export; `runtime_module` fills in the run's two constants.
const RUNTIME_TEMPLATE: &str = include_str!("runtime_template.py");

/// The runtime module for an adapter with (zero-scale start) or without per-channel output scales.
pub fn runtime_module(out_scale: bool) -> String {
    let text = RUNTIME_TEMPLATE
        .replace(
            "@TIME_SCALING_HIDDEN@",
            &crate::model::adapter::TIME_SCALING_HIDDEN.to_string(),
        )
        .replace("@OUT_SCALE@", if out_scale { "True" } else { "False" });
    debug_assert!(
        !text.contains('@') || !text.contains("@\n"),
        "a template field left unfilled"
    );
    text
}

/// What an export wrote.
pub struct Exported {
    pub tensors: usize,
    pub adapter_tensors: usize,
}

/// Writes `tensors` (the UNet's keys, plus any `adapter.*`) and the model's JSON files as a
/// diffusers pipeline folder: `model_index.json`, `unet/`, `scheduler/`, the model card `readme`
/// as `README.md`, and at the top a copy of the UNet config with a link to its weights so that
/// `UNet2DModel.from_pretrained(out)` works too. With adapter tensors the folder is a diffusers
/// custom component (docs/design/diffusers.md): the adapter stays in the UNet's weights, and
/// `unet/a3ft_unet.py`, named by `model_index.json` and the config's `auto_map`, runs it.
/// `out` must be new, empty, or an earlier export (its manifest lists every file).
pub fn write_folder(
    out: &Path,
    files: &DiffusersFiles,
    tensors: &[(String, tch::Tensor)],
    readme: &str,
) -> Result<Exported> {
    let runtime_file = format!("{RUNTIME_MODULE}.py");
    let unet_runtime_file = format!("unet/{runtime_file}");
    // Every file an export may hold, earlier layouts' included, so that one replaces the other.
    let manifest_files: Vec<String> = [
        "model_index.json",
        "config.json",
        "unet/config.json",
        "scheduler/scheduler_config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.safetensors",
        ADAPTER_FILE,
        "README.md",
        &runtime_file,
        &unet_runtime_file,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let listed = manifest_files.clone();
    let claimed = crate::util::owned_dir::OwnedDir::claim(out, "export", move |bytes| {
        let v: Value = serde_json::from_slice(bytes).context("manifest.json is not JSON")?;
        if v.get("written_by").and_then(Value::as_str) != Some("a3ft export") {
            bail!("its manifest.json was not written by a3ft export");
        }
        Ok(listed.clone())
    })?;
    let adapter_tensors = tensors
        .iter()
        .filter(|(k, _)| k.starts_with("adapter."))
        .count();
    let out_scale = tensors
        .iter()
        .any(|(k, _)| k.starts_with("adapter.") && k.ends_with(".out_scale"));
    let weight_bytes = crate::io::checkpoint::safetensors_bytes(
        tensors,
        [("format".to_string(), "pt".to_string())].into(),
    )?;
    let files = &files.as_diffusers_reads()?;
    let mut unet_cfg = files.unet.clone();
    unet_cfg.insert("_class_name".into(), "UNet2DModel".into());
    unet_cfg.remove("auto_map");
    let mut sched_cfg = files.scheduler.clone();
    sched_cfg
        .entry("_class_name")
        .or_insert_with(|| "DDPMScheduler".into());
    let sched_class = sched_cfg["_class_name"]
        .as_str()
        .unwrap_or("DDPMScheduler")
        .to_string();
    let pipeline = if sched_class == "DDIMScheduler" {
        "DDIMPipeline"
    } else {
        "DDPMPipeline"
    };
    let mut index = serde_json::json!({
        "_class_name": pipeline,
        "scheduler": ["diffusers", sched_class],
        "unet": ["diffusers", "UNet2DModel"],
    });
    let runtime = (adapter_tensors > 0).then(|| runtime_module(out_scale));
    if runtime.is_some() {
        // `_class_name` stays UNet2DModel, so that loading without remote code gives the plain
        // model; the pipeline reads its UNet class from model_index.json (`unet/a3ft_unet.py`),
        // `AutoModel` from the configs' `auto_map`. Not in model_index.json, where only
        // `AutoModel(…, subfolder="unet")` would read it and every pipeline load warn about it.
        let auto_map =
            serde_json::json!({ "AutoModel": format!("{RUNTIME_MODULE}.{RUNTIME_CLASS}") });
        unet_cfg.insert("auto_map".into(), auto_map);
        index["unet"] = serde_json::json!([RUNTIME_MODULE, RUNTIME_CLASS]);
    }
    let pretty = |v: &Value| serde_json::to_vec_pretty(v).expect("JSON values serialise");
    let mut out_files = vec![
        ("model_index.json".to_string(), pretty(&index)),
        (
            "config.json".to_string(),
            pretty(&Value::Object(unet_cfg.clone())),
        ),
        (
            "unet/config.json".to_string(),
            pretty(&Value::Object(unet_cfg)),
        ),
        (
            "scheduler/scheduler_config.json".to_string(),
            pretty(&Value::Object(sched_cfg)),
        ),
        (
            "unet/diffusion_pytorch_model.safetensors".to_string(),
            weight_bytes,
        ),
        ("README.md".to_string(), readme.as_bytes().to_vec()),
    ];
    if let Some(code) = runtime {
        // Beside both configs: `AutoModel.from_pretrained(out)` reads the top-level one.
        out_files.push((unet_runtime_file.clone(), code.clone().into_bytes()));
        out_files.push((runtime_file.clone(), code.into_bytes()));
    }
    let manifest = serde_json::json!({"written_by": "a3ft export", "files": manifest_files});
    out_files.push((
        crate::util::owned_dir::MANIFEST.to_string(),
        pretty(&manifest),
    ));
    claimed.publish(|staging| {
        crate::util::owned_dir::write_files(staging, &out_files)?;
        // The top-level weights are a link, not a second copy of the file; made before the swap,
        // so the folder is whole from the moment it appears.
        std::os::unix::fs::symlink(
            "unet/diffusion_pytorch_model.safetensors",
            staging.join("diffusion_pytorch_model.safetensors"),
        )
        .with_context(|| format!("cannot link the weights in {}", staging.display()))
    })?;
    Ok(Exported {
        tensors: tensors.len() - adapter_tensors,
        adapter_tensors,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_runtime_template_is_filled_in() {
        for out_scale in [false, true] {
            let code = super::runtime_module(out_scale);
            assert!(
                !code.contains("= @"),
                "a field of the template is left: {code}"
            );
            assert!(code.contains(&format!(
                "TIME_SCALING_HIDDEN = {}\n",
                crate::model::adapter::TIME_SCALING_HIDDEN
            )));
            assert!(code.contains(if out_scale {
                "OUT_SCALE = True\n"
            } else {
                "OUT_SCALE = False\n"
            }));
            assert!(code.contains(&format!("class {}(UNet2DModel)", super::RUNTIME_CLASS)));
        }
    }
}
