//! The data checks of [`crate::data::check`], for a loss: cross-entropy takes class ids, squared
//! error real values.
use crate::autodiff::LossKind;
use crate::data::check::Targets;
use crate::data::Spec;
use crate::model::Model;
use anyhow::Result;

pub use crate::data::check::{targets_in_range, Fit};

/// What `loss` needs of the targets.
pub fn targets(loss: LossKind) -> Targets {
    match loss {
        LossKind::CrossEntropy => Targets::ClassIds,
        LossKind::Mse => Targets::Real,
    }
}

/// Whether the data fits the model under `loss` (see [`crate::data::check::data_fits_model`]).
pub fn data_fits_model(model: &Model, spec: &Spec, loss: LossKind) -> Result<Fit> {
    crate::data::check::data_fits_model(model, spec, targets(loss))
}
