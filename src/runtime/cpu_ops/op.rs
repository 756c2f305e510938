//! What a `probe.cpu` kernel is: the [`CpuOp`] trait (its op type, input and output slots,
//! typed attributes read once from the node, compute), and the one adapter, [`Op`], that makes
//! any of them an ONNX Runtime custom operator. A kernel file holds only its own logic.
//!
//! Every error a kernel raises names the node: `probe.cpu:<op> node '<name>': <what>`.
use super::exec;
use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorInput, OperatorOutput,
};
use ort::value::TensorElementType;
use std::fmt::Display;
use std::marker::PhantomData;

/// The domain name the gradient rules write on the nodes.
pub const DOMAIN: &str = "probe.cpu";

/// An input or output slot of an op.
#[derive(Clone, Copy)]
pub enum Io {
    F32,
    OptF32,
    I64,
}

impl Io {
    fn slot(self) -> (bool, TensorElementType) {
        match self {
            Io::F32 => (true, TensorElementType::Float32),
            Io::OptF32 => (false, TensorElementType::Float32),
            Io::I64 => (true, TensorElementType::Int64),
        }
    }
}

/// A `probe.cpu` kernel.
pub trait CpuOp: Sized + Send + 'static {
    /// The op type in the `probe.cpu` domain (written into .onnx files).
    const NAME: &'static str;
    const INPUTS: &'static [Io];
    const OUTPUTS: &'static [Io];
    /// The kernel of one node: its typed attributes, read once when the session is built.
    fn new(a: &Attrs) -> ort::Result<Self>;
    fn compute(&self, c: &Call) -> ort::Result<()>;
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
    /// Optional f32 input `i`.
    pub fn optional(&self, i: usize) -> ort::Result<Option<(Vec<i64>, &'c [f32])>> {
        self.ctx.input(i)?.map(exec::input).transpose()
    }
    /// Output `i` of `shape`; `None` when the node leaves it unnamed (not computed then).
    pub fn output(&self, i: usize, shape: Vec<i64>) -> ort::Result<Option<&'c mut [f32]>> {
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
pub struct Op<K> {
    parts: usize,
    kernel: PhantomData<fn() -> K>,
}

pub fn op<K: CpuOp>(parts: usize) -> Op<K> {
    Op {
        parts,
        kernel: PhantomData,
    }
}

/// A node's kernel with what every compute call needs besides it.
pub struct Bound<K> {
    node: String,
    parts: usize,
    kernel: K,
}

impl<K: CpuOp> Operator for Op<K> {
    type Kernel<'attr> = Bound<K>;
    fn name(&self) -> &str {
        K::NAME
    }
    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        K::INPUTS.iter().map(|&io| match io.slot() {
            (true, t) => OperatorInput::required(t),
            (false, t) => OperatorInput::optional(t),
        })
    }
    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        K::OUTPUTS.iter().map(|&io| match io.slot() {
            (true, t) => OperatorOutput::required(t),
            (false, t) => OperatorOutput::optional(t),
        })
    }
    fn create_kernel<'attr>(&self, k: &KernelContext<'attr>) -> ort::Result<Bound<K>> {
        let node = k.node_name().unwrap_or_default();
        let attrs = Attrs {
            k,
            op: K::NAME,
            node: &node,
        };
        let kernel = K::new(&attrs)?;
        Ok(Bound {
            node,
            parts: self.parts,
            kernel,
        })
    }
}

impl<K: CpuOp> Kernel for Bound<K> {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        self.kernel.compute(&Call {
            ctx,
            op: K::NAME,
            node: &self.node,
            parts: self.parts,
            outputs: exec::Outputs::new(ctx),
        })
    }
}
