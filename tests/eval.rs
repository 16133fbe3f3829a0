//! Evaluation against goldens from Pillow, NumPy/SciPy and clean-fid 0.1.35
//! (tests/fixtures/eval, made by scripts/make_eval_goldens.py).

use crate::util::{a3ft, fixture};
use a3ft::metrics::{self, fid, inception::Inception, resize::resize_plane_f32};
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

/// `tests/fixtures/eval/<name>`.
fn golden(name: &str) -> PathBuf {
    fixture("eval").join(name)
}

fn expected(key: &str) -> f64 {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden("expected.json")).unwrap()).unwrap();
    v[key].as_f64().unwrap()
}

fn npz(name: &str) -> Vec<(String, Tensor)> {
    Tensor::read_npz(golden(name)).unwrap()
}

#[test]
fn resize_matches_pillow() {
    let arrays = npz("resize.npz");
    let get = |k: &str| {
        arrays
            .iter()
            .find(|(n, _)| n == k)
            .unwrap()
            .1
            .shallow_clone()
    };
    for case in ["up", "down", "mixed"] {
        let input = get(&format!("{case}_in"));
        let (h, w) = (input.size()[0] as usize, input.size()[1] as usize);
        let plane: Vec<f32> = Vec::<u8>::try_from(input.flatten(0, -1))
            .unwrap()
            .into_iter()
            .map(f32::from)
            .collect();
        let ours = resize_plane_f32(&plane, w, h, 299, 299);
        let reference: Vec<f32> =
            Vec::try_from(get(&format!("{case}_out")).flatten(0, -1)).unwrap();
        let worst = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // Same coefficients and f64 accumulation: equal up to the last f32 bit.
        assert!(worst <= 1e-4, "{case}: max |ours − Pillow| = {worst}");
    }
}

#[test]
fn fid_kid_on_features_match_clean_fid() {
    let arrays = npz("features.npz");
    let f1 = &arrays.iter().find(|(n, _)| n == "f1").unwrap().1;
    let f2 = &arrays.iter().find(|(n, _)| n == "f2").unwrap().1;
    let v = fid::fid(f1, f2).unwrap();
    let e = expected("features_fid");
    // N = 64 ≪ 2048: singular covariances, where scipy's sqrtm and the eigen route differ slightly.
    assert!((v - e).abs() <= 1e-3 * e, "FID {v} vs clean-fid {e}");
    let k = fid::kid(f1, f2, 100, 1000, 0).unwrap();
    let ek = expected("features_kid");
    assert!(
        (k - ek).abs() <= 1e-5 * ek.abs().max(1.0),
        "KID {k} vs clean-fid {ek}"
    );
    // FID(X, X) = 0 up to the eigen-solver's rounding on a rank-63 covariance (trace ~ 700).
    let self_fid = fid::fid(f1, f1).unwrap();
    assert!(self_fid.abs() < 1e-6 * e, "FID(X, X) = {self_fid}");
    let k21 = fid::kid(f2, f1, 100, 1000, 3).unwrap();
    assert!((k - k21).abs() < 1e-9);
}

#[test]
fn inception_file_fingerprints() {
    let path = metrics::inception::default_path();
    assert!(
        path.exists(),
        "{} missing: run `make inception`",
        path.display()
    );
    let module = tch::CModule::load(&path).unwrap();
    let params: Vec<(String, Tensor)> = module.named_parameters().unwrap();
    let get = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name || n.ends_with(&format!(".{name}")))
            .unwrap_or_else(|| panic!("{name} not in file"))
            .1
            .shallow_clone()
    };
    let sum = |t: Tensor| f64::try_from(t.to_kind(Kind::Double).sum(Kind::Double)).unwrap();
    for (name, want) in [
        ("layers.conv.weight", -0.409265),
        ("layers.conv.beta", 23.163197),
        ("layers.conv.mean", -1.035949),
        ("layers.conv.var", 7.871586),
        ("layers.conv_4.weight", 100.333877),
        ("layers.mixed_3.conv.weight", -85.255700),
        ("layers.mixed_10.tower_2_conv.weight", 22.702086),
        ("layers.mixed_10.tower_2_conv.var", 14.557066),
    ] {
        let got = sum(get(name));
        assert!((got - want).abs() < 1e-4, "{name}: {got} vs {want}");
    }
    let total = params.iter().map(|(_, t)| t.numel()).sum::<usize>();
    assert_eq!(total, 21_802_784);
    // A wrong file is refused with a message saying how to get the right one.
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("not-inception.pt");
    std::fs::write(&bogus, b"nope").unwrap();
    let e = Inception::load(Some(&bogus), Device::Cpu).err().unwrap();
    assert!(format!("{e:#}").contains("make inception"), "{e:#}");
}

#[test]
fn eval_on_folders_matches_clean_fid() {
    let net = Inception::load(None, Device::Cpu).unwrap();
    let fa = metrics::folder_features(&net, &golden("folder_a"), false).unwrap();
    let fb = metrics::folder_features(&net, &golden("folder_b"), false).unwrap();
    let sum = f64::try_from(fa.to_kind(Kind::Double).sum(Kind::Double)).unwrap();
    let esum = expected("folder_a_feature_sum");
    assert!(
        (sum - esum).abs() <= 1e-5 * esum,
        "feature sum {sum} vs {esum}"
    );
    let v = fid::fid(&fa, &fb).unwrap();
    let e = expected("folders_fid");
    assert!((v - e).abs() <= 0.005 * e, "FID {v} vs clean-fid {e}");
    let k = fid::kid(&fa, &fb, 100, 1000, 0).unwrap();
    let ek = expected("folders_kid");
    assert!((k - ek).abs() <= 2e-4, "KID {k} vs clean-fid {ek}");
}

/// Runs `a3ft eval --generated GEN --reference REF --json` and returns its JSON and its own
/// peak memory in MiB.
fn eval_peak_mib(
    dir: &std::path::Path,
    gen: &std::path::Path,
    reference: &std::path::Path,
) -> (serde_json::Value, i64) {
    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
    let child = a3ft([
        "eval",
        "--generated",
        gen.to_str().unwrap(),
        "--reference",
        reference.to_str().unwrap(),
        "--device",
        "cpu",
        "--json",
    ])
    .stdout(std::fs::File::create(&out_path).unwrap())
    .stderr(std::fs::File::create(&err_path).unwrap())
    .spawn()
    .unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value (plain integers).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 writes only into the two out-parameters, which live for the call; it gives
    // this child's own peak memory.
    assert_eq!(
        unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) },
        child.id() as i32
    );
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{}",
        std::fs::read_to_string(&err_path).unwrap()
    );
    (
        serde_json::from_str(&std::fs::read_to_string(&out_path).unwrap()).unwrap(),
        usage.ru_maxrss / 1024,
    )
}

/// `a3ft eval --generated` on images of different sizes, two of them 2048 px: scored (clean-fid
/// resizes each image on its own), and memorisation compares them at a bounded size, so the
/// large images cost little more memory than small ones (before, they took 1.3 GB more: 2.8 GB
/// against the Inception pass's 1.5 GB).
#[test]
fn eval_scores_mixed_sizes_within_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("ref");
    std::fs::create_dir_all(&reference).unwrap();
    for e in std::fs::read_dir(golden("folder_a")).unwrap().take(6) {
        let p = e.unwrap().path();
        std::fs::copy(&p, reference.join(p.file_name().unwrap())).unwrap();
    }
    let mut peaks = Vec::new();
    for large in [64u32, 2048] {
        let gen = dir.path().join(format!("gen{large}"));
        std::fs::create_dir_all(&gen).unwrap();
        for (i, side) in [large, large, 64, 48].into_iter().enumerate() {
            image::RgbImage::from_fn(side, side, |x, y| {
                image::Rgb([(x % 251) as u8, (y % 241) as u8, (i * 60) as u8])
            })
            .save(gen.join(format!("g{i}.png")))
            .unwrap();
        }
        let (v, peak) = eval_peak_mib(dir.path(), &gen, &reference);
        assert_eq!(v["num_generated"], 4);
        assert!(v["fid"].as_f64().unwrap().is_finite());
        peaks.push(peak);
    }
    assert!(
        peaks[1] < peaks[0] + 400,
        "eval with two 2048-px images peaked at {} MiB, with 64-px ones at {} MiB",
        peaks[1],
        peaks[0]
    );
}

/// A study lets go of the shared network before it measures a run's peak memory: after
/// `release_shared` nothing but its callers hold the old one, and the next call loads anew.
#[test]
fn shared_inception_can_be_released() {
    use std::rc::Rc;
    let a = Inception::shared(None, Device::Cpu).unwrap();
    let b = Inception::shared(None, Device::Cpu).unwrap();
    assert!(Rc::ptr_eq(&a, &b), "shared loads once per thread");
    Inception::release_shared();
    assert_eq!(
        Rc::strong_count(&a),
        2,
        "released, only its two callers hold it"
    );
    let c = Inception::shared(None, Device::Cpu).unwrap();
    assert!(!Rc::ptr_eq(&a, &c), "loaded anew after the release");
}
