//! Does the data fit the model? Checked once, before any work, with every problem in one message;
//! and per batch, whether the class ids index the model's logits.
use super::batch::{Array, Batch, Kind, Spec};
use crate::model::{fmt_dims, Dim, Model};
use anyhow::Result;

/// What the checks learned that the run needs: the class count where the graph states it.
#[derive(Debug, Clone)]
pub struct Fit {
    pub classes: Option<usize>,
    /// Rank of the target tensor of a batch (1 + per-sample rank).
    pub target_rank: usize,
}

/// What the loss needs of the targets `y`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Targets {
    /// Integer class ids, one per position before the model output's class axis
    /// (cross-entropy).
    ClassIds,
    /// Real values, as many per sample as the model outputs (squared error).
    Real,
}

pub fn data_fits_model(model: &Model, spec: &Spec, targets: Targets) -> Result<Fit> {
    let input = model.data_input()?;
    let output = &model.outputs[0];
    let mut problems = Vec::new();
    if spec.len == 0 {
        return Err(crate::error::input(format!(
            "{}: the data set is empty",
            spec.identity
        )));
    }
    // x: kind and per-sample shape against the model's input.
    if let Some(dt) = input.dtype {
        let want = if dt.is_float() {
            Kind::Float
        } else {
            Kind::Int
        };
        if want != spec.x_kind {
            problems.push(format!(
                "x is {} data but the model's input '{}' is {} (store {} in x)",
                spec.x_kind,
                input.name,
                dt,
                if dt.is_float() {
                    "normalized float values, or give --mean/--std for uint8 images"
                } else {
                    "integer ids"
                }
            ));
        }
    }
    if let Some(shape) = &input.shape {
        let per = &shape[1.min(shape.len())..];
        let ok = per.len() == spec.x_shape.len()
            && per
                .iter()
                .zip(&spec.x_shape)
                .all(|(d, &n)| !matches!(d, Dim::Fixed(m) if *m != n));
        if !ok {
            problems.push(format!(
                "x samples have shape {:?} but the model's input '{}' is {} (first axis = batch)",
                spec.x_shape,
                input.name,
                fmt_dims(shape)
            ));
        }
    }
    // y against the output: class ids for every position but the last axis, or real values.
    let mut classes = None;
    if let Some(shape) = &output.shape {
        let per_out = &shape[1.min(shape.len())..];
        match targets {
            Targets::ClassIds => {
                if spec.y_kind != Kind::Int {
                    problems.push("y holds floats but cross-entropy needs integer class ids (use --loss mse for real targets)".into());
                }
                if let Some(Dim::Fixed(c)) = per_out.last() {
                    classes = Some(*c);
                }
                let pos = &per_out[..per_out.len().saturating_sub(1)];
                let ok = pos.len() == spec.y_shape.len()
                    && pos
                        .iter()
                        .zip(&spec.y_shape)
                        .all(|(d, &n)| !matches!(d, Dim::Fixed(m) if *m != n));
                if per_out.is_empty() || !ok {
                    problems.push(format!(
                        "y samples have shape {:?} but the model's output '{}' is {}: class targets need one id per position before the class axis",
                        spec.y_shape,
                        output.name,
                        fmt_dims(shape)
                    ));
                }
            }
            Targets::Real => {
                if spec.y_kind != Kind::Float {
                    problems
                        .push("y holds integers but --loss mse needs real-valued targets".into());
                }
                let n_out: Option<usize> = per_out
                    .iter()
                    .map(|d| {
                        if let Dim::Fixed(n) = d {
                            Some(*n)
                        } else {
                            None
                        }
                    })
                    .product();
                if let Some(n) = n_out {
                    if n != spec.y_shape.iter().product::<usize>() {
                        problems.push(format!(
                            "y samples have shape {:?} but the model's output '{}' is {}",
                            spec.y_shape,
                            output.name,
                            fmt_dims(shape)
                        ));
                    }
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(crate::error::input(format!(
            "{}: data does not fit {}: {}",
            spec.identity,
            model.path.display(),
            problems.join("; ")
        )));
    }
    Ok(Fit {
        classes,
        target_rank: 1 + spec.y_shape.len(),
    })
}

/// Class ids must index the logits: checked per batch, naming the first bad sample.
pub fn targets_in_range(batch: &Batch, classes: Option<usize>, identity: &str) -> Result<()> {
    let (Some(c), Array::I64(y)) = (classes, &batch.y) else {
        return Ok(());
    };
    let per = y.len() / batch.len().max(1);
    if let Some((i, v)) = y
        .iter()
        .enumerate()
        .find(|(_, &v)| v < 0 || v as usize >= c)
    {
        return Err(crate::error::input(format!(
            "{identity}: sample {} has target {v}, outside the model's {c} classes (0..{})",
            batch.start + i / per.max(1),
            c - 1
        )));
    }
    Ok(())
}
