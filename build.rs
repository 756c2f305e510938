//! Bakes in where the native libraries live, so `cargo test`, `cargo run` and
//! `target/release/probe` run with no environment variables (see ../shared/toolchain.md):
//! - libtorch: torch-sys declares `links = "tch"`, so its lib folder reaches us as
//!   `DEP_TCH_LIBTORCH_LIB`; an rpath makes the loader find it (LD_LIBRARY_PATH set in
//!   .cargo/config.toml would not reach test binaries).
//! - ONNX Runtime is loaded at run time (ort's `load-dynamic`): the default path of the library
//!   that setup.sh installs is compiled in as `PROBE_ORT_DYLIB_DEFAULT`; `ORT_DYLIB_PATH` overrides.
//! - src/runtime/torch_kernels.cpp, the C ABI over libtorch calls tch does not expose (the
//!   convolution backward behind the `probe.cpu` custom operators), is compiled against the
//!   same libtorch's headers (`<lib>/../include`); libtorch itself is linked by torch-sys.
use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        torch_kernels(&PathBuf::from(lib));
    }
    let ort = root.join(".onnxruntime").join("libonnxruntime.so.1");
    println!("cargo:rustc-env=PROBE_ORT_DYLIB_DEFAULT={}", ort.display());
    println!("cargo:rustc-env=PROBE_SOURCE_ROOT={}", root.display());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    // CUDA, opt-in (PROBE_TORCH_CUDA=1, a separate CARGO_TARGET_DIR): Rust links as-needed,
    // which drops libtorch_cuda (nothing calls it by name), so libtorch would never register
    // its CUDA backend. Keep it; its own CUDA libraries are found where the binary runs (the
    // CPU-only libtorch here lacks some, hence allow-shlib-undefined).
    println!("cargo:rerun-if-env-changed=PROBE_TORCH_CUDA");
    if std::env::var_os("PROBE_TORCH_CUDA").is_some_and(|v| v != "0") {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        println!("cargo:rustc-link-arg=-Wl,--allow-shlib-undefined");
    }
}

/// Compiles the libtorch shim with the flags torch-sys uses for its own (C++17, the new C++11
/// ABI that PyTorch wheels since 2.6 use).
fn torch_kernels(lib: &std::path::Path) {
    let src = "src/runtime/torch_kernels.cpp";
    println!("cargo:rerun-if-changed={src}");
    let include = lib.parent().unwrap().join("include");
    cc::Build::new()
        .cpp(true)
        .file(src)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("probe_torch_kernels");
}
