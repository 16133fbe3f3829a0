//! Bad input, end to end: the built binary is run over bad flags, files, folders and configs.
//!
//! Every case must fail quickly with exit status 1 (our errors) or 2 (usage errors), print
//! exactly one `error:` line naming the offending thing (other lines may only be `note:` or
//! `warning:` lines), never panic or print a backtrace, and leave its input files unchanged.
//! The cases are rows of tables: adding one is one line.

use crate::util::{a3ft, fixture};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(60);

/// One bad invocation: the arguments (`{name}` placeholders are paths of [`Env`]) and the
/// texts the error line must contain.
struct Case {
    args: &'static str,
    needles: &'static [&'static str],
}

const fn case(args: &'static str, needles: &'static [&'static str]) -> Case {
    Case { args, needles }
}

/// Inputs shared by the cases, built once per test in a temporary folder.
struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    vars: BTreeMap<&'static str, String>,
}

/// PNG with a valid header declaring `w × h` RGB8 and a token IDAT: no decoder gets to the
/// pixels, but the header is what a careless loader sizes its buffer from.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, body) in [
        (&b"IHDR"[..], &ihdr[..]),
        (b"IDAT", &[0x78, 0x9c, 0x63, 0x60][..]),
        (b"IEND", &[][..]),
    ] {
        let mut c = kind.to_vec();
        c.extend(body);
        out.extend((body.len() as u32).to_be_bytes());
        out.extend(&c);
        out.extend(crc32(&c).to_be_bytes());
    }
    out
}

fn write_png(path: &Path, w: u32, h: u32, seed: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 30) as u8 ^ seed, (y * 30) as u8, seed])
    })
    .save(path)
    .unwrap();
}

/// The tiny model (8 px, 100 steps) of tests/fixtures/variants with one tensor changed: its
/// first value, or all of them.
fn write_checkpoint_with(path: &Path, name: &str, value: f32, all: bool) {
    let mut state =
        a3ft::io::checkpoint::load_state_dict(&fixture("variants/plain.pt"), None).unwrap();
    let t = state.get_mut(name).unwrap();
    let _ = if all {
        t.fill_(value as f64)
    } else {
        t.view(-1).get(0).fill_(value as f64)
    };
    let tensors: Vec<(String, tch::Tensor)> = state.into_iter().collect();
    a3ft::io::checkpoint::save_safetensors(path, &tensors, Default::default()).unwrap();
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let inp = root.join("in");
        let mut vars = BTreeMap::new();
        let mut set = |k: &'static str, p: PathBuf| {
            vars.insert(k, p.display().to_string());
        };
        set("out", root.join("out"));
        set("cfg", fixture("variants/config.json"));
        set("ck", fixture("variants/plain.pt"));
        set("truncated", fixture("variants/truncated.pt"));
        set("garbage", fixture("variants/garbage.pt"));
        set("mismatched", fixture("variants/mismatched.pt"));
        std::fs::create_dir_all(&inp).unwrap();

        // Checkpoints: NaN and Inf weights, weights that make sampling overflow, broken files.
        write_checkpoint_with(
            &inp.join("nan.safetensors"),
            "input_blocks.0.0.weight",
            f32::NAN,
            false,
        );
        write_checkpoint_with(
            &inp.join("inf.safetensors"),
            "out.2.weight",
            f32::NEG_INFINITY,
            false,
        );
        write_checkpoint_with(&inp.join("overflow.safetensors"), "out.2.bias", 3e38, true);
        let st = std::fs::read(inp.join("nan.safetensors")).unwrap();
        std::fs::write(inp.join("cut.safetensors"), &st[..st.len() / 2]).unwrap();
        std::fs::write(inp.join("empty.pt"), b"").unwrap();
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(inp.join("noise.pt"), &noise).unwrap();
        std::fs::create_dir_all(inp.join("adir.pt")).unwrap();
        for k in [
            "nan.safetensors",
            "inf.safetensors",
            "overflow.safetensors",
            "cut.safetensors",
            "empty.pt",
            "noise.pt",
            "adir.pt",
        ] {
            let name: &'static str = k.split('.').next().unwrap();
            vars.insert(name, inp.join(k).display().to_string());
        }

        // Image folders.
        for i in 0..3 {
            write_png(&inp.join("imgs").join(format!("{i}.png")), 8, 8, i as u8);
        }
        let looped = inp.join("loop");
        for i in 0..3 {
            write_png(&looped.join(format!("{i}.png")), 8, 8, 10 + i as u8);
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(".", looped.join("self")).unwrap();
            std::os::unix::fs::symlink("../loop", looped.join("up")).unwrap();
            std::os::unix::fs::symlink("0.png", looped.join("again.png")).unwrap();
        }
        std::fs::create_dir_all(inp.join("huge")).unwrap();
        std::fs::write(inp.join("huge/20000.png"), png_header_only(20_000, 20_000)).unwrap();
        write_png(&inp.join("huge/ok.png"), 8, 8, 1);
        write_png(&inp.join("huge/ok2.png"), 8, 8, 2);
        // A GIF whose screen and frame declare 60000 × 60000.
        let mut gif = b"GIF89a".to_vec();
        gif.extend([
            0x60, 0xEA, 0x60, 0xEA, 0, 0, 0, 0x2C, 0, 0, 0, 0, 0x60, 0xEA, 0x60, 0xEA, 0, 2, 2,
            0x44, 1, 0, 0x3B,
        ]);
        std::fs::create_dir_all(inp.join("hugegif")).unwrap();
        std::fs::write(inp.join("hugegif/big.gif"), gif).unwrap();
        write_png(&inp.join("hugegif/ok.png"), 8, 8, 1);
        write_png(&inp.join("mixed/a.png"), 8, 8, 1);
        write_png(&inp.join("mixed/b.png"), 12, 8, 2);
        std::fs::create_dir_all(inp.join("noimg")).unwrap();
        std::fs::write(inp.join("noimg/readme.txt"), b"no images here").unwrap();
        #[cfg(unix)]
        {
            for i in 0..2 {
                write_png(&inp.join("fifo").join(format!("{i}.png")), 8, 8, i as u8);
            }
            let c =
                std::ffi::CString::new(inp.join("fifo/pipe.png").display().to_string()).unwrap();
            // SAFETY: valid C string; mkfifo only creates a file system entry.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        }
        // `a3ft sample`'s layout: samples, their grid (another size) and samples.npz.
        for i in 0..3 {
            write_png(
                &inp.join("samples").join(format!("{i:06}.png")),
                8,
                8,
                i as u8,
            );
        }
        write_png(&inp.join("samples/grid.png"), 28, 18, 9);
        std::fs::write(inp.join("samples/samples.npz"), b"stand-in").unwrap();
        std::fs::write(inp.join("afile"), b"not a folder").unwrap();
        // A user's image named as `data synth` names its output.
        write_png(&inp.join("synthclash/target_000001.png"), 8, 8, 3);
        for k in [
            "imgs",
            "loop",
            "huge",
            "hugegif",
            "mixed",
            "noimg",
            "fifo",
            "samples",
            "afile",
            "synthclash",
        ] {
            vars.insert(k, inp.join(k).display().to_string());
        }

        // Model configs: one file per bad value.
        let cfgs = inp.join("cfg");
        std::fs::create_dir_all(&cfgs).unwrap();
        let base = r#""image_size":8,"num_channels":32,"channel_mult":"1","attention_resolutions":"8","num_heads":2,"diffusion_steps":100"#;
        for (name, extra) in BAD_CONFIGS {
            let text = if extra.starts_with('!') {
                extra[1..].to_string()
            } else {
                format!("{{{base},{extra}}}")
            };
            std::fs::write(cfgs.join(format!("{name}.json")), text).unwrap();
        }
        vars.insert("cfgs", cfgs.display().to_string());

        // debug step inputs.
        tch::Tensor::zeros([0, 3, 8, 8], (tch::Kind::Float, tch::Device::Cpu))
            .write_npy(inp.join("x0_empty.npy"))
            .unwrap();
        tch::Tensor::zeros([0], (tch::Kind::Int64, tch::Device::Cpu))
            .write_npy(inp.join("t_empty.npy"))
            .unwrap();
        tch::Tensor::zeros([1, 3, 8, 8], (tch::Kind::Float, tch::Device::Cpu))
            .write_npy(inp.join("x0_one.npy"))
            .unwrap();
        tch::Tensor::zeros([1], (tch::Kind::Int64, tch::Device::Cpu))
            .write_npy(inp.join("t_one.npy"))
            .unwrap();
        // Golden arrays of the official code hold the arrays debug step writes.
        std::fs::copy(fixture("adm-plain/expected.npz"), inp.join("golden.npz")).unwrap();
        vars.insert("golden", inp.join("golden.npz").display().to_string());
        vars.insert("x0_one", inp.join("x0_one.npy").display().to_string());
        vars.insert("t_one", inp.join("t_one.npy").display().to_string());
        vars.insert("x0_empty", inp.join("x0_empty.npy").display().to_string());
        vars.insert("t_empty", inp.join("t_empty.npy").display().to_string());
        Env {
            _tmp: tmp,
            root,
            vars,
        }
    }

    fn expand(&self, args: &str) -> Vec<String> {
        args.split_whitespace()
            .map(|a| {
                let mut s = a.to_string();
                for (k, v) in &self.vars {
                    s = s.replace(&format!("{{{k}}}"), v);
                }
                s
            })
            .collect()
    }

    /// SHA-256 of every regular file under the inputs (links are not followed).
    fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        use sha2::{Digest, Sha256};
        let mut out = BTreeMap::new();
        let mut stack = vec![self.root.join("in"), fixture("variants")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let m = std::fs::symlink_metadata(&p).unwrap();
                if m.is_dir() {
                    stack.push(p);
                } else if m.is_file() {
                    out.insert(
                        p.clone(),
                        format!("{:x}", Sha256::digest(std::fs::read(&p).unwrap())),
                    );
                }
            }
        }
        out
    }
}

/// `(file name, JSON)`; the JSON is added to a valid tiny config, or replaces it after `!`.
const BAD_CONFIGS: &[(&str, &str)] = &[
    ("res_blocks_float", r#""num_res_blocks":1e7"#),
    ("res_blocks_big", r#""num_res_blocks":10000000"#),
    ("res_blocks_zero", r#""num_res_blocks":0"#),
    ("res_blocks_neg", r#""num_res_blocks":-2"#),
    ("res_blocks_frac", r#""num_res_blocks":1.5"#),
    ("image_size_huge", r#""image_size":1099511627776"#),
    ("image_size_expr", "!{\"image_size\": 2^40}"),
    ("image_size_u64", r#""image_size":18446744073709551615"#),
    ("channels_huge", r#""num_channels":1e9"#),
    (
        "params_huge",
        r#""num_channels":1024,"channel_mult":"16,16","image_size":64,"attention_resolutions":"64""#,
    ),
    ("mult_zero", r#""channel_mult":"1,0""#),
    ("mult_neg", r#""channel_mult":[-1]"#),
    ("mult_empty_48", r#""channel_mult":"","image_size":48"#),
    ("mult_levels", r#""channel_mult":"1,1,1,1,1""#),
    ("attn_unreached", r#""attention_resolutions":"2""#),
    ("attn_nondiv", r#""attention_resolutions":"3""#),
    ("heads_zero", r#""num_heads":0"#),
    ("head_channels_zero", r#""num_head_channels":0"#),
    ("heads_up_zero", r#""num_heads_upsample":0"#),
    ("dropout_one", r#""dropout":1.0"#),
    ("steps_zero", r#""diffusion_steps":0"#),
    ("steps_huge", r#""diffusion_steps":1e12"#),
    ("steps_few_linear", r#""diffusion_steps":5"#),
    ("schedule", r#""noise_schedule":"quadratic""#),
    ("respacing", r#""timestep_respacing":"ddim0""#),
    ("p2", r#""p2_gamma":-1"#),
    ("typo", r#""num_chanels":32"#),
    ("bool_type", r#""learn_sigma":"yes""#),
    ("array", "![1, 2, 3]"),
    ("empty", "!"),
];

fn run_cases(env: &Env, cases: &[Case]) {
    let before = env.snapshot();
    let mut failures = Vec::new();
    for c in cases {
        let args = env.expand(c.args);
        let out_dir = env.root.join("out");
        let _ = std::fs::remove_dir_all(&out_dir);
        let start = Instant::now();
        let mut child = a3ft(&args)
            .env("RUST_BACKTRACE", "1")
            .env("A3FT_CACHE", env.root.join("cache"))
            .env_remove("A3FT_INCEPTION")
            .spawn()
            .unwrap();
        // Drain both pipes while waiting, so a chatty child cannot block on a full pipe.
        let mut so = child.stdout.take().unwrap();
        let mut se = child.stderr.take().unwrap();
        let t_out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = so.read_to_string(&mut s);
            s
        });
        let t_err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = se.read_to_string(&mut s);
            s
        });
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if start.elapsed() > TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let (_stdout, stderr) = (t_out.join().unwrap(), t_err.join().unwrap());
        let shown = format!("a3ft {}", c.args);
        let Some(status) = status else {
            failures.push(format!("{shown}: still running after {TIMEOUT:?} (killed)"));
            continue;
        };
        // libtorch's own warnings ("[W… NNPACK.cpp…] Could not initialize NNPACK" on some
        // CPUs) depend on the machine, not on a3ft.
        let lines: Vec<&str> = stderr
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty() && !l.starts_with("[W"))
            .collect();
        let errors: Vec<&&str> = lines.iter().filter(|l| l.starts_with("error:")).collect();
        let problem = if !matches!(status.code(), Some(1) | Some(2)) {
            Some(format!("exit status {status}"))
        } else if stderr.contains("panicked")
            || stderr.contains("RUST_BACKTRACE")
            || stderr.contains("stack backtrace")
        {
            Some("panicked".to_string())
        } else if errors.len() != 1 {
            Some(format!("{} error lines", errors.len()))
        } else if errors[0].len() > 1000 {
            Some(format!("error line of {} characters", errors[0].len()))
        } else if let Some(l) = lines.iter().find(|l| {
            !["error:", "warning:", "note:"]
                .iter()
                .any(|p| l.starts_with(p))
        }) {
            Some(format!("stray stderr line {l:?}"))
        } else {
            c.needles
                .iter()
                .find(|n| !errors[0].contains(&env.expand(n).join(" ")))
                .map(|n| format!("error line lacks {n:?}"))
        };
        if let Some(p) = problem {
            failures.push(format!(
                "{shown}: {p}\n    stderr: {}",
                stderr.trim_end().replace('\n', "\n            ")
            ));
        }
    }
    let after = env.snapshot();
    for (p, h) in &before {
        if after.get(p) != Some(h) {
            failures.push(format!("input {} changed or vanished", p.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

const SAMPLE: &str = "sample --model-config {cfg} --checkpoint {ck} --out {out}";

#[test]
fn sample_bad_flags_and_checkpoints() {
    let env = Env::new();
    let cases: Vec<Case> = [
        ("--respacing 0", &["--respacing", "0 steps"][..]),
        ("--respacing ddim0", &["--respacing", "ddim0"]),
        ("--respacing -3", &["--respacing", "-3"]),
        ("--respacing abc", &["--respacing", "abc"]),
        ("--respacing 5,,5", &["--respacing", "empty count"]),
        ("--respacing 1000", &["--respacing", "only 100 diffusion steps"]),
        ("--respacing ddim1000", &["--respacing", "only 100 diffusion steps"]),
        ("--respacing 50,50,50", &["--respacing", "section"]),
        ("--respacing ddim99", &["--respacing", "ddim99"]),
        ("--respacing 1", &["--respacing", "single step"]),
        ("--ddim --eta nan", &["--eta", "NaN"]),
        ("--ddim --eta -0.5", &["--eta"]),
        ("--ddim --eta inf", &["--eta"]),
        ("--ddim --eta 1.5", &["--eta"]),
        ("--num 1000000000000", &["--num", "limit"]),
        ("--num 0", &["--num"]),
        ("--num -1", &["--num"]),
        ("--num ten", &["--num"]),
        ("--batch-size 1000000000000", &["--batch-size", "limit"]),
        ("--batch-size 0", &["--batch-size"]),
        ("--precision fp8", &["--precision", "fp8"]),
        ("--device tpu", &["tpu"]),
        ("--seed 1e3", &["--seed"]),
        ("--bogus", &["--bogus"]),
    ]
    .into_iter()
    .map(|(extra, needles)| {
        let mut args = format!("{SAMPLE} {extra}");
        for (flag, default) in [("--num", " --num 2"), ("--device", " --device cpu")] {
            if !extra.contains(flag) {
                args.push_str(default);
            }
        }
        Case { args: Box::leak(args.into_boxed_str()), needles }
    })
    .chain([
        case("sample --model-config {cfg} --checkpoint {nan} --out {out} --device cpu", &["{nan}", "input_blocks.0.0.weight", "NaN"]),
        case("sample --model-config {cfg} --checkpoint {inf} --out {out} --device cpu", &["{inf}", "out.2.weight", "infinite"]),
        case("sample --model-config {cfg} --checkpoint {cut} --out {out} --device cpu", &["{cut}"]),
        case("sample --model-config {cfg} --checkpoint {truncated} --out {out} --device cpu", &["{truncated}"]),
        case("sample --model-config {cfg} --checkpoint {garbage} --out {out} --device cpu", &["{garbage}"]),
        case("sample --model-config {cfg} --checkpoint {noise} --out {out} --device cpu", &["{noise}"]),
        case("sample --model-config {cfg} --checkpoint {empty} --out {out} --device cpu", &["{empty}", "empty"]),
        case("sample --model-config {cfg} --checkpoint {adir} --out {out} --device cpu", &["{adir}", "not a regular file"]),
        case("sample --model-config {cfg} --checkpoint {mismatched} --out {out} --device cpu", &["{mismatched}", "does not match"]),
        case("sample --model-config {cfg} --checkpoint /nonexistent/x.pt --out {out} --device cpu", &["/nonexistent/x.pt"]),
        case("sample --model-config {cfg} --checkpoint {overflow} --out {out} --device cpu --respacing 5", &["non-finite"]),
        case("sample --model-config {cfg} --checkpoint {ck} --out {afile} --device cpu", &["--out", "{afile}"]),
        case("sample --run {imgs} --out {out} --device cpu", &["{imgs}"]),
        case("sample --model-config /dev/zero --out {out} --device cpu", &["/dev/zero"]),
        case("sample --model-config {fifo}/pipe.png --out {out} --device cpu", &["pipe.png", "not a regular file"]),
        case("sample --model-config {cfg} --checkpoint {fifo}/pipe.png --out {out} --device cpu", &["pipe.png", "not a regular file"]),
    ])
    .collect();
    run_cases(&env, &cases);
}

#[test]
fn bad_model_configs() {
    let env = Env::new();
    let needles: &[(&str, &[&str])] = &[
        ("res_blocks_float", &["num_res_blocks", "limit of 16"]),
        ("res_blocks_big", &["num_res_blocks", "limit of 16"]),
        ("res_blocks_zero", &["num_res_blocks"]),
        ("res_blocks_neg", &["num_res_blocks"]),
        ("res_blocks_frac", &["num_res_blocks", "whole number"]),
        ("image_size_huge", &["image_size", "limit of 1024"]),
        ("image_size_expr", &["image_size"]),
        ("image_size_u64", &["image_size", "too large"]),
        ("channels_huge", &["num_channels", "limit of 1024"]),
        ("params_huge", &["parameters", "limit"]),
        ("mult_zero", &["channel_mult[1]"]),
        ("mult_neg", &["channel_mult[0]"]),
        ("mult_empty_48", &["channel_mult", "48"]),
        ("mult_levels", &["image_size 8", "channel_mult"]),
        (
            "attn_unreached",
            &["attention resolution 2", "never reached"],
        ),
        ("attn_nondiv", &["attention resolution 3"]),
        ("heads_zero", &["num_heads"]),
        ("head_channels_zero", &["num_head_channels"]),
        ("heads_up_zero", &["num_heads_upsample"]),
        ("dropout_one", &["dropout"]),
        ("steps_zero", &["diffusion_steps"]),
        ("steps_huge", &["diffusion_steps", "limit of 100000"]),
        ("steps_few_linear", &["diffusion_steps 5", "beta"]),
        ("schedule", &["noise_schedule", "quadratic"]),
        ("respacing", &["timestep_respacing", "ddim0"]),
        ("p2", &["p2_gamma"]),
        ("typo", &["num_chanels", "num_channels"]),
        ("bool_type", &["learn_sigma"]),
        ("array", &["JSON object"]),
        ("empty", &["not valid JSON"]),
    ];
    assert_eq!(needles.len(), BAD_CONFIGS.len());
    let mut cases = Vec::new();
    for (name, n) in needles {
        for cmd in [
            "inspect --model-config {cfgs}/NAME.json",
            "sample --model-config {cfgs}/NAME.json --out {out} --device cpu",
        ] {
            cases.push(Case {
                args: Box::leak(cmd.replace("NAME", name).into_boxed_str()),
                needles: n,
            });
        }
    }
    cases.push(case(
        "inspect --model-config /dev/zero",
        &["/dev/zero", "not a regular file"],
    ));
    cases.push(case("inspect --model-config {imgs}", &["{imgs}"]));
    cases.push(case("inspect --preset imagenet256", &["imagenet256"]));
    cases.push(case(
        "inspect --model-config {cfg} --checkpoint {nan}",
        &["{nan}", "input_blocks.0.0.weight"],
    ));
    cases.push(case(
        "inspect --model-config {cfg} --method lora --lora-rank 0",
        &["--lora-rank"],
    ));
    cases.push(case(
        "inspect --model-config {cfg} --method lora --lora-rank -4",
        &["--lora-rank"],
    ));
    run_cases(&env, &cases);
}

#[test]
fn eval_data_and_debug_bad_inputs() {
    let env = Env::new();
    // `--inception` points nowhere: a case that gets past every check ends at the weights, fast.
    const EVAL: &str = "eval --device cpu --inception /nonexistent/inception.pt";
    let cases: Vec<Case> = [
        ("--generated {imgs} --reference {imgs} --memo-threshold -1", &["--memo-threshold"][..]),
        ("--generated {imgs} --reference {imgs} --memo-threshold nan", &["--memo-threshold"]),
        ("--generated {imgs} --reference {imgs} --num-samples 1000000000000", &["--num-samples"]),
        ("--generated {imgs} --reference {imgs} --num-samples 1", &["--num-samples"]),
        ("--generated {imgs} --reference {imgs} --num-samples 5", &["--num-samples", "--run"]),
        ("--generated {imgs} --reference {imgs} --holdout {imgs}", &["--holdout", "--run"]),
        ("--generated {noimg} --reference {imgs}", &["--generated", "{noimg}"]),
        ("--generated {imgs} --reference {noimg}", &["--reference", "{noimg}"]),
        ("--generated {imgs} --reference /nonexistent/ref", &["/nonexistent/ref"]),
        ("--generated {afile} --reference {imgs}", &["{afile}"]),
        // Images of different sizes are scored (each resized on its own, as clean-fid does).
        ("--generated {mixed} --reference {imgs}", &["/nonexistent/inception.pt"]),
        ("--generated {huge} --reference {imgs}", &["20000.png", "20000×20000", "limit"]),
        ("--generated {fifo} --reference {imgs}", &["pipe.png", "not a regular file"]),
        ("--generated {hugegif} --reference {imgs}", &["big.gif", "60000×60000", "limit"]),
        // These pass every check: the walk ends (no loop), and the grid is not a sample.
        ("--generated {loop} --reference {loop}", &["/nonexistent/inception.pt"]),
        ("--generated {samples} --reference {imgs}", &["/nonexistent/inception.pt"]),
        ("--run {imgs} --reference {imgs}", &["{imgs}"]),
        // A malformed flag is refused as it is parsed, before any folder is read.
        ("--run {imgs} --reference {imgs} --respacing 0", &["--respacing", "0 steps"]),
    ]
    .into_iter()
    .map(|(extra, needles)| Case { args: Box::leak(format!("{EVAL} {extra}").into_boxed_str()), needles })
    .chain([
        case("data synth --domain target --size 100000 --num 1 --out {out}", &["--size", "100000"]),
        case("data synth --domain target --size 0 --num 1 --out {out}", &["--size"]),
        case("data synth --domain target --size -8 --num 1 --out {out}", &["--size"]),
        case("data synth --domain target --num 0 --out {out}", &["--num"]),
        case("data synth --domain target --num 1000000000000 --out {out}", &["--num", "limit"]),
        case("data synth --domain target --num 2 --first 18446744073709551615 --out {out}", &["--first"]),
        case("data synth --domain faces --num 2 --out {out}", &["faces"]),
        case("data synth --domain target --num 2 --out {afile}", &["{afile}"]),
        case("data synth --domain target --num 2 --size 8 --out {synthclash}", &["{synthclash}", "target_000001.png"]),
        case("inspect --model-config {cfg} --checkpoint {ck} --checkpoint-key nope", &["nope"]),
        case("eval --generated {imgs} --reference {imgs} --memo-threshold 1e300", &["1e300"]),
        case("bench train --model-config {cfg} --batch-size 0 --steps 1 --device cpu", &["--batch-size"]),
        case("bench train --model-config {cfg} --batch-size 18446744073709551615 --steps 1 --device cpu", &["--batch-size"]),
        case("bench train --model-config {cfg} --batch-size 100000 --steps 1 --device cpu", &["--batch-size"]),
        case("bench train --model-config {cfg} --batch-size 2 --steps 0 --device cpu", &["--steps"]),
        case("bench sample --model-config {cfg} --batch-size 0 --respacing 5 --device cpu", &["--batch-size"]),
        case("bench sample --model-config {cfg} --batch-size 100000 --respacing 5 --device cpu", &["--batch-size"]),
        case("debug step --model-config {cfg} --checkpoint {ck} --x0 /nonexistent/x0.npy --t {t_empty} --noise {x0_empty} --out {out}/d.npz --device cpu", &["x0"]),
        case("debug step --model-config {cfg} --checkpoint {ck} --x0 {x0_empty} --t {t_empty} --noise {x0_empty} --out {out}/d.npz --device cpu", &["empty batch"]),
        case("debug step --model-config {cfg} --checkpoint {ck} --x0 {fifo}/pipe.png --t {t_empty} --noise {x0_empty} --out {out}/d.npz --device cpu", &["--x0", "not a regular file"]),
        case("debug step --model-config {cfg} --checkpoint {nan} --x0 {x0_empty} --t {t_empty} --noise {x0_empty} --out {out}/d.npz --device cpu", &["{nan}"]),
        // Outputs never replace an input or any file that is not an earlier debug output.
        case("debug step --model-config {cfg} --checkpoint {ck} --x0 {x0_one} --t {t_one} --noise {x0_one} --out {x0_one} --device cpu", &["--out", "{x0_one}", "never overwritten"]),
        case("debug step --model-config {cfg} --checkpoint {ck} --x0 {x0_one} --t {t_one} --noise {x0_one} --out {afile} --device cpu", &["--out", "{afile}", "never overwritten"]),
        case("debug step --model-config {cfg} --checkpoint {ck} --x0 {x0_one} --t {t_one} --noise {x0_one} --out {ck} --device cpu", &["--out", "{ck}", "never overwritten"]),
        case("debug step --model-config {cfg} --checkpoint {ck} --x0 {x0_one} --t {t_one} --noise {x0_one} --out {golden} --device cpu", &["--out", "{golden}", "never overwritten"]),
        // Outputs that overflow are written for inspection, and the command fails.
        case("debug step --model-config {cfg} --checkpoint {overflow} --x0 {x0_one} --t {t_one} --noise {x0_one} --out {out}/d.npz --device cpu", &["NaN or infinite", "{out}/d.npz"]),
    ])
    .collect();
    run_cases(&env, &cases);
    // The sample folder above was evaluated without its grid.
    let out = a3ft(env.expand(&format!(
        "{EVAL} --generated {{samples}} --reference {{imgs}}"
    )))
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("leaving out") && stderr.contains("grid.png"),
        "{stderr}"
    );
}

/// `train` reads image folders through the same walker (--strict makes a bad image an error).
#[test]
fn train_image_folders() {
    let env = Env::new();
    let train = "train --model-config {cfg} --checkpoint {ck} --out {out} --method full --steps 1 --device cpu";
    let cases: Vec<Case> = [
        ("--data {huge} --strict", &["20000.png", "20000×20000"][..]),
        (
            "--data {fifo} --strict",
            &["pipe.png", "not a regular file"],
        ),
        ("--data {noimg}", &["{noimg}"]),
        ("--data {hugegif} --strict", &["big.gif", "60000×60000"]),
        (
            "--data {loop} --sample-respacing 0",
            &["--sample-respacing"],
        ),
    ]
    .into_iter()
    .map(|(extra, needles)| Case {
        args: Box::leak(format!("{train} {extra}").into_boxed_str()),
        needles,
    })
    .collect();
    run_cases(&env, &cases);
}
