//! One checkpoint's passes over the data: the gradient pass ([`full_gradient`]), each batch's
//! summed loss and gradient from an engine accumulated in f64 and divided by the number of
//! target elements; and, after it, the per-sample noise pass ([`sample_noise`]) and the
//! curvature passes ([`curvature`]) that need the full gradient.
use crate::data::check::targets_in_range;
use crate::data::{batches, Dataset};
use crate::measure::engine::{BatchEngine, HvpEngine};
use crate::measure::hessian::{Curvature, HessianOptions};
use crate::measure::noise::{BatchSums, NoiseOptions, SampleNoise};
use crate::measure::reduce;
use crate::measure::resume::{self, Resume, Saved};
use crate::model::Checkpoint;
use crate::progress::Progress;
use anyhow::{Context, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnNonFinite {
    /// Stop with an error naming the checkpoint and batch (exit 4).
    Stop,
    /// Record the checkpoint's row with NaN and go on; exit 4 at the end.
    Continue,
}

/// What one checkpoint's pass gives.
#[derive(Debug, Clone)]
pub struct GradResult {
    pub loss: f64,
    pub accuracy: f64,
    pub samples: usize,
    pub elements: usize,
    /// Gradient of the mean loss per parameter (the engine's order), f64.
    pub grads: Vec<Vec<f64>>,
    /// Batches whose loss or gradient was not finite (their values are left out).
    pub nonfinite_batches: Vec<usize>,
    /// With `noise`: the minibatch sums the noise identities need.
    pub batch_noise: Option<BatchSums>,
    pub seconds: f64,
}

/// One pass over the data at one checkpoint: each batch's summed loss and gradient from
/// `engine`, accumulated in f64, divided by the number of target elements.
#[allow(clippy::too_many_arguments)]
pub fn full_gradient(
    engine: &mut dyn BatchEngine,
    ckpt: &Checkpoint,
    data: &mut dyn Dataset,
    batch: usize,
    classes: Option<usize>,
    on_nonfinite: OnNonFinite,
    noise: bool,
    progress: &mut Progress,
) -> Result<GradResult> {
    let mut r = full_gradients(
        engine,
        &[ckpt],
        data,
        batch,
        classes,
        on_nonfinite,
        noise,
        progress,
        None,
    )?;
    Ok(r.remove(0).mean())
}

/// One checkpoint's sums over the batches of a pass, in f64, before the division by the number
/// of target elements: what a data shard (`--data-shard`) stores, and what `probe merge` adds
/// up, shard after shard, into the sums of the whole pass.
#[derive(Debug, Clone)]
pub struct PassSums {
    /// Per parameter (the engine's order): the sum over batches of each batch's summed-loss
    /// gradient.
    pub acc: Vec<Vec<f64>>,
    pub noise: Option<BatchSums>,
    pub loss: f64,
    pub correct: f64,
    pub has_correct: bool,
    pub samples: usize,
    pub elements: usize,
    /// Batches (their index in the pass) whose loss or gradient was not finite.
    pub nonfinite: Vec<usize>,
    pub seconds: f64,
}

impl Saved for PassSums {
    fn save(&self, w: &mut resume::Writer) {
        w.u64(self.acc.len() as u64);
        for a in &self.acc {
            w.f64s(a);
        }
        w.u64(self.noise.is_some() as u64);
        if let Some(n) = &self.noise {
            n.save(w);
        }
        w.f64(self.loss);
        w.f64(self.correct);
        w.u64(self.has_correct as u64);
        w.u64(self.samples as u64);
        w.u64(self.elements as u64);
        w.u64(self.nonfinite.len() as u64);
        for &b in &self.nonfinite {
            w.u64(b as u64);
        }
        w.f64(self.seconds);
    }
    fn restore(r: &mut resume::Reader) -> Result<PassSums> {
        let n = r.count(8)?;
        let acc = (0..n).map(|_| r.f64s()).collect::<Result<Vec<_>>>()?;
        let noise = match r.u64()? {
            0 => None,
            _ => Some(BatchSums::restore(r)?),
        };
        let (loss, correct, has_correct) = (r.f64()?, r.f64()?, r.u64()? != 0);
        let (samples, elements) = (r.usize()?, r.usize()?);
        let k = r.count(8)?;
        let nonfinite = (0..k).map(|_| r.usize()).collect::<Result<Vec<_>>>()?;
        Ok(PassSums {
            acc,
            noise,
            loss,
            correct,
            has_correct,
            samples,
            elements,
            nonfinite,
            seconds: r.f64()?,
        })
    }
}

impl PassSums {
    /// Adds the sums of the pass over the samples that follow (the next data shard): each sum
    /// gets `next`'s in f64, element by element.
    pub fn add(&mut self, next: &PassSums) {
        for (a, b) in self.acc.iter_mut().zip(&next.acc) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        if let (Some(n), Some(m)) = (self.noise.as_mut(), next.noise.as_ref()) {
            n.add_sums(m);
        }
        self.loss += next.loss;
        self.correct += next.correct;
        self.has_correct |= next.has_correct;
        self.samples += next.samples;
        self.elements += next.elements;
        self.nonfinite.extend(&next.nonfinite);
        self.seconds += next.seconds;
    }

    /// The pass's means: sums divided by the number of target elements (NaN throughout when a
    /// batch was not finite).
    pub fn mean(mut self) -> GradResult {
        let m = self.elements.max(1) as f64;
        let nan = !self.nonfinite.is_empty();
        for a in self.acc.iter_mut() {
            for x in a.iter_mut() {
                *x = if nan { f64::NAN } else { *x / m };
            }
        }
        GradResult {
            loss: if nan { f64::NAN } else { self.loss / m },
            accuracy: if self.has_correct && !nan {
                self.correct / m
            } else {
                f64::NAN
            },
            samples: self.samples,
            elements: self.elements,
            grads: self.acc,
            nonfinite_batches: self.nonfinite,
            batch_noise: self.noise,
            seconds: self.seconds,
        }
    }
}

/// One pass over the data for several checkpoints at once: each batch is read (and decoded)
/// once and every checkpoint's gradient computed on it in turn, so the data's cost is paid once
/// for all of them. Each checkpoint's sums see exactly the batches, in the same order, with the
/// same engine, as a pass of its own: the results are identical to [`full_gradient`] per
/// checkpoint. `seconds` of each result is the pass's time divided among its checkpoints.
/// With `resume`, the pass starts where a saved state of the same pass stood and saves its own
/// as it goes ([`resume`]): same sums, bit for bit. Returns the sums ([`PassSums::mean`] gives
/// the gradient).
#[allow(clippy::too_many_arguments)]
pub fn full_gradients(
    engine: &mut dyn BatchEngine,
    ckpts: &[&Checkpoint],
    data: &mut dyn Dataset,
    batch: usize,
    classes: Option<usize>,
    on_nonfinite: OnNonFinite,
    noise: bool,
    progress: &mut Progress,
    mut resume: Option<&mut Resume>,
) -> Result<Vec<PassSums>> {
    let t0 = std::time::Instant::now();
    let spec = data.spec().clone();
    let mut sums: Vec<PassSums> = ckpts
        .iter()
        .map(|ckpt| {
            let acc: Vec<Vec<f64>> = engine
                .params()
                .iter()
                .map(|p| reduce::zeros(ckpt.tensors.get(p).map(|t| t.numel()).unwrap_or(0)))
                .collect();
            PassSums {
                noise: noise.then(|| BatchSums::new(&acc)),
                acc,
                loss: 0.0,
                correct: 0.0,
                has_correct: false,
                samples: spec.len,
                elements: 0,
                nonfinite: Vec::new(),
                seconds: 0.0,
            }
        })
        .collect();
    let (first, before) = match resume.as_deref() {
        Some(r) => {
            let want: Vec<Shape> = sums.iter().map(shape).collect();
            r.start(&mut sums, |s| same_shapes(r, s, &want), progress, spec.len)
        }
        None => (0, 0.0),
    };
    if let [only] = ckpts {
        engine.load(only)?;
    }
    // Between batches the engine's threads are idle: the f64 sums take every core.
    let accumulate_threads = crate::runtime::default_threads();
    for (bi, (start, count)) in batches(spec.len, batch).enumerate().skip(first) {
        let b = data.read(start, count)?;
        targets_in_range(&b, classes, &spec.identity)?;
        let per_sample: usize = b.y.shape()[1..].iter().product();
        for (ckpt, s) in ckpts.iter().zip(sums.iter_mut()) {
            if ckpts.len() > 1 {
                engine.load(ckpt)?;
            }
            let r = engine.batch(ckpt, &b).with_context(|| {
                format!(
                    "{}: samples {}..{}",
                    ckpt.path.display(),
                    start,
                    start + count
                )
            })?;
            let grads = r.grads.slices()?;
            // Stopping, the check rides in the sums' pass (the sums go with the error);
            // going on, it comes first: a non-finite batch is left out of the sums.
            let finite = r.loss.is_finite()
                && match on_nonfinite {
                    OnNonFinite::Stop => reduce::accumulate(&mut s.acc, &grads, accumulate_threads),
                    OnNonFinite::Continue => {
                        grads.iter().all(|g| reduce::all_finite(g))
                            && reduce::accumulate(&mut s.acc, &grads, accumulate_threads)
                    }
                };
            if !finite {
                let msg = format!(
                    "{}: non-finite loss or gradient in batch {bi} (samples {}..{}) of {}",
                    ckpt.path.display(),
                    start,
                    start + count,
                    spec.identity
                );
                if on_nonfinite == OnNonFinite::Stop {
                    return Err(crate::error::non_finite(format!(
                        "{msg} (--on-nonfinite continue records NaN and goes on)"
                    )));
                }
                eprintln!("warning: {msg}");
                s.nonfinite.push(bi);
                continue;
            }
            if let Some(n) = s.noise.as_mut() {
                n.add(&grads, count * per_sample.max(1));
            }
            s.loss += r.loss;
            s.elements += count * per_sample.max(1);
            if let Some(c) = r.correct {
                s.correct += c;
                s.has_correct = true;
            }
        }
        progress.inc(count as u64);
        if let Some(r) = resume.as_deref_mut() {
            let at = resume::Progress {
                next_batch: bi + 1,
                samples_done: start + count,
                seconds: before + t0.elapsed().as_secs_f64(),
            };
            r.tick(at, &sums);
        }
    }
    let seconds = (before + t0.elapsed().as_secs_f64()) / ckpts.len().max(1) as f64;
    for s in sums.iter_mut() {
        s.seconds = seconds;
    }
    Ok(sums)
}

/// What must agree between a saved pass and this one: per-parameter sizes, whether the noise
/// parts are kept, the number of samples.
type Shape = (Vec<usize>, bool, usize);

fn shape(s: &PassSums) -> Shape {
    (
        s.acc.iter().map(Vec::len).collect(),
        s.noise.is_some(),
        s.samples,
    )
}

/// Whether saved sums have this pass's shapes: anything else is another pass's, and ignored
/// with a warning.
fn same_shapes(r: &Resume, saved: &[PassSums], want: &[Shape]) -> bool {
    let same = saved.iter().map(shape).eq(want.iter().cloned());
    if !same {
        eprintln!(
            "warning: {}: saved sums of another shape; starting this pass over",
            r.path().display()
        );
    }
    same
}

/// The per-sample part of `--noise` over the first samples of the data (none when the gradient
/// was not finite, or `--noise-samples 0`); `g` is the full gradient.
#[allow(clippy::too_many_arguments)]
pub fn sample_noise(
    engine: &mut dyn BatchEngine,
    data: &mut dyn Dataset,
    opts: &NoiseOptions,
    r: &GradResult,
    c: &Checkpoint,
    label: &str,
    quiet: bool,
) -> Result<Option<SampleNoise>> {
    let len = data.spec().len;
    let want = opts.samples.unwrap_or(len).min(len);
    if !(r.nonfinite_batches.is_empty() && want > 0) {
        return Ok(None);
    }
    let s = crate::measure::noise::per_sample(engine, c, data, want, &r.grads, label, quiet)
        .with_context(|| format!("{}: --noise", c.path.display()))?;
    Ok(Some(s))
}

/// `--hessian`'s curvature at checkpoint `c` over the engine's parameter block (none when the
/// gradient was not finite); `names` are the gradient's parameters, in `r.grads` order. Warns
/// when the top eigenvalue did not converge.
#[allow(clippy::too_many_arguments)]
pub fn curvature(
    he: &mut dyn HvpEngine,
    c: &Checkpoint,
    data: &mut dyn Dataset,
    batch: usize,
    opts: &HessianOptions,
    names: &[String],
    r: &GradResult,
    label: &str,
    quiet: bool,
) -> Result<Option<Curvature>> {
    if !r.nonfinite_batches.is_empty() {
        return Ok(None);
    }
    let hp = he.hvp_params().to_vec();
    let sizes: Vec<usize> = hp.iter().map(|q| c.tensors[q].numel()).collect();
    let gblock: Vec<f64> = hp
        .iter()
        .flat_map(|q| {
            let i = names.iter().position(|n| n == q).unwrap();
            r.grads[i].iter().copied()
        })
        .collect();
    let cv =
        crate::measure::hessian::curvature(he, c, data, batch, opts, &sizes, &gblock, label, quiet)
            .with_context(|| format!("{}: --hessian", c.path.display()))?;
    if !cv.lanczos.converged {
        eprintln!(
            "warning: {label}: the top Hessian eigenvalue did not converge in {} Lanczos iterations: {} with relative residual {:.2e} (tolerance {:.1e}; raise --hessian-iters)",
            cv.lanczos.iterations, cv.lanczos.top, cv.lanczos.top_residual, opts.tol
        );
    }
    Ok(Some(cv))
}
