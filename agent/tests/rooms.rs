//! The agent runs on machines: it must never link the server's crates. `cargo tree` over its
//! normal dependencies names the workspace crates it pulls in; only the types and the PKI may
//! be among them.

use std::process::Command;

#[test]
fn the_agent_depends_on_types_and_pki_only() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let o = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-p",
            "groundwork-agent",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(root)
        .output()
        .expect("run cargo tree");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut ours: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("groundwork-"))
        .collect();
    ours.sort();
    ours.dedup();
    assert!(
        ours.contains(&"groundwork-types"),
        "cargo tree listed nothing useful:\n{out}"
    );
    let allowed = ["groundwork-agent", "groundwork-pki", "groundwork-types"];
    let extra: Vec<&&str> = ours.iter().filter(|n| !allowed.contains(n)).collect();
    assert!(
        extra.is_empty(),
        "the agent links server-side crates {extra:?}: machine-side code depends on \
         groundwork-types and groundwork-pki only (docs/ARCHITECTURE.md)"
    );
}
