//! `probe autodiff`: its flags, and writing the gradient (or Hessian-vector-product) graph.
use super::flags::{Bn, Loss};
use clap::Args;
use probe::autodiff::model_grad::GradOptions;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct AutodiffArgs {
    /// The forward ONNX model.
    #[arg(value_name = "M.onnx")]
    pub model: PathBuf,
    /// Where to write the gradient graph.
    #[arg(short, long, value_name = "M.grad.onnx")]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = Loss::Ce)]
    pub loss: Loss,
    /// BatchNormalization with batch statistics (training mode).
    #[arg(long, value_enum, default_value_t = Bn::Eval)]
    pub bn: Bn,
    /// Write the Hessian-vector-product graph instead: the gradient graph differentiated again,
    /// with an input `v/<p>` per parameter and outputs `hvp/<p>` = (H v)_p.
    #[arg(long)]
    pub hvp: bool,
}

/// Builds the graph, writes it to --out and says what it holds on stderr (even with --quiet).
pub fn run(a: AutodiffArgs) -> anyhow::Result<()> {
    let model = probe::model::Model::load(&a.model)?;
    let loss: probe::autodiff::LossKind = a.loss.into();
    let samples = probe::autodiff::model_grad::synthetic_feeds(&model, loss)?;
    let opts = GradOptions {
        loss,
        bn_train: a.bn == Bn::Train,
        wrt: None,
        // Its output must pass onnx.checker and run anywhere: standard ops only.
        kernels: probe::autodiff::grad::Kernels::Standard,
        threads: probe::runtime::default_threads(),
        shape_cache: None,
    };
    let (proto, what, n) = if a.hvp {
        let h = probe::autodiff::hvp::hvp_graph(&model, &opts, &samples)?;
        let n = h.products.len();
        (h.grad.proto, "Hessian-vector products", n)
    } else {
        let g = probe::autodiff::model_grad::grad_graph(&model, &opts, &samples)?;
        let n = g.grads.len();
        (g.proto, "gradients", n)
    };
    let bytes = protobuf::Message::write_to_bytes(&proto)?;
    std::fs::write(&a.out, bytes)
        .map_err(|e| probe::error::output(format!("{}: {e}", a.out.display())))?;
    eprintln!(
        "wrote {}: {} nodes ({} forward), {what} of {n} parameters",
        a.out.display(),
        proto.graph.node.len(),
        model.graph().node.len(),
    );
    Ok(())
}
