//! GRU (opset 14, layout 0, default activations, `linear_before_reset = 1`): what
//! `torch.onnx.export(dynamo=True)` writes for `nn.GRU`. https://onnx.ai/onnx/operators/onnx__GRU.html
//!
//! Per direction, gates in ONNX's order z, r, h (W [3H, I], R [3H, H], B = [Wb, Rb] [6H]):
//!
//! ```text
//! a = x_t W^T + Wb,   u = h_{t-1} R^T + Rb   (each [3H], split z, r, h)
//! z = sigmoid(a_z + u_z),   r = sigmoid(a_r + u_r),   n = tanh(a_h + r u_h)
//! h_t = (1 - z) n + z h_{t-1}
//! ```
//!
//! Y holds every h_t, so all of the above comes from two products over all steps (see
//! [`super::recurrent`]). The backward recurrence carries only dh: with `dh` the whole
//! gradient at step t (dY_t plus the carry) and per-step coefficients
//! `K_z = (h_{t-1} - n) z(1-z)`, `K_n = (1-z)(1-n^2)`, `K_r = K_n u_h r(1-r)`, `K_u = K_n r`:
//!
//! ```text
//! dA = dh [K_z, K_r, K_n],   dU = dh [K_z, K_r, K_u],   dh_{t-1} = dh z + dU R
//! ```
//!
//! and over all steps at once dX = dA W, dW = sum dA^T x, dR = sum dU^T h_prev, dWb = sum dA,
//! dRb = sum dU. PyTorch's GRU is this function (its gates r, z, n are a permutation of W's
//! rows, and it applies the reset gate after the hidden product, as linear_before_reset = 1).
use super::attrs::Attrs;
use super::recurrent::{
    concat, dims, gate_inputs, initial, mul, previous_states, sigmoid_slope, slice, step_dh,
    tanh_slope, y_of, Direction, GateInputs, Grads,
};
use super::rule::{Ctx, Kind, Rule};
use anyhow::{anyhow, Result};
use tch::Tensor;

pub static RULE: Rule = Rule::new("GRU", Kind::Structured).vjp(vjp).torch(|c, v| {
    reset_after(c)?;
    super::recurrent::torch(c, &v, &ACTIVATIONS, None, 3, 1, step)
});

/// The default activations f, g (the only ones covered).
const ACTIVATIONS: [&str; 2] = ["Sigmoid", "Tanh"];

/// `linear_before_reset = 1` (PyTorch's GRU), the one form covered.
fn reset_after(c: &impl Attrs) -> Result<()> {
    if c.attr_i("linear_before_reset", 0) != 1 {
        return Err(anyhow!(
            "GRU node '{}': linear_before_reset = 0 is not supported (PyTorch's GRU exports 1)",
            c.node().name
        ));
    }
    Ok(())
}

/// One step on libtorch tensors, from the module's equations: [h] to [h_t].
fn step(a: &Tensor, u: &Tensor, s: &[Tensor]) -> Result<Vec<Tensor>> {
    let (a, u) = (a.f_chunk(3, -1)?, u.f_chunk(3, -1)?);
    let z = a[0].f_add(&u[0])?.f_sigmoid()?;
    let r = a[1].f_add(&u[1])?.f_sigmoid()?;
    let n = a[2].f_add(&r.f_mul(&u[2])?)?.f_tanh()?;
    // (1 - z) n + z h_{t-1}
    let h = z
        .f_neg()?
        .f_add_scalar(1.0)?
        .f_mul(&n)?
        .f_add(&z.f_mul(&s[0])?)?;
    Ok(vec![h])
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let (gy, gyh) = (c.go(0), c.go(1));
    if gy.is_none() && gyh.is_none() {
        return Ok(());
    }
    let dm = dims(c, &ACTIVATIONS, None)?;
    reset_after(c)?;
    let (s, h) = (dm.seq, dm.hidden as i64);
    let x = c.input(0).to_string();
    let i_dim = c.dims(&x)?[2].ok_or_else(|| anyhow!("GRU input size unknown"))?;
    let y = c.require_output(0);
    let one = c.scalar(1.0, &x)?;
    let mut grads = Grads::default();
    for (d, &reverse) in dm.dirs.clone().iter().enumerate() {
        let yd = y_of(c, &y, d);
        let h0 = initial(c, 5, d, &yd);
        let hprev = previous_states(c, &yd, &h0, s, reverse);
        let GateInputs { a, u, w: wd, r: rd } = gate_inputs(c, &hprev, d, 3 * h);
        let part = |c: &mut Ctx, v: &str, k: i64| slice(c, v, 2, k * h, (k + 1) * h);
        let (az, ar, ah) = (part(c, &a, 0), part(c, &a, 1), part(c, &a, 2));
        let (uz, ur, uh) = (part(c, &u, 0), part(c, &u, 1), part(c, &u, 2));
        let zs = c.op("Add", &[&az, &uz], vec![]);
        let z = c.op("Sigmoid", &[&zs], vec![]);
        let rs = c.op("Add", &[&ar, &ur], vec![]);
        let rg = c.op("Sigmoid", &[&rs], vec![]);
        let ru = mul(c, &rg, &uh);
        let ns = c.op("Add", &[&ah, &ru], vec![]);
        let n = c.op("Tanh", &[&ns], vec![]);
        // Per-step coefficients, all steps at once.
        let diff = c.op("Sub", &[&hprev, &n], vec![]);
        let sz = sigmoid_slope(c, &z, &one);
        let k_z = mul(c, &diff, &sz);
        let omz = c.op("Sub", &[&one, &z], vec![]);
        let sn = tanh_slope(c, &n, &one);
        let k_n = mul(c, &omz, &sn);
        let sr = sigmoid_slope(c, &rg, &one);
        let kr = mul(c, &k_n, &uh);
        let k_r = mul(c, &kr, &sr);
        let k_u = mul(c, &k_n, &rg);
        let k_dh = concat(c, &[k_z.clone(), k_r.clone(), k_u.clone()], 2);
        // The backward recurrence: the whole dh of every step, in reverse processing order.
        let mut carry: Option<String> = gyh.as_ref().map(|g| super::recurrent::dir(c, g, d));
        let gyd = gy.as_ref().map(|g| y_of(c, g, d));
        let mut dhs: Vec<Option<String>> = vec![None; s];
        for t in dm.order(!reverse) {
            let at = |c: &mut Ctx, v: &str| slice(c, v, 0, t as i64, t as i64 + 1);
            let dh = step_dh(c, carry, gyd.as_deref(), t, &yd);
            let dh3 = concat(c, &[dh.clone(), dh.clone(), dh.clone()], 2);
            let kt = at(c, &k_dh);
            let du = mul(c, &dh3, &kt);
            let through_r = c.op("MatMul", &[&du, &rd], vec![]);
            let zt = at(c, &z);
            let direct = mul(c, &dh, &zt);
            carry = Some(c.op("Add", &[&direct, &through_r], vec![]));
            dhs[t] = Some(dh);
        }
        let dhs: Vec<String> = dhs.into_iter().map(Option::unwrap).collect();
        let dh_all = concat(c, &dhs, 0);
        let dh3 = concat(c, &[dh_all.clone(), dh_all.clone(), dh_all.clone()], 2);
        let da_k = concat(c, &[k_z, k_r, k_n], 2);
        let da = mul(c, &dh3, &da_k);
        let du = mul(c, &dh3, &k_dh);
        grads.add(
            c,
            Direction {
                da: &da,
                du: &du,
                x: &x,
                hprev: &hprev,
                w: &wd,
                gates: 3,
                input: i_dim,
                hidden: h as usize,
                states: vec![carry.unwrap()],
            },
        );
    }
    grads.set(c);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::prelude::*;
    use crate::ops::torch_testing::check_torch_autograd;

    crate::ops::testing::gradient_and_torch_tests!(gru = cases());

    /// The rule's gradient against libtorch autograd through the torch forward (what
    /// `--engine torch` and `probe train` differentiate).
    #[test]
    fn torch_autograd() {
        for case in cases() {
            check_torch_autograd(case);
        }
    }

    fn cases() -> Vec<Case> {
        let lbr = || attr_int("linear_before_reset", 1);
        vec![
            // ONNX Runtime has no f64 GRU kernel. X [S=3, B=2, I=4], hidden 5, bias, initial
            // state; Y and Y_h both in the loss.
            Case::new("GRU")
                .input(&[3, 2, 4])
                .input(&[1, 15, 4])
                .input(&[1, 15, 5])
                .input(&[1, 30])
                .absent()
                .input(&[1, 2, 5])
                .attr(attr_int("hidden_size", 5))
                .attr(lbr())
                .outputs(2)
                .f32(),
            // Bidirectional, no bias or initial state.
            Case::new("GRU")
                .input(&[4, 2, 3])
                .input(&[2, 6, 3])
                .input(&[2, 6, 2])
                .attr(attr_int("hidden_size", 2))
                .attr(attr_string("direction", "bidirectional"))
                .attr(lbr())
                .outputs(2)
                .f32(),
            // Reverse, only Y_h used.
            Case::new("GRU")
                .input(&[3, 1, 2])
                .input(&[1, 9, 2])
                .input(&[1, 9, 3])
                .input(&[1, 18])
                .attr(attr_int("hidden_size", 3))
                .attr(attr_string("direction", "reverse"))
                .attr(lbr())
                .outputs(2)
                .skip_output(0)
                .f32(),
        ]
    }
}
