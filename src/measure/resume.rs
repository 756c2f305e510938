//! Resume inside a pass: a long pass's f64 sums saved beside the results file every few minutes
//! (`<out>.pass`), so that a job killed at 99% of a checkpoint's pass (a time limit, a pre-empted
//! node) goes on from its last save instead of starting the checkpoint over.
//!
//! The sums after batch b are a pure function of batches 0..b (each batch's f32 values added
//! into f64 accumulators, in order). Saving them exactly (every f64's bits) and going on from
//! batch b+1 therefore gives the same bits as the uninterrupted pass: resuming changes no
//! result, only the time.
//!
//! The file is written whole under a temporary name, synced, and renamed over the previous one
//! (then the folder synced), so a kill at any point leaves either the previous save or the new
//! one, never a mixture; a sha256 over its contents catches anything else (a truncated copy, a
//! disk error). It is only used when its key matches: the run's identity (model, data, batch,
//! loss, flags that change the numbers), the group's checkpoints (path and sha256) and the data
//! shard. Anything else is reported and ignored (the pass starts over and replaces it). The file
//! is removed once the group's rows are in the results file.
//!
//! Saving costs a write of the sums (8 bytes per parameter and checkpoint of the group, more
//! with `--noise`); a save happens when `--save-every` seconds have passed since the last, and
//! never more often than every 20 times the last save's duration (so that it costs at most ~5%
//! of the pass).
use anyhow::{anyhow, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MAGIC: &[u8] = b"probe-pass-state-1\n";

/// What a pass saves: its accumulators, as exact bytes.
pub trait Saved: Sized {
    fn save(&self, w: &mut Writer);
    fn restore(r: &mut Reader) -> Result<Self>;
}

/// Where a pass stands: the next batch to read, the samples done (for the progress bar and the
/// log), and the pass's time so far (its rows' `seconds` include it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub next_batch: usize,
    pub samples_done: usize,
    pub seconds: f64,
}

/// A saved pass: where it stood, and the sums of the batches before.
pub struct State<T> {
    pub at: Progress,
    pub sums: Vec<T>,
}

/// The saving side of a pass (see the module doc).
pub struct Resume {
    path: PathBuf,
    key: String,
    /// None: never save (`--save-every never`).
    every: Option<Duration>,
    last: Instant,
    last_cost: Duration,
    warned: bool,
    quiet: bool,
}

/// `<out>.pass`.
pub fn path_of(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_os_string();
    s.push(".pass");
    PathBuf::from(s)
}

impl Resume {
    /// `key`: everything the sums depend on, as text (hashed into the file).
    pub fn new(out: &Path, key: &str, every: Option<Duration>, quiet: bool) -> Resume {
        Resume {
            path: path_of(out),
            key: hex(&Sha256::digest(key.as_bytes())),
            every,
            last: Instant::now(),
            last_cost: Duration::ZERO,
            warned: false,
            quiet,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state, if there is one for this key and it reads back whole (a state of
    /// another key or a damaged file is reported and ignored).
    pub fn restore<T: Saved>(&self, count: usize) -> Option<State<T>> {
        let bytes = std::fs::read(&self.path).ok()?;
        match decode(&bytes, &self.key, count) {
            Ok(Some(s)) => Some(s),
            Ok(None) => {
                if !self.quiet {
                    eprintln!(
                        "note: {}: saved partial sums of another pass (other checkpoints, data or flags); starting this pass over",
                        self.path.display()
                    );
                }
                None
            }
            Err(e) => {
                eprintln!(
                    "warning: {}: cannot be used ({e:#}); starting this pass over",
                    self.path.display()
                );
                None
            }
        }
    }

    /// Starts a pass from its save: when there is one for this key whose sums `fit` accepts
    /// (the pass's shapes), it replaces `sums`, counts its samples as done in `progress`, says
    /// so on stderr, and returns where the pass goes on (next batch, seconds so far); else
    /// (0, 0.0) and `sums` stay.
    pub fn start<T: Saved>(
        &self,
        sums: &mut Vec<T>,
        fit: impl Fn(&[T]) -> bool,
        progress: &mut crate::progress::Progress,
        len: usize,
    ) -> (usize, f64) {
        let Some(saved) = self.restore::<T>(sums.len()).filter(|s| fit(&s.sums)) else {
            return (0, 0.0);
        };
        progress.skip(saved.at.samples_done as u64);
        if !progress.quiet() {
            eprintln!(
                "resume: {}: going on from sample {} of {len} (saved after {:.0} s)",
                self.path.display(),
                saved.at.samples_done,
                saved.at.seconds
            );
        }
        *sums = saved.sums;
        (saved.at.next_batch, saved.at.seconds)
    }

    /// Saves the state (`at`, and the sums of the batches before it) when it is time (see the
    /// module doc). A failed save (a full disk) warns once and lets the pass go on: it only
    /// costs the resume.
    pub fn tick<T: Saved>(&mut self, at: Progress, sums: &[T]) {
        let Some(every) = self.every else { return };
        let due = every.max(self.last_cost * 20);
        if self.last.elapsed() < due {
            return;
        }
        let t = Instant::now();
        let r = crate::store::atomic::write_file(&self.path, &encode(at, sums, &self.key));
        self.last_cost = if every.is_zero() {
            Duration::ZERO
        } else {
            t.elapsed()
        };
        self.last = Instant::now();
        if let Err(e) = r {
            if !self.warned {
                eprintln!(
                    "warning: {}: cannot save the pass's partial sums ({e:#}); a killed run will start this pass over",
                    self.path.display()
                );
                self.warned = true;
            }
        }
    }

    /// The pass's rows are committed: the saved sums are not needed any more.
    pub fn done(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Little-endian bytes of the state's numbers, exactly.
#[derive(Default)]
pub struct Writer(Vec<u8>);

impl Writer {
    pub fn u64(&mut self, x: u64) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    pub fn f64(&mut self, x: f64) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    pub fn f64s(&mut self, xs: &[f64]) {
        self.u64(xs.len() as u64);
        self.0.reserve(xs.len() * 8);
        for &x in xs {
            self.f64(x);
        }
    }
}

pub struct Reader<'a> {
    b: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.b.len() < n {
            return Err(anyhow!("ends early"));
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }
    pub fn usize(&mut self) -> Result<usize> {
        Ok(self.u64()? as usize)
    }
    pub fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_le_bytes(self.take(8)?.try_into()?))
    }
    /// A length-prefixed vector, its length checked against what is left (never allocates
    /// more than the file holds).
    pub fn f64s(&mut self) -> Result<Vec<f64>> {
        let n = self.usize()?;
        if n > self.b.len() / 8 {
            return Err(anyhow!("a vector of {n} longer than the file"));
        }
        (0..n).map(|_| self.f64()).collect()
    }
    /// A count of items of at least `min_bytes` each, checked against what is left.
    pub fn count(&mut self, min_bytes: usize) -> Result<usize> {
        let n = self.usize()?;
        if n > self.b.len() / min_bytes.max(1) {
            return Err(anyhow!("a count of {n} larger than the file allows"));
        }
        Ok(n)
    }
}

/// MAGIC, a text line for people (`batch 12 of 24, sample 1200 of 2400`), the key, the state,
/// then the sha256 of everything before it.
fn encode<T: Saved>(at: Progress, sums: &[T], key: &str) -> Vec<u8> {
    let mut w = Writer::default();
    w.0.extend_from_slice(MAGIC);
    w.0.extend_from_slice(
        format!(
            "next batch {}, samples done {}\n",
            at.next_batch, at.samples_done
        )
        .as_bytes(),
    );
    w.0.extend_from_slice(key.as_bytes());
    w.0.push(b'\n');
    w.u64(at.next_batch as u64);
    w.u64(at.samples_done as u64);
    w.f64(at.seconds);
    w.u64(sums.len() as u64);
    for x in sums {
        x.save(&mut w);
    }
    let digest = Sha256::digest(&w.0);
    w.0.extend_from_slice(&digest);
    w.0
}

/// `Ok(None)`: a whole file, of another key (or another number of checkpoints).
fn decode<T: Saved>(bytes: &[u8], key: &str, count: usize) -> Result<Option<State<T>>> {
    if bytes.len() < MAGIC.len() + 32 || !bytes.starts_with(MAGIC) {
        return Err(anyhow!("not a probe pass state"));
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != digest {
        return Err(anyhow!(
            "its checksum does not match (a damaged or partial copy)"
        ));
    }
    let mut lines = body[MAGIC.len()..].splitn(3, |&c| c == b'\n');
    let (_human, file_key, rest) = (lines.next(), lines.next(), lines.next());
    let (Some(file_key), Some(rest)) = (file_key, rest) else {
        return Err(anyhow!("no key"));
    };
    if file_key != key.as_bytes() {
        return Ok(None);
    }
    let mut r = Reader { b: rest };
    let next_batch = r.usize()?;
    let samples_done = r.usize()?;
    let seconds = r.f64()?;
    let n = r.count(8)?;
    if n != count {
        return Ok(None);
    }
    let sums = (0..n)
        .map(|_| T::restore(&mut r))
        .collect::<Result<Vec<_>>>()?;
    if !r.b.is_empty() {
        return Err(anyhow!("{} bytes after the state", r.b.len()));
    }
    Ok(Some(State {
        at: Progress {
            next_batch,
            samples_done,
            seconds,
        },
        sums,
    }))
}

/// `--save-every`'s value: how often to save (None: never).
#[derive(Debug, Clone, Copy)]
pub struct Every(pub Option<Duration>);

/// `--save-every`: seconds (0: after every batch), or `never`.
pub fn parse_every(s: &str) -> std::result::Result<Every, String> {
    if s == "never" {
        return Ok(Every(None));
    }
    let x: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds or 'never'"))?;
    if !(x.is_finite() && x >= 0.0) {
        return Err(format!("'{s}': need seconds >= 0 or 'never'"));
    }
    Ok(Every(Some(Duration::from_secs_f64(x))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct S(Vec<f64>, u64);
    impl Saved for S {
        fn save(&self, w: &mut Writer) {
            w.f64s(&self.0);
            w.u64(self.1);
        }
        fn restore(r: &mut Reader) -> Result<S> {
            Ok(S(r.f64s()?, r.u64()?))
        }
    }

    const AT: Progress = Progress {
        next_batch: 7,
        samples_done: 700,
        seconds: 1.5,
    };

    fn sums() -> Vec<S> {
        vec![
            S(vec![0.1, -0.0, f64::MIN_POSITIVE, 1e300], 3),
            S(vec![], 0),
        ]
    }

    #[test]
    fn round_trip_is_bit_exact_and_keyed() {
        let b = encode(AT, &sums(), "k");
        let s: State<S> = decode(&b, "k", 2).unwrap().unwrap();
        assert_eq!(s.at, AT);
        assert_eq!(s.sums, sums());
        assert_eq!(s.sums[0].0[1].to_bits(), (-0.0f64).to_bits());
        assert!(decode::<S>(&b, "other", 2).unwrap().is_none());
        assert!(decode::<S>(&b, "k", 3).unwrap().is_none());
    }

    #[test]
    fn damaged_or_cut_files_are_refused() {
        let b = encode(AT, &sums(), "k");
        for cut in [0, 10, b.len() / 2, b.len() - 1] {
            assert!(decode::<S>(&b[..cut], "k", 2).is_err(), "cut at {cut}");
        }
        let mut flipped = b.clone();
        let i = flipped.len() / 2;
        flipped[i] ^= 1;
        assert!(decode::<S>(&flipped, "k", 2).is_err());
    }

    #[test]
    fn saves_when_due_and_restores() {
        let dir = std::env::temp_dir().join(format!("probe-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("r.h5");
        let mut r = Resume::new(&out, "key", Some(Duration::from_secs(3600)), true);
        r.tick(AT, &sums());
        assert!(!r.path().exists(), "saved before it was due");
        let mut r = Resume::new(&out, "key", Some(Duration::ZERO), true);
        r.tick(AT, &sums());
        let s: State<S> = r.restore(2).unwrap();
        assert_eq!(s.sums, sums());
        assert!(Resume::new(&out, "other", None, true)
            .restore::<S>(2)
            .is_none());
        r.done();
        assert!(!r.path().exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
