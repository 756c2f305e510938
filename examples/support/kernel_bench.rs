//! What the kernel timing examples share: a one-node graph's ONNX bytes, and the best of 12
//! runs of a session over it on fixed inputs.
use onnx_protobuf::{GraphProto, ModelProto, NodeProto, OperatorSetIdProto};
use probe::model::graph::value_info;
use probe::tensor::DType;
use std::time::Instant;

pub fn node(
    op: &str,
    domain: &str,
    ins: &[&str],
    outs: &[&str],
    attrs: Vec<onnx_protobuf::AttributeProto>,
) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.domain = domain.into();
    n.name = format!("{op}_{}", outs.join("_"));
    n.input = ins.iter().map(|s| s.to_string()).collect();
    n.output = outs.iter().map(|s| s.to_string()).collect();
    n.attribute = attrs;
    n
}

pub fn model(nodes: Vec<NodeProto>, ins: &[(&str, Vec<i64>)], outs: &[&str]) -> Vec<u8> {
    let mut g = GraphProto::new();
    g.name = "bench".into();
    g.node = nodes;
    for (n, s) in ins {
        let d: Vec<Option<i64>> = s.iter().map(|&x| Some(x)).collect();
        g.input.push(value_info(n, DType::F32, &d, "N"));
    }
    for o in outs {
        let mut vi = onnx_protobuf::ValueInfoProto::new();
        vi.name = o.to_string();
        g.output.push(vi);
    }
    let mut m = ModelProto::new();
    m.ir_version = 10;
    let mut o = OperatorSetIdProto::new();
    o.version = 17;
    m.opset_import.push(o);
    let mut o = OperatorSetIdProto::new();
    o.domain = "probe.cpu".into();
    o.version = 1;
    m.opset_import.push(o);
    m.graph = protobuf::MessageField::some(g);
    protobuf::Message::write_to_bytes(&m).unwrap()
}

pub fn time(bytes: &[u8], threads: usize, feeds: &[(&str, Vec<i64>)]) -> f64 {
    let mut s = probe::runtime::session(bytes, threads, "bench").unwrap();
    let vals: Vec<(String, ort::value::DynValue)> = feeds
        .iter()
        .enumerate()
        .map(|(k, (n, shape))| {
            let len: i64 = shape.iter().product();
            let v: Vec<f32> = (0..len)
                .map(|i| ((i * 7919 + k as i64) % 13) as f32 / 13.0 - 0.5)
                .collect();
            (
                n.to_string(),
                ort::value::Tensor::from_array((shape.clone(), v))
                    .unwrap()
                    .into_dyn(),
            )
        })
        .collect();
    let mut best = f64::INFINITY;
    for _ in 0..12 {
        let inputs: Vec<(std::borrow::Cow<str>, ort::session::SessionInputValue)> = vals
            .iter()
            .map(|(n, v)| (n.as_str().into(), v.into()))
            .collect();
        let t = Instant::now();
        let _ = s.run(inputs).unwrap();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best * 1e3
}
