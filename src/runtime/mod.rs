//! ONNX Runtime sessions over the graphs probe builds.
//!
//! ONNX Runtime is loaded at run time (ort's `load-dynamic`): from `ORT_DYLIB_PATH` if set, else
//! from the library `setup.sh` installed beside the sources (compiled in by build.rs).
pub mod cpu_ops;
pub mod torch;

use anyhow::{anyhow, Result};
use ort::session::{builder::GraphOptimizationLevel, Session};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

static ENV: OnceLock<std::result::Result<ort::environment::Environment, String>> = OnceLock::new();

/// Whether a session with the `probe.cpu` domain has been created in this process; held locked
/// while the first ones are. ONNX Runtime adds a session's custom-op domains to ONNX's
/// process-wide schema registry with an unsynchronized check-then-add (`CreateCustomRegistry`):
/// two sessions created at the same moment in a fresh process can both miss the domain and the
/// second add fails ("Trying to add a domain to DomainToVersion map, but the domain is already
/// exist"). So the creations are serialized until one has succeeded; after that the domain is
/// in the registry, every later session only reads it, and they are created in parallel.
static DOMAIN_REGISTERED: Mutex<bool> = Mutex::new(false);

/// Where the ONNX Runtime library is looked for.
pub fn dylib_path() -> PathBuf {
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("PROBE_ORT_DYLIB_DEFAULT")),
    }
}

/// The process's ONNX Runtime environment, loaded once.
pub fn environment() -> Result<&'static ort::environment::Environment> {
    let env = ENV.get_or_init(|| {
        let path = dylib_path();
        if !path.exists() {
            return Err(format!(
                "ONNX Runtime library not found at {} (run ./setup.sh, or set ORT_DYLIB_PATH)",
                path.display()
            ));
        }
        ort::init_from(&path)
            .map_err(|e| format!("loading ONNX Runtime from {}: {e}", path.display()))?
            .with_name("probe")
            .build()
            .map_err(|e| format!("starting ONNX Runtime from {}: {e}", path.display()))
    });
    env.as_ref().map_err(|e| anyhow!("{e}"))
}

/// glibc's allocator set to keep freed memory for reuse, as an arena does: no chunk of its own
/// mapping (glibc maps every allocation over 32 MB alone and unmaps it when freed, so each
/// batch faulted its large tensors' pages in again, which this VM charges seconds a GB for)
/// and no trimming of the heap's top below 2 GB free. ONNX Runtime's own arena is off
/// ([`session`]): it grew by regions twice the last one and held 3.85 GB where deit_small's
/// run (batch 32, 3x224x224) peaks at 3.05 GB without it, and 5.0 against 4.5 GB on
/// convnext_tiny; libtorch's kernels and probe's buffers, which allocate through glibc, reuse
/// the same memory.
///
/// glibc's per-thread arenas are kept: one arena for every thread (`M_ARENA_MAX` 1) made the
/// Llama decoder's pass ~6% faster and its peak 4.06 -> 3.6 GB, but put deit_small's (batch
/// 32, 3x224x224, 160 samples) at 3.49-3.65 GB against 2.97 with them, above PyTorch's 3.2.
/// Call before any thread starts (the binary's `main`).
pub fn reuse_freed_memory() {
    // SAFETY: mallopt changes the allocator's parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Number of threads used when none is asked for: every core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A CPU session over an in-memory ONNX model, with all graph optimizations and `threads`
/// intra-op threads. The `probe.cpu` custom ops ([`cpu_ops`]) are registered, so gradient
/// graphs built with them run too (their libtorch kernels use libtorch's process-wide thread
/// count: whoever runs such a graph sets it, see `measure::grad`).
pub fn session(model_bytes: &[u8], threads: usize, what: &str) -> Result<Session> {
    let env = environment()?;
    let ctx = |e: ort::Error| anyhow!("ONNX Runtime could not load the {what} graph: {e}");
    let mut b = Session::builder(env).map_err(ctx)?;
    b = b
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| ctx(ort::Error::from(e)))?
        // No memory pattern: with it ONNX Runtime plans one block for all of a run's buffers
        // after the first run and allocates it on the second, whose pages are all faulted in
        // again (the second batch took 2x a steady one; without the pattern 1.1-1.3x), and the
        // block comes on top of the arena the first run filled: peak memory 411 -> 306 MB on
        // the shipped GPT, 592 -> 416 MB on the ResNet (5,000 samples, batch 250).
        .with_memory_pattern(false)
        .map_err(|e| ctx(ort::Error::from(e)))?
        .with_intra_threads(threads)
        .map_err(|e| ctx(ort::Error::from(e)))?
        .with_inter_threads(1)
        .map_err(|e| ctx(ort::Error::from(e)))?
        // The pool's threads spin for a while after a run by default, on the cores probe's
        // own threads then take for the f64 sums (measure::reduce::accumulate): two sum
        // threads on resnet18's 11.7M entries took 17-18 ms a batch against 14-16 on one,
        // and 8.8-9.0 ms with the spinning stopped when the run returns. Spinning within a
        // run is kept (off, the pass was slower).
        .with_config_entry("session.force_spinning_stop", "1")
        .map_err(|e| ctx(ort::Error::from(e)))?
        // No arena: see `reuse_freed_memory`. A developer's knob, `PROBE_ORT_ARENA=on`, keeps
        // ONNX Runtime's (for an A/B).
        .with_execution_providers([ort::ep::CPU::default()
            .with_arena_allocator(std::env::var_os("PROBE_ORT_ARENA").is_some_and(|v| v == "on"))
            .build()])
        .map_err(|e| ctx(ort::Error::from(e)))?
        .with_operators(cpu_ops::domain(threads)?)
        .map_err(|e| ctx(ort::Error::from(e)))?;
    // Developers' knobs, each a path prefix in an environment variable, `-<what>` appended.
    let knob = |var: &str, suffix: &str| {
        std::env::var_os(var).map(|mut path| {
            path.push(format!("-{what}{suffix}"));
            path
        })
    };
    // ONNX Runtime's per-node profile (JSON, written when the session ends) of every session,
    // as `$PROBE_ORT_PROFILE-<what>_<date>.json`.
    if let Some(path) = knob("PROBE_ORT_PROFILE", "") {
        b = b
            .with_profiling(path)
            .map_err(|e| ctx(ort::Error::from(e)))?;
    }
    // The graph as ONNX Runtime runs it, after its own optimizations (fusions, layout changes,
    // the nodes' final names, which its profile uses), as `$PROBE_ORT_OPTIMIZED-<what>.onnx`.
    if let Some(path) = knob("PROBE_ORT_OPTIMIZED", ".onnx") {
        b = b
            .with_optimized_model_path(path)
            .map_err(|e| ctx(ort::Error::from(e)))?;
    }
    // A panic elsewhere cannot leave the flag wrong: it is set only after a success.
    let mut registered = DOMAIN_REGISTERED.lock().unwrap_or_else(|p| p.into_inner());
    if *registered {
        drop(registered);
        return b.commit_from_memory(model_bytes).map_err(ctx);
    }
    let session = b.commit_from_memory(model_bytes).map_err(ctx)?;
    *registered = true;
    Ok(session)
}

#[cfg(test)]
mod tests {
    use crate::model::graph::value_info;
    use crate::ops::testing::{model_of, node};
    use crate::tensor::DType;
    use onnx_protobuf::GraphProto;

    /// Set in the child processes of [`sessions_created_at_once_in_fresh_processes`].
    const CHILD: &str = "PROBE_TEST_CONCURRENT_SESSIONS";

    /// `dX = probe.cpu:ReluGrad(dY, X)` over [4] floats: a session of it needs the domain.
    fn relu_grad_model() -> Vec<u8> {
        let mut n = node("ReluGrad", &["dY", "X"], "dX");
        n.domain = super::cpu_ops::DOMAIN.into();
        let mut g = GraphProto::new();
        g.name = "relu_grad".into();
        g.node.push(n);
        for name in ["dY", "X"] {
            g.input.push(value_info(name, DType::F32, &[Some(4)], "n"));
        }
        g.output.push(value_info("dX", DType::F32, &[Some(4)], "n"));
        protobuf::Message::write_to_bytes(&model_of(g, 17)).unwrap()
    }

    /// 16 threads released at once, each creating (and running) 4 sessions with the `probe.cpu`
    /// domain. ONNX Runtime adds a custom domain to ONNX's process-wide schema registry when the
    /// first session with it is created, with a check-then-add that races: only the first
    /// sessions of a process can collide, so this runs in fresh processes (the test below).
    #[test]
    #[ignore = "run in fresh processes by sessions_created_at_once_in_fresh_processes"]
    fn sessions_created_at_once_child() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        let bytes = relu_grad_model();
        let threads = 16;
        let barrier = std::sync::Barrier::new(threads);
        let failures: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| -> Result<(), String> {
                        barrier.wait();
                        for _ in 0..4 {
                            let mut sess =
                                super::session(&bytes, 1, "test").map_err(|e| format!("{e:#}"))?;
                            let dy = ort::value::Tensor::from_array((
                                vec![4i64],
                                vec![1.0f32, 2.0, 3.0, 4.0],
                            ))
                            .unwrap();
                            let x = ort::value::Tensor::from_array((
                                vec![4i64],
                                vec![-1.0f32, 1.0, -1.0, 1.0],
                            ))
                            .unwrap();
                            let out = sess
                                .run(ort::inputs!["dY" => dy, "X" => x])
                                .map_err(|e| e.to_string())?;
                            let dx = out["dX"].try_extract_array::<f32>().unwrap();
                            let dx: Vec<f32> = dx.iter().copied().collect();
                            if dx != [0.0, 2.0, 0.0, 4.0] {
                                return Err(format!("dX {dx:?}"));
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            hs.into_iter()
                .filter_map(|h| h.join().unwrap().err())
                .collect()
        });
        assert!(
            failures.is_empty(),
            "{} of {threads} threads failed: {}",
            failures.len(),
            failures[0]
        );
    }

    #[test]
    fn sessions_created_at_once_in_fresh_processes() {
        let exe = std::env::current_exe().unwrap();
        for run in 0..8 {
            let out = std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "runtime::tests::sessions_created_at_once_child",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && text.contains("1 passed"),
                "process {run}: {}",
                text
            );
        }
    }
}
