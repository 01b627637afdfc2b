//! Nomad's bootstrap: ACLs bootstrapped once with the management token Groundwork generated
//! (and committed, as a Credential) before any server started, then the namespaces.
//!
//! The token is the journal: it exists before the one-shot call, so whatever stops where, a
//! later pass asks Nomad whether that token works (`GET /v1/acl/token/self`) and calls
//! `POST /v1/acl/bootstrap {"BootstrapSecret": TOKEN}` only when it does not. A bootstrap
//! that answers "already done" while the token does not work means someone else
//! bootstrapped: the layer stops with the reset procedure, nothing is retried.

use std::time::Duration;

use groundwork_types::NomadConfig;
use serde_json::json;

use crate::runtime::Ctx;

use super::vault::Outcome;

/// What a bootstrap answer means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bootstrapped {
    /// Done now, or before (the stored token works).
    Yes,
    /// Done by someone else: the stored token is not Nomad's management token.
    ByAnother,
    /// Try again later (no leader, a transient error).
    Retry(String),
}

/// Classifies `POST /v1/acl/bootstrap`'s answer.
pub fn bootstrap_answer(code: u16, body: &str) -> Bootstrapped {
    match code {
        200 => Bootstrapped::Yes,
        400 if body.contains("already done") => Bootstrapped::ByAnother,
        _ => Bootstrapped::Retry(format!("acl/bootstrap: HTTP {code}: {}", body.trim())),
    }
}

pub async fn converge(
    stack: &str,
    layer: &str,
    cfg: &NomadConfig,
    members: &[String],
    ctx: &Ctx,
) -> Outcome {
    let mut out = Outcome::default();
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("a TLS backend");
    let base = |a: &str| format!("http://{a}:{}", cfg.http_port);
    // A member that knows the leader (followers forward writes).
    let mut at = None;
    for a in members {
        if let Ok(r) = c.get(format!("{}/v1/status/leader", base(a))).send().await
            && r.status().is_success()
            && r.text().await.is_ok_and(|t| t.contains(':'))
        {
            at = Some(base(a));
            break;
        }
    }
    let Some(at) = at else {
        out.waiting = Some("a nomad leader".into());
        return out;
    };
    let mut token = String::new();
    if cfg.acl_bootstrap {
        let name = super::drivers::nomad::generated(stack, layer)[0].0.clone();
        let Some(t) = super::credential_value(ctx, &name) else {
            out.waiting = Some(format!("the generated management token {name}"));
            return out;
        };
        token = t;
        let works = c
            .get(format!("{at}/v1/acl/token/self"))
            .header("X-Nomad-Token", &token)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if !works {
            crate::crashpoint::hit("nomad-before-bootstrap");
            let r = c
                .post(format!("{at}/v1/acl/bootstrap"))
                .json(&json!({ "BootstrapSecret": token }))
                .send()
                .await;
            let (code, body) = match r {
                Ok(r) => {
                    let code = r.status().as_u16();
                    // The body of a success holds the token: only failures are read.
                    let body = if code == 200 {
                        String::new()
                    } else {
                        r.text().await.unwrap_or_default()
                    };
                    (code, body)
                }
                Err(e) => (0, e.without_url().to_string()),
            };
            match bootstrap_answer(code, &body) {
                Bootstrapped::Yes => {
                    tracing::info!(layer, "nomad: ACLs bootstrapped with the generated token");
                    crate::crashpoint::hit("nomad-after-bootstrap");
                }
                Bootstrapped::ByAnother => {
                    let msg = format!(
                        "Nomad's ACLs were bootstrapped with a token Groundwork does not hold \
                         (Credential {name} does not work); see docs/services.md, \"Nomad: \
                         bootstrapped by another\""
                    );
                    out.stop = Some(("BootstrapSecretUnknown", msg.clone()));
                    out.waiting = Some(msg);
                    return out;
                }
                Bootstrapped::Retry(why) => {
                    out.waiting = Some(why);
                    return out;
                }
            }
        }
        out.done
            .push("ACLs bootstrapped with the generated token (verified)".into());
    }
    for ns in &cfg.namespaces {
        let r = c
            .post(format!("{at}/v1/namespace/{ns}"))
            .header("X-Nomad-Token", &token)
            .json(&json!({"Name": ns, "Description": format!("Groundwork: ServiceStack {stack}")}))
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => out.done.push(format!("namespace {ns}")),
            Ok(r) => {
                out.waiting = Some(format!("namespace {ns}: HTTP {}", r.status()));
                return out;
            }
            Err(e) => {
                out.waiting = Some(format!("namespace {ns}: {}", e.without_url()));
                return out;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_answers() {
        assert_eq!(bootstrap_answer(200, ""), Bootstrapped::Yes);
        assert_eq!(
            bootstrap_answer(400, "ACL bootstrap already done (reset index: 7)"),
            Bootstrapped::ByAnother
        );
        assert!(matches!(
            bootstrap_answer(500, "No cluster leader"),
            Bootstrapped::Retry(_)
        ));
        assert!(matches!(
            bootstrap_answer(0, "connection refused"),
            Bootstrapped::Retry(_)
        ));
    }
}
