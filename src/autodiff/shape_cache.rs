//! Observed shapes kept between runs.
//!
//! Observing a graph's shapes runs its forward on two small batches with every intermediate as
//! an output ([`Shapes::observe_with`]): ~2 s of a Llama-style decoder's start-up at sequence
//! 256, paid again by every job of a sweep over the same model. The shapes are a function of
//! what the runs see, so they are kept in a file named by the SHA-256 of all of it:
//!
//! - the graph as observed (its bytes: the model's nodes, the loss head, the options that
//!   changed it, its constants);
//! - each fed tensor's name, element type and shape, and the values of the data fed (the first
//!   samples: a shape may follow values, e.g. through NonZero);
//! - the state's identity (the checkpoint's SHA-256) in place of its values, which are hundreds
//!   of MB;
//! - probe's version and [`FORMAT`] (bumped when what an observation returns changes).
//!
//! The file holds the key and the SHA-256 of its contents: a file that is cut short, altered or
//! written for another key is not used (the shapes are observed again and the file replaced),
//! so a cached run builds the graph a fresh one would. Writes go to a temporary file renamed
//! into place: jobs racing on one key each leave a whole file. A failed write costs only the
//! next run its observation.
use super::shapes::{Info, Shapes};
use crate::tensor::{DType, HostTensor, Values};
use anyhow::Result;
use onnx_protobuf::ModelProto;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Bumped when [`Shapes::observe_with`]'s result for the same inputs changes.
const FORMAT: u32 = 1;

/// A cache file larger than this is not read (no graph's shapes come near it).
const MAX_BYTES: u64 = 256 << 20;

/// Where shapes are kept, and the identity of the state they are observed at.
#[derive(Debug, Clone)]
pub struct ShapeCache {
    pub dir: PathBuf,
    /// The SHA-256 of the checkpoint (or model) whose values are fed as the state.
    pub state_id: String,
}

/// `$XDG_CACHE_HOME/probe/shapes`, else `$HOME/.cache/probe/shapes`.
pub fn default_dir() -> Option<PathBuf> {
    let nonempty = |v: &str| {
        std::env::var_os(v)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    };
    nonempty("XDG_CACHE_HOME")
        .or_else(|| nonempty("HOME").map(|h| h.join(".cache")))
        .map(|d| d.join("probe").join("shapes"))
}

impl ShapeCache {
    /// The shapes of `proto` run on `feeds`: from the cache when it holds them, else observed
    /// on `threads` threads and kept. `state` names the fed tensors identified by `state_id`.
    pub fn observe<T: Borrow<HostTensor>>(
        &self,
        proto: &ModelProto,
        feeds: &[Vec<(String, T)>],
        state: &dyn Fn(&str) -> bool,
        threads: usize,
    ) -> Result<Shapes> {
        let key = self.key(proto, feeds, state)?;
        let path = self.dir.join(format!("{key}.json"));
        if let Some(s) = read(&path, &key) {
            return Ok(s);
        }
        let s = Shapes::observe_with(proto, feeds, threads)?;
        let _ = write(&path, &key, &s);
        Ok(s)
    }

    fn key<T: Borrow<HostTensor>>(
        &self,
        proto: &ModelProto,
        feeds: &[Vec<(String, T)>],
        state: &dyn Fn(&str) -> bool,
    ) -> Result<String> {
        let mut h = Sha256::new();
        let mut part = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        part(format!("probe {} shapes {FORMAT}", env!("CARGO_PKG_VERSION")).as_bytes());
        part(self.state_id.as_bytes());
        part(&protobuf::Message::write_to_bytes(proto)?);
        for feed in feeds {
            part(&(feed.len() as u64).to_le_bytes());
            for (name, t) in feed {
                let t: &HostTensor = t.borrow();
                part(name.as_bytes());
                part(&t.dtype.onnx().to_le_bytes());
                let dims: Vec<u8> = t
                    .shape
                    .iter()
                    .flat_map(|&d| (d as u64).to_le_bytes())
                    .collect();
                part(&dims);
                if !state(name) {
                    match &t.values {
                        Values::F32(v) => {
                            part(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
                        }
                        Values::I64(v) => {
                            part(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
                        }
                    }
                }
            }
        }
        Ok(hex(&h.finalize()))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The file: a header line `{"format", "key", "sha256"}` (the SHA-256 of the second line), then
/// the shapes as one JSON line.
fn write(path: &Path, key: &str, s: &Shapes) -> std::io::Result<()> {
    let map: BTreeMap<&String, Value> = s
        .map
        .iter()
        .map(|(n, i)| {
            let dims: Vec<Value> = i.dims.iter().map(|d| json!(d)).collect();
            (n, json!([i.dtype.onnx(), dims]))
        })
        .collect();
    let ints: BTreeMap<&String, &Vec<i64>> = s.ints.iter().collect();
    let body = json!({"map": map, "ints": ints}).to_string();
    let head =
        json!({"format": FORMAT, "key": key, "sha256": hex(&Sha256::digest(body.as_bytes()))});
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // A name no other process writes: this process's id and the time.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let tmp = path.with_extension(format!("tmp-{}-{nanos}", std::process::id()));
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, format!("{head}\n{body}\n").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    sweep_stale(dir);
    r
}

/// Temporary files older than this are a killed writer's: no write takes a minute.
const STALE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes the temporary files writers killed mid-write left in `dir` (`<key>.tmp-<pid>-<ns>`,
/// older than [`STALE`]), so a sweep of jobs that get killed does not fill the folder. Other
/// files are left alone.
fn sweep_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let ours = name
            .split_once(".tmp-")
            .is_some_and(|(k, rest)| k.len() == 64 && rest.contains('-'));
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE);
        if ours && old && e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The shapes in `path` if it is a whole file written for `key`; None otherwise (absent, cut
/// short, altered, another key or format).
fn read(path: &Path, key: &str) -> Option<Shapes> {
    let f = std::fs::File::open(path).ok()?;
    if f.metadata().ok()?.len() > MAX_BYTES {
        return None;
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(f, MAX_BYTES), &mut text).ok()?;
    let (head, body) = text.split_once('\n')?;
    let body = body.strip_suffix('\n')?;
    let head: Value = serde_json::from_str(head).ok()?;
    if head["format"] != json!(FORMAT)
        || head["key"] != json!(key)
        || head["sha256"] != json!(hex(&Sha256::digest(body.as_bytes())))
    {
        return None;
    }
    let body: Value = serde_json::from_str(body).ok()?;
    let mut map = HashMap::new();
    for (name, v) in body.get("map")?.as_object()? {
        let [dtype, dims] = v.as_array()?.as_slice() else {
            return None;
        };
        let dtype = DType::from_onnx(i32::try_from(dtype.as_i64()?).ok()?)?;
        let dims = dims
            .as_array()?
            .iter()
            .map(|d| match d {
                Value::Null => Some(None),
                d => d.as_u64().and_then(|x| usize::try_from(x).ok()).map(Some),
            })
            .collect::<Option<Vec<Option<usize>>>>()?;
        map.insert(name.clone(), Info { dtype, dims });
    }
    let ints = ints_of(body.get("ints")?.as_object()?)?;
    Some(Shapes { map, ints })
}

fn ints_of(m: &Map<String, Value>) -> Option<HashMap<String, Vec<i64>>> {
    m.iter()
        .map(|(n, v)| {
            let v = v
                .as_array()?
                .iter()
                .map(Value::as_i64)
                .collect::<Option<Vec<i64>>>()?;
            Some((n.clone(), v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::graph::value_info;

    /// A graph whose shapes follow the batch: Y = Relu(X) @ W, Z = Shape(Y).
    fn graph() -> ModelProto {
        let mut g = onnx_protobuf::GraphProto::new();
        let node = |op: &str, ins: &[&str], out: &str| {
            let mut n = onnx_protobuf::NodeProto::new();
            n.op_type = op.into();
            n.input = ins.iter().map(|s| s.to_string()).collect();
            n.output = vec![out.into()];
            n
        };
        g.node = vec![
            node("Relu", &["x"], "r"),
            node("MatMul", &["r", "w"], "y"),
            node("Shape", &["y"], "z"),
        ];
        g.input
            .push(value_info("x", DType::F32, &[None, Some(3)], "N"));
        g.input
            .push(value_info("w", DType::F32, &[Some(3), Some(2)], "N"));
        for o in ["y", "z"] {
            let mut v = onnx_protobuf::ValueInfoProto::new();
            v.name = o.into();
            g.output.push(v);
        }
        let mut m = ModelProto::new();
        m.ir_version = 8;
        let mut o = onnx_protobuf::OperatorSetIdProto::new();
        o.version = 17;
        m.opset_import.push(o);
        m.graph = protobuf::MessageField::some(g);
        m
    }

    fn feeds(x0: f32) -> Vec<Vec<(String, HostTensor)>> {
        [2usize, 3]
            .iter()
            .map(|&n| {
                let x: Vec<f32> = (0..n * 3).map(|i| x0 + i as f32).collect();
                vec![
                    ("x".to_string(), HostTensor::f32(vec![n, 3], x)),
                    ("w".to_string(), HostTensor::f32(vec![3, 2], vec![0.5; 6])),
                ]
            })
            .collect()
    }

    fn same(a: &Shapes, b: &Shapes) -> bool {
        let mut ka: Vec<_> = a
            .map
            .iter()
            .map(|(k, v)| (k.clone(), v.dtype.onnx(), v.dims.clone()))
            .collect();
        let mut kb: Vec<_> = b
            .map
            .iter()
            .map(|(k, v)| (k.clone(), v.dtype.onnx(), v.dims.clone()))
            .collect();
        ka.sort();
        kb.sort();
        ka == kb && a.ints == b.ints
    }

    /// A second observation reads the file the first wrote, and gets the first's shapes; the
    /// key follows the graph, the data's values, and the state's identity, not the state's
    /// values.
    #[test]
    fn kept_and_found_under_everything_observed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ShapeCache {
            dir: dir.path().join("shapes"),
            state_id: "ckpt-a".into(),
        };
        let is_state = |n: &str| n == "w";
        let fresh = Shapes::observe_with(&graph(), &feeds(0.0), 1).unwrap();
        let first = cache.observe(&graph(), &feeds(0.0), &is_state, 1).unwrap();
        assert!(same(&first, &fresh));
        assert_eq!(first.get("y").unwrap().dims, vec![None, Some(2)]);
        let files = || {
            std::fs::read_dir(dir.path().join("shapes"))
                .unwrap()
                .count()
        };
        assert_eq!(files(), 1);
        let again = cache.observe(&graph(), &feeds(0.0), &is_state, 1).unwrap();
        assert!(same(&again, &fresh));
        assert_eq!(
            files(),
            1,
            "a second run with the same inputs found the first's file"
        );
        let key = |c: &ShapeCache, g: &ModelProto, f: &[Vec<(String, HostTensor)>]| {
            c.key(g, f, &is_state).unwrap()
        };
        let k0 = key(&cache, &graph(), &feeds(0.0));
        assert_ne!(k0, key(&cache, &graph(), &feeds(1.0)), "the data's values");
        let other = ShapeCache {
            state_id: "ckpt-b".into(),
            ..cache.clone()
        };
        assert_ne!(
            k0,
            key(&other, &graph(), &feeds(0.0)),
            "the state's identity"
        );
        let mut g = graph();
        g.graph.as_mut().unwrap().node[0].op_type = "Abs".into();
        assert_ne!(k0, key(&cache, &g, &feeds(0.0)), "the graph");
        let mut f = feeds(0.0);
        if let Values::F32(v) = &mut f[0][1].1.values {
            v[0] = 9.0;
        }
        assert_eq!(
            k0,
            key(&cache, &graph(), &f),
            "the state's values are not hashed"
        );
    }

    /// A killed writer's temporary file is removed by a later write once it is stale; a fresh
    /// one (a writer at work) and other files stay.
    #[test]
    fn stale_temporaries_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let key = "a".repeat(64);
        let old = dir.path().join(format!("{key}.tmp-123-456"));
        let fresh = dir.path().join(format!("{key}.tmp-124-457"));
        let other = dir.path().join("notes.tmp-1-2");
        for p in [&old, &fresh, &other] {
            std::fs::write(p, "partial").unwrap();
        }
        let hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        for p in [&old, &other] {
            let f = std::fs::File::options().write(true).open(p).unwrap();
            f.set_modified(hours_ago).unwrap();
        }
        let cache = ShapeCache {
            dir: dir.path().to_path_buf(),
            state_id: "s".into(),
        };
        cache
            .observe(&graph(), &feeds(0.0), &|n: &str| n == "w", 1)
            .unwrap();
        assert!(!old.exists(), "a stale temporary stayed");
        assert!(fresh.exists() && other.exists());
    }

    /// A file cut short, altered (with or without its checksum fixed to match another body),
    /// or written for another key is not used: the shapes are observed again and the file
    /// replaced by a whole one.
    #[test]
    fn a_damaged_file_is_observed_again() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ShapeCache {
            dir: dir.path().to_path_buf(),
            state_id: "s".into(),
        };
        let is_state = |n: &str| n == "w";
        let fresh = cache.observe(&graph(), &feeds(0.0), &is_state, 1).unwrap();
        let key = cache.key(&graph(), &feeds(0.0), &is_state).unwrap();
        let path = dir.path().join(format!("{key}.json"));
        let whole = std::fs::read_to_string(&path).unwrap();
        assert!(read(&path, &key).is_some());
        let altered = whole.replace("\"z\":[3,2]", "\"z\":[3,5]");
        assert_ne!(altered, whole);
        let (head, body) = altered.split_once('\n').unwrap();
        let mut h: Value = serde_json::from_str(head).unwrap();
        let relabeled = {
            let mut h = h.clone();
            h["key"] = json!("0".repeat(64));
            format!("{h}\n{body}")
        };
        h["sha256"] = json!(hex(&Sha256::digest(body.trim_end().as_bytes())));
        let resummed = format!("{h}\n{body}");
        for bad in [
            &whole[..whole.len() / 2],
            &altered,
            &relabeled,
            "",
            "{}\n{}\n",
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(read(&path, &key).is_none(), "used: {bad:.80}");
            let s = cache.observe(&graph(), &feeds(0.0), &is_state, 1).unwrap();
            assert!(same(&s, &fresh));
            assert_eq!(std::fs::read_to_string(&path).unwrap(), whole);
        }
        // A body with a matching checksum under the right key is the cache's own format: read.
        std::fs::write(&path, &resummed).unwrap();
        assert!(read(&path, &key).is_some());
    }
}
