//! Beta schedules and timestep respacing, computed in f64 exactly as the official numpy code.

use anyhow::{bail, Result};
use std::collections::BTreeSet;

/// `linear` (scaled by 1000/T) or `cosine` (s = 0.008, β ≤ 0.999).
pub fn beta_schedule(name: &str, steps: usize) -> Result<Vec<f64>> {
    match name {
        "linear" => {
            let scale = 1000.0 / steps as f64;
            let (start, end) = (scale * 0.0001, scale * 0.02);
            Ok(linspace(start, end, steps))
        }
        "cosine" => {
            let alpha_bar = |t: f64| {
                ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
                    .cos()
                    .powi(2)
            };
            Ok((0..steps)
                .map(|i| {
                    let (t1, t2) = (i as f64 / steps as f64, (i + 1) as f64 / steps as f64);
                    (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999)
                })
                .collect())
        }
        other => bail!("unknown noise schedule {other:?} (linear or cosine)"),
    }
}

/// numpy's `linspace(start, stop, n)` (endpoints included; the last value is exactly `stop`).
fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
    v[n - 1] = stop;
    v
}

/// Most diffusion steps a schedule may have (the official models use at most 4000).
pub const MAX_DIFFUSION_STEPS: usize = 100_000;

const FORMS: &str =
    "expected a step count (\"50\"), comma-separated section counts (\"10,15,20\") or ddimN";

/// Which of a schedule's diffusion steps a sampler visits, as `--respacing` and the official
/// `timestep_respacing` spell it: `""` every step, `"50"` or `"10,15,20"` steps spread evenly
/// over equal sections, `"ddim50"` an integer stride (and the DDIM update). Parsed once where a
/// flag or a file is read; config files keep the spelling.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Respacing {
    /// Every diffusion step (the official sampler without respacing, `DDPMPipeline`).
    #[default]
    All,
    /// Counts of steps kept in each of `len` equal sections of the schedule.
    Sections(Vec<usize>),
    /// `ddimN`: N steps at one integer stride, sampled with DDIM (η = 0 unless told).
    Ddim(usize),
}

impl Respacing {
    /// N steps spread evenly over the schedule (`"N"`).
    pub fn steps(n: usize) -> Respacing {
        Respacing::Sections(vec![n])
    }

    /// The respacing every sampler defaults to where none is given (train's sample grids and
    /// evaluations, `eval --run`, a study's final samples): 50 evenly spaced ancestral steps.
    pub fn sampling_default() -> Respacing {
        Respacing::steps(50)
    }

    /// Whether this respacing implies the DDIM update (`ddimN`).
    pub fn is_ddim(&self) -> bool {
        matches!(self, Respacing::Ddim(_))
    }

    /// The sampler it implies: `ddimN` → DDIM with η = 0, otherwise ancestral.
    pub fn sampler(&self) -> crate::diffusion::sample::Sampler {
        use crate::diffusion::sample::Sampler;
        if self.is_ddim() {
            Sampler::Ddim { eta: 0.0 }
        } else {
            Sampler::Ancestral
        }
    }
}

impl std::str::FromStr for Respacing {
    type Err = anyhow::Error;

    /// The forms every model accepts; whether one fits a schedule is [`space_timesteps`]'s call.
    fn from_str(text: &str) -> Result<Respacing> {
        let spec = text.trim();
        if spec.is_empty() {
            return Ok(Respacing::All);
        }
        if let Some(n) = spec.strip_prefix("ddim") {
            return Ok(Respacing::Ddim(parse_count(n, spec)?));
        }
        Ok(Respacing::Sections(
            spec.split(',')
                .map(|p| parse_count(p, spec))
                .collect::<Result<_>>()?,
        ))
    }
}

impl std::fmt::Display for Respacing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            Respacing::All => String::new(),
            Respacing::Sections(counts) => counts
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(","),
            Respacing::Ddim(n) => format!("ddim{n}"),
        };
        f.pad(&text)
    }
}

impl TryFrom<String> for Respacing {
    type Error = anyhow::Error;
    fn try_from(text: String) -> Result<Respacing> {
        text.parse()
    }
}

impl From<Respacing> for String {
    fn from(r: Respacing) -> String {
        r.to_string()
    }
}

/// A step count of a respacing spec: a whole number ≥ 1.
fn parse_count(text: &str, spec: &str) -> Result<usize> {
    let text = text.trim();
    match text.parse::<usize>() {
        Ok(0) => bail!("{spec:?} asks for 0 steps; every count must be at least 1"),
        Ok(n) => Ok(n),
        Err(_) if text.is_empty() => bail!("{spec:?} has an empty count; {FORMS}"),
        Err(_) if text == spec => {
            bail!("{spec:?} is not a step count (a whole number ≥ 1); {FORMS}")
        }
        Err(_) => bail!("{spec:?}: {text:?} is not a step count (a whole number ≥ 1); {FORMS}"),
    }
}

/// Checks a respacing against a model with `diffusion_steps` steps, without building
/// anything: `Ok` exactly when [`space_timesteps`] (and so `Diffusion::from_config`) accepts it.
/// Errors are one line and quote the spec; callers add the option's name as context.
pub fn validate(respacing: &Respacing, diffusion_steps: usize) -> Result<()> {
    space_timesteps(diffusion_steps, respacing).map(|_| ())
}

/// `space_timesteps(T, spec)`: the steps a respacing keeps of `T`, as the official code.
///
/// Every impossible respacing is an error (never a panic or an empty schedule): more sections
/// or steps than the model's `T` diffusion steps, a single step, a `ddimN` no integer stride
/// gives.
pub fn space_timesteps(num_timesteps: usize, respacing: &Respacing) -> Result<BTreeSet<usize>> {
    if !(2..=MAX_DIFFUSION_STEPS).contains(&num_timesteps) {
        bail!("diffusion_steps {num_timesteps} is outside 2..={MAX_DIFFUSION_STEPS}");
    }
    let spec = respacing.to_string();
    let counts = match respacing {
        Respacing::All => return Ok((0..num_timesteps).collect()),
        &Respacing::Ddim(desired) => {
            if desired > num_timesteps {
                bail!("{spec:?} asks for {desired} steps but the model has only {num_timesteps} diffusion steps");
            }
            // As the official loop: strides 1..T; stride s keeps ceil(T / s) steps.
            if let Some(stride) = (1..num_timesteps).find(|&s| num_timesteps.div_ceil(s) == desired)
            {
                return Ok((0..num_timesteps).step_by(stride).collect());
            }
            let possible: BTreeSet<usize> = (1..num_timesteps)
                .map(|s| num_timesteps.div_ceil(s))
                .collect();
            let below = possible.range(..desired).next_back();
            let above = possible.range(desired..).next();
            let near: Vec<String> = below
                .into_iter()
                .chain(above)
                .map(|n| format!("ddim{n}"))
                .collect();
            bail!(
                "{spec:?}: no integer stride cuts {num_timesteps} diffusion steps into exactly {desired} (nearest possible: {})",
                near.join(", ")
            );
        }
        Respacing::Sections(counts) => counts,
    };
    if counts.is_empty() || counts.contains(&0) {
        // Only a value built in code can hold these; parsing refuses them.
        bail!("{spec:?} has no sections or a section of 0 steps");
    }
    if counts.len() > num_timesteps {
        bail!(
            "{spec:?} has {} sections but the model has only {num_timesteps} diffusion steps",
            counts.len()
        );
    }
    if counts.iter().map(|&c| c.min(num_timesteps)).sum::<usize>() < 2 {
        // One step has no posterior variance to clip from (the official code fails likewise).
        bail!("{spec:?} keeps a single step; a respaced schedule needs at least 2");
    }
    let size_per = num_timesteps / counts.len();
    let extra = num_timesteps % counts.len();
    let mut start = 0;
    let mut all = BTreeSet::new();
    for (i, &count) in counts.iter().enumerate() {
        let size = size_per + usize::from(i < extra);
        if size < count {
            if counts.len() == 1 {
                bail!("{spec:?} asks for {count} steps but the model has only {num_timesteps} diffusion steps");
            }
            bail!(
                "{spec:?}: section {} spans {size} of the {num_timesteps} diffusion steps and cannot keep {count} of them",
                i + 1
            );
        }
        let stride = if count <= 1 {
            1.0
        } else {
            (size - 1) as f64 / (count - 1) as f64
        };
        let mut cur = 0.0f64;
        for _ in 0..count {
            all.insert(start + cur.round_ties_even() as usize);
            cur += stride;
        }
        start += size;
    }
    Ok(all)
}

/// Betas of the respaced process and its map to original steps.
pub fn respaced_betas(base_betas: &[f64], keep: &BTreeSet<usize>) -> (Vec<f64>, Vec<i64>) {
    let mut alpha_cum = 1.0f64;
    let mut last = 1.0f64;
    let mut betas = Vec::with_capacity(keep.len());
    let mut map = Vec::with_capacity(keep.len());
    for (i, b) in base_betas.iter().enumerate() {
        alpha_cum *= 1.0 - b;
        if keep.contains(&i) {
            betas.push(1.0 - alpha_cum / last);
            last = alpha_cum;
            map.push(i as i64);
        }
    }
    (betas, map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(t: usize, s: &str) -> Vec<usize> {
        space_timesteps(t, &s.parse().unwrap())
            .unwrap()
            .into_iter()
            .collect()
    }

    /// Parsing and fitting, as a flag's value goes through both.
    fn check(spec: &str, t: usize) -> Result<()> {
        validate(&spec.parse()?, t)
    }

    #[test]
    fn respacing_reference_outputs() {
        let l = list(1000, "250");
        assert_eq!(l.len(), 250);
        assert_eq!(&l[..3], &[0, 4, 8]);
        assert_eq!(&l[l.len() - 4..], &[987, 991, 995, 999]);
        let l = list(1000, "50");
        assert_eq!(&l[..5], &[0, 20, 41, 61, 82]);
        assert_eq!(&l[l.len() - 2..], &[979, 999]);
        assert_eq!(&list(1000, "100")[..8], &[0, 10, 20, 30, 40, 50, 61, 71]);
        let l = list(1000, "25");
        assert_eq!(&l[..8], &[0, 42, 83, 125, 166, 208, 250, 291]);
        assert_eq!(&l[l.len() - 4..], &[874, 916, 957, 999]);
        let l = list(4000, "25");
        assert_eq!(&l[..8], &[0, 167, 333, 500, 666, 833, 1000, 1166]);
        assert_eq!(*l.last().unwrap(), 3999);
        for (t, spec, stride) in [
            (1000, "ddim25", 40),
            (1000, "ddim50", 20),
            (1000, "ddim100", 10),
            (1000, "ddim250", 4),
            (4000, "ddim25", 160),
            (4000, "ddim50", 80),
            (4000, "ddim100", 40),
            (4000, "ddim250", 16),
        ] {
            let l = list(t, spec);
            assert_eq!(l[1], stride, "{t} {spec}");
            assert_eq!(l.len(), spec[4..].parse::<usize>().unwrap());
        }
        assert!(check("ddim999", 1000).is_err());
        assert!(check("20", 10).is_err());
        assert!(check("abc", 10).is_err());
    }

    #[test]
    fn bad_specs_are_one_line_errors() {
        for (t, spec, needle) in [
            (1000, "0", "0 steps"),
            (1000, "ddim0", "0 steps"),
            (1000, "ddim", "empty count"),
            (1000, "ddim-5", "not a step count"),
            (1000, "-5", "not a step count"),
            (1000, "1.5", "not a step count"),
            (1000, "abc", "not a step count"),
            (1000, "10,,10", "empty count"),
            (1000, "10,0", "0 steps"),
            (1000, "1001", "only 1000 diffusion steps"),
            (1000, "ddim1001", "only 1000 diffusion steps"),
            (1000, "ddim999", "nearest possible: ddim500, ddim1000"),
            (1000, "99999999999999999999999", "not a step count"),
            (4, "1,1,1,1,1", "5 sections"),
            (10, "3,5,2", "section 2 spans 3"),
            (0, "", "outside"),
            (1, "", "outside"),
            (1000, "1", "single step"),
            (usize::MAX, "10", "outside"),
        ] {
            let e = format!("{:#}", check(spec, t).unwrap_err());
            assert!(e.contains(needle) && !e.contains('\n'), "{t} {spec:?}: {e}");
        }
        for (t, spec) in [
            (1000, "ddim1000"),
            (1000, "1000"),
            (10, "1,1,1,1,1,1,1,1,1,1"),
            (1000, " 50 "),
            (1000, "1,1"),
        ] {
            check(spec, t).unwrap_or_else(|e| panic!("{t} {spec:?}: {e:#}"));
        }
        // Built in code rather than parsed: refused, not a panic or an empty schedule.
        for bad in [
            Respacing::Sections(vec![]),
            Respacing::Sections(vec![10, 0]),
            Respacing::Ddim(0),
        ] {
            assert!(validate(&bad, 1000).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn config_files_keep_their_spelling() {
        for (text, value) in [
            ("", Respacing::All),
            ("50", Respacing::steps(50)),
            ("10,15,20", Respacing::Sections(vec![10, 15, 20])),
            ("ddim25", Respacing::Ddim(25)),
        ] {
            assert_eq!(text.parse::<Respacing>().unwrap(), value);
            assert_eq!(value.to_string(), text);
            let json = serde_json::to_string(&value).unwrap();
            assert_eq!(json, format!("{text:?}"));
            assert_eq!(serde_json::from_str::<Respacing>(&json).unwrap(), value);
        }
        assert_eq!(
            " 10, 20 ".parse::<Respacing>().unwrap(),
            Respacing::Sections(vec![10, 20])
        );
        let e = serde_json::from_str::<Respacing>("\"ddimx\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a step count"), "{e}");
        assert!(
            Respacing::Ddim(50).sampler() == crate::diffusion::sample::Sampler::Ddim { eta: 0.0 }
        );
        assert!(Respacing::steps(50).sampler() == crate::diffusion::sample::Sampler::Ancestral);
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() <= 1e-12 * b.abs().max(1e-300), "{a} vs {b}");
    }

    #[test]
    fn schedule_vectors() {
        let b = beta_schedule("cosine", 4000).unwrap();
        close(b[0], 9.865818813681315e-06);
        close(b[1], 1.01694148842979e-05);
        close(b[2], 1.0473013950296206e-05);
        close(b[3997], 0.5555554431301508);
        close(b[3998], 0.749999962056056);
        assert_eq!(b[3999], 0.999);
        let b = beta_schedule("linear", 1000).unwrap();
        close(b[1], 1.1991991991991993e-04);
        let b = beta_schedule("linear", 4000).unwrap();
        close(b[0], 2.5e-5);
        close(b[3999], 0.005);
    }
}
