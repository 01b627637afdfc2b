//! Vault's bootstrap: the one-shot `sys/init`, journalled; unsealing every member that is
//! sealed, after every restart; and the level-triggered configuration (mounts, AppRole,
//! policies and roles, the Consul gossip key), each created only when missing.
//!
//! The journal is one Credential per layer, `STACK-LAYER-vault-init`, whose annotation
//! [`JOURNAL_ANNOTATION`] says `intent` (written before `sys/init` is called) or
//! `committed` (the whole answer, key shares and root token, stored sealed in the same
//! write that says so). [`next`] decides from the journal and what the members say; the
//! rest of this module reads and acts. Init is called only while the journal says `intent`
//! and every member answers that it is not initialised, so no crash can make Groundwork call
//! it twice; a crash between Vault's answer and the commit leaves a Vault initialised
//! without stored keys, which is reported (`InitSecretsLost`) and never "repaired" by a
//! second init.

use std::time::Duration;

use groundwork_types::{
    Credential, CredentialSpec, ServiceStack, VaultConfig, VaultImplementation,
};
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::runtime::Ctx;

pub const JOURNAL_ANNOTATION: &str = "groundwork.dev/journal";
/// Which init attempt the journal is at (1 first); each interrupted attempt raises it and
/// with it the members' data epoch.
pub const ATTEMPT_ANNOTATION: &str = "groundwork.dev/attempt";
/// The SHA-256 of the PKI root certificate Groundwork made sure of: once set, the root is
/// never generated again, whatever Vault answers.
pub const PKI_ROOT_ANNOTATION: &str = "groundwork.dev/pki-root-sha256";

/// The members' data epoch the journal asks for: one less than its attempt.
pub fn data_epoch(c: &Credential) -> u32 {
    attempt_of(c).saturating_sub(1)
}

fn attempt_of(c: &Credential) -> u32 {
    c.annotations()
        .get(ATTEMPT_ANNOTATION)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1)
}

/// The journal Credential of a vault layer.
pub fn journal_name(stack: &str, layer: &str) -> String {
    format!("{stack}-{layer}-vault-init")
}

/// What `sys/init` answered, as the journal keeps it (sealed).
#[derive(Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InitKeys {
    pub keys: Vec<String>,
    pub root_token: String,
}

impl std::fmt::Debug for InitKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InitKeys({} shares, root token)", self.keys.len())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Journal {
    Empty,
    /// Intent stored, at this attempt.
    Intent(u32),
    Committed,
}

/// A member as Groundwork sees it: `None` where it did not answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    pub address: String,
    pub initialized: Option<bool>,
    pub sealed: Option<bool>,
    /// Its node agent runs its current spec (so its data epoch too).
    pub settled: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do until a member answers.
    Wait(String),
    /// Store the intent to initialise.
    RecordIntent,
    /// Call `sys/init` on this member (the journal says `intent`, no member is initialised).
    Init(String),
    /// An init of this attempt answered and was never committed: nobody holds its root
    /// token, so that Vault holds nothing. Raise the attempt: the members restart on empty
    /// data (the old moved aside) and init runs again.
    Discard(u32),
    /// Unseal these members with the stored shares.
    Unseal(Vec<String>),
    /// Every member answering is unsealed: keep the configuration in place.
    Configure,
    /// Cannot go on without the operator: (condition reason, message).
    Stop(&'static str, String),
}

/// The next step, from the journal and the members (in ordinal order).
pub fn next(journal: Journal, members: &[MemberView]) -> Step {
    let answering: Vec<&MemberView> = members.iter().filter(|m| m.initialized.is_some()).collect();
    if answering.is_empty() {
        return Step::Wait("a vault member to answer on its API".into());
    }
    let initialised: Vec<&&MemberView> = answering
        .iter()
        .filter(|m| m.initialized == Some(true))
        .collect();
    match journal {
        Journal::Committed => {
            if initialised.is_empty() && answering.len() == members.len() {
                return Step::Stop(
                    "VaultDataLost",
                    "Groundwork holds the keys of this Vault, but no member is initialised: its \
                     data is gone. Groundwork does not initialise it again over stored keys; see \
                     docs/services.md, \"Vault: data lost\""
                        .into(),
                );
            }
            // Raft members that have not joined yet answer "not initialised" and sealed:
            // unsealing them with the cluster's shares completes their join.
            let sealed: Vec<String> = answering
                .iter()
                .filter(|m| m.sealed != Some(false))
                .map(|m| m.address.clone())
                .collect();
            if !sealed.is_empty() {
                return Step::Unseal(sealed);
            }
            Step::Configure
        }
        Journal::Intent(attempt) if !initialised.is_empty() => {
            // Configuration runs only after a commit, and the root token of an uncommitted
            // init was never outside the process that called it: the Vault is empty.
            if initialised.iter().all(|m| m.settled) {
                Step::Discard(attempt + 1)
            } else {
                Step::Wait("the vault members to run their current spec".into())
            }
        }
        Journal::Empty if !initialised.is_empty() => {
            let at = &initialised[0].address;
            Step::Stop(
                "InitSecretsLost",
                format!(
                    "Vault on {at} was initialised outside Groundwork (or its journal \
                     Credential was deleted); Groundwork holds no keys for it and will not \
                     initialise it again: see docs/services.md, \"Vault: initialised without keys\""
                ),
            )
        }
        Journal::Empty => Step::RecordIntent,
        Journal::Intent(_) => {
            if answering.len() < members.len() {
                // Only when every member says it is not initialised: a member that is down
                // could be an initialised one.
                return Step::Wait("every vault member to answer before initialising".into());
            }
            Step::Init(answering[0].address.clone())
        }
    }
}

/// What a pass did and where the layer stands.
#[derive(Debug, Default)]
pub struct Outcome {
    pub done: Vec<String>,
    /// Set while bootstrap is not complete.
    pub waiting: Option<String>,
    /// A condition that needs the operator: (reason, message).
    pub stop: Option<(&'static str, String)>,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("a TLS backend")
}

async fn view(c: &reqwest::Client, base: &str, address: &str) -> MemberView {
    let get = |p: &str| {
        let url = format!("{base}{p}");
        async move {
            let r = c.get(url).send().await.ok()?;
            if !r.status().is_success() {
                return None;
            }
            r.json::<Value>().await.ok()
        }
    };
    let initialized = get("/v1/sys/init")
        .await
        .and_then(|v| v["initialized"].as_bool());
    let sealed = if initialized.is_some() {
        get("/v1/sys/seal-status")
            .await
            .and_then(|v| v["sealed"].as_bool())
    } else {
        None
    };
    MemberView {
        address: address.to_string(),
        initialized,
        sealed,
        settled: false,
    }
}

fn journal_of(c: Option<&Credential>) -> Journal {
    let Some(c) = c else {
        return Journal::Empty;
    };
    match c.annotations().get(JOURNAL_ANNOTATION).map(String::as_str) {
        Some("committed") => Journal::Committed,
        _ => Journal::Intent(attempt_of(c)),
    }
}

/// One pass: reads the journal (from the API, not a cache: it decides a one-shot call) and
/// the members, and acts until the layer is configured or a step must wait.
pub async fn converge(
    stack: &ServiceStack,
    layer: &str,
    cfg: &VaultConfig,
    members: &[(String, bool)],
    consul_gossip: Option<String>,
    ctx: &Ctx,
) -> Outcome {
    let mut out = Outcome::default();
    let name = journal_name(&stack.name_any(), layer);
    let api: Api<Credential> = Api::all(ctx.client.clone());
    let c = client();
    let url = |a: &str| super::drivers::vault::api_url(cfg, a);
    let transit = cfg.unseal.mode == groundwork_types::VaultUnsealMode::Transit;
    for _ in 0..6 {
        let stored = match api.get_opt(&name).await {
            Ok(s) => s,
            Err(e) => {
                out.waiting = Some(format!("the journal Credential {name}: {}", api_err(&e)));
                return out;
            }
        };
        let journal = journal_of(stored.as_ref());
        let mut views = Vec::new();
        for (a, settled) in members {
            let mut v = view(&c, &url(a), a).await;
            v.settled = *settled;
            views.push(v);
        }
        match next(journal, &views) {
            Step::Wait(w) => {
                out.waiting = Some(w);
                return out;
            }
            Step::Stop(reason, msg) => {
                tracing::warn!(layer, reason, "{msg}");
                out.waiting = Some(msg.clone());
                out.stop = Some((reason, msg));
                return out;
            }
            Step::RecordIntent => {
                let mut j = Credential::new(
                    &name,
                    CredentialSpec {
                        username: "vault-init".into(),
                        // A Credential has a password; the intent's says only that.
                        password: Some("{\"intent\":true}".into()),
                        encrypted_password: None,
                    },
                );
                j.metadata.annotations =
                    Some([(JOURNAL_ANNOTATION.into(), "intent".into())].into());
                j.metadata.labels =
                    Some([(groundwork_types::STACK_LABEL.to_string(), stack.name_any())].into());
                // No owner: deleting the stack must not delete the only copy of the keys.
                crate::crashpoint::hit("vault-before-intent");
                match api.create(&PostParams::default(), &j).await {
                    Ok(_) => {
                        tracing::info!(layer, journal = %name, "vault: intent to initialise recorded");
                        crate::crashpoint::hit("vault-after-intent");
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => {
                        out.waiting = Some(format!(
                            "recording the intent to initialise: {}",
                            api_err(&e)
                        ));
                        return out;
                    }
                }
            }
            Step::Discard(attempt) => {
                let Some(mut j) = stored else { continue };
                j.annotations_mut()
                    .insert(ATTEMPT_ANNOTATION.into(), attempt.to_string());
                crate::crashpoint::hit("vault-before-discard");
                match api.replace(&name, &PostParams::default(), &j).await {
                    Ok(_) => tracing::warn!(
                        layer,
                        attempt,
                        "vault: an init was interrupted before its answer was stored; nobody \
                         holds its root token, so the members restart on empty data (theirs is \
                         kept aside) and init runs again"
                    ),
                    Err(e) => {
                        out.waiting = Some(format!("raising the init attempt: {}", api_err(&e)));
                        return out;
                    }
                }
                out.waiting = Some(format!(
                    "the vault members to restart on empty data (init attempt {attempt})"
                ));
                return out;
            }
            Step::Init(address) => {
                let Some(mut j) = stored else { continue };
                // The commit must not be refused after the one-shot call: the API checks a
                // stand-in answer of the largest size first (dry run), before init.
                let mut probe = j.clone();
                probe.spec.password = Some(
                    serde_json::to_string(&InitKeys {
                        keys: vec!["0".repeat(132); cfg.unseal.shares as usize],
                        root_token: "0".repeat(128),
                    })
                    .expect("serialisable"),
                );
                probe.spec.encrypted_password = None;
                probe
                    .annotations_mut()
                    .insert(JOURNAL_ANNOTATION.into(), "committed".into());
                let dry = PostParams {
                    dry_run: true,
                    ..Default::default()
                };
                if let Err(e) = api.replace(&name, &dry, &probe).await {
                    let msg = format!(
                        "the journal {name} would not take Vault's answer ({}): not initialising",
                        api_err(&e)
                    );
                    out.stop = Some(("JournalRefused", msg.clone()));
                    out.waiting = Some(msg);
                    return out;
                }
                // Transit: members unseal themselves; the shares are recovery shares.
                let body = if transit {
                    json!({
                        "recovery_shares": cfg.unseal.shares,
                        "recovery_threshold": cfg.unseal.threshold,
                    })
                } else {
                    json!({
                        "secret_shares": cfg.unseal.shares,
                        "secret_threshold": cfg.unseal.threshold,
                    })
                };
                tracing::info!(layer, member = %address, "vault: initialising");
                let answer = match c
                    .put(format!("{}/v1/sys/init", url(&address)))
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
                    Ok(r) => {
                        // Never the body: it could hold keys.
                        out.waiting = Some(format!("sys/init on {address}: HTTP {}", r.status()));
                        return out;
                    }
                    Err(e) => {
                        out.waiting = Some(format!("sys/init on {address}: {}", e.without_url()));
                        return out;
                    }
                };
                let keys = answer.as_ref().and_then(|v| {
                    let shares = if transit { "recovery_keys" } else { "keys" };
                    Some(InitKeys {
                        keys: v[shares]
                            .as_array()?
                            .iter()
                            .filter_map(|k| k.as_str().map(str::to_string))
                            .collect(),
                        root_token: v["root_token"].as_str()?.to_string(),
                    })
                });
                let Some(keys) = keys.filter(|k| !k.keys.is_empty()) else {
                    let msg = format!(
                        "sys/init on {address} answered without key shares and a root token"
                    );
                    out.stop = Some(("InitSecretsLost", msg.clone()));
                    out.waiting = Some(msg);
                    return out;
                };
                crate::crashpoint::hit("vault-after-init");
                // The whole answer, in one write; retried while the API refuses, since this
                // answer exists nowhere else.
                j.spec.password = Some(serde_json::to_string(&keys).expect("serialisable"));
                j.spec.encrypted_password = None;
                j.annotations_mut()
                    .insert(JOURNAL_ANNOTATION.into(), "committed".into());
                let mut committed = false;
                for attempt in 0..60 {
                    match api.replace(&name, &PostParams::default(), &j).await {
                        Ok(_) => {
                            committed = true;
                            break;
                        }
                        Err(kube::Error::Api(s)) if s.code == 409 => {
                            if let Ok(cur) = api.get(&name).await {
                                j.metadata.resource_version = cur.metadata.resource_version;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(layer, attempt, error = %api_err(&e), "vault: storing the init answer; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
                if !committed {
                    let msg = format!(
                        "Vault on {address} is initialised and its answer could not be stored \
                         for 30 s; see docs/services.md, \"Vault: initialised without keys\""
                    );
                    out.stop = Some(("InitSecretsLost", msg.clone()));
                    out.waiting = Some(msg);
                    return out;
                }
                tracing::info!(layer, member = %address, shares = keys.keys.len(), "vault: initialised; the answer is stored sealed");
                crate::crashpoint::hit("vault-after-commit");
            }
            Step::Unseal(addresses) if transit => {
                out.waiting = Some(format!(
                    "vault on {} to unseal itself through Groundwork's transit endpoint (see \
                     its log if it does not: it must reach the agent API with the layer's token)",
                    addresses.join(", ")
                ));
                return out;
            }
            Step::Unseal(addresses) => {
                let Some(keys) = open(stored.as_ref(), &name, ctx) else {
                    out.waiting = Some(format!("the key shares in {name} (cannot open them)"));
                    return out;
                };
                for a in &addresses {
                    match unseal(&c, &url(a), &keys).await {
                        Ok(()) => tracing::info!(layer, member = %a, "vault: member unsealed"),
                        Err(e) => {
                            tracing::warn!(layer, member = %a, error = %e, "vault: unseal failed")
                        }
                    }
                }
                out.done.push("members unsealed".into());
            }
            Step::Configure => {
                let Some(keys) = open(stored.as_ref(), &name, ctx) else {
                    out.waiting = Some(format!("the root token in {name} (cannot open it)"));
                    return out;
                };
                // Configuration goes to the first unsealed member (raft standbys forward).
                let target = url(&members[0].0);
                let recorded = stored
                    .as_ref()
                    .and_then(|j| j.annotations().get(PKI_ROOT_ANNOTATION).cloned());
                let r = configure(
                    &c,
                    &target,
                    &keys.root_token,
                    cfg,
                    consul_gossip.as_deref(),
                    recorded.as_deref(),
                )
                .await;
                match r {
                    Ok((done, Some(root))) => {
                        // The root found or made is recorded before it counts as done.
                        let mut j = stored.clone().expect("committed");
                        j.annotations_mut().insert(PKI_ROOT_ANNOTATION.into(), root);
                        match api.replace(&name, &PostParams::default(), &j).await {
                            Ok(_) => tracing::info!(layer, "vault: the PKI root is recorded"),
                            Err(e) => {
                                out.waiting =
                                    Some(format!("recording the PKI root: {}", api_err(&e)));
                                return out;
                            }
                        }
                        out.done.insert(0, "initialised (journalled)".into());
                        out.done.extend(done);
                        out.waiting = None;
                    }
                    Ok((done, None)) => {
                        out.done.insert(0, "initialised (journalled)".into());
                        out.done.extend(done);
                        out.done.dedup();
                        out.waiting = None;
                    }
                    Err(e) => out.waiting = Some(format!("configuring Vault: {e}")),
                }
                return out;
            }
        }
    }
    out.waiting
        .get_or_insert_with(|| "vault bootstrap to settle".into());
    out
}

fn api_err(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} (HTTP {})", s.message, s.code),
        other => other.to_string(),
    }
}

fn open(c: Option<&Credential>, name: &str, ctx: &Ctx) -> Option<InitKeys> {
    let c = c?;
    let text = match (&c.spec.password, &c.spec.encrypted_password) {
        (Some(p), _) => p.clone(),
        (None, Some(sealed)) => ctx
            .secret_key
            .as_ref()?
            .open(&format!("credentials/{name}"), sealed)
            .ok()?,
        _ => return None,
    };
    serde_json::from_str(&text).ok()
}

/// Gives shares until the member says it is unsealed.
async fn unseal(c: &reqwest::Client, base: &str, keys: &InitKeys) -> Result<(), String> {
    for k in &keys.keys {
        let r = c
            .put(format!("{base}/v1/sys/unseal"))
            .json(&json!({ "key": k }))
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !r.status().is_success() {
            return Err(format!("sys/unseal: HTTP {}", r.status()));
        }
        let v: Value = r.json().await.map_err(|e| e.without_url().to_string())?;
        if v["sealed"] == false {
            return Ok(());
        }
    }
    Err("still sealed after every stored share".into())
}

/// Mounts, auth methods, policies and roles: each written only when missing (policies and
/// roles are upserts and rewritten every pass, correcting drift).
/// Returns the steps and, when the PKI root was found or made now, its certificate's
/// SHA-256 to record.
async fn configure(
    c: &reqwest::Client,
    base: &str,
    token: &str,
    cfg: &VaultConfig,
    gossip: Option<&str>,
    pki_recorded: Option<&str>,
) -> Result<(Vec<String>, Option<String>), String> {
    let call = |m: reqwest::Method, p: &str| {
        c.request(m, format!("{base}/v1/{p}"))
            .header("X-Vault-Token", token)
    };
    let get = |p: String| async move {
        let r = call(reqwest::Method::GET, &p)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if r.status() == reqwest::StatusCode::NOT_FOUND
            || r.status() == reqwest::StatusCode::NO_CONTENT
        {
            return Ok::<_, String>(None);
        }
        if !r.status().is_success() {
            return Err(format!("GET {p}: HTTP {}", r.status()));
        }
        Ok(r.json::<Value>().await.ok())
    };
    let write = |p: String, body: Value| async move {
        let r = call(reqwest::Method::POST, &p)
            .json(&body)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !r.status().is_success() {
            let why = r.text().await.unwrap_or_default();
            return Err(format!("POST {p}: {why}"));
        }
        Ok::<_, String>(())
    };
    let has = |v: &Option<Value>, key: &str| {
        v.as_ref()
            .is_some_and(|v| v.get(key).is_some() || v["data"].get(key).is_some())
    };
    let mut done = Vec::new();
    let mut record = None;
    let kv = &cfg.kv.path;
    let mounts = get("sys/mounts".into()).await?;
    if !has(&mounts, &format!("{kv}/")) {
        let mut body = json!({"type": "kv", "description": "Groundwork: the platform's secrets"});
        if cfg.kv.version == 2 {
            body["options"] = json!({"version": "2"});
        }
        write(format!("sys/mounts/{kv}"), body).await?;
    }
    done.push(format!("kv v{} at {kv}/", cfg.kv.version));
    if let Some(p) = &cfg.pki {
        if !has(&mounts, &format!("{}/", p.path)) {
            write(
                format!("sys/mounts/{}", p.path),
                json!({"type": "pki", "description": "Groundwork: the platform's PKI root"}),
            )
            .await?;
        }
        done.push(format!("pki mounted at {}/", p.path));
        match pki_recorded {
            Some(sum) => done.push(format!(
                "pki root {} (sha256 {})",
                p.common_name,
                &sum[..12.min(sum.len())]
            )),
            None => {
                let found = match existing_root(c, base, token, &p.path).await? {
                    Some(pem) => pem,
                    None => {
                        let r = call(
                            reqwest::Method::POST,
                            &format!("{}/root/generate/internal", p.path),
                        )
                        .json(&json!({"common_name": p.common_name, "ttl": p.ttl}))
                        .send()
                        .await
                        .map_err(|e| e.without_url().to_string())?;
                        if !r.status().is_success() {
                            return Err(format!(
                                "{}/root/generate/internal: HTTP {}",
                                p.path,
                                r.status()
                            ));
                        }
                        let v: Value = r.json().await.map_err(|e| e.without_url().to_string())?;
                        tracing::info!(mount = %p.path, "vault: PKI root generated");
                        crate::crashpoint::hit("vault-after-pki-root");
                        v["data"]["certificate"]
                            .as_str()
                            .filter(|s| !s.is_empty())
                            .or_else(|| v["data"]["issuing_ca"].as_str())
                            .ok_or("root/generate answered without a certificate")?
                            .to_string()
                    }
                };
                let sum: String =
                    ring::digest::digest(&ring::digest::SHA256, found.trim().as_bytes())
                        .as_ref()
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                done.push(format!(
                    "pki root {} (sha256 {})",
                    p.common_name,
                    &sum[..12]
                ));
                record = Some(sum);
            }
        }
    }
    if !cfg.app_role_policies.is_empty() {
        let auth = get("sys/auth".into()).await?;
        if !has(&auth, "approle/") {
            write("sys/auth/approle".into(), json!({"type": "approle"})).await?;
        }
        done.push("approle auth".into());
        for n in &cfg.app_role_policies {
            let path = if cfg.kv.version == 2 {
                format!("{kv}/data/{n}/*")
            } else {
                format!("{kv}/{n}/*")
            };
            let policy = format!("path \"{path}\" {{\n  capabilities = [\"read\"]\n}}\n");
            // RustyVault 0.2.1 serves no policy endpoint: the role is bound to the name.
            let policies = cfg.implementation == VaultImplementation::Vault;
            if policies {
                write(format!("sys/policies/acl/{n}"), json!({"policy": policy})).await?;
            }
            write(
                format!("auth/approle/role/{n}"),
                json!({"token_policies": [n], "policies": [n], "token_ttl": "1h"}),
            )
            .await?;
            done.push(if policies {
                format!("policy and AppRole role {n}")
            } else {
                format!("AppRole role {n} (no policy API in RustyVault)")
            });
        }
    }
    if cfg.consul_gossip_key
        && let Some(key) = gossip
    {
        let (read, body) = if cfg.kv.version == 2 {
            (
                format!("{kv}/data/consul/gossip"),
                json!({"data": {"key": key}, "options": {"cas": 0}}),
            )
        } else {
            (format!("{kv}/consul/gossip"), json!({"key": key}))
        };
        if get(read.clone()).await?.is_none() {
            write(read, body).await?;
        }
        done.push(format!("consul gossip key at {kv}/consul/gossip"));
    }
    Ok((done, record))
}

/// The PKI root certificate Vault already has at `mount`, or None when it answers that it
/// has none; an answer that is neither is an error (never a reason to generate).
async fn existing_root(
    c: &reqwest::Client,
    base: &str,
    token: &str,
    mount: &str,
) -> Result<Option<String>, String> {
    // Vault: `cert/ca` (an empty certificate when none); RustyVault: `ca` (500 "not config").
    for path in ["cert/ca", "ca"] {
        let r = c
            .get(format!("{base}/v1/{mount}/{path}"))
            .header("X-Vault-Token", token)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        let code = r.status();
        let body = r.text().await.unwrap_or_default();
        if code.is_success() {
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            if let Some(cert) = v["data"]["certificate"]
                .as_str()
                .filter(|c| !c.trim().is_empty())
            {
                return Ok(Some(cert.to_string()));
            }
            continue;
        }
        let absent = code == reqwest::StatusCode::NOT_FOUND
            || code == reqwest::StatusCode::NO_CONTENT
            || body.contains("not config")
            || body.contains("not found");
        if !absent {
            return Err(format!("{mount}/{path}: HTTP {code}"));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(a: &str, initialized: Option<bool>, sealed: Option<bool>) -> MemberView {
        MemberView {
            address: a.into(),
            initialized,
            sealed,
            settled: true,
        }
    }

    /// Every crash point of the init sequence, as the state it leaves: the next step never
    /// calls init on an initialised Vault and never loses a stored answer.
    #[test]
    fn init_is_called_once_whatever_stops_where() {
        let fresh = [m("a", Some(false), None), m("b", Some(false), None)];
        // Before the intent: record it.
        assert_eq!(next(Journal::Empty, &fresh), Step::RecordIntent);
        // Intent stored, init not called (or Vault never got it): call it, on the first.
        assert_eq!(next(Journal::Intent(1), &fresh), Step::Init("a".into()));
        // A member down: it could be initialised; wait.
        let partial = [m("a", Some(false), None), m("b", None, None)];
        assert!(matches!(next(Journal::Intent(1), &partial), Step::Wait(_)));
        // Init answered, the answer not stored (crash in between): nobody holds that root
        // token, so the Vault is empty: the next attempt starts on empty data, never a
        // second init over the first.
        let inited = [m("a", Some(true), Some(true)), m("b", Some(false), None)];
        assert_eq!(next(Journal::Intent(1), &inited), Step::Discard(2));
        assert_eq!(next(Journal::Intent(2), &inited), Step::Discard(3));
        // ... once the member runs its current spec (its data epoch), not before.
        let mut moving = inited.clone();
        moving[0].settled = false;
        assert!(matches!(next(Journal::Intent(2), &moving), Step::Wait(_)));
        // Initialised by someone else, or the journal deleted: stop, say so, no init.
        assert!(matches!(
            next(Journal::Empty, &inited),
            Step::Stop("InitSecretsLost", _)
        ));
        // Committed: unseal every sealed member, joiners included.
        assert_eq!(
            next(Journal::Committed, &inited),
            Step::Unseal(vec!["a".into(), "b".into()])
        );
        // Committed but every member has forgotten: data lost, never a second init.
        assert!(matches!(
            next(Journal::Committed, &fresh),
            Step::Stop("VaultDataLost", _)
        ));
        // ... unless a member is just not answering.
        assert_eq!(
            next(Journal::Committed, &partial),
            Step::Unseal(vec!["a".into()])
        );
        // Nobody answers: wait, whatever the journal says.
        let down = [m("a", None, None)];
        for j in [Journal::Empty, Journal::Intent(1), Journal::Committed] {
            assert!(matches!(next(j, &down), Step::Wait(_)));
        }
        // All unsealed: configure.
        let up = [
            m("a", Some(true), Some(false)),
            m("b", Some(true), Some(false)),
        ];
        assert_eq!(next(Journal::Committed, &up), Step::Configure);
    }

    #[test]
    fn the_answer_never_shows_in_debug_output() {
        let k = InitKeys {
            keys: vec!["deadbeef".into()],
            root_token: "s.secret".into(),
        };
        let d = format!("{k:?}");
        assert!(!d.contains("deadbeef") && !d.contains("s.secret"), "{d}");
    }
}
