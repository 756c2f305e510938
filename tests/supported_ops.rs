//! The README's list of supported ONNX operators is the rule table (`probe::ops::RULES`), so it
//! cannot drift: this test rebuilds the list and compares it with the block between the README's
//! `<!-- ops:begin -->` and `<!-- ops:end -->` markers. `PROBE_BLESS=1 cargo test --release
//! --test supported_ops` rewrites the block after an op is added.
mod common;
use probe::ops::{Kind, RULES};

/// The generated block, markers excluded.
fn expected() -> String {
    let fused = probe::ops::rule::kernels::FUSED_OPS;
    let mut groups: [(&str, Vec<String>); 4] = [
        ("Differentiated", vec![]),
        ("Zero gradient (piecewise constant)", vec![]),
        (
            "Not differentiable (integer, boolean, shape and constant values)",
            vec![],
        ),
        ("Known and refused, with the reason", vec![]),
    ];
    for r in RULES.iter().filter(|r| !fused.contains(&r.op)) {
        let mark = if r.torch.is_some() { "" } else { "\u{2020}" };
        let (k, text) = match r.kind {
            Kind::Linear | Kind::Elementwise | Kind::Structured => (0, format!("{}{mark}", r.op)),
            Kind::ZeroGradient => (1, format!("{}{mark}", r.op)),
            Kind::NonDifferentiable => (2, format!("{}{mark}", r.op)),
            Kind::NotImplemented(why) => (3, format!("{} ({why})", r.op)),
        };
        groups[k].1.push(text);
    }
    let mut s = String::new();
    for (title, mut ops) in groups {
        if ops.is_empty() {
            continue;
        }
        ops.sort();
        s += &format!("- **{title}** ({}): {}\n", ops.len(), ops.join(", "));
    }
    if s.contains('\u{2020}') {
        s += "\n\u{2020} no libtorch forward yet: `--engine torch` and `probe train` refuse a \
              model that has it.\n";
    }
    s
}

#[test]
fn readme_lists_every_rule() {
    let path = common::root().join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let (begin, end) = ("<!-- ops:begin -->\n", "<!-- ops:end -->");
    let a = readme
        .find(begin)
        .expect("README has no <!-- ops:begin --> marker")
        + begin.len();
    let b = a + readme[a..]
        .find(end)
        .expect("README has no <!-- ops:end --> marker");
    let want = expected();
    if readme[a..b] == want {
        return;
    }
    if std::env::var_os("PROBE_BLESS").is_some() {
        std::fs::write(&path, format!("{}{want}{}", &readme[..a], &readme[b..])).unwrap();
        return;
    }
    panic!(
        "README's operator list differs from the rule table; rerun with PROBE_BLESS=1 or paste:\n{want}"
    );
}
