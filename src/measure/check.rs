//! The data checks of [`crate::data::check`], for a loss: cross-entropy takes class ids, squared
//! error real values.
use crate::autodiff::LossKind;
use crate::data::Spec;
use crate::model::Model;
use anyhow::Result;

pub use crate::data::check::{targets_in_range, Fit};

/// Whether the data fits the model under `loss` (see [`crate::data::check::data_fits_model`]).
pub fn data_fits_model(model: &Model, spec: &Spec, loss: LossKind) -> Result<Fit> {
    crate::data::check::data_fits_model(model, spec, loss.targets())
}
