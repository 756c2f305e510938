//! Dropout (opsets 12, 13, 22), inference only: `output = data`; the optional `mask` output is
//! boolean, not differentiable. https://onnx.ai/onnx/operators/onnx__Dropout.html
//!
//! dData = dOutput. In training mode (`training_mode` true) the output is random and a gradient
//! of the function is undefined; probe measures models in inference mode, so a `training_mode`
//! input that is not a constant false is refused with an error.
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, ints, TorchCtx, Value};
use anyhow::{bail, Result};

pub static RULE: Rule = Rule::new("Dropout", Kind::Linear).vjp(vjp).torch(torch);

/// Inference: the identity, and an all-true mask if asked for.
fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    if let Some(t) = super::torch::opt_input(&v, 2) {
        if ints(t)?.first().is_some_and(|&m| m != 0) {
            bail!("Dropout in training mode is random: export the model in eval mode");
        }
    }
    let mut out = vec![Value::Tensor(x.shallow_clone())];
    if c.wants(1) {
        out.push(Value::Tensor(x.f_ones_like()?.f_to_kind(tch::Kind::Bool)?));
    }
    Ok(out)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    if c.has_input(2) {
        match c.const_ints(2).as_deref() {
            Some([0]) => {}
            Some(_) => bail!("Dropout in training mode is random: export the model in eval mode"),
            None => bail!(
                "Dropout's training_mode '{}' is not a constant: cannot tell it is inference",
                c.input(2)
            ),
        }
    }
    c.set(0, g);
    Ok(())
}

op_tests!(
    dropout_inference = [
        Case::new("Dropout").input(&[2, 3]),
        // Both outputs present; the mask is boolean and left out of the loss by the harness.
        Case::new("Dropout").input(&[2, 3]).outputs(2),
        // training_mode given as a constant false.
        Case::new("Dropout")
            .input(&[2, 3])
            .absent()
            .bools(&[], &[false]),
    ],
);
