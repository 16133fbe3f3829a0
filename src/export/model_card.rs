//! The README.md of an export folder: what a person finds on a model page (base model, method,
//! data, training length, the checkpoint and its scores, the base's licence, how to load it).

use crate::model::methods::Method;
use crate::train::run_config::RunConfig;
use crate::train::run_dir::RunDir;
use crate::util::markdown;
use anyhow::Result;
use std::fmt::Write;
use std::path::Path;

/// What the card says about one export of `run` at `step`.
pub struct Card<'a> {
    pub run: &'a RunDir,
    pub rc: &'a RunConfig,
    pub step: u64,
    /// `f32`, `f16` or `bf16`.
    pub dtype: &'a str,
    /// Where the export is written, for the loading examples.
    pub out: &'a Path,
}

impl Card<'_> {
    /// The card of a diffusers pipeline folder.
    pub fn markdown(&self) -> Result<String> {
        let rc = self.rc;
        let adapter = matches!(rc.method, Method::Adapter | Method::A3ft);
        let mut s = String::new();
        // Front matter as the Hugging Face Hub reads it, so the folder can be uploaded as is.
        s.push_str("---\nlibrary_name: diffusers\n");
        if let Some(l) = self.base_licence() {
            let _ = writeln!(s, "license: {l}");
        }
        s.push_str("tags:\n- a3ft\n- unconditional-image-generation\n---\n\n");
        let _ = writeln!(
            s,
            "# {} fine-tune of {}\n",
            method_title(rc.method),
            markdown::text(&self.base_name())
        );
        let _ = writeln!(
            s,
            "Fine-tuned from a pre-trained diffusers `UNet2DModel` with a3ft {}.\n",
            rc.a3ft_version
        );
        s.push_str("| | |\n|---|---|\n");
        let _ = writeln!(s, "| base model | {} |", markdown::cell(&self.base_line()));
        let _ = writeln!(s, "| method | {} |", self.method_line());
        let held = rc.num_images - rc.num_trained_images();
        let held = if held > 0 {
            format!(", {held} more held out for evaluation")
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "| training data | {} images ({}{held}) |",
            rc.num_trained_images(),
            markdown::cell(&markdown::code(&rc.data.display().to_string()))
        );
        let _ = writeln!(s, "| training | {} |", self.training_line()?);
        let _ = writeln!(s, "| checkpoint | {} |", self.checkpoint_line()?);
        if let Some(f) = self.final_line()? {
            let _ = writeln!(s, "| final evaluation | {f} |");
        }
        let _ = writeln!(
            s,
            "| image size | {} px, weights in {} |",
            rc.model.image_size, self.dtype
        );
        let _ = writeln!(s, "| licence of the base | {} |", self.base_licence().map(|l| format!("{l} (from the base folder's README.md)")).unwrap_or_else(|| "not recorded: the base folder has no model card with a `license:` field; check the base model's terms before sharing this one".into()));
        s.push_str("\n## Loading\n\n");
        let path = markdown::python_str(&self.out.display().to_string());
        if adapter {
            s.push_str(
                "The time-aware adapter of A³FT is not a diffusers module: `unet/a3ft_unet.py` (written by the export) adds it to \
                 `UNet2DModel`, so loading needs `trust_remote_code=True` (it runs that file; read it first, it is short):\n\n",
            );
            let _ = writeln!(s, "```python\nfrom diffusers import DiffusionPipeline\n\npipe = DiffusionPipeline.from_pretrained({path}, trust_remote_code=True)\nimages = pipe(batch_size=4).images\n```\n");
            let _ = writeln!(s, "The UNet alone: `AutoModel.from_pretrained({path}, trust_remote_code=True)` (the folder's top level is the UNet too; `pipe.unet` is the same model).\n");
            let _ = writeln!(s, "**Without remote code** {NO_REMOTE_CODE}");
        } else {
            let _ = writeln!(s, "```python\nfrom diffusers import DiffusionPipeline\n\npipe = DiffusionPipeline.from_pretrained({path})\nimages = pipe(batch_size=4).images\n```\n");
            let _ = writeln!(
                s,
                "The UNet alone: `UNet2DModel.from_pretrained({path}, subfolder=\"unet\")`."
            );
        }
        let _ = writeln!(
            s,
            "\n{} samples the folder with a3ft itself.",
            markdown::code(&format!(
                "a3ft sample --checkpoint {}",
                markdown::shell_word(&self.out.display().to_string())
            ))
        );
        Ok(s)
    }

    fn base_name(&self) -> String {
        match &self.rc.base_checkpoint {
            None => "a model trained from scratch".into(),
            Some(b) => base_folder(&b.path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| b.path.display().to_string()),
        }
    }

    fn base_line(&self) -> String {
        match &self.rc.base_checkpoint {
            None => "none (trained from scratch)".into(),
            Some(b) => format!(
                "{} (SHA-256 {}…)",
                markdown::code(&b.path.display().to_string()),
                markdown::one_line(&b.sha256[..12.min(b.sha256.len())])
            ),
        }
    }

    fn method_line(&self) -> String {
        let rc = self.rc;
        match rc.method {
            Method::Adapter | Method::A3ft => format!(
                "`{}`, adapter start `{}` ({} parameters trained)",
                rc.method.name(),
                rc.adapter_start().name(),
                self.trained()
            ),
            Method::Lora => format!(
                "`lora`, rank {} merged into the weights ({} parameters trained)",
                rc.lora_rank,
                self.trained()
            ),
            Method::Difffit => format!(
                "`difffit`, its per-block scales γ folded into the weights ({} parameters trained)",
                self.trained()
            ),
            m => format!("`{}` ({} parameters trained)", m.name(), self.trained()),
        }
    }

    fn trained(&self) -> String {
        self.rc
            .params
            .as_ref()
            .map(|p| crate::util::fmt_count(p.trainable))
            .unwrap_or_else(|| "?".into())
    }

    fn training_line(&self) -> Result<String> {
        let h = &self.rc.hyper;
        // The trainer's own count (over the training share of the images) where it logged one.
        let logged = self
            .metrics_at(self.step)?
            .and_then(|r| r.get("epoch").and_then(|e| e.as_f64()));
        let epochs = match logged {
            Some(e) => format!("{e:.1} epochs"),
            None => format!(
                "≈{:.1} epochs",
                self.step as f64 * h.batch_size as f64 / self.rc.num_trained_images().max(1) as f64
            ),
        };
        Ok(format!(
            "{} of {} steps at batch {} ({epochs}), lr {}",
            self.step,
            h.total_steps,
            h.batch_size,
            crate::util::fmt_num(h.lr)
        ))
    }

    /// The exported step, why it was chosen, and its in-loop held-out metric when one was measured.
    fn checkpoint_line(&self) -> Result<String> {
        if let Some(sel) = crate::train::select::Selected::read(self.run)? {
            if sel.step == self.step {
                return Ok(format!(
                    "step {} (epoch {:.1}), selected as the best {} ({:.5})",
                    sel.step,
                    sel.epoch,
                    sel.metric.name(),
                    sel.value
                ));
            }
        }
        let measured = self.metrics_at(self.step)?;
        let metric = ["holdout_loss", "fid"].iter().find_map(|k| {
            measured
                .as_ref()
                .and_then(|r| r.get(*k))
                .and_then(|v| v.as_f64())
                .map(|v| format!("{k} {v:.5}"))
        });
        Ok(match metric {
            Some(m) => format!("step {} ({m} in training's evaluation)", self.step),
            None => format!("step {} (no held-out evaluation at this step)", self.step),
        })
    }

    /// The evaluation record of metrics.jsonl at `step`, if any.
    fn metrics_at(&self, step: u64) -> Result<Option<serde_json::Value>> {
        let path = self.run.metrics_path();
        if !path.is_file() {
            return Ok(None);
        }
        let text = crate::util::files::read_text(&path)?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| {
                r.get("step").and_then(|v| v.as_u64()) == Some(step)
                    && (r.get("holdout_loss").is_some() || r.get("fid").is_some())
            })
            .next_back())
    }

    /// cFID/KID of the run's final evaluation (`final.json`), when it scored this step.
    fn final_line(&self) -> Result<Option<String>> {
        let path = self.run.final_path();
        if !path.is_file() {
            return Ok(None);
        }
        let v: serde_json::Value =
            serde_json::from_str(&crate::util::files::read_text(&path)?).unwrap_or_default();
        if v.get("step").and_then(|s| s.as_u64()) != Some(self.step) {
            return Ok(None);
        }
        let num = |k: &str| v.get(k).and_then(|x| x.as_f64()).filter(|x| x.is_finite());
        let mut parts = Vec::new();
        if let (Some(f), Some(k)) = (num("fid_train"), num("kid_train")) {
            parts.push(format!(
                "cFID {f:.2}, KID×10³ {:.3} against the training images",
                k * 1e3
            ));
        }
        if let (Some(f), Some(k)) = (num("fid_holdout"), num("kid_holdout")) {
            parts.push(format!(
                "cFID {f:.2}, KID×10³ {:.3} against the held-out images",
                k * 1e3
            ));
        }
        if parts.is_empty() {
            return Ok(None);
        }
        let samples = v.get("samples").and_then(|x| x.as_u64()).unwrap_or(0);
        Ok(Some(format!("{} ({samples} samples)", parts.join("; "))))
    }

    /// The base's licence as its folder records it: the `license:` field of a Hub model card
    /// (README.md front matter) in the base folder.
    fn base_licence(&self) -> Option<String> {
        let b = self.rc.base_checkpoint.as_ref()?;
        // Only the front matter matters: a bounded prefix of a regular file, so that a README
        // that is a FIFO or a device (or merely huge) costs nothing.
        let bytes = crate::util::files::read_prefix(
            &base_folder(&b.path).join("README.md"),
            MAX_FRONT_MATTER_BYTES,
        )
        .ok()?;
        // Hub cards written on Windows: CRLF line ends, a UTF-8 byte order mark.
        let text = String::from_utf8_lossy(&bytes).replace("\r\n", "\n");
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let front = text.strip_prefix("---\n")?.split("\n---").next()?;
        let value = front
            .lines()
            .find_map(|l| l.strip_prefix("license:"))?
            .trim()
            .trim_matches('"');
        // One plain token, so that it can go back into YAML and a table cell unquoted.
        (!value.is_empty()
            && value.len() <= 64
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._+".contains(c)))
        .then(|| value.to_string())
    }
}

/// The start of a base's README.md read for its licence: front matter is a few lines.
const MAX_FRONT_MATTER_BYTES: u64 = 64 << 10;

/// What loading an A³FT export without remote code loses, for the card and the export's message.
pub const NO_REMOTE_CODE: &str = "(`UNet2DModel.from_pretrained(DIR, subfolder=\"unet\")`, or a pipeline built on it) diffusers gives the \
plain `UNet2DModel`: the fine-tuned weights without the time-aware adapter, which is not the model a3ft trained and evaluated \
(its samples differ), and diffusers warns that the `adapter.*` weights were not used.";

/// The model folder of a base checkpoint: above `unet/` for a diffusers pipeline's weights.
fn base_folder(weights: &Path) -> &Path {
    let dir = weights.parent().unwrap_or(Path::new(""));
    if dir.file_name().is_some_and(|n| n == "unet")
        && dir
            .parent()
            .is_some_and(|p| p.join("config.json").is_file() || p.join("scheduler").is_dir())
    {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    }
}

fn method_title(m: Method) -> &'static str {
    match m {
        Method::A3ft => "A³FT",
        Method::Adapter => "Adapter-only A³FT",
        Method::Attention => "Attention-only",
        Method::Full => "Full",
        Method::Residual => "Residual-block",
        Method::Lora => "LoRA",
        Method::Difffit => "DiffFit",
    }
}
