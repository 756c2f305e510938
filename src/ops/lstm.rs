//! LSTM (opset 14, layout 0, default activations): what `torch.onnx.export(dynamo=True)` writes
//! for `nn.LSTM`. https://onnx.ai/onnx/operators/onnx__LSTM.html
//!
//! Per direction, with gates in ONNX's order i, o, f, c (W [4H, I], R [4H, H], b = Wb + Rb):
//!
//! ```text
//! z_t = x_t W^T + h_{t-1} R^T + b,   i, o, f = sigmoid(z_i, z_o, z_f),   g = tanh(z_c)
//! c_t = f c_{t-1} + i g,             h_t = o tanh(c_t)
//! ```
//!
//! Y holds every h_t, so every z_t comes from two products over all steps (see
//! [`super::recurrent`]); c_t is recomputed step by step (three elementwise nodes per step).
//! Backward, in reverse processing order, with `T = tanh(c_t)`, the carried `dh` (from the next
//! step's `dz R`, plus dY_t) and `dc` (from the next step's `dc f`):
//!
//! ```text
//! dc += dh o (1 - T^2)
//! dz = [dc g i(1-i), dh T o(1-o), dc c_{t-1} f(1-f), dc i (1-g^2)]
//! dh_{t-1} = dz R,   dc_{t-1} = dc f
//! ```
//!
//! then over all steps at once: dX = dZ W, dW = sum dZ^T x, dR = sum dZ^T h_prev,
//! dWb = dRb = sum dZ, and the initial states get the last carries. PyTorch's LSTM computes the
//! same function (its gate order i, f, g, o is a permutation of W's rows).
use super::recurrent::{
    add_opt, concat, dims, gate_inputs, initial, mul, previous_states, sigmoid_slope, slice,
    step_dh, tanh_slope, y_of, Direction, GateInputs, Grads,
};
use super::rule::{Ctx, Kind, Rule};
use anyhow::Result;
use tch::Tensor;

pub static RULE: Rule = Rule::new("LSTM", Kind::Structured)
    .vjp(vjp)
    .torch(|c, v| super::recurrent::torch(c, &v, &ACTIVATIONS, Some(7), 4, 2, step));

/// The default activations f, g, h (the only ones covered); input 7 holds the peepholes.
const ACTIVATIONS: [&str; 3] = ["Sigmoid", "Tanh", "Tanh"];

/// One step on libtorch tensors, from the module's equations: states [h, c] to [h_t, c_t].
fn step(a: &Tensor, u: &Tensor, s: &[Tensor]) -> Result<Vec<Tensor>> {
    let z = a.f_add(u)?.f_chunk(4, -1)?;
    let (i, o, f) = (z[0].f_sigmoid()?, z[1].f_sigmoid()?, z[2].f_sigmoid()?);
    let g = z[3].f_tanh()?;
    let c = f.f_mul(&s[1])?.f_add(&i.f_mul(&g)?)?;
    let h = o.f_mul(&c.f_tanh()?)?;
    Ok(vec![h, c])
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let (gy, gyh, gyc) = (c.go(0), c.go(1), c.go(2));
    if gy.is_none() && gyh.is_none() && gyc.is_none() {
        return Ok(());
    }
    let dm = dims(c, &ACTIVATIONS, Some(7))?;
    let (s, h) = (dm.seq, dm.hidden);
    let x = c.input(0).to_string();
    let i_dim = c.dims(&x)?[2].ok_or_else(|| anyhow::anyhow!("LSTM input size unknown"))?;
    let y = c.require_output(0);
    let one = c.scalar(1.0, &x)?;
    let mut grads = Grads::default();
    for (d, &reverse) in dm.dirs.clone().iter().enumerate() {
        let yd = y_of(c, &y, d);
        let h0 = initial(c, 5, d, &yd);
        let c0 = initial(c, 6, d, &yd);
        let hprev = previous_states(c, &yd, &h0, s, reverse);
        // Gates of every step: z = x W^T + h_prev R^T + Wb + Rb, [S, B, 4H].
        let GateInputs { a, u, w: wd, r: rd } = gate_inputs(c, &hprev, d, 4 * h as i64);
        let z = c.op("Add", &[&a, &u], vec![]);
        let gate = |c: &mut Ctx, k: i64, f: &str| {
            let zk = slice(c, &z, 2, k * h as i64, (k + 1) * h as i64);
            c.op(f, &[&zk], vec![])
        };
        let (ig, og, fg, gg) = (
            gate(c, 0, "Sigmoid"),
            gate(c, 1, "Sigmoid"),
            gate(c, 2, "Sigmoid"),
            gate(c, 3, "Tanh"),
        );
        // Cell states c_t in processing order, then as [S, B, H] in time order.
        let mut cell: Vec<Option<String>> = vec![None; s];
        let mut cprev: Vec<Option<String>> = vec![None; s];
        let mut carry = c0.clone();
        for t in dm.order(reverse) {
            let (ft, it, gt) = (
                slice(c, &fg, 0, t as i64, t as i64 + 1),
                slice(c, &ig, 0, t as i64, t as i64 + 1),
                slice(c, &gg, 0, t as i64, t as i64 + 1),
            );
            let kept = mul(c, &ft, &carry);
            let new = mul(c, &it, &gt);
            cprev[t] = Some(carry.clone());
            carry = c.op("Add", &[&kept, &new], vec![]);
            cell[t] = Some(carry.clone());
        }
        let cells: Vec<String> = cell.into_iter().map(Option::unwrap).collect();
        let cprevs: Vec<String> = cprev.into_iter().map(Option::unwrap).collect();
        let ct = concat(c, &cells, 0);
        let cp = concat(c, &cprevs, 0);
        // Per-step coefficients, all steps at once.
        let tc = c.op("Tanh", &[&ct], vec![]);
        let (so, si, sf) = (
            sigmoid_slope(c, &og, &one),
            sigmoid_slope(c, &ig, &one),
            sigmoid_slope(c, &fg, &one),
        );
        let a_o = mul(c, &tc, &so);
        let tcs = tanh_slope(c, &tc, &one);
        let b_c = mul(c, &og, &tcs);
        let k_i = mul(c, &gg, &si);
        let k_f = mul(c, &cp, &sf);
        let gs = tanh_slope(c, &gg, &one);
        let k_c = mul(c, &ig, &gs);
        // The backward recurrence, in reverse processing order.
        let mut dh: Option<String> = gyh.as_ref().map(|g| super::recurrent::dir(c, g, d));
        let mut dc: Option<String> = gyc.as_ref().map(|g| super::recurrent::dir(c, g, d));
        let gyd = gy.as_ref().map(|g| y_of(c, g, d));
        let mut dz: Vec<Option<String>> = vec![None; s];
        for t in dm.order(!reverse) {
            let at = |c: &mut Ctx, v: &str| slice(c, v, 0, t as i64, t as i64 + 1);
            let dht = step_dh(c, dh, gyd.as_deref(), t, &yd);
            let bct = at(c, &b_c);
            let from_h = mul(c, &dht, &bct);
            let dct = add_opt(c, dc, from_h);
            let parts = [(&dct, &k_i), (&dht, &a_o), (&dct, &k_f), (&dct, &k_c)];
            let mut gates = Vec::with_capacity(4);
            for (g, k) in parts {
                let kt = at(c, k);
                gates.push(mul(c, g, &kt));
            }
            let dzt = concat(c, &gates, 2);
            dh = Some(c.op("MatMul", &[&dzt, &rd], vec![]));
            let ft = at(c, &fg);
            dc = Some(mul(c, &dct, &ft));
            dz[t] = Some(dzt);
        }
        let dzs: Vec<String> = dz.into_iter().map(Option::unwrap).collect();
        let dzall = concat(c, &dzs, 0);
        grads.add(
            c,
            Direction {
                da: &dzall,
                du: &dzall,
                x: &x,
                hprev: &hprev,
                w: &wd,
                gates: 4,
                input: i_dim,
                hidden: h,
                states: vec![dh.unwrap(), dc.unwrap()],
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

    crate::ops::testing::gradient_and_torch_tests!(lstm = cases());

    /// The rule's gradient against libtorch autograd through the torch forward (what
    /// `--engine torch` and `probe train` differentiate).
    #[test]
    fn torch_autograd() {
        for case in cases() {
            check_torch_autograd(case);
        }
    }

    fn cases() -> Vec<Case> {
        vec![
            // ONNX Runtime has no f64 LSTM kernel. X [S=3, B=2, I=4], hidden 5, bias,
            // initial states; Y, Y_h and Y_c all in the loss.
            Case::new("LSTM")
                .input(&[3, 2, 4])
                .input(&[1, 20, 4])
                .input(&[1, 20, 5])
                .input(&[1, 40])
                .absent()
                .input(&[1, 2, 5])
                .input(&[1, 2, 5])
                .attr(attr_int("hidden_size", 5))
                .outputs(3)
                .f32(),
            // Bidirectional, no bias or initial states.
            Case::new("LSTM")
                .input(&[4, 2, 3])
                .input(&[2, 8, 3])
                .input(&[2, 8, 2])
                .attr(attr_int("hidden_size", 2))
                .attr(attr_string("direction", "bidirectional"))
                .outputs(3)
                .f32(),
            // Reverse, only Y_h used (the last state processed, time step 0).
            Case::new("LSTM")
                .input(&[3, 1, 2])
                .input(&[1, 12, 2])
                .input(&[1, 12, 3])
                .input(&[1, 24])
                .attr(attr_int("hidden_size", 3))
                .attr(attr_string("direction", "reverse"))
                .outputs(2)
                .skip_output(0)
                .f32(),
        ]
    }
}
