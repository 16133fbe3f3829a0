//! `scheduler_config.json` of a diffusers `DDPMScheduler`/`DDIMScheduler`, read into a checked,
//! typed form, and where `set_timesteps(n)` places its steps.

use super::keys::{class_name, Keys};
use crate::diffusion::respace::{self, Respacing};
use crate::diffusion::{DiffusersRules, Diffusion, LossType, MeanType, Rules, VarType};
use anyhow::{bail, Result};
use serde_json::{Map, Value};
use tch::Device;

/// How the prediction of the network is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Prediction {
    Epsilon,
    Sample,
    VPrediction,
}

/// A validated DDPM/DDIM scheduler configuration.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Scheduler {
    pub class_name: String,
    pub num_train_timesteps: usize,
    /// β_t: `linear`/`scaled_linear` in f32 arithmetic as `torch.linspace` makes them;
    /// `squaredcos_cap_v2` and `trained_betas` in f64 (diffusers casts them to f32 afterwards,
    /// a difference far inside the parity tolerance).
    pub betas: Vec<f64>,
    /// Where the betas come from: `beta_schedule`'s value, or `trained_betas` (for reports).
    pub schedule_name: String,
    pub prediction: Prediction,
    /// `fixed_small`, `fixed_small_log`, `fixed_large` or `learned_range`.
    pub variance_type: String,
    /// `clip_sample_range` when `clip_sample` is on.
    pub clip: Option<f64>,
    /// `leading`, `trailing` or `linspace`.
    pub timestep_spacing: String,
    pub steps_offset: i64,
    /// DDIM's `set_alpha_to_one` (true unless the file says otherwise).
    pub set_alpha_to_one: bool,
}

impl Prediction {
    /// diffusers' `prediction_type` value.
    pub fn name(self) -> &'static str {
        match self {
            Prediction::Epsilon => "epsilon",
            Prediction::Sample => "sample",
            Prediction::VPrediction => "v_prediction",
        }
    }
}

impl Scheduler {
    pub fn learned_variance(&self) -> bool {
        self.variance_type == "learned_range"
    }
}

const SCHEDULER_KEYS: &[&str] = &[
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "variance_type",
    "clip_sample",
    "clip_sample_range",
    "prediction_type",
    "thresholding",
    "dynamic_thresholding_ratio",
    "sample_max_value",
    "timestep_spacing",
    "steps_offset",
    "set_alpha_to_one",
    "rescale_betas_zero_snr",
];
/// Keys of older diffusers releases that change nothing a3ft computes.
const SCHEDULER_LEGACY_KEYS: &[&str] = &["tensor_format", "skip_prk_steps"];

/// numpy/torch `linspace` in f32 arithmetic as torch computes it (step from the start for the
/// first half, from the end for the second), returned as f64.
fn linspace_f32(start: f64, end: f64, n: usize) -> Vec<f64> {
    let (s, e) = (start as f32, end as f32);
    if n == 1 {
        return vec![s as f64];
    }
    let step = (e - s) / (n - 1) as f32;
    let half = n / 2;
    (0..n).map(|i| if i < half { s + step * i as f32 } else { e - step * (n - 1 - i) as f32 } as f64).collect()
}

impl Scheduler {
    /// Reads `scheduler_config.json` (a `DDPMScheduler` or `DDIMScheduler`).
    pub fn from_json(map: &Map<String, Value>, origin: &str) -> Result<Scheduler> {
        let map = &super::keys::as_diffusers_reads(map, origin)?;
        let k = Keys { map, origin };
        let class_name = class_name(map, origin)?
            .unwrap_or("DDPMScheduler")
            .to_string();
        if !["DDPMScheduler", "DDIMScheduler"].contains(&class_name.as_str()) {
            bail!("{origin}: _class_name {class_name:?} is not supported (DDPMScheduler or DDIMScheduler; a3ft samples with ancestral DDPM or DDIM steps)");
        }
        k.only(SCHEDULER_KEYS, SCHEDULER_LEGACY_KEYS)?;
        let t = k.int("num_train_timesteps", 1000)?;
        let max = crate::diffusion::respace::MAX_DIFFUSION_STEPS as i64;
        if !(2..=max).contains(&t) {
            bail!("{origin}: key \"num_train_timesteps\" = {t} is outside 2..={max}");
        }
        let t = t as usize;
        let mut schedule_name = "trained_betas".to_string();
        let betas = match k.list_of_at_most("trained_betas", t)? {
            Some(list) => {
                let b: Vec<f64> = list
                    .iter()
                    .map(|v| {
                        v.as_f64()
                            .ok_or_else(|| k.err("trained_betas", "must be a list of numbers"))
                    })
                    .collect::<Result<_>>()?;
                if b.len() != t {
                    bail!(
                        "{origin}: key \"trained_betas\" has {} values for {t} num_train_timesteps",
                        b.len()
                    );
                }
                b
            }
            None => {
                let start = k.float("beta_start", 0.0001)?;
                let end = k.float("beta_end", 0.02)?;
                schedule_name = k.one_of(
                    "beta_schedule",
                    "linear",
                    &["linear", "scaled_linear", "squaredcos_cap_v2"],
                )?;
                match schedule_name.as_str() {
                    "linear" => linspace_f32(start, end, t),
                    "scaled_linear" => {
                        if start < 0.0 || end < 0.0 {
                            bail!("{origin}: scaled_linear needs beta_start and beta_end ≥ 0");
                        }
                        linspace_f32(start.sqrt(), end.sqrt(), t)
                            .iter()
                            .map(|b| ((*b as f32) * (*b as f32)) as f64)
                            .collect()
                    }
                    _ => crate::diffusion::respace::beta_schedule("cosine", t)?,
                }
            }
        };
        if let Some(i) = betas
            .iter()
            .position(|b| !(b.is_finite() && *b > 0.0 && *b < 1.0))
        {
            bail!("{origin}: the schedule gives beta[{i}] = {} outside (0, 1) (check beta_start, beta_end, trained_betas)", betas[i]);
        }
        // Below this 1 − β is 1 in f32: ᾱ stays 1 and every x0 prediction divides by 0.
        if let Some(i) = betas.iter().position(|b| 1.0 - (*b as f32) == 1.0) {
            bail!("{origin}: the schedule gives beta[{i}] = {:e}, too small to change anything in f32 (1 − β rounds to 1)", betas[i]);
        }
        let prediction = match k
            .one_of(
                "prediction_type",
                "epsilon",
                &["epsilon", "sample", "v_prediction"],
            )?
            .as_str()
        {
            "epsilon" => Prediction::Epsilon,
            "sample" => Prediction::Sample,
            _ => Prediction::VPrediction,
        };
        let variance_type = k.one_of(
            "variance_type",
            "fixed_small",
            &[
                "fixed_small",
                "fixed_small_log",
                "fixed_large",
                "learned_range",
            ],
        )?;
        if k.boolean("thresholding", false)? {
            bail!("{origin}: key \"thresholding\" = true (dynamic thresholding) is not supported; set it to false");
        }
        if k.boolean("rescale_betas_zero_snr", false)? {
            bail!("{origin}: key \"rescale_betas_zero_snr\" = true is not supported");
        }
        let clip = k.boolean("clip_sample", true)?;
        let clip_range = k.float("clip_sample_range", 1.0)?;
        if clip && clip_range <= 0.0 {
            bail!("{origin}: key \"clip_sample_range\" must be positive, got {clip_range}");
        }
        let steps_offset = k.int("steps_offset", 0)?;
        if !(0..t as i64).contains(&steps_offset) {
            bail!("{origin}: key \"steps_offset\" = {steps_offset} is outside 0..{t}");
        }
        Ok(Scheduler {
            class_name,
            num_train_timesteps: t,
            betas,
            schedule_name,
            prediction,
            variance_type,
            clip: clip.then_some(clip_range),
            timestep_spacing: k.one_of(
                "timestep_spacing",
                "leading",
                &["leading", "trailing", "linspace"],
            )?,
            steps_offset,
            set_alpha_to_one: k.boolean("set_alpha_to_one", true)?,
        })
    }

    /// The timesteps a respacing keeps, ascending, and where DDIM steps to from each (as
    /// [`Scheduler::inference_timesteps`]): all = every training timestep (the scheduler before
    /// `set_timesteps`), `N` or `ddimN` = `set_timesteps(N)`'s.
    pub fn respaced_timesteps(&self, respacing: &Respacing) -> Result<(Vec<i64>, Vec<i64>)> {
        let t = self.num_train_timesteps;
        let n = match respacing {
            Respacing::All => return Ok(((0..t as i64).collect(), (-1..t as i64 - 1).collect())),
            &Respacing::Ddim(n) => n,
            Respacing::Sections(counts) if counts.len() == 1 => counts[0],
            Respacing::Sections(_) => 0,
        };
        if !(1..=t).contains(&n) {
            bail!("respacing {:?}: a diffusers scheduler takes one step count (\"50\" or \"ddim50\"), 1..={t}", respacing.to_string());
        }
        self.inference_timesteps(n)
    }

    /// The timesteps `set_timesteps(n)` keeps, ascending, and the timestep DDIM steps to from
    /// each (`t − T/n`, diffusers' DDIM rule; negative = the final ᾱ).
    pub fn inference_timesteps(&self, n: usize) -> Result<(Vec<i64>, Vec<i64>)> {
        let t = self.num_train_timesteps;
        if n == 0 || n > t {
            bail!("{n} inference steps: the scheduler has {t} training timesteps (choose 1..={t})");
        }
        let mut ts: Vec<i64> = match self.timestep_spacing.as_str() {
            "leading" => {
                let ratio = (t / n) as i64;
                (0..n as i64)
                    .map(|i| i * ratio + self.steps_offset)
                    .collect()
            }
            "trailing" => {
                // np.round(np.arange(T, 0, -T/n)) - 1
                let ratio = t as f64 / n as f64;
                (0..n)
                    .map(|k| (t as f64 + k as f64 * -ratio).round_ties_even() as i64 - 1)
                    .collect()
            }
            // np.linspace(0, T - 1, n).round()
            _ => {
                let step = if n > 1 {
                    (t - 1) as f64 / (n - 1) as f64
                } else {
                    0.0
                };
                (0..n)
                    .map(|i| {
                        if i + 1 == n && n > 1 {
                            (t - 1) as i64
                        } else {
                            (i as f64 * step).round_ties_even() as i64
                        }
                    })
                    .collect()
            }
        };
        ts.sort_unstable();
        ts.dedup();
        if let Some(bad) = ts.iter().find(|&&x| x < 0 || x >= t as i64) {
            bail!(
                "{n} inference steps with steps_offset {} give timestep {bad} outside 0..{t}",
                self.steps_offset
            );
        }
        let ratio = (t / n) as i64;
        let prev = ts.iter().map(|&x| x - ratio).collect();
        Ok((ts, prev))
    }
}

/// The diffusion process of a diffusers scheduler.
impl Diffusion {
    /// The diffusion of a diffusers scheduler. `respacing` is all (every training timestep),
    /// `N` or `ddimN`: N steps placed as the scheduler's `set_timesteps(N)` places them.
    /// `p2` is the P2 weighting (γ, k) of the loss; (0, 1) is plain MSE.
    pub fn from_scheduler(
        sched: &crate::diffusers::scheduler::Scheduler,
        respacing: &Respacing,
        p2: (f64, f64),
        device: Device,
    ) -> Result<Diffusion> {
        let t = sched.num_train_timesteps;
        let (kept, prev) = sched.respaced_timesteps(respacing)?;
        let keep: std::collections::BTreeSet<usize> = kept.iter().map(|&k| k as usize).collect();
        let (betas, map) = respace::respaced_betas(&sched.betas, &keep);
        let mut ac = Vec::with_capacity(t);
        let mut acc = 1.0;
        for b in &sched.betas {
            acc *= 1.0 - b;
            ac.push(acc);
        }
        let final_ac = if sched.set_alpha_to_one { 1.0 } else { ac[0] };
        let ddim_prev: Vec<f64> = prev
            .iter()
            .map(|&p| if p >= 0 { ac[p as usize] } else { final_ac })
            .collect();
        use crate::diffusers::scheduler::Prediction;
        let mean_type = match sched.prediction {
            Prediction::Epsilon => MeanType::Epsilon,
            Prediction::Sample => MeanType::StartX,
            Prediction::VPrediction => MeanType::Velocity,
        };
        let var_type = match sched.variance_type.as_str() {
            "fixed_large" => VarType::FixedLarge,
            "learned_range" => VarType::LearnedRange,
            _ => VarType::FixedSmall,
        };
        // Plain MSE on the prediction; a learned variance adds iDDPM's vb term (diffusers'
        // training script has no variance loss).
        let first_log_variance = (1e-20f64.ln(), betas[0].ln());
        let rules = Rules::Diffusers(DiffusersRules::new(
            sched.clip,
            ddim_prev,
            first_log_variance,
            device,
        ));
        Ok(Diffusion::new(
            betas,
            map,
            t,
            mean_type,
            var_type,
            LossType::RescaledMse,
            false,
            p2,
            device,
        )
        .with_rules(rules))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusers::keys::obj;

    #[test]
    fn unsupported_scheduler_values_name_their_key() {
        for (text, needle) in [
            (r#"{"beta_schedule":"sigmoid"}"#, "beta_schedule"),
            (r#"{"prediction_type":"flow"}"#, "prediction_type"),
            (r#"{"variance_type":"learned"}"#, "variance_type"),
            (r#"{"thresholding":true}"#, "thresholding"),
            (r#"{"_class_name":"PNDMScheduler"}"#, "PNDMScheduler"),
            (r#"{"num_train_timesteps":0}"#, "num_train_timesteps"),
            (r#"{"beta_end":2.0}"#, "beta"),
            (
                r#"{"num_train_timesteps":3,"trained_betas":[0.1,0.2]}"#,
                "trained_betas",
            ),
            (
                r#"{"num_train_timesteps":2,"trained_betas":[0.1,1.5]}"#,
                "beta[1]",
            ),
            (
                r#"{"num_train_timesteps":2,"trained_betas":[1e-320,1e-320]}"#,
                "beta[0]",
            ),
            (r#"{"prediction_type":null}"#, "prediction_type"),
            (r#"{"steps_offset":null}"#, "steps_offset"),
            (r#"{"num_train_timesteps":null}"#, "num_train_timesteps"),
        ] {
            let e = format!("{:#}", Scheduler::from_json(&obj(text), "s").unwrap_err());
            assert!(e.contains(needle) && !e.contains('\n'), "{text}: {e}");
        }
    }

    #[test]
    fn null_flags_are_false_as_in_python() {
        let s = Scheduler::from_json(
            &obj(r#"{"clip_sample":null,"set_alpha_to_one":null,"clip_sample_range":0}"#),
            "s",
        )
        .unwrap();
        assert!(s.clip.is_none() && !s.set_alpha_to_one);
    }

    #[test]
    fn trained_betas_of_a_full_schedule_are_read() {
        let betas: Vec<f64> = (0..1000).map(|i| 1e-4 + i as f64 * 2e-5).collect();
        let text = serde_json::json!({"trained_betas": betas}).to_string();
        let read = Scheduler::from_json(&obj(&text), "s").unwrap().betas;
        assert_eq!(read.len(), 1000);
        assert!(read.iter().zip(&betas).all(|(a, b)| (a - b).abs() < 1e-15));
    }

    #[test]
    fn inference_timesteps_follow_diffusers() {
        let s = Scheduler::from_json(&obj("{}"), "s").unwrap();
        let (ts, prev) = s.inference_timesteps(50).unwrap();
        assert_eq!((ts[0], ts[49], prev[0]), (0, 980, -20));
        let s = Scheduler::from_json(&obj(r#"{"timestep_spacing":"trailing"}"#), "s").unwrap();
        let (ts, _) = s.inference_timesteps(50).unwrap();
        assert_eq!((ts[0], ts[49]), (19, 999));
        let s = Scheduler::from_json(&obj(r#"{"timestep_spacing":"linspace"}"#), "s").unwrap();
        // np.linspace(0, 999, 10).round()
        assert_eq!(
            s.inference_timesteps(10).unwrap().0,
            vec![0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
        );
        let s = Scheduler::from_json(&obj(r#"{"steps_offset":1}"#), "s").unwrap();
        assert_eq!(s.inference_timesteps(10).unwrap().0[0], 1);
        assert!(s.inference_timesteps(0).is_err() && s.inference_timesteps(1001).is_err());
    }
}
