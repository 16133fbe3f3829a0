//! Reading `.npy` arrays and uncompressed `.npz` archives (what `np.save` / `np.savez` and a3ft
//! write), checked: tch's own readers trust the header's shape and read past the data (a crash,
//! or silent garbage) when a file's header claims more than it holds, so every header is parsed
//! here and its shape × item size must equal the bytes that follow.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::Path;
use tch::{Kind, Tensor};

/// One array from the bytes of a `.npy` file; `what` names it in errors.
pub fn from_bytes(bytes: &[u8], what: &str) -> Result<Tensor> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("{what} is not a .npy array (no NUMPY magic)");
    }
    let (header_len, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => bail!("{what}: unsupported .npy version {v}"),
    };
    let end = start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .with_context(|| format!("{what}: .npy header longer than the file"))?;
    let header = std::str::from_utf8(&bytes[start..end])
        .with_context(|| format!("{what}: .npy header is not text"))?;
    let field = |key: &str| -> Result<&str> {
        let at = header
            .find(&format!("'{key}':"))
            .with_context(|| format!("{what}: .npy header has no '{key}'"))?;
        Ok(header[at + key.len() + 3..].trim_start())
    };
    let descr = field("descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .with_context(|| format!("{what}: bad descr in .npy header"))?;
    let (kind, size) = match descr.trim_start_matches(['<', '|', '=']) {
        "u1" => (Kind::Uint8, 1),
        "i1" => (Kind::Int8, 1),
        "b1" => (Kind::Bool, 1),
        "i2" => (Kind::Int16, 2),
        "i4" => (Kind::Int, 4),
        "i8" => (Kind::Int64, 8),
        "f2" => (Kind::Half, 2),
        "f4" => (Kind::Float, 4),
        "f8" => (Kind::Double, 8),
        other => {
            bail!("{what}: unsupported .npy dtype {other:?} (little-endian bool, int or float)")
        }
    };
    if field("fortran_order")?.starts_with("True") {
        bail!("{what}: Fortran-ordered .npy arrays are not supported (save a C-ordered copy)");
    }
    let shape_text = field("shape")?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .with_context(|| format!("{what}: bad shape in .npy header"))?;
    let mut shape = Vec::new();
    for d in inner.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        shape.push(
            d.parse::<i64>()
                .ok()
                .filter(|&n| n >= 0)
                .with_context(|| format!("{what}: bad dimension {d:?} in .npy header"))?,
        );
    }
    let want = shape
        .iter()
        .try_fold(size as u64, |acc, &n| acc.checked_mul(n as u64))
        .with_context(|| format!("{what}: .npy shape {shape:?} overflows"))?;
    let have = (bytes.len() - end) as u64;
    if want != have {
        bail!("{what}: .npy header says shape {shape:?} of {descr} ({want} bytes) but the file holds {have} bytes of data");
    }
    Tensor::f_from_data_size(&bytes[end..], &shape, kind)
        .with_context(|| format!("{what}: cannot make a tensor of the .npy data"))
}

/// The array of a `.npy` file.
pub fn read_npy(path: &Path) -> Result<Tensor> {
    let bytes = crate::util::files::read_file(path)?;
    from_bytes(&bytes, &path.display().to_string())
}

/// The arrays of an uncompressed `.npz` archive (`np.savez`), by name without `.npy`.
pub fn read_npz(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let file = crate::util::files::open_regular(path)?;
    let mut zip = zip::ZipArchive::new(file)
        .with_context(|| format!("{} is not a .npz (zip) archive", path.display()))?;
    let mut out = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .with_context(|| format!("{}: damaged entry {i}", path.display()))?;
        let name = entry
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| format!("#{i}"));
        if entry.compression() != zip::CompressionMethod::Stored {
            bail!(
                "{}: entry {name} is compressed ({}); only uncompressed .npz (np.savez) is read",
                path.display(),
                entry.compression()
            );
        }
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .with_context(|| format!("{}: cannot read entry {name}", path.display()))?;
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        out.push((
            key,
            from_bytes(&bytes, &format!("{} entry {name}", path.display()))?,
        ));
    }
    Ok(out)
}

/// The `.npy` (version 1) bytes of a tensor, as `np.save` writes them: little-endian, C order.
pub fn to_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let t = t.detach().to_device(tch::Device::Cpu).contiguous();
    let descr = match t.kind() {
        Kind::Uint8 => "|u1",
        Kind::Int8 => "|i1",
        Kind::Bool => "|b1",
        Kind::Int16 => "<i2",
        Kind::Int => "<i4",
        Kind::Int64 => "<i8",
        Kind::Half => "<f2",
        Kind::Float => "<f4",
        Kind::Double => "<f8",
        k => bail!("a {k:?} tensor has no .npy dtype (numpy has no bfloat16); convert it first"),
    };
    let size = t.size();
    let shape = match size.len() {
        1 => format!("({},)", size[0]),
        _ => format!(
            "({})",
            size.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // numpy pads the header with spaces to a multiple of 64 bytes, ending in a newline.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let numel = t.numel();
    let mut out = Vec::with_capacity(10 + header.len() + numel * t.kind().elt_size_in_bytes());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    let start = out.len();
    out.resize(start + numel * t.kind().elt_size_in_bytes(), 0);
    t.f_copy_data_u8(&mut out[start..], numel)
        .context("cannot copy a tensor's data")?;
    Ok(out)
}

/// Writes named arrays as an uncompressed `.npz` (`np.savez`) to `w`.
pub fn write_npz<W: std::io::Write + std::io::Seek, S: AsRef<str>, T: AsRef<Tensor>>(
    w: W,
    arrays: &[(S, T)],
) -> Result<W> {
    let mut zip = zip::ZipWriter::new(w).set_auto_large_file();
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, t) in arrays {
        let bytes = to_bytes(t.as_ref())?;
        zip.start_file(
            format!("{}.npy", name.as_ref()),
            options.large_file(bytes.len() as u64 >= u32::MAX as u64),
        )
        .map_err(zip_error)?;
        std::io::Write::write_all(&mut zip, &bytes)?;
    }
    zip.finish().map_err(zip_error)
}

/// A zip error as its cause alone (the I/O error of a full disk reads as that, not as Debug).
fn zip_error(e: zip::result::ZipError) -> anyhow::Error {
    match e {
        zip::result::ZipError::Io(io) => io.into(),
        other => anyhow::anyhow!("{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(header.len() as u16).to_le_bytes());
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn npz_written_reads_back() {
        let a = Tensor::arange(24, (Kind::Uint8, tch::Device::Cpu)).reshape([2, 3, 4]);
        let b = Tensor::from_slice(&[1.5f32, -2.0]);
        let c = Tensor::from_slice(&[7i64]).reshape([1, 1]);
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.npz");
        write_npz(
            std::fs::File::create(&path).unwrap(),
            &[("a", &a), ("b", &b), ("c", &c)],
        )
        .unwrap();
        let back = read_npz(&path).unwrap();
        assert_eq!(
            back.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        for ((_, got), want) in back.iter().zip([&a, &b, &c]) {
            assert_eq!((got.kind(), got.size()), (want.kind(), want.size()));
            assert!(got.equal(want));
        }
        assert!(to_bytes(&b.to_kind(Kind::BFloat16)).is_err());
    }

    #[test]
    fn reads_what_numpy_writes() {
        let t = from_bytes(&npy("|u1", "(2, 3)", &[1, 2, 3, 4, 5, 6]), "x").unwrap();
        assert_eq!(t.size(), [2, 3]);
        assert_eq!(i64::try_from(t.sum(Kind::Int64)).unwrap(), 21);
        let f = from_bytes(&npy("<f4", "(2,)", &[0, 0, 128, 63, 0, 0, 0, 64]), "x").unwrap();
        assert_eq!(Vec::<f32>::try_from(f).unwrap(), [1.0, 2.0]);
        let scalar = from_bytes(&npy("<i8", "()", &7i64.to_le_bytes()), "x").unwrap();
        assert_eq!(i64::try_from(scalar).unwrap(), 7);
    }

    #[test]
    fn a_header_that_lies_is_an_error_not_a_read_past_the_data() {
        for (descr, shape, len) in [
            ("|u1", "(2000, 64, 64, 3)", 100),
            ("<f4", "(4, 8, 8, 3)", 100),
            ("|u1", "(9223372036854775807, 9223372036854775807)", 4),
            ("<f4", "(3,)", 13),
        ] {
            let e = from_bytes(
                &npy(descr, shape, &vec![0; len]),
                "samples.npz entry arr_0.npy",
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.starts_with("samples.npz entry arr_0.npy") && !e.contains('\n'),
                "{e}"
            );
        }
        for bad in [
            &b"not numpy"[..],
            &npy(">f4", "(1,)", &[0; 4]),
            &npy("<c8", "(1,)", &[0; 8]),
            &npy("<f4", "(-1,)", &[]),
        ] {
            assert!(from_bytes(bad, "x").is_err());
        }
    }
}
