//! Clip (opsets 11 to 13): `Y = min(max(X, lo), hi)`, `lo` and `hi` optional scalar inputs.
//! (Opset 6's `min`/`max` attributes cannot occur in the opset 20 graphs probe differentiates.)
//! https://onnx.ai/onnx/operators/onnx__Clip.html
//!
//! PyTorch writes a Clip for two functions with one value and two gradients at the bounds
//! ([`ClipAs`], read per node by [`clip_as`]), as its backward kernels take them:
//! - hardtanh (`nn.ReLU6`, `F.relu6`, `nn.Hardtanh`), `hardtanh_backward`:
//!   dX = dY * [lo < X < hi]. The bounds pass NO gradient. A freshly initialized network hits
//!   the bound exactly: a BatchNormalization with zero bias and default statistics maps an
//!   all-zero window to 0, and ReLU6(0) has dX = 0 there. At NaN PyTorch's CPU kernel is not
//!   consistent (torch 2.11): its vectorized loop gives 0, its scalar tail
//!   (`x <= lo || x >= hi ? 0 : dY`) gives dY; probe gives 0, what most elements get.
//! - clamp (`torch.clamp`, `x.clamp(max=..)`, `torch.clamp_min`), `clamp_backward`:
//!   dX = dY * [lo <= X <= hi]. The bounds pass it, NaN does not.
//!
//! The bounds' own gradients (clamp's tensor bounds; hardtanh's are Python numbers and get
//! none in PyTorch): dlo = sum(dY * [X < lo] * [lo <= hi]); dhi = sum(dY * [max(X, lo) > hi])
//! (when lo > hi the output is hi everywhere).
use super::attrs::{Attrs, Source};
use super::rule::kernels::CLIP_GRAD;
use super::rule::{Ctx, Kernels, Kind, Rule};
use super::torch::{input, one, opt_input, TorchCtx, Value};
use crate::model::export_info::FxNode;
use crate::model::graph::attr_int;
use crate::tensor::DType;
use anyhow::Result;
use onnx_protobuf::NodeProto;

pub static RULE: Rule = Rule::new("Clip", Kind::Elementwise).vjp(vjp).torch(torch);

/// Which PyTorch function a Clip node computes, for its gradient at the bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipAs {
    Hardtanh,
    Clamp,
}

impl ClipAs {
    pub fn name(self) -> &'static str {
        match self {
            ClipAs::Hardtanh => "hardtanh",
            ClipAs::Clamp => "clamp",
        }
    }
    pub fn parse(s: &str) -> Option<ClipAs> {
        match s {
            "hardtanh" => Some(ClipAs::Hardtanh),
            "clamp" => Some(ClipAs::Clamp),
            _ => None,
        }
    }
}

/// Node metadata probe writes to say which function a Clip computes (`--clip-grad`), read
/// before the exporter's record.
pub const CLIP_AS_KEY: &str = "probe.clip_as";

/// Which function node `n` (a Clip) computes, and where that was read: probe's own key
/// ([`CLIP_AS_KEY`], `--clip-grad`), else the exporter's record (`aten.hardtanh`, `aten.relu6`,
/// `aten.clamp*`), else by its bounds: hardtanh with both (ReLU6 and Hardtanh are where a
/// PyTorch model's two-sided Clip comes from, and where a fresh network sits exactly on a
/// bound; the TorchScript exporter records nothing), clamp with one (hardtanh has two).
pub fn clip_as(n: &NodeProto) -> (ClipAs, Source) {
    if let Some(c) = n.meta(CLIP_AS_KEY).and_then(ClipAs::parse) {
        return (c, Source::Given);
    }
    match FxNode::of(n).as_ref().map(FxNode::op) {
        Some("hardtanh" | "hardtanh_" | "relu6" | "relu6_") => {
            return (ClipAs::Hardtanh, Source::Exporter)
        }
        Some(op) if op.starts_with("clamp") || op.starts_with("clip") => {
            return (ClipAs::Clamp, Source::Exporter)
        }
        _ => {}
    }
    let present = |i: usize| n.input.get(i).is_some_and(|s| !s.is_empty());
    if present(1) && present(2) {
        (ClipAs::Hardtanh, Source::Default)
    } else {
        (ClipAs::Clamp, Source::Default)
    }
}

/// libtorch's clamp: `min(max(x, lo), hi)`, hi everywhere when lo > hi, with clamp's gradient
/// at the bounds; for a hardtanh node, the same values with hardtanh's gradient: libtorch's C
/// API has hardtanh only with its default bounds (-1, 1), so Y = where(pass, X,
/// clamp(X).detach()) with pass = lo < X < hi: the values are clamp's (X itself where it
/// passes), and where's backward sends dY to X exactly where pass holds, as
/// hardtanh_backward's vectorized loop does.
fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let (lo, hi) = (opt_input(&v, 1), opt_input(&v, 2));
    if lo.is_none() && hi.is_none() {
        return one(x.shallow_clone());
    }
    let clamped = x.f_clamp_tensor(lo, hi)?;
    if clip_as(c.node).0 == ClipAs::Clamp {
        return one(clamped);
    }
    let mut pass = x.f_eq_tensor(x)?;
    if let Some(lo) = lo {
        pass = pass.f_logical_and(&x.f_gt_tensor(lo)?)?;
    }
    if let Some(hi) = hi {
        pass = pass.f_logical_and(&x.f_lt_tensor(hi)?)?;
    }
    one(x.f_where_self(&pass, &clamped.f_detach()?)?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let (x, y) = (c.input(0).to_string(), c.output(0).to_string());
    let bound = |c: &Ctx, i: usize| c.has_input(i).then(|| c.input(i).to_string());
    let (lo, hi) = (bound(c, 1), bound(c, 2));
    let zero = c.scalar(0.0, &y)?;
    let and = |c: &mut Ctx, a: Option<String>, b: String| match a {
        Some(a) => c.op("And", &[&a, &b], vec![]),
        None => b,
    };
    let fast = c.kernels == Kernels::ProbeCpu && c.dtype(&x)? == DType::F32;
    if c.needs(0) && fast && (lo.is_some() || hi.is_some()) {
        // One pass instead of up to four (`probe.cpu:ClipGrad`, the same masks).
        // hardtanh's mask reads Y: lo < Y < hi exactly where lo < X < hi (Y is X inside,
        // a bound or NaN where X is), so X is read by the Clip alone, which a fusion of the
        // Clip into the node before it needs (tests/subgradients.rs holds the fresh
        // mobilenet_v2's bounds to PyTorch). clamp's inclusive mask needs X (Y = lo below lo
        // would pass).
        let inclusive = clip_as(c.node).0 == ClipAs::Clamp;
        let m = if inclusive { x.clone() } else { y.clone() };
        let (lo_s, hi_s) = (lo.as_deref().unwrap_or(""), hi.as_deref().unwrap_or(""));
        let attrs = vec![attr_int("inclusive", inclusive as i64)];
        let gx = c.probe_cpu_op(CLIP_GRAD, &[&g, &m, lo_s, hi_s], attrs, 1);
        c.set(0, gx[0].clone());
    } else if c.needs(0) {
        let gx = match clip_as(c.node).0 {
            ClipAs::Hardtanh => {
                // dX = pass ? dY : 0, pass = lo < X && X < hi (false at NaN).
                let mut pass = None;
                if let Some(lo) = &lo {
                    pass = Some(c.op("Greater", &[&x, lo], vec![]));
                }
                if let Some(hi) = &hi {
                    let m = c.op("Less", &[&x, hi], vec![]);
                    pass = Some(and(c, pass, m));
                }
                match pass {
                    Some(m) => c.op("Where", &[&m, &g, &zero], vec![]),
                    None => g.clone(),
                }
            }
            ClipAs::Clamp => {
                // dX = pass ? dY : 0, pass = lo <= X && X <= hi (false at NaN).
                let mut pass = None;
                if let Some(lo) = &lo {
                    pass = Some(c.op("GreaterOrEqual", &[&x, lo], vec![]));
                }
                if let Some(hi) = &hi {
                    let m = c.op("LessOrEqual", &[&x, hi], vec![]);
                    pass = Some(and(c, pass, m));
                }
                match pass {
                    Some(m) => c.op("Where", &[&m, &g, &zero], vec![]),
                    None => g.clone(),
                }
            }
        };
        c.set(0, gx);
    }
    if let (true, Some(lo_v)) = (c.needs(1), &lo) {
        let mut m = c.op("Less", &[&x, lo_v], vec![]);
        if let Some(hi) = &hi {
            let ordered = c.op("LessOrEqual", &[lo_v, hi], vec![]);
            m = and(c, Some(m), ordered);
        }
        let t = c.op("Where", &[&m, &g, &zero], vec![]);
        c.set_unbroadcast(1, &t, &y)?;
    }
    if let (true, Some(hi_v)) = (c.needs(2), &hi) {
        let raised = match &lo {
            Some(lo) => c.op("Max", &[&x, lo], vec![]),
            None => x.clone(),
        };
        let m = c.op("Greater", &[&raised, hi_v], vec![]);
        let t = c.op("Where", &[&m, &g, &zero], vec![]);
        c.set_unbroadcast(2, &t, &y)?;
    }
    Ok(())
}

op_tests!(
    clip_inputs = [
        Case::new("Clip")
            .input(&[3, 4])
            .values(&[], &[-0.4])
            .values(&[], &[0.3]),
        // The same, as hardtanh (away from the bounds the two agree).
        Case::new("Clip")
            .input(&[3, 4])
            .values(&[], &[-0.4])
            .values(&[], &[0.3])
            .metadata(crate::ops::clip::CLIP_AS_KEY, "hardtanh"),
        // Only a lower bound; only an upper bound.
        Case::new("Clip").input(&[3, 4]).values(&[], &[-0.2]),
        Case::new("Clip")
            .input(&[3, 4])
            .absent()
            .values(&[], &[0.1]),
        // lo > hi: the output is hi everywhere, below lo included.
        Case::new("Clip")
            .values(&[2, 3], &[-0.9, -0.5, -0.1, 0.2, 0.6, 0.9])
            .values(&[], &[0.5])
            .values(&[], &[-0.3]),
        // No bounds at all: the identity.
        Case::new("Clip").input(&[2, 3]),
    ],
    // probe's CPU kernel (ClipGrad) for dX, as clamp and as hardtanh, one bound or two; the
    // bounds' own gradients stay standard ops.
    clip_probe_cpu = [
        Case::new("Clip")
            .input(&[3, 4])
            .values(&[], &[-0.4])
            .values(&[], &[0.3])
            .f32()
            .probe_cpu(),
        Case::new("Clip")
            .input(&[3, 4])
            .values(&[], &[-0.4])
            .values(&[], &[0.3])
            .metadata(crate::ops::clip::CLIP_AS_KEY, "hardtanh")
            .f32()
            .probe_cpu(),
        Case::new("Clip")
            .input(&[3, 4])
            .absent()
            .values(&[], &[0.1])
            .f32()
            .probe_cpu(),
    ],
);

/// At the bounds, against PyTorch's backward: X exactly 0 and 6 (a fresh network's ReLU6 input),
/// -0.0, NaN, and values either side.
#[cfg(test)]
mod kinks {
    use crate::ops::kink_testing::{autograd, check_kinks};
    use crate::ops::testing::Case;
    use tch::Tensor;

    const X: [f64; 12] = [
        0.0,
        6.0,
        -0.0,
        3.0,
        -1.0,
        7.0,
        f64::NAN,
        0.0,
        6.0,
        1e-300,
        -1e-300,
        5.999999,
    ];
    const RELU6: &str = "%hardtanh : [num_users=1] = call_function[target=torch.ops.aten.hardtanh.default](args = (%x, 0.0, 6.0), kwargs = {})";
    const CLAMP: &str = "%clamp : [num_users=1] = call_function[target=torch.ops.aten.clamp.default](args = (%x, 0.0, 6.0), kwargs = {})";

    /// X, then values from -2 to 8.8 up to 40 elements: hardtanh_backward runs its vectorized
    /// loop over the first 32 (16 per step in f32, 8 in f64), NaN included.
    fn clip(lo: Option<f64>, hi: Option<f64>) -> Case {
        let rest = (0..28).map(|k| -2.0 + 0.4 * k as f64);
        let x: Vec<f64> = X.iter().copied().chain(rest).collect();
        let c = Case::new("Clip").values(&[4, 10], &x);
        let c = match lo {
            Some(v) => c.given(&[], &[v]),
            None => c.absent(),
        };
        match hi {
            Some(v) => c.given(&[], &[v]),
            None => c,
        }
    }

    /// hardtanh_backward(dY, X, 0, 6): PyTorch's kernel for ReLU6 and Hardtanh.
    fn hardtanh(lo: f64, hi: f64) -> impl Fn(&[Tensor], &Tensor) -> Vec<Tensor> {
        move |xs, r| vec![xs[0].f_hardtanh_backward(r, lo, hi).unwrap()]
    }

    #[test]
    fn relu6_as_exported_passes_nothing_at_its_bounds() {
        let case = clip(Some(0.0), Some(6.0)).metadata("pkg.torch.onnx.fx_node", RELU6);
        check_kinks(case.clone(), &hardtanh(0.0, 6.0));
        check_kinks(case.f32().probe_cpu(), &hardtanh(0.0, 6.0));
        // No record (the TorchScript exporter): two bounds are taken as hardtanh.
        check_kinks(clip(Some(0.0), Some(6.0)), &hardtanh(0.0, 6.0));
        // probe's own key overrides the exporter's record.
        let case = clip(Some(-1.0), Some(0.0))
            .metadata("pkg.torch.onnx.fx_node", CLAMP)
            .metadata(crate::ops::clip::CLIP_AS_KEY, "hardtanh");
        check_kinks(case, &hardtanh(-1.0, 0.0));
    }

    #[test]
    fn clamp_as_exported_passes_the_gradient_at_its_bounds() {
        let both = clip(Some(0.0), Some(6.0)).metadata("pkg.torch.onnx.fx_node", CLAMP);
        let clamp = autograd(|x| x[0].f_clamp(0.0, 6.0).unwrap());
        check_kinks(both.clone(), &clamp);
        check_kinks(both.f32().probe_cpu(), &clamp);
        // One bound: clamp whatever the record says (hardtanh has two).
        let (min, max) = (
            autograd(|x| x[0].f_clamp_min(0.0).unwrap()),
            autograd(|x| x[0].f_clamp_max(6.0).unwrap()),
        );
        for case in [
            clip(Some(0.0), None),
            clip(Some(0.0), None).f32().probe_cpu(),
        ] {
            check_kinks(case, &min);
        }
        for case in [
            clip(None, Some(6.0)),
            clip(None, Some(6.0)).f32().probe_cpu(),
        ] {
            check_kinks(case, &max);
        }
        let given = clip(Some(0.0), Some(6.0))
            .metadata("pkg.torch.onnx.fx_node", RELU6)
            .metadata(crate::ops::clip::CLIP_AS_KEY, "clamp");
        check_kinks(given, &autograd(|x| x[0].f_clamp(0.0, 6.0).unwrap()));
    }
}
