//! SIGINT and SIGTERM: one line saying what is in the results file, then exit 130 or 143.
//!
//! Batch systems stop jobs with SIGTERM (then SIGKILL after a grace period); people press Ctrl-C.
//! Results files are committed atomically ([`crate::store::atomic`]), so stopping at any moment
//! leaves them consistent and nothing needs to be finished first: the process says where it
//! stood and ends at once, well inside any grace period. [`install`] blocks both signals in the
//! calling thread (and so in every thread started after it, which inherit the mask: ONNX
//! Runtime's and libtorch's pools) and waits for them in a thread of its own, where printing and
//! taking a lock are safe (unlike in a signal handler).
use std::path::PathBuf;
use std::sync::Mutex;

/// The results file being written and its committed rows, for the line printed on a signal.
static RESULTS: Mutex<Option<(PathBuf, usize)>> = Mutex::new(None);

/// Records that `path` now holds `rows` committed rows (the store calls this after each commit).
pub fn note_rows(path: &std::path::Path, rows: usize) {
    if let Ok(mut r) = RESULTS.lock() {
        *r = Some((path.to_path_buf(), rows));
    }
}

/// The results file is closed: nothing to report for it any more.
pub fn clear() {
    if let Ok(mut r) = RESULTS.lock() {
        *r = None;
    }
}

/// Call first thing in `main`, before any other thread starts.
pub fn install() {
    // SAFETY: plain libc calls on a sigset_t we own; the thread below only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return;
        }
        let set_copy = set;
        let spawned = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || loop {
                let mut sig: libc::c_int = 0;
                if libc::sigwait(&set_copy, &mut sig) != 0 {
                    continue;
                }
                stop(sig);
            });
        if spawned.is_err() {
            // Without the waiting thread, leave the default actions in place.
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
    }
}

fn stop(sig: libc::c_int) -> ! {
    let name = if sig == libc::SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    let what = match RESULTS.lock().ok().and_then(|r| r.clone()) {
        Some((path, rows)) => format!(
            "{} holds {rows} complete row(s) and is not marked complete; run the same command again to continue",
            path.display()
        ),
        None => "no results file was being written".to_string(),
    };
    eprintln!("probe: stopped by {name}; {what}");
    // The progress bar may have left the cursor mid-line; the line above ends with a newline.
    // SAFETY: ends the process without running destructors (libtorch's and ONNX Runtime's
    // static destructors can take a while and are not needed: every file is consistent).
    unsafe { libc::_exit(128 + sig) }
}
