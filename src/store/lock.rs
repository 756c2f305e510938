//! One writer per results file, whatever HDF5's own file locking is set to.
//!
//! Clusters often run with `HDF5_USE_FILE_LOCKING=FALSE` (Lustre, GPFS), so probe cannot rely on
//! HDF5 to keep two jobs from writing one `--out`. Before it reads or replaces a results file,
//! probe holds an exclusive `flock` on `<out>.lock` beside it and writes its pid (and host) into
//! it. A second process finds the lock taken and stops with the holder's pid; the kernel drops a
//! dead process's lock, so a killed run never blocks the next one.
//!
//! Removing a lock file races with its next taker (A unlinks while B, which opened the old file,
//! locks it; C then creates a new file and locks that too). So a taker checks, once it holds the
//! lock, that the path still names the file it locked, and starts over if not; the holder unlinks
//! the file while it still holds the lock.
//!
//! A process may take the lock again for a file it already holds (a `probe grad --follow` holds
//! its `--out` for its whole life, and each round's store takes it once more): the inner lock is
//! a no-op that leaves the file to the outer one.
use anyhow::Result;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub struct WriterLock {
    path: PathBuf,
    /// The locked file; None for a lock this process already held (see the module comment).
    file: Option<File>,
}

/// The lock files this process holds.
static HELD: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn held() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

/// `<out>.lock`.
pub fn lock_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_os_string();
    s.push(".lock");
    PathBuf::from(s)
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl WriterLock {
    /// Takes the lock for `out`, or fails (exit 3) naming the file and the holder.
    pub fn acquire(out: &Path) -> Result<WriterLock> {
        Self::try_acquire(out)?.map_err(|holder| {
            crate::error::input(format!(
                "{}: another probe is writing this file ({holder}); wait for it to end or choose another --out",
                out.display()
            ))
        })
    }

    /// Takes the lock for `out`; `Ok(Err(holder))` where another live process holds it (its
    /// pid and host, as it wrote them). Never waits.
    pub fn try_acquire(out: &Path) -> Result<std::result::Result<WriterLock, String>> {
        let path = lock_path(out);
        if held().contains(&path) {
            return Ok(Ok(WriterLock { path, file: None }));
        }
        let io = |e: std::io::Error| {
            crate::error::output(format!(
                "{}: cannot take the writer lock {}: {e}",
                out.display(),
                path.display()
            ))
        };
        for _ in 0..100 {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io)?;
            // SAFETY: flock on a descriptor we own; no memory is passed.
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if r != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    let holder = holder.trim();
                    return Ok(Err(if holder.is_empty() {
                        "pid not yet recorded".to_string()
                    } else {
                        holder.to_string()
                    }));
                }
                // A file system without flock (some NFS/Lustre mounts): say so rather than write
                // unprotected.
                return Err(crate::error::output(format!(
                    "{}: the file system does not support the writer lock on {} ({e}); write --out to a local or flock-capable folder",
                    out.display(),
                    path.display()
                )));
            }
            // Still the file at `path`? (Its last holder may have unlinked it before we locked.)
            let same = match (file.metadata(), std::fs::metadata(&path)) {
                (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                _ => false,
            };
            if !same {
                continue;
            }
            let me = format!("pid {} on {}", std::process::id(), host());
            file.set_len(0).map_err(io)?;
            file.rewind().map_err(io)?;
            file.write_all(me.as_bytes()).map_err(io)?;
            held().push(path.clone());
            return Ok(Ok(WriterLock {
                path,
                file: Some(file),
            }));
        }
        Err(crate::error::output(format!(
            "{}: the writer lock {} keeps being replaced by other processes",
            out.display(),
            path.display()
        )))
    }
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        let Some(file) = self.file.take() else { return };
        // Unlink while still holding the lock (see the module comment), then release it.
        let _ = std::fs::remove_file(&self.path);
        held().retain(|p| p != &self.path);
        drop(file);
    }
}
