//! A small, self-contained mutation fuzzer for the three readers of untrusted files (issue 14,
//! item 5): the ONNX loader with its external data (`Model::load`, then every initializer
//! decoded), the safetensors checkpoint reader (`Checkpoint::load`, the checkpoint-set header
//! peek) and the HDF5 data opener (`Hdf5Data::open`, then batches read). The property: each
//! returns `Ok` or `Err` and never panics, aborts, crashes, hangs, or asks for a huge allocation.
//!
//! How it runs. Each `fuzz_*` test is a *supervisor*: it writes the seed corpus (the shipped
//! models, checkpoints written here, small data files written here), then starts a *worker*, this
//! same test binary re-run with `PROBE_FUZZ_WORKER` set, which runs cases until the deadline.
//! Case `i` is a pure function of (target, seed, i, corpus): a seed file and 1 to 4 mutations
//! (bit flips, bytes set to interesting values, interesting 2/4/8-byte integers, truncation,
//! splices from another seed, duplicated and deleted ranges, protobuf varints re-encoded with
//! interesting values, and for ONNX and safetensors edits of the parsed structure: dims, data
//! types, external-data entries, header offsets and shapes). Each case runs under
//! `catch_unwind`; a panic is recorded with its input and the worker goes on. A worker that
//! dies (abort, signal) or stops making progress for 30 s is restarted after the case it was
//! running, whose input is saved. The worker limits its data segment (RLIMIT_DATA, 8 GiB), and
//! this binary's global allocator aborts with a message on any single allocation above 4 GiB,
//! so unbounded allocations are found even where the machine could satisfy them.
//!
//! Every input that failed is saved under `target/fuzz-failures/<target>/`; the test then fails
//! and lists them. Fixed failures are checked in under `tests/fixtures/fuzz/<target>/` and
//! replayed by `fuzz_regressions`.
//!
//! Budget: 4 s per target under plain `cargo test`; `PROBE_FUZZ_SECONDS=600` for 10 minutes
//! each (see `benches/fuzz.sh`); `PROBE_FUZZ_SEED` picks another deterministic sequence.
mod common;

use onnx_protobuf::{Message, ModelProto};
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

// --- the allocator: no single allocation above 4 GiB ------------------------------------------

const MAX_ALLOCATION: usize = 4 << 30;

struct Capped;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn too_large(size: usize) -> ! {
    // No allocation here: format the number into a stack buffer.
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = size;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut err = std::io::stderr();
    let _ = err.write_all(b"fuzz_inputs: FATAL: an allocation of ");
    let _ = err.write_all(&buf[i..]);
    let _ = err.write_all(b" bytes (more than 4 GiB): a size taken from the file unchecked\n");
    std::process::abort()
}

unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if l.size() > MAX_ALLOCATION {
            too_large(l.size());
        }
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if l.size() > MAX_ALLOCATION {
            too_large(l.size());
        }
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        System.alloc_zeroed(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if new > MAX_ALLOCATION {
            too_large(new);
        }
        LARGEST.fetch_max(new, Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static GLOBAL: Capped = Capped;

// --- deterministic randomness -------------------------------------------------------------------

/// xorshift64* seeded through SplitMix64.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64, index: u64) -> Rng {
        let mut z = seed ^ stream.rotate_left(17) ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

/// Integers that find boundary bugs: zero, one, signs, powers of two and their neighbours.
fn interesting(r: &mut Rng, len: usize) -> u64 {
    let fixed: [u64; 22] = [
        0,
        1,
        2,
        7,
        8,
        0x7f,
        0x80,
        0xff,
        0x100,
        0x7fff,
        0xffff,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_ffff,
        1 << 32,
        (1 << 32) + 1,
        1 << 40,
        0x7fff_ffff_ffff_ffff,
        0x8000_0000_0000_0000,
        u64::MAX,
        u64::MAX - 1,
        100_000_000,
    ];
    match r.below(4) {
        0 => len as u64,
        1 => (len as u64)
            .wrapping_add(r.below(17) as u64)
            .wrapping_sub(8),
        _ => *r.pick(&fixed),
    }
}

// --- byte-level mutations -----------------------------------------------------------------------

fn encode_varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

fn mutate_bytes(r: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    let len = data.len();
    match r.below(10) {
        0 if len > 0 => {
            for _ in 0..1 + r.below(8) {
                let p = r.below(len);
                data[p] ^= 1 << r.below(8);
            }
        }
        1 if len > 0 => {
            let p = r.below(len);
            let any = r.next() as u8;
            data[p] = *r.pick(&[0u8, 0xff, 0x7f, 0x80, 0x01, 0xfe, any]);
        }
        2 if len > 0 => {
            let w = *r.pick(&[2usize, 4, 8]);
            let p = r.below(len);
            let v = interesting(r, len).to_le_bytes();
            for k in 0..w.min(len - p) {
                data[p + k] = v[k];
            }
        }
        3 => data.truncate(r.below(len + 1)),
        4 if !other.is_empty() => {
            // Splice: a run of another seed over or into this one.
            let a = r.below(other.len());
            let n = 1 + r.below((other.len() - a).min(4096));
            let p = r.below(len + 1);
            if r.chance(0.5) {
                data.splice(p..p, other[a..a + n].iter().copied());
            } else {
                let end = (p + n).min(len);
                data.splice(p..end, other[a..a + n].iter().copied());
            }
        }
        5 if len > 0 => {
            let a = r.below(len);
            let n = 1 + r.below((len - a).min(4096));
            let copy = data[a..a + n].to_vec();
            data.splice(a + n..a + n, copy);
        }
        6 if len > 0 => {
            let a = r.below(len);
            let n = 1 + r.below((len - a).min(256));
            data.drain(a..a + n);
        }
        7 if len > 0 => {
            // A protobuf varint (or what looks like one) re-encoded with an interesting value.
            let p = r.below(len);
            let mut e = p;
            while e < len && e - p < 10 && data[e] & 0x80 != 0 {
                e += 1;
            }
            let e = (e + 1).min(len);
            let v = encode_varint(interesting(r, len));
            data.splice(p..e, v);
        }
        8 => {
            let p = r.below(len + 1);
            let n = 1 + r.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| r.next() as u8).collect();
            data.splice(p..p, bytes);
        }
        _ if len > 0 => {
            let p = r.below(len);
            data[p] = r.next() as u8;
        }
        _ => data.push(r.next() as u8),
    }
}

// --- targets ------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Onnx,
    Safetensors,
    Hdf5,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Onnx => "onnx",
            Target::Safetensors => "safetensors",
            Target::Hdf5 => "hdf5",
        }
    }
    fn test_name(self) -> String {
        format!("fuzz_{}", self.name())
    }
}

/// One seed: files by name (the first is the one handed to the reader).
#[derive(Clone)]
struct Seed {
    files: Vec<(String, Vec<u8>)>,
    /// For safetensors: which model (index into the worker's models) the checkpoint is for.
    model: usize,
}

/// One case to run: files to write, then the reader called on the first.
struct Case {
    files: Vec<(String, Vec<u8>)>,
    model: usize,
}

fn corpus_dir(t: Target) -> PathBuf {
    common::root().join("target/fuzz-corpus").join(t.name())
}

/// Models the safetensors target checks checkpoints against.
const ST_MODELS: [&str; 2] = ["mlp.onnx", "resnet.onnx"];

/// Writes the seed corpus of `t` (deterministic for ONNX and safetensors; HDF5 files carry
/// the library's timestamps) and returns it.
fn write_corpus(t: Target) -> Vec<Seed> {
    let dir = corpus_dir(t);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let seeds = match t {
        Target::Onnx => onnx_seeds(),
        Target::Safetensors => safetensors_seeds(),
        Target::Hdf5 => hdf5_seeds(&dir),
    };
    // One folder a seed, read back by the worker.
    for (k, s) in seeds.iter().enumerate() {
        let d = dir.join(format!("{k:02}-{}", s.model));
        std::fs::create_dir_all(&d).unwrap();
        for (i, (name, bytes)) in s.files.iter().enumerate() {
            std::fs::write(d.join(format!("{i}-{name}")), bytes).unwrap();
        }
    }
    seeds
}

fn read_corpus(t: Target) -> Vec<Seed> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(corpus_dir(t))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.iter()
        .map(|d| {
            let model = d
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .rsplit('-')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let mut files: Vec<(usize, String, Vec<u8>)> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| {
                    let p = e.unwrap().path();
                    let n = p.file_name().unwrap().to_str().unwrap().to_string();
                    let (i, name) = n.split_once('-').unwrap();
                    (
                        i.parse().unwrap(),
                        name.to_string(),
                        std::fs::read(&p).unwrap(),
                    )
                })
                .collect();
            files.sort_by_key(|f| f.0);
            Seed {
                files: files.into_iter().map(|(_, n, b)| (n, b)).collect(),
                model,
            }
        })
        .collect()
}

fn onnx_seeds() -> Vec<Seed> {
    let mut seeds = Vec::new();
    for name in ["mlp", "resnet", "gpt"] {
        let onnx = std::fs::read(common::model(&format!("{name}.onnx"))).unwrap();
        let data = std::fs::read(common::model(&format!("{name}.onnx.data"))).unwrap();
        seeds.push(Seed {
            files: vec![
                (format!("{name}.onnx"), onnx),
                (format!("{name}.onnx.data"), data),
            ],
            model: 0,
        });
    }
    // The MLP with every initializer inline: in raw_data, and in the typed fields.
    let m = probe::model::Model::load(&common::model("mlp.onnx")).unwrap();
    let inline = m.proto.write_to_bytes().unwrap();
    let mut typed = m.proto.clone();
    for t in typed.graph.as_mut().unwrap().initializer.iter_mut() {
        if t.data_type == 1 && !t.raw_data.is_empty() {
            t.float_data = t
                .raw_data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            t.raw_data.clear();
        }
    }
    seeds.push(Seed {
        files: vec![("inline.onnx".into(), inline)],
        model: 0,
    });
    seeds.push(Seed {
        files: vec![("typed.onnx".into(), typed.write_to_bytes().unwrap())],
        model: 0,
    });
    seeds
}

fn own_state_checkpoint(model: &str) -> Vec<u8> {
    let m = probe::model::Model::load(&common::model(model)).unwrap();
    let state = m.own_state().unwrap();
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = state
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                t.as_f32()
                    .unwrap()
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
                t.shape.clone(),
            )
        })
        .collect();
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, b, s)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    // An integer buffer the graph does not use (as PyTorch's num_batches_tracked).
    let nbt = 7i64.to_le_bytes();
    views.push((
        "extra.num_batches_tracked".into(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![], &nbt).unwrap(),
    ));
    let meta = Some(
        [("step".to_string(), "120".to_string())]
            .into_iter()
            .collect(),
    );
    safetensors::serialize(views, &meta).unwrap()
}

fn safetensors_seeds() -> Vec<Seed> {
    vec![
        Seed {
            files: vec![(
                "step-1.safetensors".into(),
                own_state_checkpoint(ST_MODELS[0]),
            )],
            model: 0,
        },
        Seed {
            files: vec![(
                "step-2.safetensors".into(),
                own_state_checkpoint(ST_MODELS[1]),
            )],
            model: 1,
        },
        Seed {
            files: vec![(
                "optim.safetensors".into(),
                std::fs::read(common::root().join("tests/fixtures/optim_reference.safetensors"))
                    .unwrap(),
            )],
            model: 0,
        },
    ]
}

fn hdf5_seeds(dir: &Path) -> Vec<Seed> {
    let _g = common::hdf5_guard();
    let mut seeds = Vec::new();
    let x: Vec<f32> = common::noise(6 * 2 * 3, 5);
    let make = |name: &str, build: &dyn Fn(&hdf5::File)| -> Seed {
        let p = dir.join(name);
        {
            let f = hdf5::File::create(&p).unwrap();
            build(&f);
        }
        let bytes = std::fs::read(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        Seed {
            files: vec![(name.to_string(), bytes)],
            model: 0,
        }
    };
    let xa = ndarray::Array3::from_shape_vec((6, 2, 3), x.clone()).unwrap();
    let ya = ndarray::Array1::from_vec(vec![0i64, 1, 2, 0, 1, 2]);
    seeds.push(make("contiguous.h5", &|f| {
        f.new_dataset_builder().with_data(&xa).create("x").unwrap();
        f.new_dataset_builder().with_data(&ya).create("y").unwrap();
    }));
    seeds.push(make("chunked.h5", &|f| {
        f.new_dataset_builder()
            .chunk((4, 2, 3))
            .deflate(4)
            .with_data(&xa)
            .create("x")
            .unwrap();
        f.new_dataset_builder()
            .chunk(4)
            .with_data(&ya)
            .create("y")
            .unwrap();
    }));
    let xu = ndarray::Array2::from_shape_vec((6, 5), (0..30u8).collect()).unwrap();
    let yt = ndarray::Array2::from_shape_vec((6, 5), (0..30i32).collect()).unwrap();
    seeds.push(make("tokens.h5", &|f| {
        f.new_dataset_builder().with_data(&xu).create("x").unwrap();
        f.new_dataset_builder()
            .chunk((2, 5))
            .shuffle()
            .deflate(1)
            .with_data(&yt)
            .create("y")
            .unwrap();
    }));
    seeds
}

// --- structure-aware mutations ------------------------------------------------------------------

const LOCATIONS: [&str; 12] = [
    "",
    ".",
    "..",
    "../outside.data",
    "/etc/hostname",
    "/dev/zero",
    "mlp.onnx.data/..",
    "./mlp.onnx.data",
    "sub/../mlp.onnx.data",
    "a\0b",
    "outside.data",
    "mlp.onnx",
];

fn number_string(r: &mut Rng, len: usize) -> String {
    match r.below(6) {
        0 => (*r.pick(&[
            "",
            "-1",
            "abc",
            " 12",
            "+4",
            "0x10",
            "18446744073709551616",
            "1e3",
            "99999999999999999999999",
        ]))
        .to_string(),
        1 => format!("-{}", interesting(r, len)),
        _ => interesting(r, len).to_string(),
    }
}

fn mutate_onnx(r: &mut Rng, bytes: &[u8], data_len: usize) -> Option<Vec<u8>> {
    let mut p = ModelProto::parse_from_bytes(bytes).ok()?;
    let g = p.graph.as_mut()?;
    for _ in 0..1 + r.below(3) {
        let n = g.initializer.len();
        if n == 0 {
            break;
        }
        let t = &mut g.initializer[r.below(n)];
        match r.below(9) {
            0 => {
                if t.dims.is_empty() {
                    t.dims.push(1);
                }
                let k = r.below(t.dims.len());
                t.dims[k] = *r.pick(&[
                    -1,
                    0,
                    1,
                    i64::MAX,
                    i64::MIN,
                    1 << 31,
                    1 << 32,
                    1 << 62,
                    (data_len / 4) as i64,
                ]);
            }
            1 => {
                if r.chance(0.5) {
                    t.dims.push(*r.pick(&[0i64, 2, 1 << 20, -3]));
                } else {
                    t.dims.pop();
                }
            }
            2 => t.data_type = r.below(25) as i32,
            3 => t.data_location = protobuf::EnumOrUnknown::from_i32(r.below(3) as i32),
            4 | 5 => {
                let key = *r.pick(&["location", "offset", "length", "checksum"]);
                let value = if key == "location" {
                    r.pick(&LOCATIONS).to_string()
                } else {
                    number_string(r, data_len)
                };
                if let Some(e) = t.external_data.iter_mut().find(|e| e.key == key) {
                    e.value = value;
                } else {
                    let mut e = onnx_protobuf::StringStringEntryProto::new();
                    e.key = key.into();
                    e.value = value;
                    t.external_data.push(e);
                }
            }
            6 => {
                if r.chance(0.5) {
                    t.external_data.clear();
                } else {
                    let k = r.below(t.external_data.len() + 1);
                    if k < t.external_data.len() {
                        t.external_data.remove(k);
                    }
                }
            }
            7 => {
                let l = r.below(t.raw_data.len() + 9);
                t.raw_data.resize(l, 0x41);
            }
            _ => {
                t.float_data.push(1.0);
                t.int64_data.push(-1);
                t.int32_data.push(7);
            }
        }
    }
    if r.chance(0.1) {
        p.ir_version = *r.pick(&[0i64, -1, 3, 10, i64::MAX]);
    }
    p.write_to_bytes().ok()
}

fn mutate_safetensors(r: &mut Rng, bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() < 8 {
        return None;
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let json = bytes.get(8..8usize.checked_add(n)?)?;
    let mut v: serde_json::Value = serde_json::from_slice(json).ok()?;
    let data = &bytes[8 + n..];
    let obj = v.as_object_mut()?;
    let names: Vec<String> = obj.keys().cloned().collect();
    if names.is_empty() {
        return None;
    }
    let name = r.pick(&names).clone();
    let big = |r: &mut Rng| -> serde_json::Value {
        match r.below(3) {
            0 => serde_json::json!(-1),
            1 => serde_json::json!(1.5),
            _ => serde_json::json!(interesting(r, data.len())),
        }
    };
    match r.below(7) {
        0 => {
            if let Some(s) = obj
                .get_mut(&name)
                .and_then(|t| t.get_mut("shape"))
                .and_then(|s| s.as_array_mut())
            {
                if s.is_empty() || r.chance(0.3) {
                    s.push(big(r));
                } else {
                    let k = r.below(s.len());
                    s[k] = big(r);
                }
            }
        }
        1 => {
            if let Some(o) = obj
                .get_mut(&name)
                .and_then(|t| t.get_mut("data_offsets"))
                .and_then(|s| s.as_array_mut())
            {
                if !o.is_empty() {
                    let k = r.below(o.len());
                    o[k] = big(r);
                }
            }
        }
        2 => {
            if let Some(t) = obj.get_mut(&name).and_then(|t| t.as_object_mut()) {
                let d = *r.pick(&[
                    "F32", "F64", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "U64",
                    "F8_E4M3", "X9", "",
                ]);
                t.insert("dtype".into(), serde_json::json!(d));
            }
        }
        3 => {
            obj.remove(&name);
        }
        4 => {
            let t = obj.get(&name).cloned()?;
            obj.insert(format!("{name}.copy"), t);
        }
        5 => {
            obj.insert(
                "__metadata__".into(),
                serde_json::json!({"step": number_string(r, 0), "format": "probe-optimizer-state-1"}),
            );
        }
        _ => {
            if let Some(t) = obj.remove(&name) {
                obj.insert(
                    r.pick(&[
                        "fc1.weight",
                        "fc2.bias",
                        "bn1.running_var",
                        "momentum_buffer/x",
                    ])
                    .to_string(),
                    t,
                );
            }
        }
    }
    let text = serde_json::to_vec(&v).ok()?;
    let mut out = Vec::with_capacity(8 + text.len() + data.len());
    let len = if r.chance(0.9) {
        text.len() as u64
    } else {
        interesting(r, text.len())
    };
    out.extend(len.to_le_bytes());
    out.extend(text);
    out.extend(data);
    Some(out)
}

/// Case `index` of `t`: a pure function of the corpus, the seed and the index.
fn make_case(t: Target, corpus: &[Seed], seed: u64, index: u64) -> Case {
    let mut r = Rng::new(seed, t as u64 + 1, index);
    let s = &corpus[r.below(corpus.len())];
    let other = &corpus[r.below(corpus.len())].files[0].1;
    let mut files = s.files.clone();
    // Which file the byte mutations hit: mostly the one read first.
    let k = if files.len() > 1 && r.chance(0.25) {
        1 + r.below(files.len() - 1)
    } else {
        0
    };
    let data_len = files.get(1).map(|f| f.1.len()).unwrap_or(0);
    if k == 0 && r.chance(0.5) {
        let structured = match t {
            Target::Onnx => mutate_onnx(&mut r, &files[0].1, data_len),
            Target::Safetensors => mutate_safetensors(&mut r, &files[0].1),
            Target::Hdf5 => None,
        };
        if let Some(b) = structured {
            files[0].1 = b;
        }
        if r.chance(0.5) {
            return Case {
                files,
                model: s.model,
            };
        }
    }
    for _ in 0..1 + r.below(4) {
        mutate_bytes(&mut r, &mut files[k].1, other);
    }
    Case {
        files,
        model: s.model,
    }
}

// --- running one case ---------------------------------------------------------------------------

/// What a worker keeps between cases.
struct Env {
    dir: PathBuf,
    models: Vec<probe::model::Model>,
}

/// The marker the ONNX target's `outside.data` is filled with: weights made of it were read
/// outside the model's folder.
const OUTSIDE: u8 = 0xA5;

/// Runs one case; `Ok(true)` when the reader accepted the input (a measure of how deep the
/// mutations reach), `Ok(false)` when it returned an error.
fn run_case(t: Target, env: &Env, case: &Case) -> Result<bool, String> {
    let work = env.dir.join("case");
    let _ = std::fs::remove_dir_all(&work);
    let inner = work.join("m");
    std::fs::create_dir_all(&inner).unwrap();
    if t == Target::Onnx {
        std::fs::write(work.join("outside.data"), vec![OUTSIDE; 1 << 16]).unwrap();
    }
    for (name, bytes) in &case.files {
        std::fs::write(inner.join(name), bytes).unwrap();
    }
    let path = inner.join(&case.files[0].0);
    match t {
        Target::Onnx => {
            let Ok(m) = probe::model::Model::load(&path) else {
                return Ok(false);
            };
            for p in &m.params {
                if let Ok(v) = m.initializer(&p.name) {
                    if v.numel() != p.numel() {
                        return Err(format!(
                            "{}: {} values for shape {:?}",
                            p.name,
                            v.numel(),
                            p.shape
                        ));
                    }
                }
            }
            for t in &m.graph().initializer {
                if t.raw_data.len() >= 16 && t.raw_data.iter().all(|&b| b == OUTSIDE) {
                    return Err(format!(
                        "initializer {} holds the bytes of a file outside the model's folder",
                        t.name
                    ));
                }
            }
            let _ = m.own_state();
            let _ = m.data_input();
            let _ = m.summary();
            Ok(true)
        }
        Target::Safetensors => {
            let model = &env.models[case.model];
            let _ = probe::model::checkpoint_set::is_optimizer_state(&path);
            let loaded = probe::model::Checkpoint::load(&path, model);
            if let Ok(c) = &loaded {
                for (name, v) in &c.tensors {
                    let want = model.param(name).map(|p| p.numel());
                    if want != Some(v.numel()) {
                        return Err(format!("{name}: {} values, model {want:?}", v.numel()));
                    }
                }
            }
            let _ = probe::model::checkpoint_set::load(&[path.clone()], model);
            Ok(loaded.is_ok())
        }
        Target::Hdf5 => {
            use probe::data::Dataset;
            let _g = common::hdf5_guard();
            let Ok(mut d) = probe::data::hdf5_file::Hdf5Data::open(&path) else {
                return Ok(false);
            };
            let n = d.spec().len.min(64);
            for (start, count) in probe::data::batches(n, 4) {
                if let Ok(b) = d.read(start, count) {
                    if b.len() != count {
                        return Err(format!("asked {count} rows at {start}, got {}", b.len()));
                    }
                }
            }
            Ok(true)
        }
    }
}

// --- worker and supervisor ----------------------------------------------------------------------

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

fn seed() -> u64 {
    env_u64("PROBE_FUZZ_SEED").unwrap_or(1)
}

fn budget() -> Duration {
    Duration::from_secs(env_u64("PROBE_FUZZ_SECONDS").unwrap_or(4))
}

fn out_dir(t: Target) -> PathBuf {
    common::root().join("target/fuzz-failures").join(t.name())
}

thread_local! {
    static LAST_PANIC: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Runs cases from `PROBE_FUZZ_START` until `PROBE_FUZZ_UNTIL` (unix seconds), writing the index
/// of the case under way to `progress` before running it, and the count to `done` at the end.
fn worker(t: Target) {
    let dir = PathBuf::from(std::env::var("PROBE_FUZZ_DIR").unwrap());
    let start = env_u64("PROBE_FUZZ_START").unwrap();
    let until = env_u64("PROBE_FUZZ_UNTIL").unwrap();
    let seed = seed();
    // C allocations (HDF5) are not seen by the global allocator: cap the data segment.
    let lim = libc::rlimit {
        rlim_cur: 8 << 30,
        rlim_max: 8 << 30,
    };
    // SAFETY: setrlimit reads the struct it is given.
    unsafe { libc::setrlimit(libc::RLIMIT_DATA, &lim) };
    std::panic::set_hook(Box::new(|info| {
        let msg = format!("{info}");
        LAST_PANIC.with(|p| *p.borrow_mut() = msg);
    }));
    let corpus = read_corpus(t);
    let models = if t == Target::Safetensors {
        ST_MODELS
            .iter()
            .map(|m| probe::model::Model::load(&common::model(m)).unwrap())
            .collect()
    } else {
        vec![]
    };
    let env = Env {
        dir: dir.clone(),
        models,
    };
    let progress = std::fs::File::create(dir.join("progress")).unwrap();
    use std::os::unix::fs::FileExt;
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let mut i = start;
    let mut accepted = 0u64;
    while now() < until {
        progress.write_at(&i.to_le_bytes(), 0).unwrap();
        let case = make_case(t, &corpus, seed, i);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run_case(t, &env, &case)));
        let failure = match outcome {
            Ok(Ok(ok)) => {
                accepted += ok as u64;
                None
            }
            Ok(Err(why)) => Some(format!("property violated: {why}")),
            Err(_) => Some(format!(
                "panic: {}",
                LAST_PANIC.with(|p| p.borrow().clone())
            )),
        };
        if let Some(f) = failure {
            save_failure(t, i, &case, &f);
        }
        i += 1;
    }
    std::fs::write(
        dir.join("done"),
        format!(
            "{} {} {accepted}",
            i - start,
            LARGEST.load(Ordering::Relaxed)
        ),
    )
    .unwrap();
}

fn save_failure(t: Target, index: u64, case: &Case, why: &str) {
    let d = out_dir(t).join(format!("seed{}-case{index}", seed()));
    std::fs::create_dir_all(&d).unwrap();
    for (k, (name, bytes)) in case.files.iter().enumerate() {
        std::fs::write(d.join(format!("{k}-{name}")), bytes).unwrap();
    }
    std::fs::write(d.join("model"), case.model.to_string()).unwrap();
    std::fs::write(d.join("why.txt"), why).unwrap();
}

/// Starts workers until the budget is spent; returns (cases run, failures saved).
fn supervise(t: Target) {
    if let Ok(w) = std::env::var("PROBE_FUZZ_WORKER") {
        if w == t.name() {
            worker(t);
        }
        return;
    }
    let corpus = write_corpus(t);
    let budget = budget();
    let seed = seed();
    let dir = tempfile::tempdir().unwrap();
    let began = Instant::now();
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + budget.as_secs().max(1);
    let mut start = 0u64;
    let mut cases = 0u64;
    let mut restarts = 0;
    let mut largest = 0u64;
    let mut accepted = 0u64;
    let _ = std::fs::remove_dir_all(out_dir(t));
    loop {
        let _ = std::fs::remove_file(dir.path().join("done"));
        let _ = std::fs::remove_file(dir.path().join("progress"));
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([&t.test_name(), "--exact", "--nocapture", "--test-threads=1"])
            .env("PROBE_FUZZ_WORKER", t.name())
            .env("PROBE_FUZZ_DIR", dir.path())
            .env("PROBE_FUZZ_START", start.to_string())
            .env("PROBE_FUZZ_UNTIL", until.to_string())
            .env("PROBE_FUZZ_SEED", seed.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = {
            let _g = common::hdf5_guard();
            cmd.spawn().unwrap()
        };
        // Hang watch: the index under way must move within 30 s.
        let read_progress = || -> Option<u64> {
            let b = std::fs::read(dir.path().join("progress")).ok()?;
            Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?))
        };
        let mut last = (read_progress(), Instant::now());
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            let p = read_progress();
            if p != last.0 {
                last = (p, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(30) {
                child.kill().unwrap();
                child.wait().unwrap();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut stderr);
        }
        if let Ok(done) = std::fs::read_to_string(dir.path().join("done")) {
            let mut it = done.split_whitespace();
            cases += it.next().unwrap().parse::<u64>().unwrap();
            largest = largest.max(it.next().unwrap().parse().unwrap());
            accepted += it.next().unwrap().parse::<u64>().unwrap();
            break;
        }
        // The worker died or hung on the case under way: save it, go on after it.
        let Some(at) = read_progress() else {
            panic!(
                "fuzz {} worker failed before its first case: {status:?}\n{stderr}",
                t.name()
            );
        };
        let case = make_case(t, &corpus, seed, at);
        let why = match status {
            None => "hang: no progress for 30 s".to_string(),
            Some(s) => format!(
                "worker died ({s}): {}",
                stderr
                    .lines()
                    .rev()
                    .take(12)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join(" | ")
            ),
        };
        save_failure(t, at, &case, &why);
        cases += at - start + 1;
        start = at + 1;
        restarts += 1;
        if began.elapsed() > budget + Duration::from_secs(60) {
            break;
        }
    }
    let failures: Vec<String> = std::fs::read_dir(out_dir(t))
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let why = std::fs::read_to_string(e.path().join("why.txt")).unwrap_or_default();
                    format!("{}: {}", e.path().display(), why)
                })
                .collect()
        })
        .unwrap_or_default();
    println!(
        "fuzz {}: {cases} cases in {:.0} s (seed {seed}), {} failures, {restarts} worker restarts, \
         {accepted} inputs accepted (of the cases of workers that finished), largest allocation {} bytes",
        t.name(),
        began.elapsed().as_secs_f64(),
        failures.len(),
        largest
    );
    assert!(
        failures.is_empty(),
        "fuzz {}: {} failing inputs:\n{}",
        t.name(),
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn fuzz_onnx() {
    supervise(Target::Onnx);
}

#[test]
fn fuzz_safetensors() {
    supervise(Target::Safetensors);
}

#[test]
fn fuzz_hdf5() {
    supervise(Target::Hdf5);
}

/// Every input a fuzz run once failed on, checked in under `tests/fixtures/fuzz/<target>/<case>/`
/// (files `0-<name>`, `1-<name>`, ... or `1-<name>.from` naming a repository file to use
/// unchanged; `model`; `why.txt`, what it did), replayed in this process. A crash or an
/// allocation above 4 GiB here takes the whole test binary down, which fails the run too.
#[test]
fn fuzz_regressions() {
    if std::env::var("PROBE_FUZZ_WORKER").is_ok() {
        return;
    }
    let root = common::root().join("tests/fixtures/fuzz");
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    for t in [Target::Onnx, Target::Safetensors, Target::Hdf5] {
        let Ok(rd) = std::fs::read_dir(root.join(t.name())) else {
            continue;
        };
        let models: Vec<probe::model::Model> = if t == Target::Safetensors {
            ST_MODELS
                .iter()
                .map(|m| probe::model::Model::load(&common::model(m)).unwrap())
                .collect()
        } else {
            vec![]
        };
        let env = Env {
            dir: dir.path().to_path_buf(),
            models,
        };
        let mut cases: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        cases.sort();
        for c in cases {
            let mut files: Vec<(usize, String, Vec<u8>)> = std::fs::read_dir(&c)
                .unwrap()
                .flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_str()?.to_string();
                    let (i, name) = n.split_once('-')?;
                    let i: usize = i.parse().ok()?;
                    // `N-name.from` holds the path (from the repository root) of a file to use
                    // as `name` unchanged, e.g. a shipped model's data file.
                    if let Some(name) = name.strip_suffix(".from") {
                        let from = std::fs::read_to_string(e.path()).unwrap();
                        let src = common::root().join(from.trim());
                        let bytes = std::fs::read(&src).unwrap_or_else(|err| {
                            panic!("{}: {}: {err}", e.path().display(), src.display())
                        });
                        return Some((i, name.to_string(), bytes));
                    }
                    Some((i, name.to_string(), std::fs::read(e.path()).unwrap()))
                })
                .collect();
            files.sort_by_key(|f| f.0);
            let model = std::fs::read_to_string(c.join("model"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            let case = Case {
                files: files.into_iter().map(|(_, n, b)| (n, b)).collect(),
                model,
            };
            let got = std::panic::catch_unwind(AssertUnwindSafe(|| run_case(t, &env, &case)));
            eprintln!(
                "{}: {}",
                c.display(),
                match &got {
                    Ok(Ok(true)) => "accepted".to_string(),
                    Ok(Ok(false)) => "refused".to_string(),
                    Ok(Err(e)) => e.clone(),
                    Err(_) => "panicked".to_string(),
                }
            );
            match got {
                Ok(Ok(_)) => {}
                Ok(Err(why)) => panic!("{}: {why}", c.display()),
                Err(_) => panic!("{}: panicked", c.display()),
            }
            n += 1;
        }
    }
    println!("replayed {n} fuzz regressions");
}

#[test]
fn the_rng_and_mutations_are_deterministic() {
    if std::env::var("PROBE_FUZZ_WORKER").is_ok() {
        return;
    }
    let corpus = safetensors_seeds();
    for i in 0..50 {
        let a = make_case(Target::Safetensors, &corpus, 3, i);
        let b = make_case(Target::Safetensors, &corpus, 3, i);
        assert_eq!(a.files[0].1, b.files[0].1, "case {i}");
    }
}
