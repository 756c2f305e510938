//! `imagefolder:DIR[:OPTIONS]`: an ImageNet-layout folder of JPEG and PNG files read as
//! torchvision's `ImageFolder` reads it, through the evaluation transform researchers use for
//! ImageNet (`Resize(256)`, `CenterCrop(224)`, `ToTensor()`, `Normalize(mean, std)`).
//!
//! Layout and order, as `torchvision.datasets.folder`: the classes are the subfolders of DIR,
//! sorted by name and numbered from 0 (`find_classes`); the samples are, class by class, every
//! file below the class folder whose name ends (case-insensitively) in one of torchvision's
//! `IMG_EXTENSIONS`, walked with symlinks followed, folders in sorted order of their path and
//! names sorted within a folder (`make_dataset`'s `sorted(os.walk(..))`, `sorted(fnames)`). A file
//! of another extension is not a sample; a sample that is not JPEG or PNG (torchvision would also
//! take BMP, TIFF, WebP, PPM) stops the pass naming the file.
//!
//! OPTIONS, comma-separated `key=value` (defaults: torchvision's ImageNet evaluation):
//! `resize=256` (shorter side; `HxW` for an exact size; `none`), `crop=224` (`HxW`; `none`),
//! `mean=0.485/0.456/0.406`, `std=0.229/0.224/0.225` (one value or three), `pillow=13` (whose
//! resize to match: Pillow 13 runs the vertical pass first when the height shrinks more than
//! twice as much as the width, Pillow 12 and older never do; the two differ by ±1 in such
//! images), `workers=K` (decoding threads; default: the available cores).
//!
//! Decoding and resizing run on worker threads ahead of the pass: while the model runs on one
//! batch the workers decode the next (at most one batch ahead, so memory stays flat in N). A
//! sample is the same floats whichever thread decoded it.
use super::batch::{Array, Batch, Dataset, Kind, Spec};
use super::image_decode;
use super::image_ops::{self, PassOrder, Resize, Rgb8};
use anyhow::{Context, Result};
use ndarray::{ArrayD, IxDyn};
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

/// torchvision's `IMG_EXTENSIONS`: what `ImageFolder` counts as a sample.
pub const IMG_EXTENSIONS: [&str; 9] = [
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
];
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The transform from a decoded image to a sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Transform {
    pub resize: Option<Resize>,
    /// `(width, height)` of the centre crop.
    pub crop: Option<(usize, usize)>,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// The Pillow release whose resize pass order to follow (`pillow=12|13`).
    pub pillow: PassOrder,
}

impl Default for Transform {
    fn default() -> Transform {
        Transform {
            resize: Some(Resize::Shorter(256)),
            crop: Some((224, 224)),
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            pillow: PassOrder::default(),
        }
    }
}

impl Transform {
    /// The 8-bit image after resize and crop, before `ToTensor` and `Normalize`.
    pub fn pixels(&self, img: Rgb8) -> Rgb8 {
        let img = match self.resize {
            Some(r) => {
                let (w, h) = r.output_size(img.width, img.height);
                image_ops::resize_bilinear(&img, w, h, self.pillow)
            }
            None => img,
        };
        match self.crop {
            Some((w, h)) => image_ops::center_crop(&img, w, h),
            None => img,
        }
    }

    /// The per-sample output `(width, height)`, when every image gets the same one.
    fn fixed_size(&self) -> Option<(usize, usize)> {
        match (self.crop, self.resize) {
            (Some(c), _) => Some(c),
            (None, Some(Resize::Exact { height, width })) => Some((width, height)),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        let size = |w: usize, h: usize| {
            if w == h {
                w.to_string()
            } else {
                format!("{h}x{w}")
            }
        };
        let resize = match self.resize {
            Some(Resize::Shorter(s)) => s.to_string(),
            Some(Resize::Exact { height, width }) => size(width, height),
            None => "none".into(),
        };
        let crop = self.crop.map_or("none".into(), |(w, h)| size(w, h));
        let three = |v: [f32; 3]| v.map(|x| x.to_string()).join("/");
        let pillow = match self.pillow {
            PassOrder::Pillow13 => "",
            PassOrder::Pillow12 => ",pillow=12",
        };
        format!(
            "resize={resize},crop={crop},mean={},std={}{pillow}",
            three(self.mean),
            three(self.std)
        )
    }
}

/// A parsed `imagefolder:` spec.
#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    pub transform: Transform,
    pub workers: usize,
}

/// Parses what follows `imagefolder:` (`DIR` or `DIR:key=value,...`).
pub fn parse(spec: &str, rest: &str) -> Result<Options> {
    let bad = |m: String| crate::error::input(format!("--data {spec}: {m}"));
    let (dir, opts) = match rest.rsplit_once(':') {
        Some((d, o)) if !d.is_empty() && o.contains('=') => (d, o),
        _ => (rest, ""),
    };
    if dir.is_empty() {
        return Err(bad(
            "expected imagefolder:DIR[:resize=256,crop=224,...]".into()
        ));
    }
    let mut t = Transform::default();
    let mut workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let size = |v: &str, key: &str| -> Result<Option<(usize, usize)>> {
        if v == "none" {
            return Ok(None);
        }
        let num = |s: &str| s.parse::<usize>().ok().filter(|&n| n > 0);
        let hw = match v.split_once('x') {
            Some((h, w)) => num(h).zip(num(w)),
            None => num(v).map(|s| (s, s)),
        };
        hw.map(|(h, w)| Some((w, h))).ok_or_else(|| {
            bad(format!(
                "{key}={v}: expected a size in pixels, HxW, or none"
            ))
        })
    };
    let three = |v: &str, key: &str| -> Result<[f32; 3]> {
        let xs: Vec<f32> = v
            .split('/')
            .map(|s| s.parse::<f32>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| bad(format!("{key}={v}: expected a number or three as a/b/c")))?;
        match xs[..] {
            [a] => Ok([a; 3]),
            [a, b, c] => Ok([a, b, c]),
            _ => Err(bad(format!(
                "{key}={v}: expected one value or three (R/G/B)"
            ))),
        }
    };
    for kv in opts.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| bad(format!("option '{kv}' is not key=value")))?;
        match k {
            "resize" => {
                t.resize = size(v, k)?.map(|(w, h)| {
                    if v.contains('x') {
                        Resize::Exact {
                            height: h,
                            width: w,
                        }
                    } else {
                        Resize::Shorter(w)
                    }
                })
            }
            "crop" => t.crop = size(v, k)?,
            "mean" => t.mean = three(v, k)?,
            "std" => {
                t.std = three(v, k)?;
                if t.std.contains(&0.0) {
                    return Err(bad(format!("std={v}: a standard deviation of 0")));
                }
            }
            "pillow" => {
                t.pillow = match v {
                    "13" => PassOrder::Pillow13,
                    "12" => PassOrder::Pillow12,
                    _ => return Err(bad(format!("pillow={v}: expected 12 or 13"))),
                }
            }
            "workers" => {
                workers = v
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| bad(format!("workers={v}: expected a count of threads")))?
            }
            _ => {
                return Err(bad(format!(
                    "unknown option '{k}' (resize, crop, mean, std, pillow, workers)"
                )))
            }
        }
    }
    if t.fixed_size().is_none() {
        return Err(bad(
            "every sample needs the same shape: give crop=, or resize=HxW".into(),
        ));
    }
    Ok(Options {
        dir: PathBuf::from(dir),
        transform: t,
        workers,
    })
}

/// Whether torchvision's `has_file_allowed_extension` takes the name.
fn is_image_name(name: &str) -> bool {
    let lower = name.to_lowercase();
    IMG_EXTENSIONS.iter().any(|e| lower.ends_with(e))
}

/// The classes (sorted subfolder names) and the samples `(file, class)` in `ImageFolder`'s order.
///
/// Names are compared as bytes (`OsString`'s order), which for UTF-8 names is Python's order of
/// `str` (code points); folder paths as whole strings, as `sorted(os.walk(..))` compares its
/// roots (so `a.b` comes before `a/b`, not after as a component-wise `Path` order would put it).
pub fn list(dir: &Path) -> Result<(Vec<String>, Vec<(PathBuf, usize)>)> {
    let io = |p: &Path, e: std::io::Error| crate::error::input(format!("{}: {e}", p.display()));
    let mut classes: Vec<OsString> = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let e = e.map_err(|e| io(dir, e))?;
        // `entry.is_dir()` in find_classes follows symlinks: std::fs::metadata does too.
        if std::fs::metadata(e.path()).is_ok_and(|m| m.is_dir()) {
            classes.push(e.file_name());
        }
    }
    classes.sort();
    if classes.is_empty() {
        return Err(crate::error::input(format!(
            "{}: no class folders (the ImageNet layout is DIR/CLASS/IMAGE)",
            dir.display()
        )));
    }
    let mut samples = Vec::new();
    let mut empty = Vec::new();
    for (ci, c) in classes.iter().enumerate() {
        let top = dir.join(c);
        // (folder path relative to the class folder, its file names).
        let mut folders: Vec<(OsString, Vec<OsString>)> = Vec::new();
        let mut stack = vec![OsString::new()];
        while let Some(rel) = stack.pop() {
            let here = top.join(&rel);
            let mut names = Vec::new();
            for e in std::fs::read_dir(&here).map_err(|e| io(&here, e))? {
                let e = e.map_err(|e| io(&here, e))?;
                match std::fs::metadata(e.path()) {
                    Ok(m) if m.is_dir() => {
                        let mut sub = rel.clone();
                        if !sub.is_empty() {
                            sub.push("/");
                        }
                        sub.push(e.file_name());
                        stack.push(sub);
                    }
                    _ => names.push(e.file_name()),
                }
            }
            folders.push((rel, names));
        }
        folders.sort();
        let before = samples.len();
        for (rel, mut names) in folders {
            names.sort();
            for n in names
                .into_iter()
                .filter(|n| is_image_name(&n.to_string_lossy()))
            {
                samples.push((top.join(&rel).join(n), ci));
            }
        }
        if samples.len() == before {
            empty.push(c.to_string_lossy());
        }
    }
    if !empty.is_empty() {
        return Err(crate::error::input(format!(
            "{}: no image files (extensions {}) for the classes {}",
            dir.display(),
            IMG_EXTENSIONS.join(" "),
            empty.join(", ")
        )));
    }
    let classes = classes
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    Ok((classes, samples))
}

/// One sample's pixels, decoded and transformed; the error names the file.
pub fn load(path: &Path, t: &Transform) -> std::result::Result<Rgb8, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let img = image_decode::decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(t.pixels(img))
}

pub struct ImageFolder {
    spec: Spec,
    pub classes: Vec<String>,
    pipeline: Pipeline,
}

impl ImageFolder {
    pub fn open(spec: &str, rest: &str) -> Result<ImageFolder> {
        let o = parse(spec, rest)?;
        let (classes, samples) = list(&o.dir)?;
        let (w, h) = o.transform.fixed_size().expect("checked by parse");
        let spec = Spec {
            identity: format!("imagefolder:{}:{}", o.dir.display(), o.transform.describe()),
            len: samples.len(),
            x_shape: vec![3, h, w],
            x_kind: Kind::Float,
            y_shape: vec![],
            y_kind: Kind::Int,
        };
        let pipeline = Pipeline::start(samples, o.transform, o.workers);
        Ok(ImageFolder {
            spec,
            classes,
            pipeline,
        })
    }
}

impl Dataset for ImageFolder {
    fn spec(&self) -> &Spec {
        &self.spec
    }
    fn read(&mut self, start: usize, count: usize) -> Result<Batch> {
        let per: usize = self.spec.x_shape.iter().product();
        let mut x = vec![0f32; count * per];
        let mut y = Vec::with_capacity(count);
        self.pipeline.take(start, count, |i, s| {
            x[i * per..(i + 1) * per].copy_from_slice(&s.x);
            y.push(s.class as i64);
        })?;
        let mut xs = vec![count];
        xs.extend(&self.spec.x_shape);
        Ok(Batch {
            start,
            x: Array::F32(ArrayD::from_shape_vec(IxDyn(&xs), x).context("x shape")?),
            y: Array::I64(ArrayD::from_shape_vec(IxDyn(&[count]), y).context("y shape")?),
        })
    }
}

/// A decoded sample: its normalized `[3, h, w]` values and its class.
struct Sample {
    x: Vec<f32>,
    class: usize,
}

/// Worker threads that decode samples in order ahead of the reader.
///
/// The reader's position is `consumed`; workers claim indices `next < consumed + window` one at a
/// time, so at most `window` decoded samples wait (the window grows to the reader's batch, so the
/// next batch is decoded while the model runs on this one). A read that does not continue where
/// the last one ended (a new pass over the checkpoints, `--limit`) restarts the workers there;
/// results of the old position still in flight are dropped by their generation number.
struct Pipeline {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

struct Shared {
    samples: Vec<(PathBuf, usize)>,
    transform: Transform,
    state: Mutex<State>,
    /// Signalled when a sample is done (the reader waits) or the window moves (workers wait).
    changed: Condvar,
}

struct State {
    generation: u64,
    next: usize,
    consumed: usize,
    window: usize,
    done: HashMap<usize, std::result::Result<Sample, String>>,
    stop: bool,
}

impl Pipeline {
    fn start(samples: Vec<(PathBuf, usize)>, transform: Transform, workers: usize) -> Pipeline {
        let shared = Arc::new(Shared {
            samples,
            transform,
            state: Mutex::new(State {
                generation: 0,
                next: 0,
                consumed: 0,
                window: 2 * workers,
                done: HashMap::new(),
                stop: false,
            }),
            changed: Condvar::new(),
        });
        let threads = (0..workers)
            .map(|_| {
                let s = Arc::clone(&shared);
                std::thread::spawn(move || s.work())
            })
            .collect();
        Pipeline { shared, threads }
    }

    /// Hands samples `start..start + count` to `put(i, sample)` in order.
    fn take(
        &mut self,
        start: usize,
        count: usize,
        mut put: impl FnMut(usize, &Sample),
    ) -> Result<()> {
        let sh = &self.shared;
        let mut st = sh.state.lock().unwrap();
        if st.consumed != start {
            st.generation += 1;
            st.done.clear();
            st.next = start;
            st.consumed = start;
        }
        st.window = st.window.max(count);
        sh.changed.notify_all();
        for i in 0..count {
            let idx = start + i;
            let r = loop {
                if let Some(r) = st.done.remove(&idx) {
                    break r;
                }
                st = sh.changed.wait(st).unwrap();
            };
            st.consumed = idx + 1;
            sh.changed.notify_all();
            match r {
                Ok(s) => put(i, &s),
                Err(m) => return Err(crate::error::input(m)),
            }
        }
        Ok(())
    }
}

impl Shared {
    fn work(&self) {
        let mut st = self.state.lock().unwrap();
        loop {
            if st.stop {
                return;
            }
            let idx = st.next;
            if idx >= self.samples.len() || idx >= st.consumed + st.window {
                st = self.changed.wait(st).unwrap();
                continue;
            }
            st.next += 1;
            let generation = st.generation;
            drop(st);
            let (path, class) = &self.samples[idx];
            // A panic in a decoder must reach the reader as an error: a sample that never
            // arrives would leave it waiting forever.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                load(path, &self.transform).map(|img| {
                    let mut x = vec![0f32; img.width * img.height * 3];
                    let (m, s) = (self.transform.mean, self.transform.std);
                    image_ops::normalize_into(&img, m, s, &mut x);
                    Sample { x, class: *class }
                })
            }))
            .unwrap_or_else(|_| Err(format!("{}: the decoder failed", path.display())));
            st = self.state.lock().unwrap();
            if st.generation == generation {
                st.done.insert(idx, r);
                self.changed.notify_all();
            }
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap().stop = true;
        self.shared.changed.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_with_torchvision_defaults() {
        let o = parse("imagefolder:/d", "/d").unwrap();
        assert_eq!(o.dir, PathBuf::from("/d"));
        assert_eq!(o.transform, Transform::default());
        let o = parse(
            "s",
            "/a:b/d:resize=288x320,crop=none,mean=0.5,std=0.5/0.25/1",
        )
        .unwrap();
        assert_eq!(o.dir, PathBuf::from("/a:b/d"));
        assert_eq!(
            o.transform.resize,
            Some(Resize::Exact {
                height: 288,
                width: 320
            })
        );
        assert_eq!(o.transform.crop, None);
        assert_eq!(o.transform.mean, [0.5; 3]);
        assert_eq!(o.transform.std, [0.5, 0.25, 1.0]);
        for bad in [
            "/d:resize=0",
            "/d:crop=none",
            "/d:mean=1/2",
            "/d:std=0",
            "/d:flip=1",
            "/d:workers=0",
        ] {
            let e = parse("s", bad).unwrap_err();
            assert_eq!(
                crate::error::fault_of(&e),
                Some(crate::error::Fault::Input),
                "{bad}: {e:#}"
            );
        }
    }

    #[test]
    fn extensions_are_torchvisions_case_insensitive() {
        assert!(is_image_name("a.JPEG"));
        assert!(is_image_name("b.png"));
        assert!(!is_image_name("c.txt"));
        assert!(!is_image_name(".DS_Store"));
    }
}
