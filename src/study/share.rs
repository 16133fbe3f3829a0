//! Which of a study's runs a process does: all of them (one process, as always), a fixed shard
//! (`--shard I/N`, `--shard slurm`), or whatever no other process holds (`--worker`).
//!
//! The shard assignment is fixed and the same for every process given the same study: run k,
//! counting from 0 in the study's order (arms in `--methods` order, each with its seeds in
//! `--seeds` order), belongs to shard k mod N. Round robin spreads each arm over the shards.

use anyhow::{bail, Context, Result};

/// The share of a study's runs one process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// Every run, one after another, the study folder locked for the whole time.
    All,
    /// Runs k with k mod `count` = `index`.
    Shard { index: usize, count: usize },
    /// The next run no other process holds, until none is left.
    Worker,
}

/// Where Slurm puts a job array task's place in its array.
const SLURM_VARS: [&str; 3] = [
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MIN",
];

impl Share {
    /// `--shard I/N` (0 ≤ I < N) or `--shard slurm`; `env` reads the environment (a parameter
    /// so that tests give their own).
    pub fn parse_shard(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Share> {
        let text = text.trim();
        if text == "slurm" {
            return Self::from_slurm(env);
        }
        let Some((i, n)) = text.split_once('/') else {
            bail!("--shard {text:?}: expected I/N (shard I of N, 0 ≤ I < N) or slurm");
        };
        let parse = |s: &str, what: &str| {
            s.trim()
                .parse::<usize>()
                .with_context(|| format!("--shard {text:?}: {what} {s:?} is not a whole number"))
        };
        let (index, count) = (parse(i, "I")?, parse(n, "N")?);
        if count == 0 {
            bail!("--shard {text:?}: N must be at least 1");
        }
        if index >= count {
            bail!(
                "--shard {text:?}: I must be below N (shards are numbered 0 to {})",
                count - 1
            );
        }
        Ok(Share::Shard { index, count })
    }

    /// The shard of a Slurm job array task: its id less the array's lowest id (divided by the
    /// array's step), of the array's task count.
    fn from_slurm(env: impl Fn(&str) -> Option<String>) -> Result<Share> {
        let missing: Vec<&str> = SLURM_VARS
            .iter()
            .copied()
            .filter(|v| env(v).is_none())
            .collect();
        if !missing.is_empty() {
            bail!("--shard slurm needs a Slurm job array task (sbatch --array); {} not set: give --shard I/N instead", missing.join(", "));
        }
        let get = |v: &str| -> Result<usize> {
            let s = env(v).unwrap_or_default();
            s.trim()
                .parse()
                .with_context(|| format!("--shard slurm: {v}={s:?} is not a whole number"))
        };
        let (id, count, min) = (
            get(SLURM_VARS[0])?,
            get(SLURM_VARS[1])?,
            get(SLURM_VARS[2])?,
        );
        let step = match env("SLURM_ARRAY_TASK_STEP") {
            Some(_) => get("SLURM_ARRAY_TASK_STEP")?.max(1),
            None => 1,
        };
        if id < min || (id - min) % step != 0 || (id - min) / step >= count {
            bail!(
                "--shard slurm: task {id} is not one of {count} evenly spaced tasks from {min} (step {step}); use an array like --array=0-{} or give --shard I/N",
                count.saturating_sub(1)
            );
        }
        Ok(Share::Shard {
            index: (id - min) / step,
            count,
        })
    }

    /// Whether run `k` (in the study's order) is this process's to do, when free.
    pub fn owns(&self, k: usize) -> bool {
        match *self {
            Share::All | Share::Worker => true,
            Share::Shard { index, count } => k % count == index,
        }
    }

    /// As messages name it.
    pub fn describe(&self) -> String {
        match *self {
            Share::All => "the whole study".into(),
            Share::Shard { index, count } => format!("shard {index}/{count}"),
            Share::Worker => "a worker".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn shards_and_their_errors() {
        assert_eq!(
            Share::parse_shard("1/3", none).unwrap(),
            Share::Shard { index: 1, count: 3 }
        );
        let s = Share::parse_shard("2/3", none).unwrap();
        assert_eq!((0..7).filter(|&k| s.owns(k)).collect::<Vec<_>>(), [2, 5]);
        for (bad, needle) in [
            ("3/2", "below N"),
            ("0/0", "at least 1"),
            ("1", "I/N"),
            ("a/2", "\"a\""),
            ("-1/2", "\"-1\""),
            ("", "I/N"),
        ] {
            let e = format!("{:#}", Share::parse_shard(bad, none).unwrap_err());
            assert!(
                e.contains("--shard") && e.contains(needle) && !e.contains('\n'),
                "{bad}: {e}"
            );
        }
        let e = format!("{:#}", Share::parse_shard("slurm", none).unwrap_err());
        assert!(
            e.contains("SLURM_ARRAY_TASK_ID") && e.contains("--shard I/N"),
            "{e}"
        );
        let slurm = |id: &'static str, step: Option<&'static str>| {
            move |v: &str| match v {
                "SLURM_ARRAY_TASK_ID" => Some(id.to_string()),
                "SLURM_ARRAY_TASK_COUNT" => Some("3".to_string()),
                "SLURM_ARRAY_TASK_MIN" => Some("1".to_string()),
                "SLURM_ARRAY_TASK_STEP" => step.map(String::from),
                _ => None,
            }
        };
        assert_eq!(
            Share::parse_shard("slurm", slurm("3", None)).unwrap(),
            Share::Shard { index: 2, count: 3 }
        );
        assert_eq!(
            Share::parse_shard("slurm", slurm("5", Some("2"))).unwrap(),
            Share::Shard { index: 2, count: 3 }
        );
        assert!(Share::parse_shard("slurm", slurm("4", None)).is_err());
        assert!(Share::parse_shard("slurm", slurm("x", None)).is_err());
    }
}
