//! The `probe` binary: parses flags, hands each subcommand to its file in `cli/`, and ends with
//! one-line errors and the exit code of their kind.
mod cli;

use clap::{CommandFactory, Parser};
use cli::{flags::Conflict, Cli, Command};
use std::process::ExitCode;

fn run(cli: Cli) -> anyhow::Result<()> {
    let quiet = cli.quiet;
    probe::progress::set_every(std::time::Duration::from_secs_f64(
        cli.progress_every.min(1e9),
    ));
    if let Some(log) = &cli.log_json {
        probe::log::open(log)?;
    }
    match cli.command {
        Command::Eval(a) => cli::eval::run(a, quiet),
        Command::Grad(a) => cli::grad::run(a, quiet),
        Command::Train(a) => cli::train::run(a, quiet),
        Command::Merge(a) => cli::merge::run(a, quiet),
        Command::Analyze(a) => cli::analyze::run(a, quiet),
        Command::Plot(a) => cli::plot::run(a, quiet),
        Command::Autodiff(a) => cli::autodiff::run(a),
    }
}

fn main() -> ExitCode {
    // A closed stdout (`probe ... | head -2`) ends probe the way it ends other Unix tools: by
    // SIGPIPE's default action, quietly. Rust starts programs with SIGPIPE ignored, which turns
    // the write into an EPIPE error and println! into a panic (exit 101). The signal is raised
    // by a write to stdout, which probe makes between results rows, never inside one.
    // SAFETY: setting a signal's disposition to SIG_DFL before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Before any thread starts: freed memory kept for reuse (see the function).
    probe::runtime::reuse_freed_memory();
    // Before any thread starts: SIGINT/SIGTERM end probe with one line (see probe::interrupt).
    probe::interrupt::install();
    let cli = Cli::parse();
    let t0 = std::time::Instant::now();
    let code = match run(cli) {
        Ok(()) => 0,
        // Contradicting flags are bad flags: clap's message and usage line, exit 2.
        Err(e) if e.is::<Conflict>() => Cli::command()
            .error(clap::error::ErrorKind::ArgumentConflict, &e)
            .exit(),
        Err(e) => {
            // One line, the whole chain: "probe: error: <file>: <problem>: <cause>".
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("probe: error: {msg}");
            probe::log::event("error", serde_json::json!({ "message": msg }));
            probe::error::fault_of(&e)
                .map(|f| f.exit_code())
                .unwrap_or(1) as u8
        }
    };
    probe::log::event(
        "exit",
        serde_json::json!({"code": code, "seconds": t0.elapsed().as_secs_f64()}),
    );
    quick_exit(code)
}

/// Ends the process without running the C++ static destructors of libtorch and ONNX Runtime
/// (~80 ms of a run that takes a few seconds; strace shows the time between the last thread's
/// exit and exit_group). Everything probe writes is complete by now: every results file is
/// closed at each commit (crate::store::atomic), and stdout and stderr are flushed here. HDF5's
/// own clean-up (H5close) is not run: after a write that failed (a full disk) it crashes on the
/// half-closed file's leftovers (seen: SIGSEGV in H5D_close), and there is nothing left to flush.
fn quick_exit(code: u8) -> ExitCode {
    use std::io::Write;
    extern "C" {
        fn _exit(code: i32) -> !;
    }
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit ends the process, nothing after it runs.
    unsafe { _exit(code as i32) }
}
