//! What a gradient rule sees and emits: the node, the gradients of its outputs, which of its
//! inputs need gradients, and a builder for new nodes (after ONNX Runtime training's
//! `gradient_builder`: `I(i)`, `O(i)`, `GO(i)`, `GI(i)`).
use super::consts::const_ints;
use super::kernels::REDUCE_SUM_LEADING;
use super::kernels::{Kernels, PROBE_CPU_DOMAIN};
use super::shapes::Shapes;
use crate::model::graph::{attr_int, attr_ints, attr_tensor, tensor_f32, tensor_i64, Builder};
use crate::ops::attrs::Attrs;
use crate::tensor::DType;
use anyhow::{anyhow, Result};
use onnx_protobuf::{AttributeProto, NodeProto, TensorProto};
use std::collections::{BTreeMap, HashMap};

pub struct Ctx<'a> {
    pub node: &'a NodeProto,
    pub b: &'a mut Builder,
    pub shapes: &'a Shapes,
    /// Values known at build time (Constant outputs, constant initializers), for rules whose
    /// attributes arrive as inputs (axes, split sizes, sequence positions).
    pub consts: &'a HashMap<String, TensorProto>,
    /// Whether the rule may emit `probe.cpu` custom ops besides standard ONNX.
    pub kernels: Kernels,
    pub(crate) gout: Vec<Option<String>>,
    /// Gradients of a sequence-valued output, by position (SplitToSequence).
    pub(crate) gout_seq: BTreeMap<usize, String>,
    pub(crate) need: Vec<bool>,
    pub(crate) gin: Vec<Option<String>>,
    /// Gradient contributions to a sequence-valued input, by position (SequenceAt).
    pub(crate) gin_seq: Vec<(usize, String)>,
    /// Forward-node edits a rule asks for (extra outputs such as MaxPool's indices).
    pub(crate) extra_outputs: Vec<(usize, String)>,
}

impl<'a> Ctx<'a> {
    pub fn input(&self, i: usize) -> &str {
        self.node.input.get(i).map(|s| s.as_str()).unwrap_or("")
    }
    pub fn has_input(&self, i: usize) -> bool {
        !self.input(i).is_empty()
    }
    pub fn output(&self, i: usize) -> &str {
        self.node.output.get(i).map(|s| s.as_str()).unwrap_or("")
    }
    /// The two inputs and the output of a binary op, (A, B, Y).
    pub fn binary(&self) -> (String, String, String) {
        let io = [self.input(0), self.input(1), self.output(0)].map(str::to_string);
        let [a, b, y] = io;
        (a, b, y)
    }
    /// Gradient of output `i`, if anything downstream needs it.
    pub fn go(&self, i: usize) -> Option<String> {
        self.gout.get(i).cloned().flatten()
    }
    /// dY (output 0's gradient) when X (input 0) needs a gradient: where a rule whose one
    /// differentiable input is X starts.
    pub fn go_to_x(&self) -> Option<String> {
        self.go(0).filter(|_| self.needs(0))
    }
    pub fn go_seq(&self) -> &BTreeMap<usize, String> {
        &self.gout_seq
    }
    /// Whether input `i` needs a gradient.
    pub fn needs(&self, i: usize) -> bool {
        self.need.get(i).copied().unwrap_or(false)
    }
    /// Sets the gradient of input `i` (ignored if not needed).
    pub fn set(&mut self, i: usize, g: String) {
        if self.needs(i) {
            self.gin[i] = Some(g);
        }
    }
    pub fn set_seq(&mut self, pos: usize, g: String) {
        self.gin_seq.push((pos, g));
    }
    /// Asks for the forward node to have output `i` (optional outputs such as MaxPool's indices);
    /// returns its name.
    pub fn require_output(&mut self, i: usize) -> String {
        if let Some(o) = self.node.output.get(i).filter(|o| !o.is_empty()) {
            return o.clone();
        }
        if let Some((_, n)) = self.extra_outputs.iter().find(|(k, _)| *k == i) {
            return n.clone();
        }
        let name = format!(
            "{}/out{}",
            if self.node.name.is_empty() {
                self.output(0)
            } else {
                &self.node.name
            },
            i
        );
        self.extra_outputs.push((i, name.clone()));
        name
    }

    /// Integer values of an input known at build time.
    pub fn const_ints(&self, i: usize) -> Option<Vec<i64>> {
        const_ints(self.consts, self.input(i))
    }

    pub fn dtype(&self, name: &str) -> Result<DType> {
        self.shapes
            .dtype(name)
            .ok_or_else(|| anyhow!("no type known for '{name}'"))
    }
    pub fn rank(&self, name: &str) -> Result<usize> {
        self.shapes
            .rank(name)
            .ok_or_else(|| anyhow!("no shape known for '{name}'"))
    }
    /// Dimensions, `None` where the dimension follows the batch.
    pub fn dims(&self, name: &str) -> Result<Vec<Option<usize>>> {
        self.shapes
            .get(name)
            .map(|i| i.dims.clone())
            .ok_or_else(|| anyhow!("no shape known for '{name}'"))
    }

    // ---- emitting nodes -------------------------------------------------------------------
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.b.op(op, inputs, attrs)
    }
    /// A node of the `probe.cpu` custom domain with `n` outputs; only when
    /// [`Ctx::kernels`] allows it.
    pub fn probe_cpu_op(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        n: usize,
    ) -> Vec<String> {
        debug_assert_eq!(self.kernels, Kernels::ProbeCpu);
        self.b.op_n_in(PROBE_CPU_DOMAIN, op, inputs, attrs, n)
    }
    /// A `probe.cpu` node with one output per entry of `needs`, the ones not needed left
    /// unnamed (so the kernel skips them); the names of those needed.
    pub fn probe_cpu_outputs(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        needs: &[bool],
    ) -> Vec<Option<String>> {
        let mut outs = self.probe_cpu_op(op, inputs, attrs, needs.len());
        for (o, &need) in outs.iter_mut().zip(needs) {
            if !need {
                o.clear();
            }
        }
        self.b.nodes.last_mut().unwrap().output = outs.clone();
        outs.into_iter()
            .zip(needs)
            .map(|(o, &need)| need.then_some(o))
            .collect()
    }
    pub fn op_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        n: usize,
    ) -> Vec<String> {
        self.b.op_n(op, inputs, attrs, n)
    }
    pub fn ints(&mut self, v: &[i64]) -> String {
        self.b.ints(v)
    }
    /// A scalar constant of `like`'s element type.
    pub fn scalar(&mut self, v: f64, like: &str) -> Result<String> {
        let dt = self.dtype(like)?;
        let t = match dt {
            DType::F64 => {
                let mut t = TensorProto::new();
                t.data_type = DType::F64.onnx();
                t.raw_data = v.to_le_bytes().to_vec();
                t
            }
            DType::F32 => tensor_f32("", &[], &[v as f32]),
            DType::I64 => tensor_i64("", &[], &[v as i64]),
            other => return Err(anyhow!("no scalar constant of type {other}")),
        };
        let out = self.b.fresh("const");
        let mut n = NodeProto::new();
        n.op_type = "Constant".into();
        n.name = out.clone();
        n.output = vec![out.clone()];
        n.attribute = vec![attr_tensor("value", t)];
        self.b.nodes.push(n);
        Ok(out)
    }
    /// The runtime shape of `v` as a 1-D int64 tensor (a constant when it is static).
    pub fn shape_of(&mut self, v: &str) -> String {
        match self.shapes.static_dims(v) {
            Some(d) => self
                .b
                .ints(&d.iter().map(|&x| x as i64).collect::<Vec<_>>()),
            None => self.b.op("Shape", &[v], vec![]),
        }
    }
    /// `v` reshaped to the runtime shape of `like`.
    pub fn reshape_as(&mut self, v: &str, like: &str) -> String {
        let shape = self.shape_of(like);
        self.op("Reshape", &[v, &shape], vec![])
    }
    /// Zeros shaped and typed like `v`.
    pub fn zeros_like(&mut self, v: &str) -> Result<String> {
        let shape = self.shape_of(v);
        let mut t = TensorProto::new();
        t.data_type = self.dtype(v)?.onnx();
        t.dims = vec![1];
        t.raw_data = vec![0; self.dtype(v)?.size()];
        Ok(self
            .b
            .op("ConstantOfShape", &[&shape], vec![attr_tensor("value", t)]))
    }
    /// `g`, shaped like the forward value `like` (the broadcast result), summed back to the shape
    /// of `to`: over the leading axes `to` lacks and over the axes where `to` has extent 1 and
    /// `like` does not. One helper for every broadcasting op.
    pub fn unbroadcast(&mut self, g: &str, like: &str, to: &str) -> Result<String> {
        let gd = self.dims(like)?;
        let td = self.dims(to)?;
        let lead = gd.len() - td.len();
        let mut axes: Vec<i64> = (0..lead as i64).collect();
        for (i, t) in td.iter().enumerate() {
            if *t == Some(1) && gd[lead + i] != Some(1) {
                axes.push((lead + i) as i64);
            }
        }
        if axes.is_empty() {
            return Ok(g.to_string());
        }
        let leading = axes.iter().enumerate().all(|(i, &a)| a == i as i64);
        let s = if leading && self.kernels == Kernels::ProbeCpu && self.dtype(like)? == DType::F32 {
            // A bias gradient: rows added in one pass (the `probe.cpu` kernel ReduceSumLeading).
            let attrs = vec![attr_int("axis", axes.len() as i64)];
            self.probe_cpu_op(REDUCE_SUM_LEADING, &[g], attrs, 1)
                .pop()
                .unwrap()
        } else {
            let ax = self.ints(&axes);
            self.op("ReduceSum", &[g, &ax], vec![attr_int("keepdims", 1)])
        };
        if lead == 0 {
            return Ok(s);
        }
        Ok(self.reshape_as(&s, to))
    }
    /// Sets input `i`'s gradient: `g`, shaped like the broadcast result `like`, summed back to
    /// input `i`'s shape ([`Ctx::unbroadcast`]).
    pub fn set_unbroadcast(&mut self, i: usize, g: &str, like: &str) -> Result<()> {
        let to = self.input(i).to_string();
        let gi = self.unbroadcast(g, like, &to)?;
        self.set(i, gi);
        Ok(())
    }
    /// Sums `g` over `axes` keeping them (a helper for reductions in rules).
    pub fn reduce_sum(&mut self, g: &str, axes: &[i64], keepdims: bool) -> String {
        let ax = self.ints(axes);
        self.op(
            "ReduceSum",
            &[g, &ax],
            vec![attr_int("keepdims", keepdims as i64)],
        )
    }
    pub fn cast_like(&mut self, v: &str, like: &str) -> String {
        self.op("CastLike", &[v, like], vec![])
    }
    /// `Transpose(v, perm)`; with probe's CPU kernels, where they pay
    /// ([`transpose_pays`]), `probe.cpu:Transpose`.
    pub fn transpose(&mut self, v: &str, perm: &[i64]) -> String {
        // A gradient value is not among the observed shapes; it has the type of the forward
        // value it is the gradient of, the node's output.
        let dtype = self
            .shapes
            .dtype(v)
            .or_else(|| self.shapes.dtype(self.output(0)));
        if self.kernels == Kernels::ProbeCpu && dtype == Some(DType::F32) && transpose_pays(perm) {
            let attrs = vec![attr_ints("perm", perm)];
            return self
                .probe_cpu_op("Transpose", &[v], attrs, 1)
                .pop()
                .unwrap();
        }
        self.op("Transpose", &[v], vec![attr_ints("perm", perm)])
    }
}

impl Attrs for Ctx<'_> {
    fn node(&self) -> &NodeProto {
        self.node
    }
}

/// Whether `probe.cpu:Transpose` beats ONNX Runtime's for this permutation. Not for rank 2: a
/// matrix transpose in front of a MatMul (a Linear layer's weight, a weight gradient's X^T)
/// is folded into the MatMul by ONNX Runtime's optimizer (FusedMatMul), which a custom op
/// would prevent.
pub fn transpose_pays(perm: &[i64]) -> bool {
    perm.len() >= 3
}
