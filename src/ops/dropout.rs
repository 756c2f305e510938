//! Dropout (opsets 12, 13, 22), inference only: `output = data`; the optional `mask` output is
//! boolean, not differentiable. https://onnx.ai/onnx/operators/onnx__Dropout.html
//!
//! dData = dOutput. In training mode (`training_mode` true) the output is random and a gradient
//! of the function is undefined; probe measures models in inference mode, so a `training_mode`
//! input that is not a constant false is refused with an error.
use super::{Kind, Rule};
use crate::autodiff::ctx::Ctx;
use anyhow::{bail, Result};

pub static RULE: Rule = Rule {
    op: "Dropout",
    kind: Kind::Linear,
    vjp: Some(vjp),
};

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

#[cfg(test)]
mod tests {
    use crate::ops::testing::{check, Case};
    #[test]
    fn dropout_inference() {
        check(Case::new("Dropout").input(&[2, 3]));
        // Both outputs present; the mask is boolean and left out of the loss by the harness.
        check(Case::new("Dropout").input(&[2, 3]).outputs(2));
        // training_mode given as a constant false.
        check(
            Case::new("Dropout")
                .input(&[2, 3])
                .absent()
                .bools(&[], &[false]),
        );
    }
}
