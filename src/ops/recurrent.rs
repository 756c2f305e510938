//! What the LSTM and GRU rules share: the attributes they cover, the directions, node helpers
//! for time-major sequences, and the libtorch forward ([`torch`]) around each op's step.
//!
//! Both ops (layout 0) take X [S, B, I], W [D, G*H, I], R [D, G*H, H], B [D, 2*G*H] and
//! optional initial states [D, B, H], and write Y [S, D, B, H] (every step's hidden state) and
//! Y_h [D, B, H] (the last one processed). The rules never unroll the forward recurrence of the
//! hidden state: Y holds every h_t, so the gates of all steps come from one product each
//! (`X W^T + H_prev R^T`, with `H_prev` Y shifted by one step), and only the backward
//! recurrence (and LSTM's cell state) runs step by step, S steps of a few small nodes. The
//! sequence length S must therefore be static, as it is in an export with a dynamic batch.
use super::attrs::Attrs;
use super::rule::Ctx;
use super::torch::{input, opt_input, TorchCtx, Value};
use crate::model::graph::attr_int;
use anyhow::{anyhow, Result};
use tch::Tensor;

/// The checked shape of a recurrent node: what the rules build on.
pub struct Dims {
    pub seq: usize,
    pub hidden: usize,
    /// Processing orders, one per direction: 0..S for forward, S-1..0 for reverse.
    pub dirs: Vec<bool>,
}

/// The attributes and inputs the rules and the libtorch forwards cover (default activations, no
/// clip, layout 0, no sequence_lens, no peepholes), else the reason; H and the directions
/// ([`Dims::dirs`]).
pub fn covered(
    c: &impl Attrs,
    activations: &[&str],
    peephole_input: Option<usize>,
) -> Result<(usize, Vec<bool>)> {
    let n = c.node();
    let what = |m: String| anyhow!("{} node '{}': {m}", n.op_type, n.name);
    let has_input = |i: usize| n.input.get(i).is_some_and(|s| !s.is_empty());
    if let Some(a) = c.attr("activations") {
        let got: Vec<String> = a
            .strings
            .iter()
            .map(|s| String::from_utf8_lossy(s).to_string())
            .collect();
        let default = got
            .iter()
            .enumerate()
            .all(|(k, s)| s.eq_ignore_ascii_case(activations[k % activations.len()]));
        if !default {
            return Err(what(format!(
                "activations {got:?} are not supported (only the default {activations:?})"
            )));
        }
    }
    if c.attr("clip").is_some() {
        return Err(what("clip is not supported".into()));
    }
    if c.attr_i("layout", 0) != 0 {
        return Err(what(
            "layout 1 (batch first) is not supported; PyTorch's exporter writes layout 0".into(),
        ));
    }
    if c.attr_i("input_forget", 0) != 0 {
        return Err(what("input_forget is not supported".into()));
    }
    if has_input(4) {
        return Err(what(
            "sequence_lens is not supported (pack no sequences)".into(),
        ));
    }
    if peephole_input.is_some_and(has_input) {
        return Err(what("peephole weights are not supported".into()));
    }
    let hidden = c.attr_i("hidden_size", 0);
    if hidden <= 0 {
        return Err(what("hidden_size is missing".into()));
    }
    let dirs = match c.attr_s("direction").as_deref().unwrap_or("forward") {
        "forward" => vec![false],
        "reverse" => vec![true],
        "bidirectional" => vec![false, true],
        other => return Err(what(format!("direction '{other}'"))),
    };
    Ok((hidden as usize, dirs))
}

/// [`covered`], and the static sequence length the rules unroll over.
pub fn dims(c: &Ctx, activations: &[&str], peephole_input: Option<usize>) -> Result<Dims> {
    let (hidden, dirs) = covered(c, activations, peephole_input)?;
    let xd = c.dims(c.input(0))?;
    let seq = xd.first().copied().flatten().ok_or_else(|| {
        anyhow!(
            "{} node '{}': the sequence length must be static",
            c.node.op_type,
            c.node.name
        )
    })?;
    Ok(Dims { seq, hidden, dirs })
}

impl Dims {
    /// Time steps in processing order for a direction.
    pub fn order(&self, reverse: bool) -> Vec<usize> {
        if reverse {
            (0..self.seq).rev().collect()
        } else {
            (0..self.seq).collect()
        }
    }
}

/// `x[start..end]` along `axis`.
pub fn slice(c: &mut Ctx, x: &str, axis: i64, start: i64, end: i64) -> String {
    let (s, e, a) = (c.ints(&[start]), c.ints(&[end]), c.ints(&[axis]));
    c.op("Slice", &[x, &s, &e, &a], vec![])
}

/// Direction `d` of a [D, ...] tensor, the axis kept: [1, ...].
pub fn dir(c: &mut Ctx, x: &str, d: usize) -> String {
    slice(c, x, 0, d as i64, d as i64 + 1)
}

/// `x + a`, or `a` alone when `x` is absent (a carry that has not started yet).
pub fn add_opt(c: &mut Ctx, x: Option<String>, a: String) -> String {
    match x {
        Some(x) => c.op("Add", &[&x, &a], vec![]),
        None => a,
    }
}

pub fn concat(c: &mut Ctx, parts: &[String], axis: i64) -> String {
    if parts.len() == 1 {
        return parts[0].clone();
    }
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    c.op("Concat", &refs, vec![attr_int("axis", axis)])
}

pub fn mul(c: &mut Ctx, a: &str, b: &str) -> String {
    c.op("Mul", &[a, b], vec![])
}

/// `s * (1 - s)`, the derivative of the sigmoid at its output `s`.
pub fn sigmoid_slope(c: &mut Ctx, s: &str, one: &str) -> String {
    let r = c.op("Sub", &[one, s], vec![]);
    mul(c, s, &r)
}

/// `1 - t^2`, the derivative of tanh at its output `t`.
pub fn tanh_slope(c: &mut Ctx, t: &str, one: &str) -> String {
    let t2 = mul(c, t, t);
    c.op("Sub", &[one, &t2], vec![])
}

/// Zeros [1, B, H] typed like `like` ([S, B, H] or [1, B, H]).
pub fn zero_state(c: &mut Ctx, like: &str) -> String {
    let first = slice(c, like, 0, 0, 1);
    let x = c.input(0).to_string();
    let zero = c.scalar(0.0, &x).expect("X's type is observed");
    c.op("Mul", &[&first, &zero], vec![])
}

/// `[S, B, K] x [S, B, M] -> [K, M]`: the sum over steps and batch of `a_t^T b_t`, one product.
pub fn sum_outer(c: &mut Ctx, a: &str, b: &str, k: usize, m: usize) -> String {
    let (sa, sb) = (c.ints(&[-1, k as i64]), c.ints(&[-1, m as i64]));
    let a2 = c.op("Reshape", &[a, &sa], vec![]);
    let b2 = c.op("Reshape", &[b, &sb], vec![]);
    let at = c.transpose(&a2, &[1, 0]);
    c.op("MatMul", &[&at, &b2], vec![])
}

/// The hidden state before each step in time order, [S, B, H]: Y's steps shifted by one in
/// the processing order, the initial state first.
pub fn previous_states(c: &mut Ctx, y: &str, h0: &str, seq: usize, reverse: bool) -> String {
    let s = seq as i64;
    if seq == 1 {
        return h0.to_string();
    }
    if reverse {
        let later = slice(c, y, 0, 1, s);
        concat(c, &[later, h0.to_string()], 0)
    } else {
        let earlier = slice(c, y, 0, 0, s - 1);
        concat(c, &[h0.to_string(), earlier], 0)
    }
}

/// Direction `d`'s [S, B, H] of Y [S, D, B, H].
pub fn y_of(c: &mut Ctx, y: &str, d: usize) -> String {
    let yd = slice(c, y, 1, d as i64, d as i64 + 1);
    let ax = c.ints(&[1]);
    c.op("Squeeze", &[&yd, &ax], vec![])
}

/// The initial state of direction `d` ([1, B, H]) from input `i`, or zeros like `like`.
pub fn initial(c: &mut Ctx, i: usize, d: usize, like: &str) -> String {
    if c.has_input(i) {
        let x = c.input(i).to_string();
        dir(c, &x, d)
    } else {
        zero_state(c, like)
    }
}

/// The gradients of X, W, R, B and the initial states, gathered direction by direction and set
/// at the end (the [D, ...] inputs concatenate their directions).
#[derive(Default)]
pub struct Grads {
    dx: Option<String>,
    w: Vec<String>,
    r: Vec<String>,
    b: Vec<String>,
    /// Per state input (initial_h, then initial_c for LSTM): one [1, B, H] per direction.
    states: Vec<Vec<String>>,
}

/// One direction's parts for [`Grads::add`].
pub struct Direction<'s> {
    /// dA [S, B, G*H]: the gradient of the gates' input part `x W^T + Wb`.
    pub da: &'s str,
    /// dU [S, B, G*H]: of their hidden part `h_prev R^T + Rb` (dA itself for LSTM).
    pub du: &'s str,
    pub x: &'s str,
    pub hprev: &'s str,
    /// W of this direction, [1, G*H, I].
    pub w: &'s str,
    pub gates: usize,
    pub input: usize,
    pub hidden: usize,
    /// The last carries: the initial states' gradients, in input order.
    pub states: Vec<String>,
}

impl Grads {
    pub fn add(&mut self, c: &mut Ctx, d: Direction) {
        let gh = d.gates * d.hidden;
        if c.needs(0) {
            let dxd = c.op("MatMul", &[d.da, d.w], vec![]);
            self.dx = Some(add_opt(c, self.dx.take(), dxd));
        }
        let ax0 = c.ints(&[0]);
        if c.needs(1) {
            let g = sum_outer(c, d.da, d.x, gh, d.input);
            self.w.push(c.op("Unsqueeze", &[&g, &ax0], vec![]));
        }
        if c.needs(2) {
            let g = sum_outer(c, d.du, d.hprev, gh, d.hidden);
            self.r.push(c.op("Unsqueeze", &[&g, &ax0], vec![]));
        }
        if c.needs(3) {
            let sa = c.reduce_sum(d.da, &[0, 1], true);
            let su = c.reduce_sum(d.du, &[0, 1], true);
            let both = concat(c, &[sa, su], 2);
            self.b.push(c.op("Squeeze", &[&both, &ax0], vec![]));
        }
        self.states.resize(d.states.len(), vec![]);
        for (k, s) in d.states.into_iter().enumerate() {
            self.states[k].push(s);
        }
    }

    /// Sets every needed gradient; the state inputs are 5 (initial_h) and 6 (initial_c).
    pub fn set(self, c: &mut Ctx) {
        if let Some(dx) = self.dx {
            c.set(0, dx);
        }
        let mut parts = vec![(1, self.w), (2, self.r), (3, self.b)];
        parts.extend(self.states.into_iter().enumerate().map(|(k, s)| (5 + k, s)));
        for (i, p) in parts {
            if c.needs(i) && !p.is_empty() {
                let g = concat(c, &p, 0);
                c.set(i, g);
            }
        }
    }
}

/// Direction `d`'s gate inputs over all steps: `A = X W^T + Wb` and `U = H_prev R^T + Rb`
/// ([S, B, G*H] each, the biases where B is given), with that direction's W and R.
pub struct GateInputs {
    pub a: String,
    pub u: String,
    pub w: String,
    pub r: String,
}

pub fn gate_inputs(c: &mut Ctx, hprev: &str, d: usize, gh: i64) -> GateInputs {
    let (x, w, r) = (
        c.input(0).to_string(),
        c.input(1).to_string(),
        c.input(2).to_string(),
    );
    let (wd, rd) = (dir(c, &w, d), dir(c, &r, d));
    let wt = c.transpose(&wd, &[0, 2, 1]);
    let rt = c.transpose(&rd, &[0, 2, 1]);
    let mut a = c.op("MatMul", &[&x, &wt], vec![]);
    let mut u = c.op("MatMul", &[hprev, &rt], vec![]);
    if c.has_input(3) {
        let b = c.input(3).to_string();
        let bd = dir(c, &b, d);
        let wb = slice(c, &bd, 1, 0, gh);
        let rb = slice(c, &bd, 1, gh, 2 * gh);
        a = c.op("Add", &[&a, &wb], vec![]);
        u = c.op("Add", &[&u, &rb], vec![]);
    }
    GateInputs { a, u, w: wd, r: rd }
}

/// The whole hidden-state gradient at step `t`: the carry plus dY_t (direction's [S, B, H]),
/// zeros when neither reaches it.
pub fn step_dh(
    c: &mut Ctx,
    carry: Option<String>,
    gy: Option<&str>,
    t: usize,
    like: &str,
) -> String {
    let carry = match gy {
        Some(g) => {
            let gt = slice(c, g, 0, t as i64, t as i64 + 1);
            Some(add_opt(c, carry, gt))
        }
        None => carry,
    };
    carry.unwrap_or_else(|| zero_state(c, like))
}

/// One step of a recurrence on libtorch tensors: from the gates' input part `a = x_t W^T + Wb`
/// and hidden part `u = h_{t-1} R^T + Rb` ([B, G*H] each, gates in ONNX's order) and the
/// states before the step (h first, then LSTM's c), the states after it.
pub type TorchStep = fn(&Tensor, &Tensor, &[Tensor]) -> Result<Vec<Tensor>>;

/// The libtorch forward both ops share (layout 0): the attributes checked as the rules check
/// them, then per direction `A = X W^T + Wb` for all steps at once and the recurrence step by
/// step in the direction's processing order, `states` states (h, then LSTM's c) starting from
/// inputs 5, 6, ... or zeros. Returns Y [S, D, B, H] and the last states processed, [D, B, H]
/// each (Y_h, then Y_c). Plain tensor ops, so libtorch autograd differentiates it.
pub fn torch(
    c: &TorchCtx,
    v: &[Value],
    activations: &[&str],
    peephole_input: Option<usize>,
    gates: i64,
    states: usize,
    step: TorchStep,
) -> Result<Vec<Value>> {
    let (hidden, dirs) = covered(c, activations, peephole_input)?;
    let (x, w, r) = (input(v, 0)?, input(v, 1)?, input(v, 2)?);
    let (seq, batch, _) = x.size3()?;
    let gh = gates * hidden as i64;
    if w.size().get(1) != Some(&gh) {
        let n = c.node();
        return Err(anyhow!(
            "{} node '{}': W has shape {:?}, {gates} gates of hidden_size {hidden} need [D, {gh}, I]",
            n.op_type,
            n.name,
            w.size()
        ));
    }
    let mut ys = Vec::with_capacity(dirs.len());
    let mut last: Vec<Vec<Tensor>> = (0..states).map(|_| Vec::new()).collect();
    for (d, &reverse) in dirs.iter().enumerate() {
        let d = d as i64;
        let mut a = x.f_matmul(&w.f_select(0, d)?.f_transpose(0, 1)?)?;
        let rt = r.f_select(0, d)?.f_transpose(0, 1)?;
        let mut rb = None;
        if let Some(b) = opt_input(v, 3) {
            let bd = b.f_select(0, d)?;
            a = a.f_add(&bd.f_narrow(0, 0, gh)?)?;
            rb = Some(bd.f_narrow(0, gh, gh)?);
        }
        let mut s: Vec<Tensor> = (0..states)
            .map(|k| match opt_input(v, 5 + k) {
                Some(t) => t.f_select(0, d),
                None => Tensor::f_zeros([batch, hidden as i64], (x.kind(), x.device())),
            })
            .collect::<Result<_, _>>()?;
        let mut hs: Vec<Option<Tensor>> = (0..seq).map(|_| None).collect();
        let order: Vec<i64> = if reverse {
            (0..seq).rev().collect()
        } else {
            (0..seq).collect()
        };
        for t in order {
            let mut u = s[0].f_matmul(&rt)?;
            if let Some(rb) = &rb {
                u = u.f_add(rb)?;
            }
            s = step(&a.f_select(0, t)?, &u, &s)?;
            hs[t as usize] = Some(s[0].shallow_clone());
        }
        let hs: Vec<Tensor> = hs.into_iter().map(Option::unwrap).collect();
        ys.push(Tensor::f_stack(&hs, 0)?);
        for (k, t) in s.into_iter().enumerate() {
            last[k].push(t);
        }
    }
    let mut out = vec![Value::Tensor(Tensor::f_stack(&ys, 1)?)];
    for l in last {
        out.push(Value::Tensor(Tensor::f_stack(&l, 0)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::model::graph::{attr_int, attr_string};
    use crate::ops::{rule, TorchCtx, Value};
    use onnx_protobuf::{AttributeProto, NodeProto};
    use tch::{Device, Tensor};

    /// What the libtorch forward of `op` says of a node with `inputs` (empty: absent) and
    /// `attrs`, hidden size 2, on X [2, 1, 3].
    fn refusal(op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let mut n = NodeProto::new();
        (n.op_type, n.name) = (op.into(), "r".into());
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = vec!["y".into()];
        n.attribute = attrs;
        n.attribute.push(attr_int("hidden_size", 2));
        let g = if op == "LSTM" { 4 } else { 3 };
        let shapes = [vec![2, 1, 3], vec![1, g * 2, 3], vec![1, g * 2, 2]];
        let v: Vec<Value> = (n.input.iter().enumerate())
            .map(|(k, s)| match (s.is_empty(), shapes.get(k)) {
                (true, _) => Value::None,
                (false, Some(d)) => {
                    Value::Tensor(Tensor::zeros(d.as_slice(), tch::kind::FLOAT_CPU))
                }
                (false, None) => Value::Tensor(Tensor::zeros([1], tch::kind::FLOAT_CPU)),
            })
            .collect();
        let fwd = rule(op).and_then(|r| r.torch).unwrap();
        let out = fwd(&TorchCtx::new(&n, None, Device::Cpu), v);
        format!("{:#}", out.expect_err("refused"))
    }

    /// The forwards refuse, with the rules' reasons, what the rules do not cover.
    #[test]
    fn torch_forwards_refuse_what_the_rules_refuse() {
        let xwr = ["x", "w", "r"];
        let gru = |attrs| refusal("GRU", &xwr, attrs);
        assert!(gru(vec![]).contains("linear_before_reset = 0 is not supported"));
        let lbr = || attr_int("linear_before_reset", 1);
        assert!(gru(vec![lbr(), attr_int("layout", 1)]).contains("layout 1"));
        let lens = refusal("GRU", &["x", "w", "r", "", "lens"], vec![lbr()]);
        assert!(lens.contains("sequence_lens is not supported"), "{lens}");
        let peep = refusal("LSTM", &["x", "w", "r", "", "", "", "", "p"], vec![]);
        assert!(
            peep.contains("peephole weights are not supported"),
            "{peep}"
        );
        let dir = refusal("LSTM", &xwr, vec![attr_string("direction", "sideways")]);
        assert!(dir.contains("direction 'sideways'"), "{dir}");
        let w = refusal("LSTM", &xwr, vec![attr_int("hidden_size", 3)]);
        assert!(w.contains("need [D, 12, I]"), "{w}");
    }
}
