//! What the kernel families' tests share (test-only): one `probe.cpu` node as a model, run by a
//! real ONNX Runtime session ([`crate::runtime::session`]) at 1 and 3 intra-op threads, each
//! output held to a reference the test computes plainly in f64 from the same f32 inputs.
//!
//! Tolerances are bounds on the kernel's f32 rounding, taken from the computation's shape:
//! - [`Node::output`]: `tol * max(1, |want|)`, for results of a few roundings (elementwise
//!   maths, short sums of values of magnitude ~1): relative above 1, absolute below;
//! - [`Node::output_sums`]: for sums, the bound on a recursive f32 sum, `|error| <= (n - 1) eps
//!   sum |terms|` (Higham, *Accuracy and Stability of Numerical Algorithms*, eq. 4.4), with `n`
//!   the longest chain of f32 additions the kernel makes and `sum |terms|` computed by the
//!   reference beside the sum; twice that, for the products' own rounding and the final cast,
//!   and never under f32's smallest normal number (subnormals' precision is absolute).
//!
//! A broken kernel (a wrong index, a lost part, a flipped mask) moves results by the size of
//! the values, orders of magnitude above these bounds.
use crate::model::graph::value_info;
use crate::ops::testing::{model_of, Rng};
use crate::tensor::DType;
use onnx_protobuf::{AttributeProto, GraphProto, NodeProto, ValueInfoProto};
use ort::session::SessionInputValue;
use std::borrow::Cow;

/// The thread counts every case runs at: one part, and three (which the tests' sizes do not
/// divide, so the parts are uneven).
pub const THREADS: [usize; 2] = [1, 3];

/// f32's machine epsilon.
pub const EPS: f64 = f32::EPSILON as f64;

/// Below f32's smallest normal number precision is absolute (subnormals): a floor to the
/// relative bounds.
const TINY: f64 = f32::MIN_POSITIVE as f64;

/// `n` values uniform in [-1, 1] (seeded).
pub fn rand(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng(seed);
    (0..n).map(|_| r.uniform(-1.0, 1.0) as f32).collect()
}

/// `v` in f64 (exactly).
pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// `v` rounded to f32 (a reference value fed to a kernel as an input).
pub fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// `terms` (index, value) added into `n` slots, in f64, and beside them the sums of their
/// magnitudes (for [`Node::output_sums`]).
pub fn sums(n: usize, terms: impl IntoIterator<Item = (usize, f64)>) -> (Vec<f64>, Vec<f64>) {
    let (mut s, mut m) = (vec![0f64; n], vec![0f64; n]);
    for (i, v) in terms {
        s[i] += v;
        m[i] += v.abs();
    }
    (s, m)
}

/// Row-major strides of `shape`.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        s[k] = s[k + 1] * shape[k + 1];
    }
    s
}

enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

/// An expected output: its shape, values and per-element absolute bounds.
struct Want {
    shape: Vec<usize>,
    values: Vec<f64>,
    bound: Vec<f64>,
}

/// One `probe.cpu` node, its inputs (`in0`, `in1`, ...; `None` absent) and expected outputs
/// (`out0`, ...; `None` left unnamed, so not computed).
pub struct Node {
    op: &'static str,
    attrs: Vec<AttributeProto>,
    inputs: Vec<Option<(Vec<usize>, Data)>>,
    outputs: Vec<Option<Want>>,
}

/// Each output's shape and values, `None` where the node leaves it unnamed.
pub type Outputs = Vec<Option<(Vec<usize>, Vec<f64>)>>;

impl Node {
    pub fn new(op: &'static str) -> Node {
        Node {
            op,
            attrs: vec![],
            inputs: vec![],
            outputs: vec![],
        }
    }
    pub fn attr(mut self, a: AttributeProto) -> Node {
        self.attrs.push(a);
        self
    }
    /// An f32 input.
    pub fn input(mut self, shape: &[usize], v: &[f32]) -> Node {
        assert_eq!(shape.iter().product::<usize>(), v.len(), "input {shape:?}");
        self.inputs
            .push(Some((shape.to_vec(), Data::F32(v.to_vec()))));
        self
    }
    /// An i64 input.
    pub fn f64s(mut self, shape: &[usize], v: &[f64]) -> Node {
        self.inputs
            .push(Some((shape.to_vec(), Data::F64(v.to_vec()))));
        self
    }
    pub fn ints(mut self, shape: &[usize], v: &[i64]) -> Node {
        assert_eq!(shape.iter().product::<usize>(), v.len(), "input {shape:?}");
        self.inputs
            .push(Some((shape.to_vec(), Data::I64(v.to_vec()))));
        self
    }
    /// An absent optional input.
    pub fn absent(mut self) -> Node {
        self.inputs.push(None);
        self
    }
    /// An output expected to be `want` within `tol * max(1, |want|)` (module doc).
    pub fn output(self, shape: &[usize], want: &[f64], tol: f64) -> Node {
        let bound = want.iter().map(|w| tol * w.abs().max(1.0)).collect();
        self.expect(shape, want, bound)
    }
    /// An output of sums expected to be `want` within `2 chain eps mags` (module doc), `mags`
    /// the sums of the terms' magnitudes, `chain` the longest run of f32 additions.
    pub fn output_sums(self, shape: &[usize], want: &[f64], mags: &[f64], chain: usize) -> Node {
        assert_eq!(want.len(), mags.len());
        let bound = mags
            .iter()
            .zip(want)
            .map(|(m, w)| 2.0 * chain.max(1) as f64 * EPS * m + EPS * w.abs() + TINY)
            .collect();
        self.expect(shape, want, bound)
    }
    /// An output expected to be `want` within the per-element absolute `bound` (f64 outputs,
    /// whose bounds are the caller's to derive).
    pub fn output_bounds(self, shape: &[usize], want: &[f64], bound: &[f64]) -> Node {
        self.expect(shape, want, bound.to_vec())
    }
    fn expect(mut self, shape: &[usize], want: &[f64], bound: Vec<f64>) -> Node {
        assert_eq!(
            shape.iter().product::<usize>(),
            want.len(),
            "output {shape:?}"
        );
        self.outputs.push(Some(Want {
            shape: shape.to_vec(),
            values: want.to_vec(),
            bound,
        }));
        self
    }
    /// An output the node leaves unnamed.
    pub fn unnamed(mut self) -> Node {
        self.outputs.push(None);
        self
    }

    fn model(&self) -> Vec<u8> {
        let mut n = NodeProto::new();
        n.op_type = self.op.into();
        n.name = "op".into();
        n.domain = super::DOMAIN.into();
        n.attribute = self.attrs.clone();
        let mut g = GraphProto::new();
        g.name = self.op.into();
        for (i, inp) in self.inputs.iter().enumerate() {
            let Some((shape, data)) = inp else {
                n.input.push(String::new());
                continue;
            };
            let name = format!("in{i}");
            let dt = match data {
                Data::F32(_) => DType::F32,
                Data::I64(_) => DType::I64,
                Data::F64(_) => DType::F64,
            };
            let dims: Vec<Option<i64>> = shape.iter().map(|&d| Some(d as i64)).collect();
            g.input.push(value_info(&name, dt, &dims, "n"));
            n.input.push(name);
        }
        for (i, out) in self.outputs.iter().enumerate() {
            if out.is_none() {
                n.output.push(String::new());
                continue;
            }
            let mut v = ValueInfoProto::new();
            v.name = format!("out{i}");
            n.output.push(v.name.clone());
            g.output.push(v);
        }
        g.node.push(n);
        protobuf::Message::write_to_bytes(&model_of(g, 17)).unwrap()
    }

    /// The node run once in a session of `threads` intra-op threads; the error message of a
    /// failed session or run.
    pub fn run(&self, threads: usize) -> Result<Outputs, String> {
        let mut s = crate::runtime::session(&self.model(), threads, "test")
            .map_err(|e| format!("{e:#}"))?;
        let mut values: Vec<(Cow<str>, SessionInputValue)> = vec![];
        for (i, inp) in self.inputs.iter().enumerate() {
            let Some((shape, data)) = inp else { continue };
            let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            let v = match data {
                Data::F32(v) => ort::value::Tensor::from_array((shape, v.clone()))
                    .unwrap()
                    .into_dyn(),
                Data::I64(v) => ort::value::Tensor::from_array((shape, v.clone()))
                    .unwrap()
                    .into_dyn(),
                Data::F64(v) => ort::value::Tensor::from_array((shape, v.clone()))
                    .unwrap()
                    .into_dyn(),
            };
            values.push((format!("in{i}").into(), v.into()));
        }
        let out = s.run(values).map_err(|e| e.to_string())?;
        let mut got = vec![];
        for (i, want) in self.outputs.iter().enumerate() {
            got.push(want.as_ref().map(|_| {
                let value = &out[format!("out{i}").as_str()];
                let (shape, v) = match value.try_extract_tensor::<f32>() {
                    Ok((shape, v)) => (shape, v.iter().map(|&x| x as f64).collect()),
                    Err(_) => {
                        let (shape, v) = value.try_extract_tensor::<f64>().unwrap();
                        (shape, v.to_vec())
                    }
                };
                (shape.iter().map(|&d| d as usize).collect(), v)
            }));
        }
        Ok(got)
    }

    /// Runs the node at each of [`THREADS`] and holds every named output to its reference:
    /// its shape, and each value within its bound (NaN where the reference is NaN, an infinity
    /// exactly).
    pub fn check(&self) {
        for threads in THREADS {
            let op = self.op;
            let got = self
                .run(threads)
                .unwrap_or_else(|e| panic!("{op} at {threads} threads: {e}"));
            for (i, (want, got)) in self.outputs.iter().zip(got).enumerate() {
                let (Some(want), Some((shape, got))) = (want, got) else {
                    continue;
                };
                let at = format!("{op} output {i} at {threads} threads");
                assert_eq!(shape, want.shape, "{at}: shape");
                let bad: Vec<usize> = (0..got.len())
                    .filter(|&k| !within(got[k], want.values[k], want.bound[k]))
                    .collect();
                if let Some(&k) = bad.first() {
                    panic!(
                        "{at}: {} of {} values off, first [{k}]: got {}, want {} (bound {:e})",
                        bad.len(),
                        got.len(),
                        got[k],
                        want.values[k],
                        want.bound[k]
                    );
                }
            }
        }
    }

    /// The node fails (at session creation or run, one thread) with a message holding `what`.
    pub fn fails(&self, what: &str) {
        match self.run(1) {
            Ok(_) => panic!("{}: ran, expected an error with {what:?}", self.op),
            Err(e) => assert!(e.contains(what), "{}: error {e:?} lacks {what:?}", self.op),
        }
    }
}

/// `got` is `want` within `bound`; NaN only where `want` is NaN, an infinity exactly.
fn within(got: f64, want: f64, bound: f64) -> bool {
    let g = got;
    if want.is_nan() || want.is_infinite() {
        return g.is_nan() == want.is_nan() && (want.is_nan() || g == want);
    }
    (g - want).abs() <= bound
}
