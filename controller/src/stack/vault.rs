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
/// The same guard for the PKI intermediate (its signed certificate's SHA-256).
pub const PKI_INTERMEDIATE_ANNOTATION: &str = "groundwork.dev/pki-intermediate-sha256";
/// The same guard for the SSH CA (its public key's SHA-256).
pub const SSH_CA_ANNOTATION: &str = "groundwork.dev/ssh-ca-sha256";
/// Set once the root token from `sys/init` is revoked (Groundwork then uses its own token).
pub const ROOT_REVOKED_ANNOTATION: &str = "groundwork.dev/root-token-revoked";
/// The policy of Groundwork's own token.
pub const GROUNDWORK_POLICY: &str = "groundwork";

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

/// What a token lookup (`auth/token/lookup-self`) answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenState {
    Valid,
    /// Vault answered and refused it (revoked, expired or never created).
    Refused,
    /// No answer.
    Unknown,
}

/// Which token configures Vault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenStep {
    /// Groundwork's own token works: use it.
    UseOwn,
    /// It does not exist yet and the root token still works: create it (with the ID
    /// Groundwork stored before, so a repeat finds it), then use it.
    CreateOwn,
    Wait,
    /// Neither works: the operator makes Groundwork's token with a new root token.
    Lost,
}

/// Groundwork's own token first; the root token only to create it.
pub fn token_step(own: TokenState, root: TokenState) -> TokenStep {
    use TokenState::*;
    match (own, root) {
        (Valid, _) => TokenStep::UseOwn,
        (Unknown, _) | (Refused, Unknown) => TokenStep::Wait,
        (Refused, Valid) => TokenStep::CreateOwn,
        (Refused, Refused) => TokenStep::Lost,
    }
}

/// The policy of Groundwork's own token: what [`configure`] touches and nothing else (it
/// cannot read the platform's secrets in KV beyond the gossip key it writes, nor seal, nor
/// manage tokens but its own).
pub fn groundwork_policy(cfg: &VaultConfig) -> String {
    let rw = r#"["create", "read", "update"]"#;
    let mut p = vec![
        ("sys/mounts".to_string(), r#"["read"]"#),
        ("sys/mounts/*".to_string(), rw),
        ("sys/auth".to_string(), r#"["read"]"#),
        (
            "sys/auth/approle".to_string(),
            r#"["create", "read", "update", "sudo"]"#,
        ),
        (format!("sys/policies/acl/{GROUNDWORK_POLICY}"), rw),
        ("auth/approle/role/*".to_string(), rw),
    ];
    for n in &cfg.app_role_policies {
        p.push((format!("sys/policies/acl/{n}"), rw));
    }
    let kv = &cfg.kv.path;
    if cfg.kv.version == 2 {
        p.push((format!("{kv}/data/consul/gossip"), rw));
    } else {
        p.push((format!("{kv}/consul/gossip"), rw));
    }
    if let Some(pki) = &cfg.pki {
        p.push((format!("{}/*", pki.path), rw));
        if let Some(i) = &pki.intermediate {
            p.push((format!("{}/*", i.path), rw));
        }
    }
    if let Some(ssh) = &cfg.ssh_ca {
        p.push((format!("{}/config/ca", ssh.path), rw));
        p.push((format!("{}/roles/*", ssh.path), rw));
    }
    p.iter()
        .map(|(path, caps)| format!("path \"{path}\" {{\n  capabilities = {caps}\n}}\n"))
        .collect()
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
    let c = super::http_client(ctx);
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
                let (Some(keys), Some(mut j)) = (open(stored.as_ref(), &name, ctx), stored) else {
                    out.waiting = Some(format!("the root token in {name} (cannot open it)"));
                    return out;
                };
                // Configuration goes to the first unsealed member (raft standbys forward).
                let target = url(&members[0].0);
                let own_name = super::drivers::vault::token_credential(&stack.name_any(), layer);
                let Some(own) = super::credential_value(ctx, &own_name) else {
                    out.waiting = Some(format!("Groundwork's Vault token (Credential {own_name})"));
                    return out;
                };
                let revoked = j.annotations().contains_key(ROOT_REVOKED_ANNOTATION);
                let own_state = lookup_self(&c, &target, &own).await;
                let root_state = if revoked && own_state == TokenState::Valid {
                    TokenState::Refused
                } else {
                    lookup_self(&c, &target, &keys.root_token).await
                };
                match token_step(own_state, root_state) {
                    TokenStep::Wait => {
                        out.waiting = Some("Vault to answer a token lookup".into());
                        return out;
                    }
                    TokenStep::Lost => {
                        let msg = format!(
                            "Vault refuses both Groundwork's token (Credential {own_name}) and \
                             the root token: see docs/services.md, \"Vault: Groundwork's token \
                             refused\""
                        );
                        tracing::warn!(layer, "{msg}");
                        out.stop = Some(("VaultTokenRefused", msg.clone()));
                        out.waiting = Some(msg);
                        return out;
                    }
                    TokenStep::CreateOwn => {
                        if let Err(e) =
                            create_own_token(&c, &target, &keys.root_token, &own, cfg).await
                        {
                            out.waiting = Some(format!("creating Groundwork's Vault token: {e}"));
                            return out;
                        }
                        tracing::info!(
                            layer,
                            policy = GROUNDWORK_POLICY,
                            "vault: Groundwork's own token created"
                        );
                        crate::crashpoint::hit("vault-after-own-token");
                    }
                    TokenStep::UseOwn => renew_if_due(&c, &target, &own).await,
                }
                let mut approles = Vec::new();
                for n in &cfg.app_role_policies {
                    let cn = super::drivers::vault::approle_credential(&stack.name_any(), layer, n);
                    let role_id = ctx
                        .caches
                        .store::<Credential>()
                        .get(&kube::runtime::reflector::ObjectRef::new(&cn))
                        .map(|c| c.spec.username.clone());
                    match (role_id, super::credential_value(ctx, &cn)) {
                        (Some(r), Some(s)) => approles.push((n.clone(), r, s)),
                        _ => {
                            out.waiting = Some(format!("the AppRole credential {cn}"));
                            return out;
                        }
                    }
                }
                let recorded = j.annotations().clone();
                let r = configure(
                    &c,
                    &target,
                    &own,
                    cfg,
                    consul_gossip.as_deref(),
                    &recorded,
                    &approles,
                )
                .await;
                let (done, mut records) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        out.waiting = Some(format!("configuring Vault: {e}"));
                        return out;
                    }
                };
                // The root token goes once Groundwork's own token has configured Vault.
                if root_state == TokenState::Valid {
                    if let Err(e) = revoke_root(&c, &target, &keys.root_token).await {
                        out.waiting = Some(format!("revoking the root token: {e}"));
                        return out;
                    }
                    tracing::info!(
                        layer,
                        "vault: the root token is revoked (see docs/services.md to generate a new one)"
                    );
                    crate::crashpoint::hit("vault-after-root-revoke");
                }
                if !revoked {
                    records.push((ROOT_REVOKED_ANNOTATION, "true".into()));
                }
                if !records.is_empty() {
                    // What was found or made is recorded before it counts as done.
                    for (k, v) in records {
                        j.annotations_mut().insert(k.into(), v);
                    }
                    if let Err(e) = api.replace(&name, &PostParams::default(), &j).await {
                        out.waiting = Some(format!(
                            "recording Vault's bootstrap in {name}: {}",
                            api_err(&e)
                        ));
                        return out;
                    }
                }
                out.done.insert(0, "initialised (journalled)".into());
                out.done.extend(done);
                out.done.push(format!(
                    "root token revoked; Groundwork uses its own token (policy {GROUNDWORK_POLICY})"
                ));
                out.done.dedup();
                out.waiting = None;
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

/// `auth/token/lookup-self` with `token`.
async fn lookup_self(c: &reqwest::Client, base: &str, token: &str) -> TokenState {
    match c
        .get(format!("{base}/v1/auth/token/lookup-self"))
        .header("X-Vault-Token", token)
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => TokenState::Valid,
        Ok(r) if matches!(r.status().as_u16(), 400 | 401 | 403) => TokenState::Refused,
        _ => TokenState::Unknown,
    }
}

/// With the root token: Groundwork's policy and its token, with the ID Groundwork chose
/// (an orphan, periodic: renewed by use, never expiring while Groundwork runs).
async fn create_own_token(
    c: &reqwest::Client,
    base: &str,
    root: &str,
    own: &str,
    cfg: &VaultConfig,
) -> Result<(), String> {
    let post = |p: &str, body: Value| {
        c.post(format!("{base}/v1/{p}"))
            .header("X-Vault-Token", root)
            .json(&body)
            .send()
    };
    if cfg.implementation == VaultImplementation::Vault {
        let r = post(
            &format!("sys/policies/acl/{GROUNDWORK_POLICY}"),
            json!({"policy": groundwork_policy(cfg)}),
        )
        .await
        .map_err(|e| e.without_url().to_string())?;
        if !r.status().is_success() {
            return Err(format!(
                "writing policy {GROUNDWORK_POLICY}: HTTP {}",
                r.status()
            ));
        }
    }
    let r = post(
        "auth/token/create",
        json!({
            "id": own,
            "policies": [GROUNDWORK_POLICY],
            "no_parent": true,
            "period": "768h",
            "renewable": true,
            "display_name": "groundwork",
        }),
    )
    .await
    .map_err(|e| e.without_url().to_string())?;
    let code = r.status();
    // Never the body: it echoes the token.
    if !code.is_success() {
        return Err(format!("auth/token/create: HTTP {code}"));
    }
    Ok(())
}

/// Renews Groundwork's periodic token when less than half its period is left.
async fn renew_if_due(c: &reqwest::Client, base: &str, own: &str) {
    let Ok(r) = c
        .get(format!("{base}/v1/auth/token/lookup-self"))
        .header("X-Vault-Token", own)
        .send()
        .await
    else {
        return;
    };
    let v: Value = r.json().await.unwrap_or(Value::Null);
    let ttl = v["data"]["ttl"].as_u64().unwrap_or(0);
    if ttl > 0 && ttl < 384 * 3600 {
        let r = c
            .post(format!("{base}/v1/auth/token/renew-self"))
            .header("X-Vault-Token", own)
            .send()
            .await;
        if !r.as_ref().is_ok_and(|r| r.status().is_success()) {
            tracing::warn!(ttl, "vault: renewing Groundwork's token failed");
        }
    }
}

/// Revokes the root token: `revoke-self` (Vault), or `revoke/TOKEN` (RustyVault, which has
/// no `revoke-self`); then checks that it is refused.
async fn revoke_root(c: &reqwest::Client, base: &str, root: &str) -> Result<(), String> {
    let post = |p: String| {
        c.post(format!("{base}/v1/{p}"))
            .header("X-Vault-Token", root)
            .send()
    };
    let ok = post("auth/token/revoke-self".into())
        .await
        .is_ok_and(|r| r.status().is_success());
    if !ok {
        // Errors without the URL: it names the token.
        post(format!("auth/token/revoke/{root}"))
            .await
            .map_err(|e| e.without_url().to_string())?;
    }
    match lookup_self(c, base, root).await {
        TokenState::Refused => Ok(()),
        _ => Err("Vault still accepts it".into()),
    }
}

fn sha256_hex(s: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, s.trim().as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Mounts, auth methods, policies and roles: each written only when missing (policies and
/// roles are upserts and rewritten every pass, correcting drift); the PKI root and
/// intermediate and the SSH CA made only when Vault clearly has none and nothing is
/// recorded. Returns the steps and what to record on the journal (annotation, value).
async fn configure(
    c: &reqwest::Client,
    base: &str,
    token: &str,
    cfg: &VaultConfig,
    gossip: Option<&str>,
    recorded: &std::collections::BTreeMap<String, String>,
    approles: &[(String, String, String)],
) -> Result<(Vec<String>, Vec<(&'static str, String)>), String> {
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
    // POST; the answer's JSON (None for 204). Errors name the path, never a body sent.
    let post = |p: String, body: Value| async move {
        let r = call(reqwest::Method::POST, &p)
            .json(&body)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        let code = r.status();
        let text = r.text().await.unwrap_or_default();
        if !code.is_success() {
            let why: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let why = why["errors"]
                .get(0)
                .or(why.get("error"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            return Err(format!("POST {p}: HTTP {code} {why}"));
        }
        Ok::<_, String>(serde_json::from_str::<Value>(&text).ok())
    };
    let write = |p: String, body: Value| async move { post(p, body).await.map(|_| ()) };
    let has = |v: &Option<Value>, key: &str| {
        v.as_ref()
            .is_some_and(|v| v.get(key).is_some() || v["data"].get(key).is_some())
    };
    let vault = cfg.implementation == VaultImplementation::Vault;
    let mount_body = |kind: &str, what: &str, max_ttl: Option<&str>| {
        let mut b = json!({"type": kind, "description": format!("Groundwork: {what}")});
        // Vault caps a mount's leases at 32 days unless told: a root's lifetime needs more.
        if let (true, Some(t)) = (vault, max_ttl) {
            b["config"] = json!({"max_lease_ttl": t});
        }
        b
    };
    let mut done = Vec::new();
    let mut record = Vec::new();
    if vault {
        // Kept in step with the configuration (the token may write its own policy).
        write(
            format!("sys/policies/acl/{GROUNDWORK_POLICY}"),
            json!({"policy": groundwork_policy(cfg)}),
        )
        .await?;
    }
    let kv = &cfg.kv.path;
    let mounts = get("sys/mounts".into()).await?;
    // A secrets engine at `path`, enabled when Vault does not list it.
    let ensure_mount = |path: &str, body: Value| {
        let missing = !has(&mounts, &format!("{path}/"));
        let path = path.to_string();
        async move {
            if missing {
                write(format!("sys/mounts/{path}"), body).await?;
            }
            Ok::<_, String>(())
        }
    };
    let mut kv_body = mount_body("kv", "the platform's secrets", None);
    if cfg.kv.version == 2 {
        kv_body["options"] = json!({"version": "2"});
    }
    ensure_mount(kv, kv_body).await?;
    done.push(format!("kv v{} at {kv}/", cfg.kv.version));
    if let Some(p) = &cfg.pki {
        ensure_mount(
            &p.path,
            mount_body("pki", "the platform's PKI root", Some(&p.ttl)),
        )
        .await?;
        done.push(format!("pki mounted at {}/", p.path));
        let sum = match recorded.get(PKI_ROOT_ANNOTATION) {
            Some(sum) => sum.clone(),
            None => {
                let found = match existing_root(c, base, token, &p.path).await? {
                    Some(pem) => pem,
                    None => {
                        let v = post(
                            format!("{}/root/generate/internal", p.path),
                            json!({"common_name": p.common_name, "ttl": p.ttl}),
                        )
                        .await?
                        .unwrap_or(Value::Null);
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
                let sum = sha256_hex(&found);
                record.push((PKI_ROOT_ANNOTATION, sum.clone()));
                sum
            }
        };
        done.push(format!(
            "pki root {} (sha256 {})",
            p.common_name,
            &sum[..12.min(sum.len())]
        ));
        if let Some(i) = &p.intermediate {
            ensure_mount(
                &i.path,
                mount_body("pki", "the platform's issuing CA", Some(&i.ttl)),
            )
            .await?;
            let sum = match recorded.get(PKI_INTERMEDIATE_ANNOTATION) {
                Some(sum) => sum.clone(),
                None => {
                    let found = match existing_root(c, base, token, &i.path).await? {
                        Some(pem) => pem,
                        None => {
                            // A CSR from the intermediate mount (its key stays there), signed
                            // by the root, set as the mount's issuer. Repeating the first two
                            // after a crash leaves an unused key behind, nothing more.
                            let csr = post(
                                format!("{}/intermediate/generate/internal", i.path),
                                json!({"common_name": i.common_name, "ttl": i.ttl}),
                            )
                            .await?
                            .and_then(|v| v["data"]["csr"].as_str().map(str::to_string))
                            .ok_or("intermediate/generate answered without a CSR")?;
                            let cert = post(
                                format!("{}/root/sign-intermediate", p.path),
                                json!({"csr": csr, "common_name": i.common_name, "ttl": i.ttl, "format": "pem"}),
                            )
                            .await?
                            .and_then(|v| v["data"]["certificate"].as_str().map(str::to_string))
                            .ok_or("root/sign-intermediate answered without a certificate")?;
                            write(
                                format!("{}/intermediate/set-signed", i.path),
                                json!({"certificate": cert}),
                            )
                            .await?;
                            tracing::info!(mount = %i.path, "vault: PKI intermediate signed by the root and set");
                            crate::crashpoint::hit("vault-after-pki-intermediate");
                            cert
                        }
                    };
                    let sum = sha256_hex(&found);
                    record.push((PKI_INTERMEDIATE_ANNOTATION, sum.clone()));
                    sum
                }
            };
            done.push(format!(
                "pki intermediate {} at {}/ (sha256 {})",
                i.common_name,
                i.path,
                &sum[..12.min(sum.len())]
            ));
        }
    }
    if let Some(ssh) = &cfg.ssh_ca {
        ensure_mount(&ssh.path, mount_body("ssh", "the SSH user CA", None)).await?;
        let sum = match recorded.get(SSH_CA_ANNOTATION) {
            Some(sum) => sum.clone(),
            None => {
                let key = match existing_ssh_ca(c, base, token, &ssh.path).await? {
                    Some(k) => k,
                    None => {
                        let v = post(
                            format!("{}/config/ca", ssh.path),
                            json!({"generate_signing_key": true}),
                        )
                        .await?
                        .unwrap_or(Value::Null);
                        tracing::info!(mount = %ssh.path, "vault: SSH CA signing key generated");
                        crate::crashpoint::hit("vault-after-ssh-ca");
                        v["data"]["public_key"]
                            .as_str()
                            .filter(|k| !k.is_empty())
                            .ok_or("config/ca answered without a public key")?
                            .to_string()
                    }
                };
                let sum = sha256_hex(&key);
                record.push((SSH_CA_ANNOTATION, sum.clone()));
                sum
            }
        };
        write(
            format!("{}/roles/{}", ssh.path, ssh.role),
            json!({
                "key_type": "ca",
                "allow_user_certificates": true,
                "allowed_users": ssh.allowed_users,
                "default_extensions": {"permit-pty": ""},
                "allowed_extensions": "permit-pty,permit-port-forwarding",
                "ttl": ssh.ttl,
            }),
        )
        .await?;
        done.push(format!(
            "ssh ca at {}/ (sha256 {}), role {}",
            ssh.path,
            &sum[..12.min(sum.len())],
            ssh.role
        ));
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
            if vault {
                write(format!("sys/policies/acl/{n}"), json!({"policy": policy})).await?;
            }
            let role = format!("auth/approle/role/{n}");
            write(
                role.clone(),
                json!({"token_policies": [n], "policies": [n], "token_ttl": "1h"}),
            )
            .await?;
            if let Some((_, role_id, secret_id)) = approles.iter().find(|(r, _, _)| r == n) {
                // Both IDs are Groundwork's, stored before Vault sees them: each call can be
                // repeated, and a crash between them loses nothing.
                let have = get(format!("{role}/role-id")).await?;
                if have.as_ref().and_then(|v| v["data"]["role_id"].as_str()) != Some(role_id) {
                    write(format!("{role}/role-id"), json!({"role_id": role_id})).await?;
                }
                let known = post(
                    format!("{role}/secret-id/lookup"),
                    json!({"secret_id": secret_id}),
                )
                .await?
                .is_some_and(|v| !v["data"].is_null());
                if !known {
                    crate::crashpoint::hit("vault-before-secret-id");
                    write(
                        format!("{role}/custom-secret-id"),
                        json!({"secret_id": secret_id}),
                    )
                    .await?;
                    tracing::info!(role = %n, "vault: AppRole secret ID set");
                    crate::crashpoint::hit("vault-after-secret-id");
                }
            }
            done.push(if vault {
                format!("policy and AppRole role {n} with its IDs")
            } else {
                format!("AppRole role {n} with its IDs (no policy API in RustyVault)")
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

/// The SSH CA's public key at `mount`, or None when Vault answers that it has none.
async fn existing_ssh_ca(
    c: &reqwest::Client,
    base: &str,
    token: &str,
    mount: &str,
) -> Result<Option<String>, String> {
    let r = c
        .get(format!("{base}/v1/{mount}/config/ca"))
        .header("X-Vault-Token", token)
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    let code = r.status();
    let body = r.text().await.unwrap_or_default();
    if code.is_success() {
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        return Ok(v["data"]["public_key"]
            .as_str()
            .filter(|k| !k.trim().is_empty())
            .map(str::to_string));
    }
    // Vault: 400 "keys haven't been configured yet".
    if code == reqwest::StatusCode::BAD_REQUEST && body.contains("configured") {
        return Ok(None);
    }
    Err(format!("{mount}/config/ca: HTTP {code}"))
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

    /// Groundwork's own token is used once it works; the root token only creates it, and
    /// with neither the layer stops rather than guessing.
    #[test]
    fn the_root_token_only_creates_groundworks_own() {
        use TokenState::*;
        for root in [Valid, Refused, Unknown] {
            assert_eq!(token_step(Valid, root), TokenStep::UseOwn);
            assert_eq!(token_step(Unknown, root), TokenStep::Wait);
        }
        assert_eq!(token_step(Refused, Valid), TokenStep::CreateOwn);
        assert_eq!(token_step(Refused, Unknown), TokenStep::Wait);
        assert_eq!(token_step(Refused, Refused), TokenStep::Lost);
    }

    #[test]
    fn groundworks_policy_covers_what_it_configures_and_no_more() {
        let cfg: VaultConfig = serde_json::from_value(serde_json::json!({
            "kv": {"path": "kv"},
            "pki": {"commonName": "r", "intermediate": {"commonName": "i"}},
            "sshCa": {},
            "appRolePolicies": ["consul"],
        }))
        .unwrap();
        let p = groundwork_policy(&cfg);
        for want in [
            "path \"kv/data/consul/gossip\"",
            "path \"pki/*\"",
            "path \"pki_int/*\"",
            "path \"ssh/config/ca\"",
            "path \"sys/policies/acl/consul\"",
            "path \"sys/policies/acl/groundwork\"",
        ] {
            assert!(p.contains(want), "{want} not in\n{p}");
        }
        for never in [
            "kv/*",
            "kv/data/*",
            "sys/policies/acl/*",
            "auth/token",
            "sys/seal",
        ] {
            assert!(!p.contains(&format!("\"{never}\"")), "{never} in\n{p}");
        }
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
