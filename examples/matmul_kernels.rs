//! Times one matrix product as ONNX Runtime runs it: `probe.cpu:MatMul` (libtorch's MKL GEMM,
//! rows split over ONNX Runtime's threads) and, untransposed, ONNX Runtime's own MatMul (MLAS),
//! on the same inputs; best of 12 runs. A developer's tool for the GEMM paths in
//! src/runtime/cpu_ops/matmul.rs:
//!
//!     cargo run --release --example matmul_kernels -- THREADS A_SHAPE:B_SHAPE:TRANS_A:TRANS_B ...
//!
//! e.g. `2 2048,768:768,32000:0:0` (a Llama decoder's loss head at batch 8 x 256).
#[path = "support/kernel_bench.rs"]
mod kernel_bench;
use kernel_bench::{model, node, time};
use probe::model::graph::attr_int;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args[1].parse().unwrap();
    tch::set_num_threads(1);
    for spec in &args[2..] {
        let p: Vec<&str> = spec.split(':').collect();
        let a: Vec<i64> = p[0].split(',').map(|s| s.parse().unwrap()).collect();
        let b: Vec<i64> = p[1].split(',').map(|s| s.parse().unwrap()).collect();
        let (ta, tb) = (p[2] == "1", p[3] == "1");
        let attrs = || vec![attr_int("transA", ta as i64), attr_int("transB", tb as i64)];
        let cpu = model(
            vec![node("MatMul", "probe.cpu", &["a", "b"], &["y"], attrs())],
            &[("a", a.clone()), ("b", b.clone())],
            &["y"],
        );
        let feeds = [("a", a.clone()), ("b", b.clone())];
        let t_cpu = time(&cpu, threads, &feeds);
        let std_ = if !ta && !tb {
            let m = model(
                vec![node("MatMul", "", &["a", "b"], &["y"], vec![])],
                &[("a", a.clone()), ("b", b.clone())],
                &["y"],
            );
            time(&m, threads, &feeds)
        } else {
            f64::NAN
        };
        println!("{spec}: probe.cpu {t_cpu:.2} ms, ORT MatMul {std_:.2} ms");
    }
}
