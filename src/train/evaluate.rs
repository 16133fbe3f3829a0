//! Evaluation of a model during or after training: held-out loss, and for generated samples
//! clean-FID / KID against a reference set plus memorisation (the paper's Fig. 5 figure).
//!
//! `score` is the one place generated images are scored; `a3ft eval` and the in-loop
//! `Evaluator` both call it.

use crate::diffusion::respace::Respacing;
use crate::diffusion::Diffusion;
use crate::metrics::{fid, heldout::heldout, inception::Inception, memorization};
use crate::model::Model;
use crate::train::records::{EvalRecord, FinalRecord};
use crate::train::run_config::EvalOptions;
use crate::train::run_dir::{EvalFigure, RunDir};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

/// Memorisation threshold used when none is given: RMS pixel distance on a 0–1 scale.
pub const DEFAULT_MEMO_THRESHOLD: f64 = 0.05;

/// Timesteps of the held-out loss grid (in-loop, final and `a3ft eval --holdout` alike).
pub const HELDOUT_GRID: usize = 10;

/// Scores of a set of generated images.
#[derive(Debug, Clone, Serialize)]
pub struct Scores {
    /// clean-FID and KID; absent without Inception features.
    pub fid: Option<f64>,
    pub kid: Option<f64>,
    pub memorization: memorization::Memorization,
}

/// Scores `generated` (uint8-valued `[N, 3, S, S]`) against `training` (same form and size)
/// and, when both are given, Inception features of the generated and reference images.
pub fn score(
    generated: &Tensor,
    training: &Tensor,
    features: Option<(&Tensor, &Tensor)>,
    memo_threshold: f64,
    seed: u64,
) -> Result<Scores> {
    crate::util::stop::check()?;
    let (memo, _, _) = memorization::memorization(generated, training, memo_threshold);
    crate::util::stop::check()?;
    let (fid, kid) = match features {
        Some((gen, reference)) => (
            Some(fid::fid(gen, reference)?),
            Some(fid::kid(gen, reference, 100, 1000, seed)?),
        ),
        None => (None, None),
    };
    Ok(Scores {
        fid,
        kid,
        memorization: memo,
    })
}

/// In-loop evaluation state: held-out set, training subset, cached Inception features.
pub struct Evaluator {
    opts: EvalOptions,
    seed: u64,
    holdout: Option<Tensor>,
    train_subset: Tensor,
    train_u8: Tensor,
    inception: Option<std::rc::Rc<Inception>>,
    train_feats: Option<Tensor>,
    /// The training folder, when every image in it is trained on (no held-out fraction).
    reference_folder: Option<PathBuf>,
}

impl Evaluator {
    /// `train` and `holdout` are `[N, 3, S, S]` in [-1, 1].
    pub fn new(
        opts: &EvalOptions,
        seed: u64,
        data: &std::path::Path,
        train: &Tensor,
        holdout: Option<Tensor>,
        device: Device,
    ) -> Result<Evaluator> {
        let active = opts.every_epochs.is_some() || opts.samples > 0 || holdout.is_some();
        let inception = if active && opts.samples > 0 {
            match Inception::shared(opts.inception.as_deref(), device) {
                Ok(net) => Some(net),
                Err(e) => {
                    let e = crate::util::stop::pass_stop(e)?;
                    eprintln!("warning: FID/KID disabled: {e:#}");
                    None
                }
            }
        } else {
            None
        };
        let n = train.size()[0];
        Ok(Evaluator {
            seed,
            holdout,
            train_subset: train.narrow(0, 0, n.min(64)),
            train_u8: ((train + 1.0) * 127.5).round(),
            inception,
            train_feats: None,
            reference_folder: (opts.holdout_fraction.unwrap_or(0.0) <= 0.0)
                .then(|| data.to_path_buf()),
            opts: opts.clone(),
        })
    }

    /// Whether evaluations will have clean-FID (samples requested and Inception loaded).
    pub fn has_fid(&self) -> bool {
        self.opts.samples > 0 && self.inception.is_some()
    }

    pub fn enabled(&self) -> bool {
        self.opts.every_epochs.is_some() && (self.holdout.is_some() || self.opts.samples > 0)
    }

    /// One evaluation of `model` (in eval mode) at `step` into `rec`; figures go to the run's `eval/`.
    pub fn evaluate(
        &mut self,
        model: &Model,
        diffusion: &Diffusion,
        run: &RunDir,
        step: u64,
        rec: &mut EvalRecord,
    ) -> Result<()> {
        let grid = HELDOUT_GRID;
        let train_grid = heldout(model, diffusion, &self.train_subset, grid, self.seed, 64)?;
        rec.train_grid_loss = Some(train_grid.loss);
        if let Some(h) = &self.holdout {
            let ho = heldout(model, diffusion, h, grid, self.seed, 64)?;
            rec.holdout_loss = Some(ho.loss);
            rec.holdout_mse = Some(ho.mse);
            rec.holdout_bpd = Some(ho.bpd);
            rec.holdout_images = Some(ho.num_images as u64);
        }
        if self.opts.samples > 0 {
            // The same samples at every evaluation (noise from the run's seed), so the curve
            // follows the model, not the draw.
            let seed =
                crate::train::draws::step_seed(self.seed, 0, crate::train::draws::stream::EVAL);
            let nhwc =
                sample_for_evaluation(model, &self.opts.respacing, self.opts.samples, seed, false)?;
            let nchw = nhwc.permute([0, 3, 1, 2]).to_kind(Kind::Float);
            std::fs::create_dir_all(run.eval_dir())?;
            crate::io::images::save_png(
                &run.eval_figure_path(EvalFigure::Samples, step),
                &crate::io::images::grid(&nhwc.narrow(0, 0, nhwc.size()[0].min(64)), None)?,
            )?;
            crate::io::images::save_png(
                &run.eval_figure_path(EvalFigure::Nearest, step),
                &nearest_figure(&nchw, &self.train_u8, 4, 10)?,
            )?;
            let feats = match &self.inception {
                Some(net) => {
                    if self.train_feats.is_none() {
                        // The whole training folder is the reference: use the on-disk feature cache.
                        self.train_feats = Some(match &self.reference_folder {
                            Some(dir) => crate::metrics::folder_features(net, dir, true)?,
                            None => net.features_rgb(
                                &crate::metrics::nhwc_to_rgb(&self.train_u8.permute([0, 2, 3, 1])),
                                32,
                                None,
                            )?,
                        });
                    }
                    Some(net.features_rgb(&crate::metrics::nhwc_to_rgb(&nhwc), 32, None)?)
                }
                None => None,
            };
            let threshold = self.opts.memo_threshold.unwrap_or(DEFAULT_MEMO_THRESHOLD);
            let s = score(
                &nchw,
                &self.train_u8,
                feats.as_ref().zip(self.train_feats.as_ref()),
                threshold,
                self.seed,
            )?;
            rec.memorization = Some(s.memorization);
            rec.fid = s.fid;
            rec.kid = s.kid;
            rec.eval_samples = Some(self.opts.samples as u64);
        }
        Ok(())
    }
}

/// The sampling batch of an evaluation of `n` images: at most 64, and what fits at `image_size`.
pub fn evaluation_batch(n: usize, image_size: i64) -> usize {
    n.min(64)
        .min(crate::model::max_sample_batch(image_size))
        .max(1)
}

/// Samples `n` images from `model` for an evaluation (in-loop, final, `eval --run`) or a sample
/// grid: uint8 NHWC on the CPU, with the sampler `respacing` implies, noise from `seed`, in
/// batches of at most 64.
pub fn sample_for_evaluation(
    model: &Model,
    respacing: &Respacing,
    n: usize,
    seed: i64,
    progress: bool,
) -> Result<Tensor> {
    let diffusion = Diffusion::from_config(&model.config, Some(respacing), model.vs.device())?;
    let batch = evaluation_batch(n, model.config.image_size);
    model.sample_images(&diffusion, n, batch, respacing.sampler(), seed, progress)
}

/// The paper's Fig. 5: rows of (training image, its `k` closest samples) for the `rows`
/// training images that are nearest neighbour to the most samples. Inputs uint8-valued NCHW.
pub fn nearest_figure(
    samples: &Tensor,
    training: &Tensor,
    rows: usize,
    k: usize,
) -> Result<image::RgbImage> {
    let (idx, _) = memorization::nearest_training(&(samples / 255.0), &(training / 255.0));
    let mut counts = std::collections::BTreeMap::<i64, usize>::new();
    for i in &idx {
        *counts.entry(*i).or_default() += 1;
    }
    let mut order: Vec<(i64, usize)> = counts.into_iter().collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let s = samples.to_kind(Kind::Double).flatten(1, -1);
    let k = k.min(samples.size()[0] as usize);
    let mut tiles = Vec::new();
    for (ti, _) in order.into_iter().take(rows) {
        let t = training.get(ti);
        let d = (&s - t.to_kind(Kind::Double).flatten(0, -1).unsqueeze(0))
            .square()
            .sum_dim_intlist([1].as_slice(), false, Kind::Double);
        let (_, nearest) = d.topk(k as i64, 0, false, true);
        tiles.push(t.unsqueeze(0));
        tiles.push(samples.index_select(0, &nearest));
    }
    if tiles.is_empty() {
        bail!("no samples for the nearest-neighbour figure");
    }
    let all = Tensor::cat(&tiles, 0)
        .permute([0, 2, 3, 1])
        .to_kind(Kind::Uint8);
    crate::io::images::grid(&all, Some(k + 1))
}

/// The protocol's evaluation of a finished run (what `a3ft study` reports): `samples` images
/// from the run's selected (else newest) checkpoint, scored against the images it trained on and
/// against held-out images, plus the held-out loss on the same grid as in-loop evaluation.
pub struct FinalEvaluation<'a> {
    pub train: &'a std::path::Path,
    pub holdout: Option<&'a std::path::Path>,
    pub samples: usize,
    pub respacing: &'a Respacing,
    pub inception: Option<&'a std::path::Path>,
    pub memo_threshold: f64,
    pub seed: u64,
    /// Domain guidance weight of the samples and held-out loss (`None` or 1: off).
    pub guidance: Option<f64>,
}

impl FinalEvaluation<'_> {
    fn guided(&self) -> bool {
        crate::model::guidance::active(self.guidance).is_some()
    }

    pub fn run(&self, run: &RunDir, device: Device) -> Result<FinalRecord> {
        if self.samples < 2 {
            bail!(
                "the final evaluation needs at least 2 samples, got {}",
                self.samples
            );
        }
        let (step, _) = crate::train::select::default_checkpoint(run)?;
        let model = crate::train::run_model::load_guided(run, Some(step), device, self.guidance)?;
        let res = model.config.image_size as u32;
        let mut rec = FinalRecord::new(step, self.samples, self.respacing);
        rec.guidance = self.guidance;
        if let Some(dir) = self.holdout {
            let set = crate::data::load_folder(dir, res, false)?;
            let d = Diffusion::from_config(
                &model.config,
                Some(&crate::diffusion::respace::Respacing::All),
                device,
            )?;
            let ho = heldout(&model, &d, &set.images, HELDOUT_GRID, self.seed, 64)?;
            rec.holdout_loss = Some(ho.loss);
            rec.holdout_bpd = Some(ho.bpd);
        }
        let seed =
            crate::train::draws::step_seed(self.seed, step, crate::train::draws::stream::EVAL);
        let nhwc = sample_for_evaluation(&model, self.respacing, self.samples, seed, false)?;
        std::fs::create_dir_all(run.eval_dir())?;
        crate::io::images::save_png(
            &run.final_figure_path(EvalFigure::Samples, self.guided()),
            &crate::io::images::grid(&nhwc.narrow(0, 0, nhwc.size()[0].min(64)), None)?,
        )?;
        let nchw = nhwc.permute([0, 3, 1, 2]).to_kind(Kind::Float);
        let training =
            ((crate::data::load_folder(self.train, res, false)?.images + 1.0) * 127.5).round();
        crate::io::images::save_png(
            &run.final_figure_path(EvalFigure::Nearest, self.guided()),
            &nearest_figure(&nchw, &training, 4, 10)?,
        )?;
        let net = match Inception::shared(self.inception, device) {
            Ok(net) => Some(net),
            Err(e) => {
                let e = crate::util::stop::pass_stop(e)?;
                // Kept so the scores can be made where the weights are (a GPU machine they cannot
                // travel to samples, `study --report-only` elsewhere scores: `complete`); only
                // then, since 5,000 samples at 256 px are 1 GB a run.
                // A guided evaluation keeps its own (the plain ones are what `complete` scores).
                let path = run.final_samples_path(self.guided());
                match crate::io::images::write_npz_atomic(&path, &[("arr_0", &nhwc)]) {
                    Ok(()) => eprintln!("warning: FID/KID skipped (the samples are kept in {}; `study --report-only` scores them where the weights are): {e:#}", path.display()),
                    Err(w) => eprintln!("warning: FID/KID skipped ({e:#}), and the samples could not be kept in {} ({w:#})", path.display()),
                }
                None
            }
        };
        self.score_samples(&nhwc, &training, net.as_deref(), &mut rec)?;
        Ok(rec)
    }

    /// Adds clean-FID/KID to `rec` (a run's final.json) from the samples `run` kept, scored
    /// with `net`. The samples must be the run's: its image size, at least 2, at most the count
    /// the evaluation drew; fewer (a transfer cut them) are scored and recorded as
    /// `scored_samples`. The rest of `rec` (memorisation, held-out loss) stays as measured.
    pub fn complete(&self, run: &RunDir, rec: &mut FinalRecord, net: &Inception) -> Result<()> {
        let path = run.final_samples_path(false);
        let nhwc = crate::io::npy::read_npz(&path)?
            .into_iter()
            .find(|(k, _)| k == "arr_0")
            .map(|(_, t)| t)
            .with_context(|| format!("{} has no arr_0", path.display()))?;
        let size = nhwc.size();
        let res = run.read_config()?.model.image_size;
        if nhwc.kind() != Kind::Uint8
            || size.len() != 4
            || size[3] != 3
            || size[1] != res
            || size[2] != res
        {
            bail!("{} is not uint8 NHWC RGB samples of this run's {res}×{res} images (shape {size:?}, {:?})", path.display(), nhwc.kind());
        }
        let drawn = rec.samples;
        if size[0] < 2 || size[0] as u64 > drawn {
            bail!("{} holds {} samples; the final evaluation drew {drawn}, and clean-FID needs at least 2", path.display(), size[0]);
        }
        let training = ((crate::data::load_folder(self.train, res as u32, false)?.images + 1.0)
            * 127.5)
            .round();
        let mut scored = rec.clone();
        self.score_samples(&nhwc, &training, Some(net), &mut scored)?;
        (
            rec.fid_train,
            rec.kid_train,
            rec.fid_holdout,
            rec.kid_holdout,
        ) = (
            scored.fid_train,
            scored.kid_train,
            scored.fid_holdout,
            scored.kid_holdout,
        );
        if (size[0] as u64) < drawn {
            rec.scored_samples = Some(size[0] as u64);
        }
        Ok(())
    }

    /// Memorisation against the training images and, with `net`, clean-FID/KID against the
    /// training and held-out images.
    fn score_samples(
        &self,
        nhwc: &Tensor,
        training: &Tensor,
        net: Option<&Inception>,
        rec: &mut FinalRecord,
    ) -> Result<()> {
        use crate::metrics::{folder_features, nhwc_to_rgb};
        let nchw = nhwc.permute([0, 3, 1, 2]).to_kind(Kind::Float);
        let gen = net
            .map(|n| n.features_rgb(&nhwc_to_rgb(nhwc), 32, None))
            .transpose()?;
        let train_feats = net
            .map(|n| folder_features(n, self.train, true))
            .transpose()?;
        let s = score(
            &nchw,
            training,
            gen.as_ref().zip(train_feats.as_ref()),
            self.memo_threshold,
            self.seed,
        )?;
        rec.memorization = Some(s.memorization);
        if let (Some(f), Some(k)) = (s.fid, s.kid) {
            (rec.fid_train, rec.kid_train) = (Some(f), Some(k));
        }
        if let (Some(net), Some(g), Some(dir)) = (net, &gen, self.holdout) {
            let hf = folder_features(net, dir, true)?;
            rec.fid_holdout = Some(fid::fid(g, &hf)?);
            rec.kid_holdout = Some(fid::kid(g, &hf, 100, 1000, self.seed)?);
        }
        Ok(())
    }
}
