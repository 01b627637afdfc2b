//! `schemas/` is generated from the Rust types; this fails when it is stale.

mod support;

use support::*;

#[test]
fn schemas_are_current() {
    let tmp = tempfile::tempdir().unwrap();
    ok(std::process::Command::new(BIN)
        .args(["schema", "--write"])
        .arg(tmp.path())
        .output()
        .unwrap());
    let committed = repo_root().join("schemas");
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(tmp.path()).unwrap() {
        let e = entry.unwrap();
        let want = std::fs::read_to_string(e.path()).unwrap();
        let have = std::fs::read_to_string(committed.join(e.file_name())).unwrap_or_default();
        if want != have {
            stale.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    assert!(
        stale.is_empty(),
        "schemas/ is stale ({stale:?}); run: cargo run -- schema --write schemas"
    );
}

#[test]
fn schema_command_prints_a_kind() {
    let out = ok(std::process::Command::new(BIN)
        .args(["schema", "node"])
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["title"], "Node");
    assert!(v["properties"]["spec"]["properties"]["bootMACs"].is_object());
    let bad = std::process::Command::new(BIN)
        .args(["schema", "toaster"])
        .output()
        .unwrap();
    assert!(!bad.status.success() && text(&bad).contains("unknown kind"));
}
