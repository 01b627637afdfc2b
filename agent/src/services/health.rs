//! Health checks: an HTTP URL answering 2xx, a TCP port accepting, or a command exiting 0.

use std::time::Duration;

use groundwork_types::HealthCheck;

use super::expand::Vars;

/// `Ok(())` when healthy, else what failed.
pub async fn check(h: &HealthCheck, vars: &Vars) -> Result<(), String> {
    const LIMIT: Duration = Duration::from_secs(5);
    if let Some(url) = &h.http {
        let url = vars.expand(url);
        // One client for every check of the process: a starting service is checked every
        // 100 ms, and building a client (its TLS roots) each time is most of a check's cost.
        static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
        let client = CLIENT.get_or_init(|| {
            reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap_or_default()
        });
        match client.get(&url).timeout(LIMIT).send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => return Err(format!("GET {url}: {}", r.status())),
            Err(e) => return Err(format!("GET {url}: {}", e.without_url())),
        }
    }
    if let Some(addr) = &h.tcp {
        let addr = vars.expand(addr);
        match tokio::time::timeout(LIMIT, tokio::net::TcpStream::connect(&addr)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("connect {addr}: {e}")),
            Err(_) => return Err(format!("connect {addr}: no answer within {LIMIT:?}")),
        }
    }
    if let Some((prog, args)) = h.command.split_first() {
        let out = tokio::time::timeout(
            LIMIT * 2,
            tokio::process::Command::new(vars.expand(prog))
                .args(vars.expand_all(args))
                .kill_on_drop(true)
                .output(),
        )
        .await;
        match out {
            Ok(Ok(o)) if o.status.success() => {}
            Ok(Ok(o)) => {
                let text = String::from_utf8_lossy(&o.stderr).to_string()
                    + &String::from_utf8_lossy(&o.stdout);
                return Err(format!(
                    "{prog}: {}: {}",
                    o.status,
                    text.lines().next().unwrap_or("").trim()
                ));
            }
            Ok(Err(e)) => return Err(format!("{prog}: {e}")),
            Err(_) => return Err(format!("{prog}: no answer within {:?}", LIMIT * 2)),
        }
    }
    Ok(())
}
