//! `GitSource`: a Git repository whose manifests Groundwork applies (GitOps). The GitSource
//! controller fetches the ref, validates every manifest of the commit first (a server-side
//! dry run), applies them in dependency order, prunes what it created and Git no longer
//! has, and reports or corrects drift on the fields Git sets.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::{FieldError, Validate, check_name, check_unique};

/// The annotation on every object a GitSource applied: its name. Only objects carrying it
/// (and listed in its inventory) are ever pruned, and an object without it is never taken
/// over.
pub const GITSOURCE_ANNOTATION: &str = "groundwork.dev/gitsource";
/// The annotation a signed webhook (or `groundwork gitsource sync`) sets on a GitSource:
/// fetch now.
pub const REQUESTED_AT_ANNOTATION: &str = "groundwork.dev/requested-at";
/// On a manifest: its place in the apply order (an integer; lower first), overriding the
/// kind's rank.
pub const APPLY_ORDER_ANNOTATION: &str = "groundwork.dev/apply-order";
/// The configuration last applied from Git, kept on the object for the three-way merge
/// (so a field removed from Git is removed from the object).
pub const LAST_APPLIED_ANNOTATION: &str = "groundwork.dev/last-applied";

#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Default)]
#[kube(
    group = "groundwork.dev",
    version = "v1alpha1",
    kind = "GitSource",
    plural = "gitsources",
    shortname = "gs",
    category = "groundwork",
    doc = "A Git repository whose manifests Groundwork applies, prunes and keeps from drifting.",
    status = "GitSourceStatus",
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct GitSourceSpec {
    /// The repository: `https://…`, `http://…`, or `ssh://USER@HOST[:PORT]/PATH` (the `git`
    /// command fetches it).
    pub url: String,
    /// For `ssh://` URLs: the server's host keys, as `known_hosts` lines (required: a host
    /// key is never trusted on first use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_known_hosts: Option<String>,
    /// What to follow (default: branch `main`).
    #[serde(default, rename = "ref")]
    pub git_ref: GitRef,
    /// The directory of the repository whose manifests (`*.yaml`, `*.yml`, `*.json`, in
    /// subdirectories too) are applied (default: the whole repository).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// Seconds between fetches (default 60); a signed webhook fetches at once.
    #[serde(default = "interval")]
    pub interval_seconds: u32,
    /// A Credential: for HTTPS its user name and password (a token); for SSH its password
    /// is the private key (OpenSSH or PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// A Credential whose password is the webhook secret; without it the webhook route
    /// refuses every call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
    /// Delete what this GitSource applied and Git no longer has (default true). Only
    /// objects in its inventory that carry its annotation are deleted.
    #[serde(default = "yes")]
    pub prune: bool,
    /// Stop fetching, applying, pruning and correcting (the inventory is kept).
    #[serde(default)]
    pub suspend: bool,
    /// GitSources that must be Ready (their last commit applied) before this one applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// `correct` (default): a Git-owned field changed by hand is set back; `report`: it is
    /// listed in `status.drift` and left.
    #[serde(default)]
    pub drift: DriftMode,
    /// The kinds it may manage, by `Kind` (default: every Groundwork kind but GitSource and
    /// ServiceInstance, which controllers own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
}

fn interval() -> u32 {
    60
}
fn yes() -> bool {
    true
}

/// One of branch, tag or commit.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GitRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// A full commit ID (40 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

impl GitRef {
    /// The ref to fetch (`refs/heads/B`, `refs/tags/T`), or the commit.
    pub fn fetch_spec(&self) -> String {
        match (&self.branch, &self.tag, &self.commit) {
            (_, _, Some(c)) => c.clone(),
            (_, Some(t), None) => format!("refs/tags/{t}"),
            (Some(b), None, None) => format!("refs/heads/{b}"),
            (None, None, None) => "refs/heads/main".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum DriftMode {
    #[default]
    Correct,
    Report,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GitSourceStatus {
    /// The commit the last fetch found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fetched_commit: Option<String>,
    /// The commit whose manifests are live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_commit: Option<String>,
    /// Its message's first line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_message: Option<String>,
    /// When it was applied (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_at: Option<String>,
    /// Every object this GitSource applied and keeps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inventory: Vec<InventoryEntry>,
    /// Why the last fetched commit was not applied: per manifest, where and what.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ManifestError>,
    /// Git-owned fields whose live value differs from Git's (mode `report`; in mode
    /// `correct`, what the last pass set back).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<Drift>,
    /// The webhook route (POST, signed): `/hooks/gitsource/NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_path: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(
    Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, PartialOrd, Ord,
)]
#[serde(rename_all = "camelCase")]
pub struct InventoryEntry {
    pub kind: String,
    pub name: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManifestError {
    /// The file, relative to the repository.
    pub file: String,
    /// The line its document starts on (1-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// The object, `Kind/name`, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// The field path the server named, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Drift {
    /// `Kind/name`.
    pub object: String,
    /// The field path, e.g. `spec.location`.
    pub field: String,
    /// Git's value (JSON).
    pub git: String,
    /// The live value (JSON; `null` when absent).
    pub live: String,
}

impl Validate for GitSource {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let s = &self.spec;
        let ssh = s.url.starts_with("ssh://");
        if s.url.is_empty() {
            errs.push(FieldError::required("spec.url", "the repository's URL"));
        } else if !(s.url.starts_with("https://") || s.url.starts_with("http://") || ssh) {
            errs.push(FieldError::invalid(
                "spec.url",
                format!("{:?}: an https:// (or http://, ssh://) URL", s.url),
            ));
        } else if ssh {
            if s.url.contains(char::is_whitespace)
                || s.url[6..].split('/').next().is_none_or(str::is_empty)
            {
                errs.push(FieldError::invalid(
                    "spec.url",
                    format!("{:?}: ssh://USER@HOST[:PORT]/PATH", s.url),
                ));
            }
            if s.ssh_known_hosts
                .as_deref()
                .is_none_or(|k| k.trim().is_empty())
            {
                errs.push(FieldError::required(
                    "spec.sshKnownHosts",
                    "the server's host keys (known_hosts lines): a host key is never trusted on first use",
                ));
            }
            if s.credential.is_none() {
                errs.push(FieldError::required(
                    "spec.credential",
                    "a Credential whose password is the SSH private key",
                ));
            }
        } else if s.url.contains('@') {
            errs.push(FieldError::invalid(
                "spec.url",
                "no user or token in the URL: name a Credential in spec.credential",
            ));
        }
        let r = &s.git_ref;
        let set = [&r.branch, &r.tag, &r.commit]
            .iter()
            .filter(|x| x.is_some())
            .count();
        if set > 1 {
            errs.push(FieldError::invalid(
                "spec.ref",
                "one of branch, tag or commit",
            ));
        }
        for (f, v) in [("spec.ref.branch", &r.branch), ("spec.ref.tag", &r.tag)] {
            if let Some(v) = v
                && (v.is_empty()
                    || v.starts_with('-')
                    || v.contains("..")
                    || v.chars()
                        .any(|c| c.is_whitespace() || "~^:?*[\\".contains(c)))
            {
                errs.push(FieldError::invalid(
                    f,
                    format!("{v:?}: not a valid ref name"),
                ));
            }
        }
        if let Some(c) = &r.commit
            && (c.len() != 40 || !c.chars().all(|c| c.is_ascii_hexdigit()))
        {
            errs.push(FieldError::invalid(
                "spec.ref.commit",
                format!("{c:?}: a full commit ID (40 hex digits)"),
            ));
        }
        if s.path.starts_with('/') || s.path.split('/').any(|p| p == "..") {
            errs.push(FieldError::invalid(
                "spec.path",
                format!("{:?}: a relative path inside the repository", s.path),
            ));
        }
        if s.interval_seconds < 5 {
            errs.push(FieldError::invalid(
                "spec.intervalSeconds",
                format!("{}: at least 5", s.interval_seconds),
            ));
        }
        for (f, c) in [
            ("spec.credential", &s.credential),
            ("spec.webhookSecret", &s.webhook_secret),
        ] {
            if let Some(c) = c {
                check_name(f, c, &mut errs);
            }
        }
        check_unique(
            "spec.dependsOn",
            s.depends_on.iter().map(String::as_str),
            &mut errs,
        );
        for (i, d) in s.depends_on.iter().enumerate() {
            check_name(&format!("spec.dependsOn[{i}]"), d, &mut errs);
            if Some(d.as_str()) == self.metadata.name.as_deref() {
                errs.push(FieldError::invalid(
                    format!("spec.dependsOn[{i}]"),
                    "a GitSource cannot depend on itself",
                ));
            }
        }
        for (i, k) in s.kinds.iter().enumerate() {
            let ours = crate::kind_by_kind(k)
                .is_some_and(|ki| ki.group == "groundwork.dev" && ki.kind == k.as_str());
            if !ours || k == "GitSource" || k == "ServiceInstance" {
                errs.push(FieldError::invalid(
                    format!("spec.kinds[{i}]"),
                    format!("{k:?}: not a kind a GitSource can manage"),
                ));
            }
        }
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(spec: serde_json::Value) -> Vec<String> {
        let g: GitSource = serde_json::from_value(serde_json::json!({
            "apiVersion": "groundwork.dev/v1alpha1", "kind": "GitSource",
            "metadata": {"name": "infra"}, "spec": spec,
        }))
        .unwrap();
        g.validate().iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn bad_specs_name_their_fields() {
        let e: Vec<String> = errors(serde_json::json!({
            "url": "https://user:tok@git/x.git",
            "ref": {"branch": "main", "commit": "abc"},
            "path": "../x", "intervalSeconds": 1, "dependsOn": ["infra"],
            "kinds": ["Nope", "GitSource"],
        }))
        .into_iter()
        .map(|x| x.replace("Invalid value: ", ""))
        .collect();
        for want in [
            "spec.url: no user or token",
            "spec.ref: one of",
            "spec.ref.commit: \"abc\"",
            "spec.path: ",
            "spec.intervalSeconds: 1",
            "spec.dependsOn[0]: a GitSource cannot depend on itself",
            "spec.kinds[0]: ",
            "spec.kinds[1]: ",
        ] {
            assert!(
                e.iter().any(|x| x.starts_with(want)),
                "{want} not in {e:#?}"
            );
        }
        let e = errors(serde_json::json!({"url": "ssh://git@host/x"}));
        assert!(
            e.iter().any(|x| x.starts_with("spec.sshKnownHosts")),
            "{e:?}"
        );
        assert!(e.iter().any(|x| x.starts_with("spec.credential")), "{e:?}");
        assert!(errors(serde_json::json!({"url": "git@host:x"}))[0].starts_with("spec.url"));
        assert!(errors(serde_json::json!({"url": "https://git/x.git"})).is_empty());
    }

    #[test]
    fn the_ref_to_fetch() {
        assert_eq!(GitRef::default().fetch_spec(), "refs/heads/main");
        let t = GitRef {
            tag: Some("v1".into()),
            ..Default::default()
        };
        assert_eq!(t.fetch_spec(), "refs/tags/v1");
    }
}
