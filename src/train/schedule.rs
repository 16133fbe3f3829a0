//! When a run logs, evaluates, samples and saves: a pure function of the step and the run's
//! options, so the loop only asks and the rules are tested on their own.

use crate::train::run_config::Hyper;

/// The run's periodic work, in steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub total: u64,
    pub steps_per_epoch: u64,
    pub log_every: u64,
    /// Evaluate every this many epochs (0 or `None`: only at the end, if evaluation is on).
    pub eval_every_epochs: Option<u64>,
    pub sample_every: Option<u64>,
    pub save_every: Option<u64>,
}

/// What is due after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Due {
    pub log: bool,
    pub evaluate: bool,
    pub sample: bool,
    pub save: bool,
}

impl Schedule {
    pub fn new(h: &Hyper, steps_per_epoch: u64) -> Schedule {
        Schedule {
            total: h.total_steps,
            steps_per_epoch: steps_per_epoch.max(1),
            log_every: h.log_every.max(1),
            eval_every_epochs: h.eval.every_epochs,
            sample_every: h.sample_every,
            save_every: h.save_every,
        }
    }

    /// What is due after `step` (1-based). `stopping`: the run stops after this step (a signal
    /// or the time limit), so it logs and saves now; it does not evaluate or sample then.
    /// `evaluating`: in-loop evaluation is on.
    pub fn due(&self, step: u64, stopping: bool, evaluating: bool) -> Due {
        let every = |k: Option<u64>| k.is_some_and(|k| k > 0 && step.is_multiple_of(k));
        let last = step == self.total;
        Due {
            log: step.is_multiple_of(self.log_every) || last || stopping,
            evaluate: evaluating
                && (last
                    || every(
                        self.eval_every_epochs
                            .map(|k| k.saturating_mul(self.steps_per_epoch)),
                    )),
            sample: every(self.sample_every),
            save: every(self.save_every) || last || stopping,
        }
    }

    pub fn epoch_of(&self, step: u64) -> f64 {
        step as f64 / self.steps_per_epoch as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Schedule {
        Schedule {
            total: 20,
            steps_per_epoch: 4,
            log_every: 3,
            eval_every_epochs: Some(2),
            sample_every: Some(5),
            save_every: Some(10),
        }
    }

    fn steps(f: impl Fn(Due) -> bool, stop_at: Option<u64>) -> Vec<u64> {
        let s = schedule();
        (1..=s.total)
            .filter(|&k| f(s.due(k, stop_at == Some(k), true)))
            .collect()
    }

    #[test]
    fn each_kind_of_work_on_its_own_period_and_at_the_end() {
        assert_eq!(steps(|d| d.log, None), [3, 6, 9, 12, 15, 18, 20]);
        assert_eq!(steps(|d| d.evaluate, None), [8, 16, 20]);
        assert_eq!(steps(|d| d.sample, None), [5, 10, 15, 20]);
        assert_eq!(steps(|d| d.save, None), [10, 20]);
        // A stop logs and saves at once, and evaluates only when due anyway.
        assert_eq!(steps(|d| d.log && d.save, Some(7)), [7, 20]);
        assert_eq!(steps(|d| d.evaluate, Some(7)), [8, 16, 20]);
        // Without evaluation or periods: the end only.
        let s = Schedule {
            eval_every_epochs: None,
            sample_every: None,
            save_every: None,
            ..schedule()
        };
        assert_eq!(
            s.due(20, false, false),
            Due {
                log: true,
                evaluate: false,
                sample: false,
                save: true
            }
        );
        assert_eq!(
            s.due(20, false, true),
            Due {
                log: true,
                evaluate: true,
                sample: false,
                save: true
            }
        );
        assert_eq!(s.due(19, false, true), Due::default());
        // Zero periods mean never; huge ones never overflow.
        let s = Schedule {
            eval_every_epochs: Some(0),
            sample_every: Some(0),
            save_every: Some(u64::MAX),
            ..schedule()
        };
        assert_eq!(s.due(8, false, true), Due::default());
        let s = Schedule {
            eval_every_epochs: Some(u64::MAX),
            ..schedule()
        };
        assert!(!s.due(8, false, true).evaluate);
        assert_eq!(schedule().epoch_of(6), 1.5);
    }
}
