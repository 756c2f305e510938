//! `probe plot` as a user runs it on real runs: two `probe train` runs of the shipped MLP on
//! Fashion-MNIST (SGD and Adam), `probe grad` over each one's checkpoints, `probe eval` over
//! one's, and its training log; figures as PNG, SVG and PDF, checked as files (the PNG decodes
//! at its size and shows both runs' colours, the SVG parses, the PDF's cross-reference table
//! points at its objects and a PDF reader reads it), with both run names in the legend. Then
//! the refusals: an unknown panel or extension (bad flags, exit 2), a file that is not probe
//! results (exit 3), each said in one line.
mod common;

use common::*;
use std::path::{Path, PathBuf};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The Okabe-Ito blue and vermillion: the first two files' colours.
const BLUE: [u8; 3] = [0, 114, 178];
const VERMILLION: [u8; 3] = [213, 94, 0];

/// Trains the MLP with `opt` (60 steps, a checkpoint every 10) into `dir`/`name`; returns
/// the run's folder and its checkpoints in step order.
fn train(dir: &Path, name: &str, opt: &[&str]) -> (PathBuf, Vec<PathBuf>) {
    let run = dir.join(name);
    let mlp = model("mlp.onnx");
    let mut args: Vec<&str> = vec![
        "train",
        "--model",
        s(&mlp),
        "--data",
        "fashion-mnist",
        "--limit",
        "1000",
        "--steps",
        "60",
        "--ckpt-every",
        "10",
        "--batch",
        "50",
        "--threads",
        "1",
        "-q",
        "--out",
    ];
    args.push(s(&run));
    args.extend(opt);
    probe(&args).ok();
    let ckpts: Vec<PathBuf> = (0..=60)
        .step_by(10)
        .map(|k| run.join(format!("step-{k:08}.safetensors")))
        .collect();
    (run, ckpts)
}

/// `probe <cmd>` over `ckpts` on the same 1000 images, into `out`.
fn measure(cmd: &str, ckpts: &[PathBuf], out: &Path, extra: &[&str]) {
    let mut args: Vec<String> = [
        cmd,
        "--model",
        s(&model("mlp.onnx")),
        "--data",
        "fashion-mnist",
        "--limit",
        "1000",
        "--threads",
        "1",
        "-q",
        "--out",
        s(out),
        "--ckpt",
    ]
    .map(String::from)
    .to_vec();
    args.extend(ckpts.iter().map(|p| s(p).to_string()));
    args.extend(extra.iter().map(|a| a.to_string()));
    probe(&args).ok();
}

/// Width, height and RGB pixels of a PNG.
fn decode_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let dec = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb, "{}", path.display());
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

/// Pixels within 40 (per channel) of `c`.
fn pixels_near(rgb: &[u8], c: [u8; 3]) -> usize {
    rgb.chunks(3)
        .filter(|p| (0..3).all(|i| (p[i] as i32 - c[i] as i32).abs() <= 40))
        .count()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// The PDF's structure, checked by hand: header, `startxref` pointing at a cross-reference
/// table whose every entry is 20 bytes and points at "N 0 obj", a trailer naming the root,
/// `%%EOF`. Returns the inflated content streams' text.
fn check_pdf_structure(pdf: &[u8]) -> String {
    assert!(pdf.starts_with(b"%PDF-1."), "no PDF header");
    assert!(pdf.ends_with(b"%%EOF\n"), "no %%EOF at the end");
    let sx = find(pdf, b"startxref\n").expect("startxref");
    let tail = std::str::from_utf8(&pdf[sx..]).unwrap();
    let xref: usize = tail.lines().nth(1).unwrap().parse().unwrap();
    let table = std::str::from_utf8(&pdf[xref..sx]).expect("an ASCII xref table");
    let mut lines = table.lines();
    assert_eq!(
        lines.next(),
        Some("xref"),
        "startxref does not point at xref"
    );
    let n: usize = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let entries: Vec<&str> = lines.by_ref().take(n).collect();
    assert_eq!(entries.len(), n);
    assert!(entries[0].starts_with("0000000000 65535 f"));
    for (i, e) in entries.iter().enumerate().skip(1) {
        assert_eq!(e.len() + 1, 20, "xref entry {i} is not 20 bytes: {e:?}");
        assert!(e.ends_with(" n "), "{e:?}");
        let off: usize = e[..10].parse().unwrap();
        assert!(
            pdf[off..].starts_with(format!("{i} 0 obj").as_bytes()),
            "xref entry {i} points at {off}, which is not object {i}"
        );
    }
    let trailer: String = lines.collect::<Vec<_>>().join("\n");
    assert!(trailer.starts_with("trailer"), "{trailer}");
    assert!(trailer.contains(&format!("/Size {n}")) && trailer.contains("/Root 1 0 R"));
    // Inflate every FlateDecode stream.
    let mut text = String::new();
    let mut at = 0;
    while let Some(i) = pdf[at..]
        .windows(7)
        .position(|w| w == b"stream\n")
        .map(|i| i + at)
    {
        let start = i + 7;
        let end = start
            + pdf[start..]
                .windows(10)
                .position(|w| w == b"endstream\n" || w.starts_with(b"\nendstream"))
                .unwrap();
        let mut z = flate2::read::ZlibDecoder::new(&pdf[start..end]);
        let mut out = String::new();
        std::io::Read::read_to_string(&mut z, &mut out).expect("a deflated content stream");
        text.push_str(&out);
        // Past "endstream", which holds "stream" too.
        at = end + 10;
    }
    text
}

/// Runs a tool the PDF checks use, if the machine has it (`qpdf` and poppler's `pdftotext`
/// and `pdftoppm`: Debian's qpdf and poppler-utils); None, with a note, if not.
fn tool(name: &str, args: &[&str]) -> Option<Output> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    if !found {
        println!("note: {name} is not installed (apt-get install qpdf poppler-utils): that check is skipped");
        return None;
    }
    let mut cmd = std::process::Command::new(name);
    cmd.args(args);
    Some(run(cmd))
}

#[test]
fn figures_of_two_grad_runs_an_eval_file_and_a_train_log() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (sgd, sgd_ckpts) = train(
        d,
        "sgd",
        &[
            "--opt",
            "sgd",
            "--lr",
            "0.05",
            "--momentum",
            "0.9",
            "--weight-decay",
            "5e-4",
        ],
    );
    let (_, adam_ckpts) = train(d, "adam", &["--opt", "adam", "--lr", "0.001"]);
    let run1 = d.join("run1.h5");
    let run2 = d.join("run2.h5");
    measure("grad", &sgd_ckpts, &run1, &["--weight-decay", "5e-4"]);
    measure("grad", &adam_ckpts, &run2, &["--weight-decay", "5e-4"]);
    let eval = d.join("sgd-eval.h5");
    measure("eval", &sgd_ckpts, &eval, &[]);
    let log = sgd.join("train.h5");

    // The issue's acceptance: two grad runs, two panels, a PDF.
    let pdf = d.join("fig.pdf");
    let o = probe(&[
        "plot",
        s(&run1),
        s(&run2),
        "--panels",
        "loss,grad",
        "-o",
        s(&pdf),
    ])
    .ok();
    assert!(o.stderr.contains("wrote"), "{}", o.stderr);
    let bytes = std::fs::read(&pdf).unwrap();
    let content = check_pdf_structure(&bytes);
    // The legend names both runs; the panels' titles are there, set in Helvetica.
    for t in [
        "(run1) Tj",
        "(run2) Tj",
        "(Full-dataset loss) Tj",
        "(Full-dataset gradient norm) Tj",
        "(|g + 0.0005 w|) Tj",
        "/F1 1 Tf",
    ] {
        assert!(content.contains(t), "the PDF does not draw {t}");
    }
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("/BaseFont /Helvetica"));
    // 6.75 in x 72 = 486 pt wide.
    assert!(text.contains("/MediaBox [0 0 486 "), "{}", &text[..400]);
    // A real PDF reader: qpdf checks the structure and streams; poppler extracts the text and
    // renders the page.
    if let Some(q) = tool("qpdf", &["--check", s(&pdf)]) {
        assert_eq!(q.code, 0, "qpdf --check: {}{}", q.stdout, q.stderr);
        assert!(
            q.stdout.contains("No syntax or stream encoding errors"),
            "{}",
            q.stdout
        );
    }
    if let Some(t) = tool("pdftotext", &[s(&pdf), "-"]) {
        assert_eq!(t.code, 0, "{}", t.stderr);
        for w in [
            "run1",
            "run2",
            "Full-dataset loss",
            "training step",
            "cross-entropy (nats)",
        ] {
            assert!(
                t.stdout.contains(w),
                "pdftotext finds no {w:?}: {}",
                t.stdout
            );
        }
    }
    if let Some(r) = tool(
        "pdftoppm",
        &[
            "-r",
            "72",
            "-png",
            "-singlefile",
            s(&pdf),
            s(&d.join("pdf")),
        ],
    ) {
        assert_eq!(r.code, 0, "{}", r.stderr);
        let (w, _, rgb) = decode_png(&d.join("pdf.png"));
        assert_eq!(w, 486);
        assert!(pixels_near(&rgb, BLUE) > 100 && pixels_near(&rgb, VERMILLION) > 100);
    }

    // Everything at once, in each format: two grad runs, the eval file, the training log.
    let all = [s(&run1), s(&run2), s(&eval), s(&log)];
    let png = d.join("all.png");
    let mut args = vec!["plot"];
    args.extend(all);
    args.extend(["-o", s(&png), "--width", "7", "--dpi", "100"]);
    let o = probe(&args).ok();
    assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
    let (w, h, rgb) = decode_png(&png);
    assert_eq!(w, 700, "7 in at 100 dpi");
    assert!(h > 300 && h < 900, "{h}");
    let (blue, red) = (pixels_near(&rgb, BLUE), pixels_near(&rgb, VERMILLION));
    assert!(
        blue > 500 && red > 500,
        "both runs drawn: {blue} blue, {red} vermillion pixels"
    );

    let svg = d.join("all.svg");
    let mut args = vec!["plot"];
    args.extend(all);
    args.extend(["-o", s(&svg), "--label", "SGD", "--label", "Adam", "-q"]);
    probe(&args).ok();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("width=\"6.75in\""), "{}", &text[..300]);
    for name in [
        ">SGD</text>",
        ">Adam</text>",
        ">sgd-eval</text>",
        ">sgd (train log)</text>",
    ] {
        assert!(text.contains(name), "the SVG's legend has no {name}");
    }
    for title in [
        "Loss: full dataset and minibatch",
        "Full-dataset gradient norm",
        "Learning rate",
    ] {
        assert!(text.contains(title), "no panel {title}");
    }
    // The SVG parses as XML (Python's own parser, in the project's venv).
    let out = py(&[
        "-c",
        "import sys, xml.etree.ElementTree as ET\n\
         r = ET.parse(sys.argv[1]).getroot()\n\
         ns = '{http://www.w3.org/2000/svg}'\n\
         assert r.tag == ns + 'svg', r.tag\n\
         t = [e.text for e in r.iter(ns + 'text')]\n\
         assert 'SGD' in t and 'Adam' in t, t\n\
         print('ok', len(t))",
        s(&svg),
    ]);
    assert!(out.starts_with("ok"), "{out}");

    let pdf_all = d.join("all.pdf");
    let mut args = vec!["plot"];
    args.extend(all);
    args.extend(["-o", s(&pdf_all), "-q"]);
    probe(&args).ok();
    let content = check_pdf_structure(&std::fs::read(&pdf_all).unwrap());
    for t in [
        "(run1) Tj",
        "(run2) Tj",
        "(sgd-eval) Tj",
        "(sgd \\(train log\\)) Tj",
    ] {
        assert!(content.contains(t), "the PDF's legend has no {t}");
    }
    if let Some(q) = tool("qpdf", &["--check", s(&pdf_all)]) {
        assert_eq!(q.code, 0, "qpdf --check: {}{}", q.stdout, q.stderr);
    }

    // Each kind of file on its own.
    for (file, needles) in [
        (&eval, vec!["Full-dataset loss", "Full-dataset accuracy"]),
        (&log, vec!["Minibatch loss (training log)", "Learning rate"]),
    ] {
        let svg = d.join("one.svg");
        probe(&["plot", s(file), "-o", s(&svg), "-q"]).ok();
        let text = std::fs::read_to_string(&svg).unwrap();
        for n in needles {
            assert!(text.contains(n), "{}: no {n}", file.display());
        }
        assert!(!text.contains("gradient norm"), "{}", file.display());
    }
    if let Ok(keep) = std::env::var("PROBE_KEEP_FIGURES") {
        for f in [&pdf, &png, &svg, &pdf_all] {
            std::fs::copy(f, Path::new(&keep).join(f.file_name().unwrap())).unwrap();
        }
    }
}

/// stderr holds one error line naming `needles` (clap's bad-flag errors add only their hint).
fn refused(o: &Output, code: i32, needles: &[&str]) {
    assert_eq!(o.code, code, "exit code; stderr: {}", o.stderr);
    let lines: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("For more information"))
        .collect();
    assert_eq!(lines.len(), 1, "one line of error, got: {}", o.stderr);
    for n in needles {
        assert!(
            lines[0].contains(n),
            "error should mention {n:?}: {}",
            lines[0]
        );
    }
}

#[test]
fn refusals_are_one_line_with_their_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fig = d.join("fig.png");
    // A small eval file written by hand: 3 checkpoints, loss and accuracy.
    let eval = d.join("eval.h5");
    {
        let _g = hdf5_guard();
        let f = hdf5::File::create(&eval).unwrap();
        let attr = |k: &str, v: &str| {
            f.new_attr::<hdf5::types::VarLenUnicode>()
                .create(k)
                .unwrap()
                .write_scalar(&v.parse::<hdf5::types::VarLenUnicode>().unwrap())
                .unwrap();
        };
        attr("command", "eval");
        attr("loss", "cross_entropy");
        f.new_attr::<i64>()
            .create("rows")
            .unwrap()
            .write_scalar(&3i64)
            .unwrap();
        f.create_group("checkpoints").unwrap();
        f.new_dataset_builder()
            .with_data(&[0i64, 10, 20])
            .create("checkpoints/step")
            .unwrap();
        f.new_dataset_builder()
            .with_data(&[2.3f64, 1.1, 0.7])
            .create("loss")
            .unwrap();
        f.new_dataset_builder()
            .with_data(&[0.1f64, 0.6, 0.8])
            .create("accuracy")
            .unwrap();
    }
    probe(&["plot", s(&eval), "-o", s(&fig), "-q"]).ok();
    assert!(fig.exists());
    std::fs::remove_file(&fig).unwrap();

    // Bad flags, exit 2: an unknown panel (the error lists the panels), an unknown format.
    let o = probe(&["plot", s(&eval), "-o", s(&fig), "--panels", "loss,gradient"]);
    refused(
        &o,
        2,
        &[
            "--panels",
            "unknown panel 'gradient'",
            "loss, accuracy, grad, weights",
        ],
    );
    let o = probe(&["plot", s(&eval), "-o", s(&d.join("fig.eps"))]);
    refused(&o, 2, &["fig.eps", ".png, .svg or .pdf"]);
    let o = probe(&[
        "plot",
        s(&eval),
        "--label",
        "a",
        "--label",
        "b",
        "-o",
        s(&fig),
    ]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(
        o.stderr.lines().next().unwrap().contains("--label"),
        "{}",
        o.stderr
    );
    // --help lists every panel with what it shows.
    let help = probe(&["plot", "--help"]).ok().stdout;
    for p in [
        "loss",
        "accuracy",
        "grad",
        "weights",
        "motion",
        "noise",
        "bnoise",
        "sharpness",
        "lr",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{p} "))),
            "--help does not list {p}: {help}"
        );
    }

    // Bad input, exit 3: not HDF5, HDF5 but not probe's, a panel none of the files has.
    let text = d.join("notes.h5");
    std::fs::write(&text, "not hdf5\n").unwrap();
    refused(
        &probe(&["plot", s(&text), "-o", s(&fig)]),
        3,
        &["probe: error: ", "notes.h5", "not an HDF5 file"],
    );
    let other = d.join("other.h5");
    {
        let _g = hdf5_guard();
        let f = hdf5::File::create(&other).unwrap();
        f.new_dataset_builder()
            .with_data(&[1.0f64, 2.0])
            .create("loss")
            .unwrap();
    }
    refused(
        &probe(&["plot", s(&eval), s(&other), "-o", s(&fig)]),
        3,
        &[
            "other.h5",
            "not a results file of probe",
            "probe grad, probe eval and probe train",
        ],
    );
    refused(
        &probe(&["plot", s(&eval), "--panels", "loss,noise", "-o", s(&fig)]),
        3,
        &[
            "--panels noise",
            "none of the files has data for it",
            "--noise",
        ],
    );
    refused(
        &probe(&["plot", s(&eval), "-o", s(&d.join("no/such/dir/fig.pdf"))]),
        3,
        &["does not exist"],
    );
    assert!(!fig.exists(), "a refused plot writes no figure");
}
