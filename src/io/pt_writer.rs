//! Writes a state_dict in PyTorch's zip format (what `torch.save(state_dict)` writes), so
//! `torch.load` and the official code read a3ft's exports. Hand-written because no crate
//! writes this format; the pickle uses only `collections.OrderedDict`,
//! `torch._utils._rebuild_tensor_v2` and `torch.FloatStorage`, exactly as torch does.

use crate::util::files::write_atomic;
use anyhow::Result;
use std::io::{Cursor, Write};
use std::path::Path;
use tch::{Kind, Tensor};

struct Pickle(Vec<u8>);

impl Pickle {
    fn op(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn global(&mut self, module: &str, name: &str) {
        self.op(b"c");
        self.op(module.as_bytes());
        self.op(b"\n");
        self.op(name.as_bytes());
        self.op(b"\n");
    }
    fn string(&mut self, s: &str) {
        self.op(b"X");
        self.op(&(s.len() as u32).to_le_bytes());
        self.op(s.as_bytes());
    }
    fn int(&mut self, v: i64) {
        // BININT holds a signed 32-bit value; shapes and offsets here always fit.
        self.op(b"J");
        self.op(&(v as i32).to_le_bytes());
    }
    fn int_tuple(&mut self, v: &[i64]) {
        self.op(b"(");
        for &x in v {
            self.int(x);
        }
        self.op(b"t");
    }
    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.op(b")R");
    }
}

/// Saves f32 tensors as an `OrderedDict[str, Tensor]` `.pt` file (zip, prefix `archive`), atomically.
pub fn save_pt(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut p = Pickle(Vec::new());
    p.op(b"\x80\x02");
    p.empty_ordered_dict();
    p.op(b"(");
    let mut storages = Vec::with_capacity(tensors.len());
    for (i, (name, t)) in tensors.iter().enumerate() {
        let t = t
            .detach()
            .to_device(tch::Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous();
        let size = t.size();
        let mut stride = vec![1i64; size.len()];
        for d in (0..size.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * size[d + 1];
        }
        p.string(name);
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.op(b"(");
        // persistent id ('storage', FloatStorage, key, location, numel)
        p.op(b"(");
        p.string("storage");
        p.global("torch", "FloatStorage");
        p.string(&i.to_string());
        p.string("cpu");
        p.int(t.numel() as i64);
        p.op(b"tQ");
        p.int(0);
        p.int_tuple(&size);
        p.int_tuple(&stride);
        p.op(b"\x89");
        p.empty_ordered_dict();
        p.op(b"tR");
        let v: Vec<f32> = Vec::try_from(t.flatten(0, -1))?;
        storages.push(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
    }
    p.op(b"u.");

    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .with_alignment(64)
        .large_file(false);
    zip.start_file("archive/data.pkl", opts)?;
    zip.write_all(&p.0)?;
    zip.start_file("archive/byteorder", opts)?;
    zip.write_all(b"little")?;
    for (i, bytes) in storages.iter().enumerate() {
        zip.start_file(format!("archive/data/{i}"), opts)?;
        zip.write_all(bytes)?;
    }
    zip.start_file("archive/version", opts)?;
    zip.write_all(b"3\n")?;
    let bytes = zip.finish()?.into_inner();
    write_atomic(path, &bytes)
}
