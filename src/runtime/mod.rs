//! ONNX Runtime sessions over the graphs probe builds.
//!
//! ONNX Runtime is loaded at run time (ort's `load-dynamic`): from `ORT_DYLIB_PATH` if set, else
//! from the library `setup.sh` installed beside the sources (compiled in by build.rs).
pub mod cpu_ops;

use anyhow::{anyhow, Result};
use ort::session::{builder::GraphOptimizationLevel, Session};
use std::path::PathBuf;
use std::sync::OnceLock;

static ENV: OnceLock<std::result::Result<ort::environment::Environment, String>> = OnceLock::new();

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
        .with_operators(cpu_ops::domain(threads)?)
        .map_err(|e| ctx(ort::Error::from(e)))?;
    // A developer's knob: ONNX Runtime's per-node profile (JSON, written when the session
    // ends) of every session, as `$PROBE_ORT_PROFILE-<what>_<date>.json`.
    if let Some(prefix) = std::env::var_os("PROBE_ORT_PROFILE") {
        let mut path = prefix;
        path.push(format!("-{what}"));
        b = b
            .with_profiling(path)
            .map_err(|e| ctx(ort::Error::from(e)))?;
    }
    b.commit_from_memory(model_bytes).map_err(ctx)
}
