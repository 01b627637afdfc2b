//! The real Prometheus server (Debian package) scrapes the API server's /metrics, and the
//! metrics are read back through Prometheus' HTTP API.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Server, ok};

/// A plain HTTP/1.0 GET on 127.0.0.1; the body, or None if nothing answers.
fn http_get(port: u16, path_and_query: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    // Go answers an HTTP/1.0 request with HTTP/1.0.
    let status = head.split_whitespace().nth(1)?;
    (status == "200").then(|| body.to_string())
}

struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Queries Prometheus every 250 ms until the instant vector `q` has a sample.
fn query_until(port: u16, q: &str, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    let enc: String = form_urlencoded_byte_serialize(q);
    loop {
        if let Some(body) = http_get(port, &format!("/api/v1/query?query={enc}"))
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&body)
            && v["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
        {
            return v["data"]["result"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus had no sample of {q} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn form_urlencoded_byte_serialize(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn prometheus_scrapes_api_and_controller_metrics() {
    let s = Server::start_with(&["--controllers", "all"]);
    ok(s.groundwork(&["apply", "-f", support::manifests().to_str().unwrap()]));
    let target = s.url.trim_start_matches("https://").to_string();
    let pki = support::shared_pki();
    let port = support::free_tcp_port();
    let cfg = support::write(
        s.dir.path(),
        "prometheus.yml",
        &format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n- job_name: groundwork\n  scheme: https\n  tls_config:\n    ca_file: {ca}\n    cert_file: {crt}\n    key_file: {key}\n  static_configs:\n  - targets: ['{target}']\n",
            ca = pki.join("ca.crt").display(),
            crt = pki.join("admin.crt").display(),
            key = pki.join("admin.key").display(),
        ),
    );
    let log = std::fs::File::create(s.dir.path().join("prometheus.log")).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            s.dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("prometheus is installed (tests/run installs the Debian package)");
    let _prom = Prometheus(child);

    let up = query_until(port, "up{job=\"groundwork\"} == 1", Duration::from_secs(60));
    assert_eq!(up[0]["value"][1], "1", "{up}");
    let reconciles = query_until(
        port,
        "sum by (controller) (groundwork_controller_reconciles_total)",
        Duration::from_secs(30),
    );
    let controllers: Vec<&str> = reconciles
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["metric"]["controller"].as_str())
        .collect();
    for c in ["rack", "datacenter", "node-placement", "profile"] {
        assert!(controllers.contains(&c), "{c} missing from {reconciles}");
    }
    let creates = query_until(
        port,
        "groundwork_api_requests_total{verb=\"create\",resource=\"nodes\",code=\"201\"}",
        Duration::from_secs(30),
    );
    assert_eq!(
        creates[0]["value"][1], "4",
        "the 4 example nodes: {creates}"
    );
    let leaders = query_until(
        port,
        "sum(groundwork_controller_leader)",
        Duration::from_secs(30),
    );
    assert_eq!(
        leaders[0]["value"][1],
        groundwork_controller::all().len().to_string(),
        "one leader per controller: {leaders}"
    );
    query_until(
        port,
        "groundwork_store_revision > 10",
        Duration::from_secs(30),
    );
}
