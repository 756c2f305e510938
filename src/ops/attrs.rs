//! Reading a node's attributes with the spec's defaults, shared by what sees a node: the gradient
//! rule's [`super::rule::Ctx`] and the libtorch forward's [`super::torch::TorchCtx`], so attribute parsing
//! that both need (a convolution's window, for one) is written once, against this trait.
use onnx_protobuf::{AttributeProto, NodeProto};

pub trait Attrs {
    fn node(&self) -> &NodeProto;

    fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.node().attribute.iter().find(|a| a.name == name)
    }
    fn attr_i(&self, name: &str, default: i64) -> i64 {
        self.attr(name).map(|a| a.i).unwrap_or(default)
    }
    fn attr_f(&self, name: &str, default: f32) -> f32 {
        self.attr(name).map(|a| a.f).unwrap_or(default)
    }
    fn attr_ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }
    fn attr_s(&self, name: &str) -> Option<String> {
        self.attr(name)
            .map(|a| String::from_utf8_lossy(&a.s).to_string())
    }
    /// The node's metadata entry `key` (what an exporter recorded, or probe's own keys).
    fn meta(&self, key: &str) -> Option<&str> {
        let m = self.node().metadata_props.iter().find(|m| m.key == key);
        m.map(|m| m.value.as_str())
    }
}

/// Where a node's PyTorch convention (one the ONNX op does not carry: which function a Clip
/// is, an embedding's padding row) was read; see `super::conventions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// Probe's own metadata key on the node, written from the command line.
    Given,
    /// The exporter's `pkg.torch.onnx.fx_node` record.
    Exporter,
    /// Nothing recorded: the op's default (its file says which, and why).
    Default,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Given => "given",
            Source::Exporter => "exporter",
            Source::Default => "default",
        }
    }
}

impl Attrs for NodeProto {
    fn node(&self) -> &NodeProto {
        self
    }
}
