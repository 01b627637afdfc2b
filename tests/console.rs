//! The web console (`/ui/`) in Debian's real Chromium, driven by Playwright from npm
//! (`tests/ui/console.mjs`), against a real server holding the example datacenter: the login
//! page without a token and 401 from the API; a view user sees every Node at its U position in
//! its rack; a status change by another client shows within 1 s without a reload; the view
//! user's write gets 403; the Node page shows its history, a new Event live and the log
//! stream; the service-layer graph has a box per layer; the console opens one watch per kind.
//! `tests/run` installs chromium and playwright-core (GW_UI_NODE_MODULES).

mod support;

use std::process::Command;

use support::console::{console_server, first_racked_node, run_script};
use support::text;

#[test]
fn the_console_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let s = console_server(dir.path());
    let node = first_racked_node(&s);
    let o = run_script(&s, "test", &node, dir.path());
    assert!(
        o.status.success(),
        "console test: {}\nserver log tail: {}",
        text(&o),
        s.log()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let r: serde_json::Value =
        serde_json::from_str(support::stdout(&o).lines().last().unwrap_or("{}")).unwrap();
    eprintln!("console: {r}");
    assert!(r["nodesPlaced"].as_u64().unwrap() >= 2, "{r}");
    for ms in r["liveMs"].as_array().unwrap() {
        assert!(ms.as_u64().unwrap() < 1000, "{r}");
    }
    // `groundwork ui` prints where it is.
    let o = Command::new(support::BIN)
        .arg("--kubeconfig")
        .arg(&s.kubeconfig)
        .arg("ui")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        support::stdout(&o).trim(),
        format!("{}/ui/", s.url.trim_end_matches('/'))
    );
    // The page is served to anyone (it holds no data) with a strict Content-Security-Policy.
    let o = Command::new("curl")
        .args(["-sk", "-D", "-", "-o", "/dev/null"])
        .arg(format!("{}/ui/", s.url))
        .output()
        .unwrap();
    let headers = support::stdout(&o).to_ascii_lowercase();
    assert!(
        headers.starts_with("http/1.1 200") || headers.starts_with("http/2 200"),
        "{headers}"
    );
    assert!(
        headers.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{headers}"
    );
}
