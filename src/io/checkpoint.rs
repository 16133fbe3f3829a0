//! Checkpoints in (official `.pt`, `.safetensors`) and out (safetensors, atomically).
//!
//! `.pt` files are parsed by `pytorch-reader`, which understands only the tensor-rebuild
//! subset of pickle and never executes code. Tensors are returned as f32 (f16/bf16/f64 are
//! converted), in the order of their names.

use crate::util::files::write_atomic;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{nn, Kind, Tensor};

pub type StateDict = BTreeMap<String, Tensor>;

fn f32_from_bytes(bytes: &[u8], dtype: &str) -> Result<Vec<f32>> {
    let v = match dtype {
        "f32" => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        "f64" => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        "f16" => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32())
            .collect(),
        "bf16" => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32())
            .collect(),
        other => bail!(
            "unsupported tensor dtype {other} (only floating-point tensors are model weights)"
        ),
    };
    Ok(v)
}

/// A checked tensor: the values must fill the shape exactly and all be finite (a NaN or
/// infinite weight would only show up as black samples or a NaN loss much later).
fn make_tensor(name: &str, values: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    let numel = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if numel != Some(values.len()) {
        bail!(
            "tensor {name}: shape {shape:?} does not match the {} values stored",
            values.len()
        );
    }
    let bad = values.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        let kind = if values.iter().any(|v| v.is_nan()) {
            "NaN"
        } else {
            "infinite"
        };
        bail!("tensor {name} has {bad} non-finite ({kind}) values of {}; refusing a corrupt or diverged checkpoint", values.len());
    }
    let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    Ok(Tensor::from_slice(&values).reshape(shape.as_slice()))
}

/// Largest checkpoint file read (the official models are at most a few GB).
pub const MAX_CHECKPOINT_BYTES: u64 = 32 << 30;

fn is_safetensors(bytes: &[u8]) -> bool {
    if bytes.len() < 9 {
        return false;
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    n > 0 && n < bytes.len() as u64 && bytes[8] == b'{'
}

/// Reads every floating-point tensor of a checkpoint as f32.
///
/// `key` selects a nested dictionary (`--checkpoint-key`), e.g. `state_dict` or `model`;
/// a dotted path (`ema.model`) descends several levels for `.pt` files.
pub fn load_state_dict(path: &Path, key: Option<&str>) -> Result<StateDict> {
    let ctx = || format!("cannot load checkpoint {}", path.display());
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read checkpoint file {}", path.display()))?;
    if !meta.is_file() {
        bail!(
            "cannot read checkpoint file {}: not a regular file",
            path.display()
        );
    }
    if meta.len() > MAX_CHECKPOINT_BYTES {
        bail!(
            "checkpoint file {} is {:.1} GB, above the limit of {} GB",
            path.display(),
            meta.len() as f64 / 1e9,
            MAX_CHECKPOINT_BYTES >> 30
        );
    }
    let bytes = crate::util::files::read_at_most(path, MAX_CHECKPOINT_BYTES)
        .with_context(|| format!("cannot read checkpoint file {}", path.display()))?;
    if bytes.is_empty() {
        return Err(anyhow!("the file is empty")).with_context(ctx);
    }
    if is_safetensors(&bytes) {
        return load_safetensors_bytes(&bytes, key).with_context(ctx);
    }
    // pytorch-reader parses untrusted pickle data; a panic inside it is a broken file.
    crate::util::torch::catch_torch("not a readable PyTorch checkpoint", move || {
        load_pt_bytes(bytes, key)
    })
    .and_then(|r| r)
    .with_context(ctx)
}

fn load_safetensors_bytes(bytes: &[u8], key: Option<&str>) -> Result<StateDict> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| anyhow!("corrupt safetensors file: {e}"))?;
    let prefix = key.map(|k| format!("{k}."));
    let mut out = StateDict::new();
    for (name, view) in st.tensors() {
        let name = match &prefix {
            Some(p) => match name.strip_prefix(p.as_str()) {
                Some(rest) => rest.to_string(),
                None => continue,
            },
            None => name,
        };
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => "f32",
            safetensors::Dtype::F64 => "f64",
            safetensors::Dtype::F16 => "f16",
            safetensors::Dtype::BF16 => "bf16",
            other => {
                bail!("tensor {name} has dtype {other:?}; model weights must be floating point")
            }
        };
        let t = make_tensor(&name, f32_from_bytes(view.data(), dtype)?, view.shape())?;
        out.insert(name, t);
    }
    if out.is_empty() {
        bail!(
            "no tensors found{}",
            key.map(|k| format!(" under key {k:?}")).unwrap_or_default()
        );
    }
    Ok(out)
}

/// How many times its size a PyTorch ZIP may inflate to. `torch.save` stores entries
/// uncompressed, so a real file never grows; one that would grow far beyond its size is damaged
/// or a decompression bomb, refused before anything is inflated.
const MAX_PT_INFLATION: u64 = 16;

/// Refuses a ZIP whose entries would inflate past `MAX_PT_INFLATION` times its size, reading
/// only the central directory (the ZIP reader then holds each entry to its recorded size).
fn check_inflation(bytes: &[u8]) -> Result<()> {
    let Ok(mut zip) = zip::ZipArchive::new(std::io::Cursor::new(bytes)) else {
        return Ok(()); // not a readable ZIP: the PyTorch reader says why
    };
    let mut inflated = 0u64;
    for i in 0..zip.len() {
        inflated = inflated.saturating_add(zip.by_index_raw(i).map(|e| e.size()).unwrap_or(0));
    }
    let file_len = bytes.len() as u64;
    if inflated > MAX_PT_INFLATION * file_len + (16 << 20) {
        bail!(
            "it would inflate to {:.0} MB from a file of {:.1} MB; torch.save stores tensors uncompressed, so the file is damaged or a decompression bomb",
            inflated as f64 / 1e6,
            file_len as f64 / 1e6
        );
    }
    Ok(())
}

fn load_pt_bytes(bytes: Vec<u8>, key: Option<&str>) -> Result<StateDict> {
    use pytorch_reader::{DType, PytorchReader};
    let looks_like_pt = bytes.starts_with(b"PK") || bytes[0] == 0x80;
    if bytes.starts_with(b"PK") {
        check_inflation(&bytes)?;
    }
    let reader = PytorchReader::from_bytes(bytes, key).map_err(|e| {
        // The reader lists every available key; a large checkpoint makes that kilobytes long.
        let mut e = e.to_string();
        if e.len() > 300 {
            let cut = (0..=300)
                .rev()
                .find(|&i| e.is_char_boundary(i))
                .unwrap_or(0);
            e.truncate(cut);
            e.push_str(" …");
        }
        if looks_like_pt {
            anyhow!("not a readable PyTorch checkpoint: {e}")
        } else {
            anyhow!("not a PyTorch (.pt) or safetensors checkpoint: {e}")
        }
    })?;
    let mut out = StateDict::new();
    for (name, t) in reader.tensors() {
        let dtype = match t.dtype() {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            // Integer entries (e.g. a stored step counter) are not weights.
            _ => continue,
        };
        let data = t.read().map_err(|e| anyhow!("tensor {name}: {e}"))?;
        let values = if cfg!(target_endian = "little") || dtype == "f32" {
            f32_from_bytes(&data, dtype)?
        } else {
            bail!("big-endian hosts are not supported")
        };
        out.insert(name.clone(), make_tensor(name, values, t.shape())?);
    }
    if out.is_empty() {
        bail!(
            "no floating-point tensors found{}; if the weights are nested, pass --checkpoint-key",
            key.map(|k| format!(" under key {k:?}")).unwrap_or_default()
        );
    }
    Ok(out)
}

/// Copies `state` into the variables of `vs`.
///
/// Every variable whose name starts with one of `optional_prefixes` may be absent from the file
/// (adapter or LoRA tensors a base checkpoint cannot have). All missing keys, unexpected keys
/// and shape mismatches are reported together.
pub fn load_into(
    vs: &mut nn::VarStore,
    state: &StateDict,
    optional_prefixes: &[&str],
    origin: &str,
) -> Result<()> {
    let vars = vs.variables();
    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    for (name, var) in &vars {
        match state.get(name) {
            None if optional_prefixes.iter().any(|p| name.starts_with(p)) => {}
            None => missing.push(format!("{name} {:?}", var.size())),
            Some(t) if t.size() != var.size() => mismatched.push(format!(
                "{name}: checkpoint {:?} vs model {:?}",
                t.size(),
                var.size()
            )),
            Some(_) => {}
        }
    }
    let unexpected: Vec<String> = state
        .iter()
        .filter(|(k, _)| !vars.contains_key(*k))
        .map(|(k, t)| format!("{k} {:?}", t.size()))
        .collect();
    if !missing.is_empty() && state.keys().any(|k| k.starts_with("optim.exp_avg.")) {
        // Keys `model.…`, `optim.…`: the state of a training run, not a network's weights.
        bail!("checkpoint {origin} is an a3ft run's training checkpoint, not a network: use `--run RUN_DIR [--step N]`, or `a3ft export` it first");
    }
    if !missing.is_empty() || !unexpected.is_empty() || !mismatched.is_empty() {
        missing.sort();
        mismatched.sort();
        // One line: up to 4 keys per kind, then a count of the rest.
        let mut msg = format!(
            "checkpoint {origin} does not match the model config ({} missing, {} unexpected, {} shape mismatches)",
            missing.len(),
            unexpected.len(),
            mismatched.len()
        );
        const SHOWN: usize = 4;
        for (title, list) in [
            ("missing keys", &missing),
            ("unexpected keys", &unexpected),
            ("shape mismatches", &mismatched),
        ] {
            if !list.is_empty() {
                let mut items: Vec<String> = list.iter().take(SHOWN).cloned().collect();
                if list.len() > SHOWN {
                    items.push(format!("… {} more", list.len() - SHOWN));
                }
                msg.push_str(&format!("; {title}: {}", items.join(", ")));
            }
        }
        msg.push_str("; `a3ft inspect --json --keys` lists the model's keys");
        bail!(msg);
    }
    tch::no_grad(|| {
        for (name, var) in &vars {
            if let Some(t) = state.get(name) {
                let mut v = var.shallow_clone();
                v.copy_(&t.to_device(v.device()).to_kind(v.kind()));
            }
        }
    });
    Ok(())
}

fn tensor_bytes(t: &Tensor) -> Result<(safetensors::Dtype, Vec<u8>)> {
    let t = t.detach().to_device(tch::Device::Cpu).contiguous();
    match t.kind() {
        Kind::Int64 => {
            let v: Vec<i64> = Vec::try_from(t.flatten(0, -1))?;
            Ok((
                safetensors::Dtype::I64,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ))
        }
        // Half-precision tensors stay half (exports of released weights, half the size).
        Kind::Half => {
            let v: Vec<f32> = Vec::try_from(t.to_kind(Kind::Float).flatten(0, -1))?;
            Ok((
                safetensors::Dtype::F16,
                v.iter()
                    .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                    .collect(),
            ))
        }
        Kind::BFloat16 => {
            let v: Vec<f32> = Vec::try_from(t.to_kind(Kind::Float).flatten(0, -1))?;
            Ok((
                safetensors::Dtype::BF16,
                v.iter()
                    .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                    .collect(),
            ))
        }
        _ => {
            let v: Vec<f32> = Vec::try_from(t.to_kind(Kind::Float).flatten(0, -1))?;
            Ok((
                safetensors::Dtype::F32,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ))
        }
    }
}

/// Saves named tensors (f32, or i64 kept as is) as safetensors with string metadata, atomically.
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    write_atomic(path, &safetensors_bytes(tensors, metadata)?)
}

/// The safetensors serialisation of named tensors with string metadata.
pub fn safetensors_bytes(
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let (dtype, bytes) = tensor_bytes(t)?;
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        owned.push((name.clone(), dtype, shape, bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b)?,
            ))
        })
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    let meta = if metadata.is_empty() {
        None
    } else {
        Some(metadata)
    };
    Ok(safetensors::tensor::serialize(views, meta)?)
}

/// Reads the string metadata of a safetensors file from its header alone: the callers load the
/// whole file next (and check it then), so reading a checkpoint of gigabytes twice is avoided.
pub fn safetensors_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let header = safetensors_header(path)?;
    match header.get("__metadata__") {
        None => Ok(HashMap::new()),
        Some(meta) => serde_json::from_value(meta.clone()).map_err(|e| {
            anyhow!(
                "corrupt safetensors file {}: __metadata__: {e}",
                path.display()
            )
        }),
    }
}

/// The tensor names of a safetensors file, from its header alone.
pub fn safetensors_keys(path: &Path) -> Result<Vec<String>> {
    let header = safetensors_header(path)?;
    let map = header.as_object().ok_or_else(|| {
        anyhow!(
            "corrupt safetensors file {}: its header is not a JSON object",
            path.display()
        )
    })?;
    Ok(map
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect())
}

fn safetensors_header(path: &Path) -> Result<serde_json::Value> {
    use std::io::Read;
    let corrupt = |why: String| anyhow!("corrupt safetensors file {}: {why}", path.display());
    let mut f = crate::util::files::open_regular(path)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| corrupt("no header".into()))?;
    // safetensors' own limit on a header.
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        return Err(corrupt(format!("a header of {n} bytes")));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|_| corrupt("truncated header".into()))?;
    serde_json::from_slice(&header).map_err(|e| corrupt(e.to_string()))
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = crate::util::files::open_regular(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(format!("{:x}", h.finalize()))
}
