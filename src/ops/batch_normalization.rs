//! BatchNormalization (opset 15; also 14, 9 in inference mode): per channel (axis 1),
//! `Y = (X - mean) * invstd * scale + B` with `invstd = 1/sqrt(var + epsilon)`.
//! https://onnx.ai/onnx/operators/onnx__BatchNormalization.html
//!
//! - `training_mode = 0`: mean, var are the inputs input_mean, input_var. With k = scale*invstd
//!   and sums over every axis but 1:
//!   dX = dY * k, dscale = sum(dY * xhat), dB = sum(dY), dmean = -k * sum(dY),
//!   dvar = -k * invstd / 2 * sum(dY * xhat). With probe's CPU kernels (`probe grad`'s
//!   default, f32) dX and the two sums are one `probe.cpu:BatchNormalizationGrad` pass.
//! - `training_mode = 1`: mean, var are the batch statistics over every axis but 1 (biased
//!   variance), recomputed here; with M elements per channel,
//!   dX = scale * invstd / M * (M dY - sum(dY) - xhat * sum(dY * xhat)),
//!   dscale = sum(dY * xhat), dB = sum(dY); input_mean and input_var reach Y not at all (zero).
//!   The running statistics outputs (1, 2) are buffers: a loss that depends on them is refused.
//!
//! With probe's CPU kernels the inference-mode forward node itself becomes
//! `probe.cpu:BatchNormalization` ([`probe_cpu_forward`]): ONNX Runtime's ran ~3x slower than
//! PyTorch's on the shipped ResNet (17 vs 6 ms a batch), and a Relu after it fuses in.
use super::attrs::Attrs;
use super::torch::{f32_as_written, input, one, TorchCtx, Value};
use super::{Kind, Rule};
use crate::autodiff::ctx::Ctx;
use crate::autodiff::grad::Kernels;
use crate::autodiff::shapes::Shapes;
use crate::model::graph::{attr_float, attr_int};
use crate::tensor::DType;
use anyhow::{bail, Result};
use onnx_protobuf::NodeProto;

pub static RULE: Rule = Rule {
    op: "BatchNormalization",
    kind: Kind::Structured,
    vjp: Some(vjp),
    torch: Some(torch),
};

/// libtorch's `batch_norm`, what PyTorch's BatchNorm runs. With batch statistics (training),
/// libtorch updates copies of the running statistics exactly as PyTorch does (biased variance
/// to normalize, unbiased variance in the running update, `running = m running + (1 - m) batch`
/// for ONNX momentum m, PyTorch momentum 1 - m); they are outputs 1 and 2, and written back into
/// inputs 3 and 4 when the caller applies write-backs.
fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let (scale, b) = (input(&v, 1)?, input(&v, 2)?);
    let (mean, var) = (input(&v, 3)?, input(&v, 4)?);
    let eps = f32_as_written(c.attr_f("epsilon", 1e-5));
    let m = f32_as_written(c.attr_f("momentum", 0.9));
    let training = c.training.unwrap_or(c.attr_i("training_mode", 0) != 0);
    if !training {
        let y = x.f_batch_norm(
            Some(scale),
            Some(b),
            Some(mean),
            Some(var),
            false,
            1.0 - m,
            eps,
            true,
        )?;
        return one(y);
    }
    let rm = mean.f_detach()?.copy();
    let rv = var.f_detach()?.copy();
    let y = x.f_batch_norm(
        Some(scale),
        Some(b),
        Some(&rm),
        Some(&rv),
        true,
        1.0 - m,
        eps,
        true,
    )?;
    c.write_back(3, rm.shallow_clone());
    c.write_back(4, rv.shallow_clone());
    Ok(vec![Value::Tensor(y), Value::Tensor(rm), Value::Tensor(rv)])
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let training = c.attr_i("training_mode", 0) != 0;
    if training && (c.go(1).is_some() || c.go(2).is_some()) {
        bail!("the running mean/var outputs of a training-mode BatchNormalization are buffers, not differentiated");
    }
    let Some(g) = c.go(0) else { return Ok(()) };
    let x = c.input(0).to_string();
    let rank = c.rank(&x)? as i64;
    let eps = c.attr_f("epsilon", 1e-5) as f64;
    // Every axis but the channel axis.
    let axes: Vec<i64> = std::iter::once(0).chain(2..rank).collect();
    // Per-channel [C] -> [C, 1, ..., 1], to broadcast against X.
    let chan = |c: &mut Ctx, v: &str| -> String {
        if rank <= 2 {
            return v.to_string();
        }
        let ax = c.ints(&(1..rank - 1).collect::<Vec<_>>());
        c.op("Unsqueeze", &[v, &ax], vec![])
    };
    let scale = c.input(1).to_string();
    let e = c.scalar(eps, &x)?;
    if training {
        let ax = c.ints(&axes);
        let keep = || vec![attr_int("keepdims", 1)];
        let mu = c.op("ReduceMean", &[&x, &ax], keep());
        let d = c.op("Sub", &[&x, &mu], vec![]);
        let d2 = c.op("Mul", &[&d, &d], vec![]);
        let var = c.op("ReduceMean", &[&d2, &ax], keep());
        let ve = c.op("Add", &[&var, &e], vec![]);
        let sd = c.op("Sqrt", &[&ve], vec![]);
        let inv = c.op("Reciprocal", &[&sd], vec![]);
        let xhat = c.op("Mul", &[&d, &inv], vec![]);
        let gxh = c.op("Mul", &[&g, &xhat], vec![]);
        if c.needs(0) {
            // scale*invstd * (dY - mean(dY) - xhat*mean(dY*xhat)); means, so M may follow the batch.
            let mg = c.op("ReduceMean", &[&g, &ax], keep());
            let mgx = c.op("ReduceMean", &[&gxh, &ax], keep());
            let t = c.op("Mul", &[&xhat, &mgx], vec![]);
            let u = c.op("Sub", &[&g, &mg], vec![]);
            let u = c.op("Sub", &[&u, &t], vec![]);
            let sc = chan(c, &scale);
            let k = c.op("Mul", &[&sc, &inv], vec![]);
            let gx = c.op("Mul", &[&u, &k], vec![]);
            c.set(0, gx);
        }
        if c.needs(1) {
            let gs = c.reduce_sum(&gxh, &axes, false);
            c.set(1, gs);
        }
        if c.needs(2) {
            let gb = c.reduce_sum(&g, &axes, false);
            c.set(2, gb);
        }
        return Ok(());
    }
    let (mean, var) = (c.input(3).to_string(), c.input(4).to_string());
    let ve = c.op("Add", &[&var, &e], vec![]);
    let sd = c.op("Sqrt", &[&ve], vec![]);
    let inv = c.op("Reciprocal", &[&sd], vec![]);
    let k = c.op("Mul", &[&scale, &inv], vec![]);
    let (need_g, need_gxh) = (c.needs(2) || c.needs(3), c.needs(1) || c.needs(4));
    let (sum_g, sum_gxh) = if c.kernels == Kernels::ProbeCpu && c.dtype(&x)? == DType::F32 {
        // One pass over dY and X for dX and both sums (runtime/cpu_ops.rs); it gives
        // sum dY (X - mean), times invstd that is sum dY xhat.
        let needs = [c.needs(0), need_g, need_gxh];
        let [gx, sum_g, sum_dy_xc] = <[Option<String>; 3]>::try_from(c.probe_cpu_outputs(
            "BatchNormalizationGrad",
            &[&g, &x, &k, &mean],
            vec![],
            &needs,
        ))
        .unwrap();
        if let Some(gx) = gx {
            c.set(0, gx);
        }
        let sum_gxh = sum_dy_xc.map(|s| c.op("Mul", &[&s, &inv], vec![]));
        (sum_g, sum_gxh)
    } else {
        if c.needs(0) {
            let kb = chan(c, &k);
            let gx = c.op("Mul", &[&g, &kb], vec![]);
            c.set(0, gx);
        }
        let sum_g = need_g.then(|| c.reduce_sum(&g, &axes, false));
        let sum_gxh = if need_gxh {
            let mb = chan(c, &mean);
            let ib = chan(c, &inv);
            let d = c.op("Sub", &[&x, &mb], vec![]);
            let xhat = c.op("Mul", &[&d, &ib], vec![]);
            let gxh = c.op("Mul", &[&g, &xhat], vec![]);
            Some(c.reduce_sum(&gxh, &axes, false))
        } else {
            None
        };
        (sum_g, sum_gxh)
    };
    if let Some(s) = &sum_gxh {
        c.set(1, s.clone());
        if c.needs(4) {
            let h = c.scalar(-0.5, &x)?;
            let t = c.op("Mul", &[&k, &inv], vec![]);
            let t = c.op("Mul", &[&t, &h], vec![]);
            let gv = c.op("Mul", &[&t, s], vec![]);
            c.set(4, gv);
        }
    }
    if let Some(s) = &sum_g {
        c.set(2, s.clone());
        if c.needs(3) {
            let t = c.op("Mul", &[&k, s], vec![]);
            let gm = c.op("Neg", &[&t], vec![]);
            c.set(3, gm);
        }
    }
    Ok(())
}

/// The forward node as `probe.cpu:BatchNormalization` (`relu` 0; `autodiff/fuse.rs` may fuse
/// a following Relu in): inference mode, f32 X, only output Y named; `None` leaves the standard
/// node (training mode computes batch statistics, which the kernel does not).
pub fn probe_cpu_forward(n: &NodeProto, shapes: &Shapes) -> Option<NodeProto> {
    if n.op_type != "BatchNormalization" || !n.domain.is_empty() || n.input.len() != 5 {
        return None;
    }
    let x = n.input.first()?;
    if n.attr_i("training_mode", 0) != 0
        || shapes.dtype(x)? != DType::F32
        || n.output.iter().skip(1).any(|o| !o.is_empty())
    {
        return None;
    }
    let mut m = crate::runtime::cpu_ops::as_probe_cpu(
        n,
        vec![
            attr_float("epsilon", n.attr_f("epsilon", 1e-5)),
            attr_int("relu", 0),
        ],
    );
    m.output.truncate(1);
    Some(m)
}

#[cfg(test)]
mod tests {
    use crate::model::graph::{attr_float, attr_int};
    use crate::ops::testing::{check, Case};
    use crate::ops::torch_testing::{check_torch, check_torch_except};
    fn bn(x: &[usize], c: usize) -> Case {
        Case::new("BatchNormalization")
            .input(x)
            .input(&[c])
            .input(&[c])
            .input(&[c])
            .input_in(&[c], 0.5, 1.5)
    }
    #[test]
    fn batch_norm_inference() {
        batch_norm_inference_cases(check);
    }
    #[test]
    fn probe_cpu_kernel() {
        check(bn(&[2, 3, 4, 5], 3).f32().probe_cpu());
        check(
            bn(&[4, 3], 3)
                .attr(attr_float("epsilon", 0.1))
                .f32()
                .probe_cpu(),
        );
        // The mean as a fixed buffer.
        check(
            Case::new("BatchNormalization")
                .input(&[2, 3, 2, 2])
                .input(&[3])
                .input(&[3])
                .fixed(&[3])
                .values(&[3], &[0.5, 1.0, 2.0])
                .f32()
                .probe_cpu(),
        );
    }
    fn batch_norm_inference_cases(check: fn(Case)) {
        check(bn(&[2, 3, 4, 5], 3));
        check(bn(&[4, 3], 3).attr(attr_float("epsilon", 0.1)));
        check(bn(&[2, 2, 5], 2).attr(attr_int("training_mode", 0)));
        // Running statistics as fixed buffers.
        check(
            Case::new("BatchNormalization")
                .input(&[2, 3, 2, 2])
                .input(&[3])
                .input(&[3])
                .fixed(&[3])
                .values(&[3], &[0.5, 1.0, 2.0]),
        );
    }
    #[test]
    fn batch_norm_training() {
        batch_norm_training_cases(check);
    }
    fn batch_norm_training_cases(check: fn(Case)) {
        // Training mode must list its three outputs; the running statistics stay out of the loss.
        let t = |case: Case| {
            case.attr(attr_int("training_mode", 1))
                .outputs(3)
                .skip_output(1)
                .skip_output(2)
        };
        check(t(bn(&[2, 3, 4, 5], 3)));
        check(t(bn(&[5, 3], 3)).attr(attr_float("epsilon", 0.1)));
        check(t(bn(&[2, 2, 3], 2)).attr(attr_float("momentum", 0.5)));
    }
    #[test]
    fn torch_forward() {
        batch_norm_inference_cases(check_torch);
        // Output 2, the running variance, is PyTorch's (unbiased batch variance), not ONNX's
        // (biased): checked against PyTorch's formula below.
        batch_norm_training_cases(|case| check_torch_except(case, &[2]));
    }
    #[test]
    fn torch_running_statistics_as_pytorch() {
        // running = m running + (1 - m) batch, the variance unbiased; and the forward asks for
        // both to be written back into inputs 3 and 4.
        use crate::ops::{rule, TorchCtx, Value};
        use tch::{Device, Kind, Tensor};
        let mut node = onnx_protobuf::NodeProto::new();
        node.op_type = "BatchNormalization".into();
        node.attribute = vec![attr_float("momentum", 0.75)];
        let x = Tensor::randn([4, 3, 2, 5], (Kind::Float, Device::Cpu));
        let (rm, rv) = (
            Tensor::from_slice(&[0.1f32, -0.2, 0.3]),
            Tensor::from_slice(&[1.0f32, 2.0, 0.5]),
        );
        let inputs = vec![
            Value::Tensor(x.shallow_clone()),
            Value::Tensor(Tensor::ones([3], (Kind::Float, Device::Cpu))),
            Value::Tensor(Tensor::zeros([3], (Kind::Float, Device::Cpu))),
            Value::Tensor(rm.copy()),
            Value::Tensor(rv.copy()),
        ];
        let ctx = TorchCtx::new(&node, Some(true), Device::Cpu);
        let out = (rule("BatchNormalization").unwrap().torch.unwrap())(&ctx, inputs).unwrap();
        let mean = x.mean_dim([0i64, 2, 3].as_slice(), false, None::<Kind>);
        let var = x.var_dim([0i64, 2, 3].as_slice(), true, false);
        let want_m = &rm * 0.75 + mean * 0.25;
        let want_v = &rv * 0.75 + var * 0.25;
        let got_m = out[1].tensor().unwrap();
        let got_v = out[2].tensor().unwrap();
        let err = |a: &Tensor, b: &Tensor| f64::try_from((a - b).abs().max()).unwrap();
        assert!(
            err(got_m, &want_m) < 1e-6,
            "running mean {got_m} vs {want_m}"
        );
        assert!(
            err(got_v, &want_v) < 1e-6,
            "running var {got_v} vs {want_v}"
        );
        let wb = ctx.take_write_backs();
        assert_eq!(wb.iter().map(|w| w.0).collect::<Vec<_>>(), vec![3, 4]);
        assert!(err(&wb[1].1, &want_v) < 1e-6);
    }
}
