//! The web console with 1,000 Nodes in 25 Racks, in Debian's Chromium (Playwright): time from
//! opening the page (token sign-in, lists, first drawing of every rack) to all 1,000 Nodes
//! drawn; then 200 status changes written by another client, each timed from the write to
//! its box changing on the page (p50, p99), with the page's main-thread time per update
//! (script, style, layout) and its JS heap. `cargo bench --bench console`; needs chromium and
//! playwright-core (`tests/run` installs both).

#[path = "../tests/support/mod.rs"]
mod support;

use std::fmt::Write;
use std::process::Command;

use support::console;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = console::console_server(dir.path());
    // 25 racks of 42 U, 40 one-U Nodes each.
    let mut y = String::new();
    for r in 0..25 {
        let _ = write!(
            y,
            "---\napiVersion: groundwork.dev/v1alpha1\nkind: Rack\nmetadata: {{name: bench-r{r:02}}}\nspec: {{datacenter: dc1, availabilityZone: az1, heightU: 42, powerBudgetKw: 20}}\n"
        );
        for u in 1..=40 {
            let _ = write!(
                y,
                "---\napiVersion: groundwork.dev/v1alpha1\nkind: Node\nmetadata: {{name: bench-r{r:02}-u{u:02}}}\nspec: {{rack: {{name: bench-r{r:02}, position: {u}}}, bootMACs: [\"02:00:00:00:{r:02x}:{u:02x}\"], powerDrawKw: 0.3}}\n"
            );
        }
    }
    let f = support::write(dir.path(), "bench.yaml", &y);
    let o = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&s.kubeconfig)
        .args(["apply", "--server-side", "-f"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", support::text(&o));
    let o = console::run_script(&s, "bench", "bench-r00-u01", dir.path());
    assert!(o.status.success(), "{}", support::text(&o));
    let r: serde_json::Value =
        serde_json::from_str(support::stdout(&o).lines().last().unwrap_or("{}")).unwrap();
    println!(
        "console, {} Nodes in 25+ Racks: first render {} ms",
        r["nodes"], r["firstRenderMs"]
    );
    println!(
        "console: status change -> box changed: p50 {} ms, p99 {} ms, max {} ms over {} updates",
        r["updateLatencyMs"]["p50"],
        r["updateLatencyMs"]["p99"],
        r["updateLatencyMs"]["max"],
        r["updates"]
    );
    println!(
        "console: main-thread time per update {} ms; JS heap {} MiB; DOM nodes {}",
        r["mainThreadMsPerUpdate"], r["jsHeapMiB"], r["domNodes"]
    );
}
