//! `--device auto|cpu|cuda` and precision selection.

use anyhow::{bail, Result};
use tch::Device;

/// Makes libtorch's CUDA backend available. The linker may drop `libtorch_cuda.so` because no
/// symbol of it is referenced directly; loading it registers the CUDA kernels.
fn load_cuda_backend() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        {
            let name = "libtorch_cuda.so";
            let c = std::ffi::CString::new(name).unwrap();
            // SAFETY: dlopen with a valid C string; the handle is intentionally leaked.
            unsafe {
                libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
            }
        }
    });
}

/// The device named by `--device`. On CUDA, cuDNN autotuning is switched on: every command
/// runs the same few convolution shapes many times, so the one-off search pays for itself.
pub fn parse_device(s: &str) -> Result<Device> {
    let device = select_device(s)?;
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    Ok(device)
}

fn select_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            load_cuda_backend();
            Ok(Device::cuda_if_available())
        }
        "cuda" => {
            load_cuda_backend();
            if !tch::Cuda::is_available() {
                bail!("--device cuda was requested but libtorch sees no CUDA GPU");
            }
            Ok(Device::Cuda(0))
        }
        other => match other
            .strip_prefix("cuda:")
            .and_then(|i| i.parse::<usize>().ok())
        {
            Some(i) => {
                load_cuda_backend();
                if (i as i64) >= tch::Cuda::device_count() {
                    bail!(
                        "--device {other}: libtorch sees {} CUDA devices",
                        tch::Cuda::device_count()
                    );
                }
                Ok(Device::Cuda(i))
            }
            None => bail!("unknown device {other:?} (auto, cpu, cuda or cuda:N)"),
        },
    }
}

/// Whether this CPU computes bf16 natively (x86 AVX512-BF16 or AMX-BF16, Arm BF16); without it
/// oneDNN emulates bf16 and `--precision bf16` is slower than fp32. Unknown (no /proc/cpuinfo):
/// assumed yes, so that nothing warns wrongly.
pub fn cpu_has_native_bf16() -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return true;
    };
    let mut flag_lines = info
        .lines()
        .filter(|l| l.starts_with("flags") || l.starts_with("Features"))
        .peekable();
    if flag_lines.peek().is_none() {
        return true;
    }
    flag_lines.any(|l| {
        l.split_whitespace()
            .any(|f| matches!(f, "avx512_bf16" | "amx_bf16" | "bf16"))
    })
}

/// One line on stderr when `kind` on `device` would be a trap: bf16 on a CPU without native bf16.
pub fn warn_if_slow(precision: crate::util::precision::Precision, device: Device) {
    if precision == crate::util::precision::Precision::Bf16
        && device == Device::Cpu
        && !cpu_has_native_bf16()
    {
        eprintln!("warning: this CPU has no native bf16 (no avx512_bf16/amx_bf16 flag): --precision bf16 is emulated and slower than fp32 here; use --precision fp32");
    }
}

pub fn describe(d: Device) -> String {
    match d {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}
