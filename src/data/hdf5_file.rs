//! A generic data file: HDF5 with a dataset `x` (model input, [N, ...], float or integer) and a
//! dataset `y` (targets: [N] class ids, [N, T] token ids, or real values for `--loss mse`).
//! Batches are read as hyperslabs of the first axis, so memory does not grow with N.
//!
//! Named `FILE.h5` (datasets `x` and `y` at the file's root) or `FILE.h5:OPTIONS`, the options
//! separated by `,` or `:`: a bare name is the group holding the datasets, `x=KEY` and `y=KEY`
//! name them (`data.h5:train:x=images,y=labels`). Images stored as uint8 become float input
//! through `--mean/--std` ([`Normalize`]).
//!
//! Sizes the file declares are checked before anything is read: every count in checked
//! arithmetic, the raw data held in the file itself (no external storage, no virtual dataset
//! drawing from other files), and every sample's data actually stored (a contiguous dataset's
//! whole extent allocated within the file, every chunk of a chunked one written), so a file
//! that declares 10^8 samples but holds ten is an error, not 10^8 samples of fill values.
use super::batch::{Array, Batch, Dataset, Kind, Spec};
use super::normalize::Normalize;
use anyhow::Result;
use hdf5::types::TypeDescriptor;
use ndarray::IxDyn;
use std::path::{Path, PathBuf};

pub struct Hdf5Data {
    spec: Spec,
    path: PathBuf,
    /// The datasets' paths in the file, for messages (`x`, `train/images`).
    names: [String; 2],
    x: hdf5::Dataset,
    y: hdf5::Dataset,
    /// `--mean/--std`, and whether x holds bytes to scale by 1/255 first.
    normalize: Option<(Normalize, bool)>,
}

/// Where in an HDF5 file the data are: `FILE.h5[:GROUP][:x=KEY,y=KEY]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H5Spec {
    pub path: PathBuf,
    pub group: Option<String>,
    pub x: String,
    pub y: String,
}

impl H5Spec {
    pub fn plain(path: &Path) -> H5Spec {
        H5Spec {
            path: path.to_path_buf(),
            group: None,
            x: "x".into(),
            y: "y".into(),
        }
    }

    /// `spec` split after its `.h5`/`.hdf5` file name, if it has options there.
    pub fn parse(spec: &str) -> Option<Result<H5Spec>> {
        let lower = spec.to_ascii_lowercase();
        let cut = [".h5:", ".hdf5:"]
            .iter()
            .filter_map(|e| lower.find(e).map(|i| i + e.len() - 1))
            .min()?;
        let mut out = H5Spec::plain(Path::new(&spec[..cut]));
        let usage = |why: String| {
            crate::error::input(format!(
                "--data {spec}: {why} (expected FILE.h5[:GROUP][:x=KEY,y=KEY])"
            ))
        };
        let (mut x, mut y) = (None, None);
        for item in spec[cut + 1..].split([',', ':']).filter(|s| !s.is_empty()) {
            let slot = match item.split_once('=') {
                Some(("x", k)) => (&mut x, k),
                Some(("y", k)) => (&mut y, k),
                Some((other, _)) => return Some(Err(usage(format!("unknown option '{other}'")))),
                None => (&mut out.group, item),
            };
            if slot.1.is_empty() || slot.0.is_some() {
                return Some(Err(usage(format!("'{item}' is empty or given twice"))));
            }
            *slot.0 = Some(slot.1.to_string());
        }
        out.x = x.unwrap_or(out.x);
        out.y = y.unwrap_or(out.y);
        Some(Ok(out))
    }

    /// A dataset's path in the file.
    fn full(&self, key: &str) -> String {
        match &self.group {
            Some(g) => format!("{}/{key}", g.trim_end_matches('/')),
            None => key.to_string(),
        }
    }

    /// How the results name it: the file alone for the plain layout (as before), else with the
    /// options spelled out in a fixed order.
    fn identity(&self) -> String {
        let path = self.path.display();
        if self.group.is_none() && self.x == "x" && self.y == "y" {
            return path.to_string();
        }
        let group = self
            .group
            .as_ref()
            .map(|g| format!(":{g}"))
            .unwrap_or_default();
        format!("{path}{group}:x={},y={}", self.x, self.y)
    }
}

/// The names a group holds, sorted, for the message about a missing one.
fn members(file: &hdf5::File, group: Option<&str>) -> String {
    let names = match group {
        Some(g) => file.group(g).and_then(|g| g.member_names()),
        None => file.member_names(),
    };
    match names {
        Ok(mut n) if !n.is_empty() => {
            n.sort();
            let more = n.len().saturating_sub(20);
            let mut list = n
                .iter()
                .take(20)
                .map(|s| format!("'{s}'"))
                .collect::<Vec<_>>()
                .join(", ");
            if more > 0 {
                list += &format!(" and {more} more");
            }
            format!("it holds {list}")
        }
        _ => "it holds nothing".into(),
    }
}

fn kind_of(path: &Path, name: &str, ds: &hdf5::Dataset) -> Result<Kind> {
    let d = ds.dtype().and_then(|t| t.to_descriptor()).map_err(|e| {
        crate::error::input(format!(
            "{}: dataset '{name}': unreadable type: {e}",
            path.display()
        ))
    })?;
    match d {
        TypeDescriptor::Float(_) => Ok(Kind::Float),
        TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_) | TypeDescriptor::Boolean => {
            Ok(Kind::Int)
        }
        other => Err(crate::error::input(format!(
            "{}: dataset '{name}' has type {other:?}; expected a float or integer array",
            path.display()
        ))),
    }
}

extern "C" {
    // HDF5 >= 1.10.5 (hdf5-metno links the library; its Rust wrapper does not expose this one).
    fn H5Dget_chunk_info_by_coord(
        dset_id: i64,
        offset: *const u64,
        filter_mask: *mut u32,
        addr: *mut u64,
        size: *mut u64,
    ) -> i32;
}

/// Every chunk of a chunked dataset looked up in its index before any is read: present, within
/// the file, and (unfiltered) exactly a chunk's size. HDF5 1.10 reads a chunk by the size its
/// index records and copies a whole chunk out of it, so a corrupt index entry crashed it
/// (SIGSEGV in H5VM_memcpyvv, found by tests/fuzz_inputs.rs).
fn check_chunks(
    ds: &hdf5::Dataset,
    shape: &[usize],
    chunk: &[usize],
    elem: u64,
    file_len: u64,
) -> std::result::Result<(), String> {
    if shape.iter().any(|&d| d == 0) {
        return Ok(());
    }
    if chunk.iter().any(|&c| c == 0) {
        return Err(format!("has chunks of shape {chunk:?}"));
    }
    // HDF5 refuses to write chunks larger than a fixed dimension, or of 4 GiB or more; a layout
    // that says otherwise is corrupt (HDF5 1.10 then copied a whole such chunk out of the
    // smaller one it decompressed, and crashed).
    let maxdims = ds.space().map(|s| s.maxdims()).unwrap_or_default();
    for (k, &c) in chunk.iter().enumerate() {
        if let Some(Some(m)) = maxdims.get(k) {
            if c > *m {
                return Err(format!(
                    "has chunks of shape {chunk:?}, larger than its fixed shape {shape:?}: its layout is corrupt"
                ));
            }
        }
    }
    let filtered = !ds.filters().is_empty();
    let chunk_bytes = chunk
        .iter()
        .try_fold(elem, |a, &c| a.checked_mul(c as u64))
        .filter(|&b| b < 1 << 32)
        .ok_or_else(|| {
            format!("has chunks of shape {chunk:?}, 4 GiB or more each: its layout is corrupt")
        })?;
    // The chunk grid, walked as an odometer over the first element of each chunk.
    let mut at: Vec<u64> = vec![0; shape.len()];
    let id = ds.id();
    loop {
        let (mut mask, mut addr, mut size) = (0u32, 0u64, 0u64);
        // SAFETY: `at` holds one coordinate per dimension of the dataset; the outputs are
        // plain integers. The HDF5 lock is held around the call, as for every HDF5 call.
        let rc = hdf5::sync::sync(|| unsafe {
            H5Dget_chunk_info_by_coord(id, at.as_ptr(), &mut mask, &mut addr, &mut size)
        });
        if rc < 0 || addr == u64::MAX {
            return Err(format!(
                "has no chunk stored at {at:?} (the data were never written there, or its chunk index is corrupt)"
            ));
        }
        if addr.checked_add(size).is_none_or(|e| e > file_len) {
            return Err(format!(
                "has its chunk at {at:?} at bytes {addr}+{size}, past the file's {file_len} bytes: \
                 the file was cut short or is corrupt"
            ));
        }
        if size == 0 || !filtered && size != chunk_bytes {
            return Err(format!(
                "records {size} bytes for its chunk at {at:?}, whose shape {chunk:?} takes {chunk_bytes}: \
                 its chunk index is corrupt"
            ));
        }
        // Next chunk: the last axis moves fastest.
        let mut k = shape.len();
        loop {
            if k == 0 {
                return Ok(());
            }
            k -= 1;
            at[k] += chunk[k] as u64;
            if at[k] < shape[k] as u64 {
                break;
            }
            at[k] = 0;
        }
    }
}

/// The checks of the module doc for one dataset of `shape`; returns its size in bytes in the
/// file's element type.
fn check_storage(
    path: &Path,
    file_len: u64,
    name: &str,
    ds: &hdf5::Dataset,
    shape: &[usize],
) -> Result<u64> {
    let bad =
        |why: String| crate::error::input(format!("{}: dataset '{name}' {why}", path.display()));
    let elem = ds
        .dtype()
        .map_err(|e| bad(format!("has an unreadable type: {e}")))?
        .size() as u64;
    let numel = shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
        .ok_or_else(|| bad(format!("has shape {shape:?}, too large to address")))?;
    let bytes = numel
        .checked_mul(elem)
        .ok_or_else(|| bad(format!("has shape {shape:?}, too large to address")))?;
    let dcpl = ds
        .dcpl()
        .map_err(|e| bad(format!("has unreadable storage properties: {e}")))?;
    if !dcpl.external().is_empty() {
        return Err(bad(
            "keeps its data in external files; probe reads only data held in the file itself"
                .into(),
        ));
    }
    let stored = ds.storage_size();
    match dcpl.layout() {
        hdf5::dataset::Layout::Contiguous => {
            if stored < bytes || ds.offset().is_none() && bytes > 0 {
                return Err(bad(format!(
                    "declares shape {shape:?} ({bytes} bytes) but only {stored} bytes are stored: \
                     the data were never written"
                )));
            }
            // HDF5 1.10 trusts the layout's size when it copies (a larger one crashed it).
            if stored != bytes {
                return Err(bad(format!(
                    "stores {stored} bytes for shape {shape:?} of {elem}-byte elements ({bytes} bytes): \
                     its layout and its shape disagree (a corrupt file)"
                )));
            }
            let end = ds.offset().unwrap_or(0).checked_add(bytes);
            if end.is_none_or(|e| e > file_len) {
                return Err(bad(format!(
                    "declares shape {shape:?} ({bytes} bytes from byte {}) but the file has {file_len} bytes: \
                     the file was cut short",
                    ds.offset().unwrap_or(0)
                )));
            }
        }
        hdf5::dataset::Layout::Chunked => {
            let chunk = ds.chunk().unwrap_or_default();
            let want = shape
                .iter()
                .zip(chunk.iter())
                .try_fold(1u64, |a, (&d, &c)| {
                    a.checked_mul((d as u64).div_ceil((c as u64).max(1)))
                })
                .ok_or_else(|| bad(format!("has shape {shape:?}, too large to address")))?;
            let have = ds.num_chunks().unwrap_or(0) as u64;
            if chunk.len() != shape.len() || have < want {
                return Err(bad(format!(
                    "declares shape {shape:?} in {want} chunks of {chunk:?} but only {have} are stored: \
                     the data were never written to the end"
                )));
            }
            if stored > file_len {
                return Err(bad(format!(
                    "has {stored} bytes stored in chunks but the file has {file_len} bytes: the file was cut short"
                )));
            }
            check_chunks(ds, shape, &chunk, elem, file_len).map_err(bad)?;
        }
        hdf5::dataset::Layout::Compact => {
            // Held in the object header; HDF5 1.10 copies the shape's size from it unchecked.
            if stored != bytes {
                return Err(bad(format!(
                    "holds {stored} bytes in its header for shape {shape:?} of {elem}-byte elements \
                     ({bytes} bytes): its layout and its shape disagree (a corrupt file)"
                )));
            }
        }
        #[allow(unreachable_patterns)]
        _ => {
            return Err(bad(
                "is a virtual dataset drawing from other files; probe reads only data held in the file itself"
                    .into(),
            ))
        }
    }
    Ok(bytes)
}

/// The verdicts of [`preflight`]s run early ([`preflight_early`]): the file's identity when
/// checked (which, not the path's spelling, names the file), the names checked in it, and the
/// error message if it failed.
static VERDICTS: std::sync::Mutex<Vec<(Identity, Names, Option<String>)>> =
    std::sync::Mutex::new(Vec::new());

/// A file as it was when checked: device, inode, size and modification time (s, ns). A file
/// replaced or rewritten since is checked again.
type Identity = (u64, u64, u64, i64, i64);

/// The group and the `x` and `y` datasets a preflight opened.
type Names = (Option<String>, String, String);

fn names(at: &H5Spec) -> Names {
    (at.group.clone(), at.x.clone(), at.y.clone())
}

fn identity(meta: &std::fs::Metadata) -> Identity {
    use std::os::unix::fs::MetadataExt;
    (
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
    )
}

/// Runs the preflight of `at` now, while the process is small, and keeps its verdict for
/// [`Hdf5Data::open_at`], which then does not fork again for the same unchanged file. A fork
/// write-protects every page of the parent: after the model and the checkpoint were loaded, the
/// Llama decoder's process took 100-240 thousand more page faults, and its peak was 450 MB
/// higher when it wrote pages while the child still lived. A file that is not there or not a
/// regular file is left for `open_at` to report, in its order.
pub fn preflight_early(at: &H5Spec) {
    let Ok(meta) = std::fs::metadata(&at.path) else {
        return;
    };
    if !meta.is_file() {
        return;
    }
    let verdict = preflight(at).err().map(|e| e.to_string());
    let mut v = VERDICTS.lock().unwrap_or_else(|p| p.into_inner());
    v.push((identity(&meta), names(at), verdict));
}

/// The preflight's verdict on `at`: the early one while the file is unchanged, else a new one.
fn preflight_once(at: &H5Spec, meta: &std::fs::Metadata) -> Result<()> {
    let key = (identity(meta), names(at));
    let known = VERDICTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|(i, n, _)| (i, n) == (&key.0, &key.1))
        .map(|(_, _, v)| v.clone());
    match known {
        Some(None) => Ok(()),
        Some(Some(message)) => Err(crate::error::input(message)),
        None => preflight(at),
    }
}

/// How long the preflight child may take to open a file's metadata.
const PREFLIGHT_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Opens the file, its `x` and `y` (wherever the spec puts them), the names of the group holding
/// them (listed when one is missing) and their layouts once in a forked child process, so that
/// a file on which the HDF5 library (1.10) crashes or loops while opening becomes an input error
/// instead of killing probe. Found by tests/fuzz_inputs.rs: corrupt symbol tables (SIGSEGV in
/// `H5F__accum_read` under `H5G__stab_lookup`), a chunk dimension of 0 in a layout (SIGFPE in
/// `H5D__chunk_set_info`), heap corruption detected by malloc, all inside `H5Dopen` — before
/// probe has any handle to check. The child only opens (metadata, no data) and ends with
/// `_exit`; the parent then opens the file itself, so an ordinary error is reported as usual.
/// The fork happens under the HDF5 lock, so no other thread is inside the library then.
fn preflight(at: &H5Spec) -> Result<()> {
    let path = at.path.as_path();
    let look = || -> bool {
        let Ok(file) = hdf5::File::open(path) else {
            return false;
        };
        // What the message about a missing dataset lists, walked here first for the same reason.
        let _ = members(&file, at.group.as_deref());
        for name in [at.full(&at.x), at.full(&at.y)] {
            let Ok(ds) = file.dataset(&name) else {
                return false;
            };
            let _ = ds.shape();
            let _ = ds.dtype().and_then(|t| t.to_descriptor());
            let _ = ds
                .dcpl()
                .map(|p| (p.layout(), p.chunk(), p.filters(), p.external()));
            let _ = ds.storage_size();
        }
        true
    };
    // SAFETY: the child calls only HDF5 (whose lock this thread holds, reentrantly) and malloc
    // (made fork-safe by glibc), then `_exit`s without running destructors or atexit handlers.
    #[cfg(test)]
    tests::FORKS.with(|n| n.set(n.get() + 1));
    let pid = hdf5::sync::sync(|| unsafe {
        let pid = libc::fork();
        if pid == 0 {
            let ok = std::panic::catch_unwind(look).unwrap_or(false);
            libc::_exit(if ok { 0 } else { 1 });
        }
        pid
    });
    if pid < 0 {
        // No child (process limit): open as before, unguarded.
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if r < 0 {
            return Ok(());
        }
        if started.elapsed() > PREFLIGHT_LIMIT {
            // SAFETY: our own child, still unreaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Err(crate::error::input(format!(
                "{}: the HDF5 library did not finish opening this file's metadata in {} s (a corrupt \
                 file can make it loop); probe does not read it",
                path.display(),
                PREFLIGHT_LIMIT.as_secs()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let name = match sig {
            libc::SIGSEGV => "SIGSEGV".to_string(),
            libc::SIGFPE => "SIGFPE".to_string(),
            libc::SIGABRT => "SIGABRT".to_string(),
            libc::SIGBUS => "SIGBUS".to_string(),
            other => format!("signal {other}"),
        };
        return Err(crate::error::input(format!(
            "{}: the HDF5 library crashed ({name}) opening this file in a child process: the file is \
             corrupt; probe does not read it",
            path.display()
        )));
    }
    Ok(())
}

impl Hdf5Data {
    /// A file with `x` and `y` at its root.
    pub fn open(path: &Path) -> Result<Hdf5Data> {
        Self::open_at(&H5Spec::plain(path), None)
    }

    /// The datasets `at` names, normalized by `normalize` where given.
    pub fn open_at(at: &H5Spec, normalize: Option<&Normalize>) -> Result<Hdf5Data> {
        let path = at.path.as_path();
        let meta = std::fs::metadata(path).map_err(|e| {
            crate::error::input(if e.kind() == std::io::ErrorKind::NotFound {
                format!("{}: no such file", path.display())
            } else {
                format!("{}: {e}", path.display())
            })
        })?;
        // HDF5 would block opening a FIFO, and read a device without end.
        if !meta.is_file() {
            return Err(crate::error::input(format!(
                "{}: not a regular file ({})",
                path.display(),
                crate::model::file_kind(&meta)
            )));
        }
        preflight_once(at, &meta)?;
        let file = hdf5::File::open(path).map_err(|e| {
            crate::error::input(format!("{}: not a readable HDF5 file: {e}", path.display()))
        })?;
        if let Some(g) = &at.group {
            if file.group(g).is_err() {
                return Err(crate::error::input(format!(
                    "{}: no group '{g}' ({} at the root)",
                    path.display(),
                    members(&file, None)
                )));
            }
        }
        let names = [at.full(&at.x), at.full(&at.y)];
        let get = |name: &str, key: &str| {
            file.dataset(name).map_err(|_| {
                let place = match &at.group {
                    Some(g) => format!("in group '{g}'"),
                    None => "at the root".into(),
                };
                crate::error::input(format!(
                    "{}: no dataset '{key}' {place} ({}); name the inputs [N, ...] and targets [N] or [N, T] as FILE.h5[:GROUP]:x=KEY,y=KEY",
                    path.display(),
                    members(&file, at.group.as_deref())
                ))
            })
        };
        let x = get(&names[0], &at.x)?;
        let y = get(&names[1], &at.y)?;
        let (xs, ys) = (x.shape(), y.shape());
        if xs.is_empty() || ys.is_empty() || xs[0] != ys[0] {
            return Err(crate::error::input(format!(
                "{}: '{}' has shape {:?} and '{}' {:?}; both need the same first dimension N",
                path.display(),
                names[0],
                xs,
                names[1],
                ys
            )));
        }
        let mut spec = Spec {
            identity: at.identity(),
            len: xs[0],
            x_shape: xs[1..].to_vec(),
            x_kind: kind_of(path, &names[0], &x)?,
            y_shape: ys[1..].to_vec(),
            y_kind: kind_of(path, &names[1], &y)?,
        };
        check_storage(path, meta.len(), &names[0], &x, &xs)?;
        check_storage(path, meta.len(), &names[1], &y, &ys)?;
        // A sample as read (f32 or i64) must be addressable too.
        for (name, shape) in [(&names[0], &spec.x_shape), (&names[1], &spec.y_shape)] {
            if super::memory::sample_bytes(shape, 8).is_none() {
                return Err(crate::error::input(format!(
                    "{}: dataset '{name}' has samples of shape {shape:?}, too large to address",
                    path.display()
                )));
            }
        }
        let normalize = match normalize {
            None => None,
            Some(n) => {
                let bad = |why: String| {
                    crate::error::input(format!("{}: '{}' {why}", path.display(), names[0]))
                };
                let bytes = match x.dtype().and_then(|t| t.to_descriptor()) {
                    Ok(TypeDescriptor::Unsigned(hdf5::types::IntSize::U1)) => true,
                    Ok(TypeDescriptor::Float(_)) => false,
                    Ok(other) => {
                        return Err(bad(format!(
                        "has type {other:?}; --mean/--std normalize uint8 images (or float data)"
                    )))
                    }
                    Err(e) => return Err(bad(format!("has an unreadable type: {e}"))),
                };
                n.check(&spec.x_shape).map_err(bad)?;
                spec.x_kind = Kind::Float;
                spec.identity = format!("{}:{}", spec.identity, n.describe());
                Some((n.clone(), bytes))
            }
        };
        Ok(Hdf5Data {
            spec,
            path: path.to_path_buf(),
            names,
            x,
            y,
            normalize,
        })
    }
}

fn read_rows(
    path: &Path,
    name: &str,
    ds: &hdf5::Dataset,
    kind: Kind,
    start: usize,
    count: usize,
) -> Result<Array> {
    // The rows start..start+count of every axis after the first, as one hyperslab.
    let end = start
        .checked_add(count)
        .filter(|&e| e <= ds.shape().first().copied().unwrap_or(0));
    if end.is_none() {
        return Err(crate::error::input(format!(
            "{}: reading '{name}' rows {start}..+{count}: beyond its {} rows",
            path.display(),
            ds.shape().first().copied().unwrap_or(0)
        )));
    }
    // Checked before HDF5 allocates the batch (as f32 or i64).
    let sample = ds.shape().get(1..).unwrap_or(&[]).to_vec();
    let need = super::memory::samples_bytes(count, &sample, 8);
    let have = super::memory::memory_limit();
    if need.is_none_or(|n| have.is_some_and(|h| n > h)) {
        return Err(crate::error::input(format!(
            "{}: reading '{name}' rows {}..{} of shape {sample:?} needs {} bytes, more than this process may use ({} bytes)",
            path.display(),
            start,
            start + count,
            need.map_or("over 2^64".to_string(), |n| n.to_string()),
            have.unwrap_or(0)
        )));
    }
    let mut parts = vec![hdf5::SliceOrIndex::from(start..start + count)];
    parts.extend((1..ds.ndim()).map(|_| hdf5::SliceOrIndex::from(..)));
    let sel = hdf5::Hyperslab::from(parts);
    let err = |e: hdf5::Error| {
        crate::error::input(format!(
            "{}: reading '{name}' rows {}..{}: {e}",
            path.display(),
            start,
            start + count
        ))
    };
    Ok(match kind {
        Kind::Float => Array::F32(ds.read_slice::<f32, _, IxDyn>(sel).map_err(err)?),
        Kind::Int => Array::I64(ds.read_slice::<i64, _, IxDyn>(sel).map_err(err)?),
    })
}

impl Dataset for Hdf5Data {
    fn spec(&self) -> &Spec {
        &self.spec
    }
    fn read(&mut self, start: usize, count: usize) -> Result<Batch> {
        let [xn, yn] = &self.names;
        let mut x = read_rows(&self.path, xn, &self.x, self.spec.x_kind, start, count)?;
        if let (Some((n, bytes)), Array::F32(a)) = (&self.normalize, &mut x) {
            n.apply(a, *bytes);
        }
        let y = read_rows(&self.path, yn, &self.y, self.spec.y_kind, start, count)?;
        Ok(Batch { start, x, y })
    }
}

#[cfg(test)]
mod tests {
    use super::{preflight_early, H5Spec, Hdf5Data};
    use std::cell::Cell;

    thread_local! {
        /// Preflight children this thread forked.
        pub(super) static FORKS: Cell<usize> = const { Cell::new(0) };
    }

    fn forks() -> usize {
        FORKS.with(|n| n.get())
    }

    fn write_valid(path: &std::path::Path) {
        let f = hdf5::File::create(path).unwrap();
        let x = f.new_dataset::<f32>().shape([4, 3]).create("x").unwrap();
        x.write(&ndarray::Array2::<f32>::zeros((4, 3))).unwrap();
        let y = f.new_dataset::<i64>().shape([4]).create("y").unwrap();
        y.write(&ndarray::Array1::<i64>::zeros(4)).unwrap();
    }

    /// The early preflight's verdict is used by the open that follows, failure included, and
    /// only while the file is unchanged.
    #[test]
    fn early_verdict_is_reused_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.h5");
        // A file on which HDF5 1.10 raises SIGFPE inside H5Dopen (a fuzz find).
        let crash = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/fuzz/hdf5/seed1-case202300/0-chunked.h5");
        std::fs::copy(crash, &path).unwrap();
        let at = H5Spec::plain(&path);
        let n0 = forks();
        preflight_early(&at);
        assert_eq!(forks(), n0 + 1);
        let e = Hdf5Data::open(&path).err().expect("a corrupt file opened");
        assert!(e.to_string().contains("crashed (SIGFPE)"), "{e}");
        assert_eq!(
            forks(),
            n0 + 1,
            "the open forked again for an unchanged file"
        );
        // The same file, named another way.
        let other = dir.path().join(".").join("d.h5");
        assert!(Hdf5Data::open(&other).is_err());
        assert_eq!(forks(), n0 + 1);
        // Rewritten: checked again, and now it opens.
        std::fs::remove_file(&path).unwrap();
        write_valid(&path);
        let d = Hdf5Data::open(&path).unwrap();
        assert_eq!(forks(), n0 + 2);
        assert_eq!(crate::data::batch::Dataset::spec(&d).len, 4);
    }
}
