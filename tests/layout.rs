//! The source tree's own rules (issue 15): no import cycle between src/'s top-level modules or
//! between its files, and no file over ~800 lines whose header does not say why. The checker is
//! `scripts/check_layout.py` (how it reads `use` paths is in its header); this test runs it over
//! src/ and over a tree with a cycle planted on purpose, so a checker that can no longer see
//! cycles fails here too.
mod common;

use common::root;
use std::path::Path;
use std::process::Command;

fn check(src: &Path) -> (bool, String) {
    let out = Command::new(root().join(".venv/bin/python"))
        .arg(root().join("scripts/check_layout.py"))
        .arg(src)
        .output()
        .expect("running scripts/check_layout.py (./setup.sh installs .venv)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn src_has_no_import_cycle_and_no_unexplained_long_file() {
    let (ok, text) = check(&root().join("src"));
    assert!(ok, "scripts/check_layout.py src:\n{text}");
    assert!(text.contains("layout ok"), "{text}");
}

#[test]
fn checker_sees_a_planted_cycle_and_a_long_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::create_dir_all(src.join("b")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\n").unwrap();
    std::fs::write(src.join("a/mod.rs"), "pub mod x;\n").unwrap();
    std::fs::write(src.join("b/mod.rs"), "pub mod y;\n").unwrap();
    // a/x.rs -> b/y.rs -> a/x.rs, once through `use` and once through a full path in code.
    std::fs::write(src.join("a/x.rs"), "use crate::b::y::Y;\npub struct X;\n").unwrap();
    let long: String = (0..900).map(|i| format!("// line {i}\n")).collect();
    std::fs::write(
        src.join("b/y.rs"),
        format!("pub struct Y;\nfn f() -> crate::a::x::X {{ crate::a::x::X }}\n{long}"),
    )
    .unwrap();
    // Test-only code may use anything: it must not count.
    std::fs::write(
        src.join("b/mod.rs"),
        "pub mod y;\n#[cfg(test)]\nmod tests {\n    use crate::a::x::X;\n}\n",
    )
    .unwrap();
    let (ok, text) = check(src);
    assert!(!ok, "{text}");
    assert!(text.contains("module cycle: a <-> b"), "{text}");
    assert!(
        text.contains("file cycle of 2: a/x.rs -> b/y.rs, b/y.rs -> a/x.rs"),
        "{text}"
    );
    assert!(text.contains("b/y.rs: 902 lines"), "{text}");
    assert!(!text.contains("b/mod.rs ->"), "test code counted: {text}");
}
