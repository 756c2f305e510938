//! Times one convolution's forward, dX and dW/dB as ONNX Runtime runs them: the standard ONNX
//! form probe's gradient rule emits and the `probe.cpu` kernels (libtorch), on the same inputs.
//! A developer's tool for choosing which form the rule emits (see src/ops/conv/mod.rs; libtorch's
//! own dX, backward-data, was measured with an earlier ConvGrad that had a dX output: 3-6x
//! slower than the flipped-kernel forward conv, so ConvGrad lost that output; a strided dX
//! is also timed in the phase form and by libtorch's backward-data, `ConvGradX`):
//!
//!     cargo run --release --example conv_kernels -- THREADS N,C,H,W M,K,STRIDE,PAD [...]
#[path = "support/kernel_bench.rs"]
mod kernel_bench;
use kernel_bench::{model, node, time};
use probe::model::graph::{attr_int, attr_ints};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args[1].parse().unwrap();
    tch::set_num_threads(1);
    for spec in args[2..].chunks(2) {
        let x: Vec<i64> = spec[0].split(',').map(|s| s.parse().unwrap()).collect();
        let p: Vec<i64> = spec[1].split(',').map(|s| s.parse().unwrap()).collect();
        let (m, k, s, pad) = (p[0], p[1], p[2], p[3]);
        let w = vec![m, x[1], k, k];
        let o = |h: i64| (h + 2 * pad - k) / s + 1;
        let y = vec![x[0], m, o(x[2]), o(x[3])];
        let attrs = || {
            vec![
                attr_ints("strides", &[s, s]),
                attr_ints("pads", &[pad, pad, pad, pad]),
                attr_ints("dilations", &[1, 1]),
                attr_int("group", 1),
            ]
        };
        let fwd_std = model(
            vec![node("Conv", "", &["x", "w"], &["y"], attrs())],
            &[("x", x.clone()), ("w", w.clone())],
            &["y"],
        );
        let fwd_cpu = model(
            vec![node("Conv", "probe.cpu", &["x", "w"], &["y"], attrs())],
            &[("x", x.clone()), ("w", w.clone())],
            &["y"],
        );
        let feeds_f = [("x", x.clone()), ("w", w.clone())];
        // dX, stride 1: Conv(dY, flipped W^T) with pads k-1-p.
        let wt = vec![x[1], m, k, k];
        let q = k - 1 - pad;
        let dx_attrs = || {
            vec![
                attr_ints("strides", &[1, 1]),
                attr_ints("pads", &[q, q, q, q]),
                attr_ints("dilations", &[1, 1]),
                attr_int("group", 1),
            ]
        };
        let bwd_w = model(
            vec![node(
                "ConvGrad",
                "probe.cpu",
                &["dy", "x", "w"],
                &["dw", "db"],
                attrs(),
            )],
            &[("dy", y.clone()), ("x", x.clone()), ("w", w.clone())],
            &["dw", "db"],
        );
        let feeds_b = [("dy", y.clone()), ("x", x.clone()), ("w", w.clone())];
        let ct = model(
            vec![node("ConvTranspose", "", &["dy", "w"], &["dx"], {
                let mut a = attrs();
                a.pop();
                a.push(attr_ints(
                    "output_padding",
                    &[(x[2] + 2 * pad - k) % s, (x[3] + 2 * pad - k) % s],
                ));
                a
            })],
            &[("dy", y.clone()), ("w", w.clone())],
            &["dx"],
        );
        let feeds_ct = [("dy", y.clone()), ("w", w.clone())];
        print!(
            "x {x:?} w {w:?} s{s} p{pad} threads {threads}: fwd ort {:.2} cpu {:.2} | dW+dB cpu {:.2} | dX ConvTranspose {:.2}",
            time(&fwd_std, threads, &feeds_f),
            time(&fwd_cpu, threads, &feeds_f),
            time(&bwd_w, threads, &feeds_b),
            time(&ct, threads, &feeds_ct),
        );
        if s > 1 {
            // The strided dX as the rule emits it on the fast path (ops/conv/phases.rs): the phase
            // form (one stride-1 Conv and probe.cpu:Interleave), and libtorch's backward-data.
            let win = probe::ops::conv::Window {
                kernel: vec![k, k],
                strides: vec![s, s],
                dilations: vec![1, 1],
                pads: vec![pad; 4],
            };
            if let Some(ph) = probe::ops::conv::Phases::of(&win, &x[2..]) {
                let mut b = probe::model::graph::Builder::new("phase");
                let dx = probe::ops::conv::phase_dx(&mut b, "dy", "w", m, x[1], &ph);
                let g = model(b.nodes, &[("dy", y.clone()), ("w", w.clone())], &[&dx]);
                print!(" | dX phase {:.2}", time(&g, threads, &feeds_ct));
            }
            let gx = model(
                vec![node(
                    "ConvGradX",
                    "probe.cpu",
                    &["dy", "x", "w"],
                    &["dx"],
                    attrs(),
                )],
                &[("dy", y.clone()), ("x", x.clone()), ("w", w.clone())],
                &["dx"],
            );
            print!(" ConvGradX {:.2}", time(&gx, threads, &feeds_b));
        }
        if s == 1 {
            let dx_std = model(
                vec![node("Conv", "", &["dy", "wt"], &["dx"], dx_attrs())],
                &[("dy", y.clone()), ("wt", wt.clone())],
                &["dx"],
            );
            let dx_cpu = model(
                vec![node(
                    "Conv",
                    "probe.cpu",
                    &["dy", "wt"],
                    &["dx"],
                    dx_attrs(),
                )],
                &[("dy", y.clone()), ("wt", wt.clone())],
                &["dx"],
            );
            let feeds_dx = [("dy", y.clone()), ("wt", wt.clone())];
            print!(
                " | dX flip ort {:.2} cpu {:.2}",
                time(&dx_std, threads, &feeds_dx),
                time(&dx_cpu, threads, &feeds_dx)
            );
        }
        println!(" ms");
    }
}
