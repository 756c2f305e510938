//! Atomic commits to an HDF5 file: the file at its own name is only ever replaced whole.
//!
//! HDF5 updates a file in place (B-trees, heaps, the superblock), so a process killed inside a
//! write, or a write that fails on a full disk, can leave a file no reader can open. probe never
//! writes the file that has the results' name. It keeps a second copy, `<out>.next`, and commits
//! a change (a row, a truncation, the `complete` mark) in four steps:
//!
//! 1. apply the change to `<out>.next` (opened, changed, closed: HDF5 writes everything at close),
//!    then `fsync` it;
//! 2. exchange the two names atomically (`renameat2(RENAME_EXCHANGE)`), then `fsync` the folder:
//!    `<out>` is now the new state, `<out>.next` the old one;
//! 3. apply the same change to `<out>.next`, which catches it up.
//!
//! A kill at any point leaves `<out>` as it was before step 2 or after it: a closed, synced HDF5
//! file. `<out>.next` is never trusted after a restart: the next writer copies `<out>` over it.
//! Each change is written twice, so a commit costs two writes of the change (not of the file)
//! plus two `fsync`s. Where the file system cannot exchange names, step 2 is a plain rename and
//! the next commit starts with a fresh copy of the file instead of step 3.
use anyhow::Result;
use std::path::{Path, PathBuf};

pub struct Shadowed {
    pub path: PathBuf,
    next: PathBuf,
    /// `next` holds exactly what `path` holds.
    next_ok: bool,
}

/// `<out>.next`.
pub fn next_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_os_string();
    s.push(".next");
    PathBuf::from(s)
}

fn out_err(path: &Path, what: &str, e: impl std::fmt::Display) -> anyhow::Error {
    crate::error::output(format!(
        "{}: {what}: {}",
        path.display(),
        brief(&format!("{e:#}"))
    ))
}

/// HDF5's error text for a failed write is its whole error stack (the time, the file
/// descriptor, the buffer address, ...); the operating system's reason is what a user needs.
pub fn brief(text: &str) -> String {
    let field = |key: &str| {
        let start = text.find(key)? + key.len();
        let rest = &text[start..];
        Some(
            rest[..rest.find([',', '\'', '\n']).unwrap_or(rest.len())]
                .trim()
                .to_string(),
        )
    };
    match (field("error message = '"), field("errno = ")) {
        (Some(msg), Some(errno)) => format!("{msg} (os error {errno})"),
        (Some(msg), None) => msg,
        _ => text.lines().next().unwrap_or_default().to_string(),
    }
}

fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn fsync(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

/// Makes a rename in `path`'s folder durable.
fn fsync_dir(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir_of(path))?.sync_all()
}

/// Exchanges the names `a` and `b` atomically; `Ok(false)` where the file system cannot.
fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap_or_default();
    let (ca, cb) = (c(a), c(b));
    // SAFETY: two NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => Ok(false),
        _ => Err(e),
    }
}

/// Writes `bytes` as the file at `path`, whole or not at all: under a temporary name, synced,
/// renamed over `path`, the folder synced. A kill or an error leaves the previous file.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let w = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        fsync_dir(path)
    };
    w().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        out_err(path, "writing", e)
    })
}

/// HDF5 file options under which closing a file closes every object in it (the close is where
/// HDF5 writes its metadata, and where its errors must be seen).
fn strong_close() -> hdf5::file::FileBuilder {
    use hdf5::file::FileCloseDegree;
    let mut b = hdf5::File::with_options();
    b.with_fapl(|p| p.fclose_degree(FileCloseDegree::Strong));
    b
}

fn open_rw(path: &Path) -> hdf5::Result<hdf5::File> {
    strong_close().open_rw(path)
}

fn create(path: &Path) -> hdf5::Result<hdf5::File> {
    strong_close().create(path)
}

/// Runs `change` on the file at `path` and closes it; any HDF5 error, the close's included.
fn apply(path: &Path, change: &dyn Fn(&hdf5::File) -> Result<()>) -> Result<()> {
    let file = open_rw(path).map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
    let r = change(&file);
    let closed = file.close().map_err(|e| anyhow::anyhow!("closing: {e}"));
    r?;
    closed
}

impl Shadowed {
    /// Replaces whatever is at `path` by a new file whose content `init` writes (atomically: a
    /// reader sees the old file or the new one).
    pub fn create(path: &Path, init: &dyn Fn(&hdf5::File) -> Result<()>) -> Result<Shadowed> {
        let next = next_path(path);
        let _ = std::fs::remove_file(&next);
        let w = || -> Result<()> {
            let file = create(&next).map_err(|e| out_err(path, "cannot create", e))?;
            let r = init(&file);
            let closed = file.close().map_err(|e| out_err(path, "writing", e));
            r?;
            closed?;
            fsync(&next).map_err(|e| out_err(path, "syncing", e))?;
            std::fs::rename(&next, path).map_err(|e| out_err(path, "renaming into place", e))?;
            fsync_dir(path).map_err(|e| out_err(path, "syncing its folder", e))
        };
        w().inspect_err(|_| {
            let _ = std::fs::remove_file(&next);
        })?;
        Ok(Shadowed {
            path: path.to_path_buf(),
            next,
            next_ok: false,
        })
    }

    /// An existing file, to be changed by commits. A `.next` left by an earlier run is discarded.
    pub fn existing(path: &Path) -> Shadowed {
        let next = next_path(path);
        let _ = std::fs::remove_file(&next);
        Shadowed {
            path: path.to_path_buf(),
            next,
            next_ok: false,
        }
    }

    /// Commits `change` (see the module comment). On an error the file at `path` is unchanged.
    pub fn commit(&mut self, what: &str, change: &dyn Fn(&hdf5::File) -> Result<()>) -> Result<()> {
        let path = self.path.clone();
        let out_err =
            |step: &str, e: &dyn std::fmt::Display| out_err(&path, &format!("{what} ({step})"), e);
        if !self.next_ok {
            std::fs::copy(&path, &self.next).map_err(|e| out_err("copying", &e))?;
        }
        self.next_ok = false;
        let first = || -> Result<bool> {
            apply(&self.next, change).map_err(|e| out_err("writing", &e))?;
            fsync(&self.next).map_err(|e| out_err("syncing", &e))?;
            let exchanged =
                exchange(&self.next, &path).map_err(|e| out_err("renaming into place", &e))?;
            if !exchanged {
                std::fs::rename(&self.next, &path)
                    .map_err(|e| out_err("renaming into place", &e))?;
            }
            fsync_dir(&path).map_err(|e| out_err("syncing its folder", &e))?;
            Ok(exchanged)
        };
        match first() {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => {
                // Whatever state `.next` is in, it is not the committed one: drop it (this also
                // gives back the space a full disk needs).
                let _ = std::fs::remove_file(&self.next);
                return Err(e);
            }
        }
        // `.next` is the previous state: bring it up to date. If that fails the commit still
        // holds; the next commit starts from a fresh copy.
        if apply(&self.next, change).is_ok() {
            self.next_ok = true;
        } else {
            let _ = std::fs::remove_file(&self.next);
        }
        Ok(())
    }

    /// Reads the committed file.
    pub fn read<T>(&self, f: impl FnOnce(&hdf5::File) -> hdf5::Result<T>) -> Result<T> {
        let file = hdf5::File::open(&self.path).map_err(|e| out_err(&self.path, "reading", e))?;
        f(&file).map_err(|e| out_err(&self.path, "reading", e))
    }

    /// Ends writing: `.next` is removed (it doubles the disk the results take).
    pub fn close(&mut self) {
        let _ = std::fs::remove_file(&self.next);
        self.next_ok = false;
    }
}

impl Drop for Shadowed {
    fn drop(&mut self) {
        self.close();
    }
}
