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
}

impl Attrs for NodeProto {
    fn node(&self) -> &NodeProto {
        self
    }
}
