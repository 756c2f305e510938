//! Progress reporting: a bar on a terminal, plain lines otherwise (batch jobs, logs a machine reads).
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    done: u64,
    last_line: Instant,
    quiet: bool,
}

impl Progress {
    /// `quiet` silences everything (tests, `--quiet`).
    pub fn new(label: &str, total: u64, quiet: bool) -> Progress {
        let bar = if !quiet && std::io::stderr().is_terminal() {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{msg:>12} [{bar:30}] {pos}/{len} samples, {per_sec}, eta {eta}",
                )
                .unwrap()
                .progress_chars("=> "),
            );
            b.set_message(label.to_string());
            Some(b)
        } else {
            None
        };
        Progress {
            bar,
            label: label.to_string(),
            total,
            done: 0,
            last_line: Instant::now(),
            quiet,
        }
    }

    pub fn quiet(&self) -> bool {
        self.quiet
    }

    pub fn inc(&mut self, n: u64) {
        self.done += n;
        if let Some(b) = &self.bar {
            b.inc(n);
        } else if !self.quiet && self.last_line.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "progress: {} {}/{} samples",
                self.label, self.done, self.total
            );
            self.last_line = Instant::now();
        }
    }

    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}
