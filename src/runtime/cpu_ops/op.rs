//! What a `probe.cpu` kernel is: a [`CpuOp`] (its op type, input and output slots, and compute
//! function) over its typed attributes ([`FromAttrs`], read once per node when the session is
//! built), and the one adapter, [`Op`], that makes any of them an ONNX Runtime custom operator.
//! A kernel file holds only its own logic.
//!
//! Every error a kernel raises names the node: `probe.cpu:<op> node '<name>': <what>`.
use super::exec;
use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorInput, OperatorOutput,
};
use ort::value::TensorElementType;
use std::fmt::Display;

/// The custom op domain (one name with the rules that emit these ops).
pub use crate::ops::rule::PROBE_CPU_DOMAIN as DOMAIN;

/// An input or output slot of an op.
#[derive(Clone, Copy)]
pub enum Io {
    F32,
    OptF32,
    I64,
    F64,
    /// An f64 output the node may leave unnamed.
    OptF64,
}

impl Io {
    fn slot(self) -> (bool, TensorElementType) {
        match self {
            Io::F32 => (true, TensorElementType::Float32),
            Io::OptF32 => (false, TensorElementType::Float32),
            Io::I64 => (true, TensorElementType::Int64),
            Io::F64 => (true, TensorElementType::Float64),
            Io::OptF64 => (false, TensorElementType::Float64),
        }
    }
}

/// A node's typed attributes, read once when the session is built.
pub trait FromAttrs: Sized + Send + 'static {
    fn read(a: &Attrs) -> ort::Result<Self>;
}

/// No attributes.
impl FromAttrs for () {
    fn read(_: &Attrs) -> ort::Result<()> {
        Ok(())
    }
}

/// A required `axis` attribute (raw: [`Call::axis`] makes it non-negative for a rank).
pub struct Axis(pub i64);

impl FromAttrs for Axis {
    fn read(a: &Attrs) -> ort::Result<Axis> {
        a.req("axis").map(Axis)
    }
}

/// A `probe.cpu` kernel: its op type (written into .onnx files), input and output slots, and
/// its compute over the node's typed attributes `A`.
pub struct CpuOp<A> {
    pub name: &'static str,
    pub inputs: &'static [Io],
    pub outputs: &'static [Io],
    pub compute: fn(&A, &Call) -> ort::Result<()>,
}

impl<A> CpuOp<A> {
    /// Op type `name` computed by `compute`, its slots given by [`CpuOp::io`].
    pub const fn new(name: &'static str, compute: fn(&A, &Call) -> ort::Result<()>) -> CpuOp<A> {
        CpuOp {
            name,
            inputs: &[],
            outputs: &[],
            compute,
        }
    }
    pub const fn io(self, inputs: &'static [Io], outputs: &'static [Io]) -> CpuOp<A> {
        CpuOp {
            inputs,
            outputs,
            ..self
        }
    }
}

/// The error `probe.cpu:<op> node '<node>': <what>`.
fn node_error(op: &str, node: &str, what: impl Display) -> ort::Error {
    ort::Error::new(format!("{DOMAIN}:{op} node '{node}': {what}"))
}

/// A node's attributes while its kernel is built.
pub struct Attrs<'a, 'k> {
    k: &'a KernelContext<'k>,
    op: &'static str,
    node: &'a str,
}

impl<'k> Attrs<'_, 'k> {
    pub fn get<T: ort::operator::FromKernelContext<'k>>(&self, name: &str) -> Option<T> {
        self.k.get::<T>(name)
    }
    /// A required attribute.
    pub fn req<T: ort::operator::FromKernelContext<'k>>(&self, name: &str) -> ort::Result<T> {
        self.get(name)
            .ok_or_else(|| self.fail(format!("attribute '{name}' missing")))
    }
    /// An int attribute read as a flag, 0 when absent.
    pub fn flag(&self, name: &str) -> bool {
        self.get::<i64>(name).unwrap_or(0) != 0
    }
    pub fn fail(&self, what: impl Display) -> ort::Error {
        node_error(self.op, self.node, what)
    }
}

/// One compute call of a node: its inputs and outputs, its errors, its parts.
pub struct Call<'c> {
    pub ctx: &'c ComputeContext,
    op: &'static str,
    node: &'c str,
    /// The session's intra-op thread count: how many ways a kernel may split its work.
    pub parts: usize,
    outputs: exec::Outputs<'c>,
}

impl<'c> Call<'c> {
    pub fn fail(&self, what: impl Display) -> ort::Error {
        node_error(self.op, self.node, what)
    }
    /// A failure of the libtorch side (its message).
    pub fn torch(&self, e: String) -> ort::Error {
        self.fail(format!("libtorch: {e}"))
    }
    fn value(&self, i: usize, name: &str) -> ort::Result<ort::value::ValueRef<'c>> {
        self.ctx
            .input(i)?
            .ok_or_else(|| self.fail(format!("input {name} missing")))
    }
    /// Required f32 input `i`: its shape and data.
    pub fn input(&self, i: usize) -> ort::Result<(Vec<i64>, &'c [f32])> {
        exec::input(self.value(i, &i.to_string())?)
    }
    /// [`Call::input`] named in the error when missing.
    pub fn input_named(&self, i: usize, name: &str) -> ort::Result<(Vec<i64>, &'c [f32])> {
        exec::input(self.value(i, name)?)
    }
    /// Required i64 input `i`.
    pub fn input_i64(&self, i: usize) -> ort::Result<(Vec<i64>, &'c [i64])> {
        exec::input(self.value(i, &i.to_string())?)
    }
    /// f64 input `i`.
    pub fn input_f64(&self, i: usize) -> ort::Result<(Vec<i64>, &'c [f64])> {
        exec::input(self.value(i, &i.to_string())?)
    }
    /// Optional f32 input `i`.
    pub fn optional(&self, i: usize) -> ort::Result<Option<(Vec<i64>, &'c [f32])>> {
        self.ctx.input(i)?.map(exec::input).transpose()
    }
    /// Optional f32 input `i`, which must have X's shape `xs` (`name` in the error).
    pub fn optional_like(
        &self,
        i: usize,
        name: &str,
        xs: &[i64],
    ) -> ort::Result<Option<&'c [f32]>> {
        match self.optional(i)? {
            Some((s, _)) if s[..] != xs[..] => {
                Err(self.fail(format!("{name} {:?} and X {:?} differ", &s[..], xs)))
            }
            v => Ok(v.map(|(_, v)| v)),
        }
    }
    /// Output `i` of `shape`; `None` when the node leaves it unnamed (not computed then).
    pub fn output(&self, i: usize, shape: Vec<i64>) -> ort::Result<Option<&'c mut [f32]>> {
        self.outputs.take(i, shape)
    }
    /// f64 output `i` of `shape`, `None` when the node leaves it unnamed.
    pub fn output_f64(&self, i: usize, shape: Vec<i64>) -> ort::Result<Option<&'c mut [f64]>> {
        self.outputs.take(i, shape)
    }
    /// Output `i` of `shape`, which the node must name (`what` in the error).
    pub fn required(&self, i: usize, shape: Vec<i64>, what: &str) -> ort::Result<&'c mut [f32]> {
        self.output(i, shape)?
            .ok_or_else(|| self.fail(format!("output {what} missing")))
    }
    /// Axis attribute `a` for a rank-`rank` tensor, made non-negative.
    pub fn axis(&self, a: i64, rank: usize) -> ort::Result<usize> {
        let r = rank as i64;
        if a < -r || a >= r.max(1) {
            return Err(self.fail(format!("axis {a} out of range for rank {rank}")));
        }
        Ok(if a < 0 { a + r } else { a } as usize)
    }
    /// How many parts to split `units` independent units of `work` elements in all into
    /// (small work is not worth a trip to the pool).
    pub fn parts_for(&self, units: usize, work: usize) -> usize {
        if work < 1 << 15 {
            1
        } else {
            self.parts.min(units).max(1)
        }
    }
    /// An elementwise gradient `dX = f(dY, X)` (inputs 0 and 1 of one shape, output 0), parts
    /// taking element ranges: `f(dY part, X part, dX part)`.
    pub fn elementwise_grad(
        &self,
        f: impl Fn(&[f32], &[f32], &mut [f32]) -> Result<(), String> + Sync + Send,
    ) -> ort::Result<()> {
        let (dys, dyv) = self.input_named(0, "dY")?;
        let (xs, xv) = self.input_named(1, "X")?;
        if dys[..] != xs[..] {
            return Err(self.fail(format!("dY {:?} and X {:?} differ", &dys[..], &xs[..])));
        }
        let dx = self.required(0, xs.to_vec(), "dX")?;
        let len = xv.len();
        let b = exec::bounds(len, self.parts_for(len, len));
        let pieces = exec::split(dx, 1, &b).into_iter().zip(b.iter().copied());
        self.run(pieces.collect(), |_, (dx, (lo, hi))| {
            f(&dyv[lo..hi], &xv[lo..hi], dx)
        })
        .map_err(|e| self.torch(e))
    }
    /// [`exec::run_parts`] on this call's pool.
    pub fn run<P: Send>(
        &self,
        pieces: Vec<P>,
        f: impl Fn(usize, P) -> Result<(), String> + Sync + Send,
    ) -> Result<(), String> {
        exec::run_parts(self.ctx, pieces, f)
    }
}

/// Any [`CpuOp`] as an ONNX Runtime custom operator; `parts` is the session's intra-op thread
/// count.
pub struct Op<A: 'static> {
    kernel: &'static CpuOp<A>,
    parts: usize,
}

pub fn op<A: FromAttrs>(kernel: &'static CpuOp<A>, parts: usize) -> Op<A> {
    Op { kernel, parts }
}

/// A node's attributes with what every compute call needs besides them.
pub struct Bound<A: 'static> {
    kernel: &'static CpuOp<A>,
    node: String,
    parts: usize,
    attrs: A,
}

impl<A: FromAttrs> Operator for Op<A> {
    type Kernel<'attr> = Bound<A>;
    fn name(&self) -> &str {
        self.kernel.name
    }
    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        self.kernel.inputs.iter().map(|&io| match io.slot() {
            (true, t) => OperatorInput::required(t),
            (false, t) => OperatorInput::optional(t),
        })
    }
    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        self.kernel.outputs.iter().map(|&io| match io.slot() {
            (true, t) => OperatorOutput::required(t),
            (false, t) => OperatorOutput::optional(t),
        })
    }
    fn create_kernel<'attr>(&self, k: &KernelContext<'attr>) -> ort::Result<Bound<A>> {
        let node = k.node_name().unwrap_or_default();
        let attrs = A::read(&Attrs {
            k,
            op: self.kernel.name,
            node: &node,
        })?;
        Ok(Bound {
            kernel: self.kernel,
            node,
            parts: self.parts,
            attrs,
        })
    }
}

impl<A: FromAttrs> Kernel for Bound<A> {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let c = Call {
            ctx,
            op: self.kernel.name,
            node: &self.node,
            parts: self.parts,
            outputs: exec::Outputs::new(ctx),
        };
        (self.kernel.compute)(&self.attrs, &c)
    }
}
