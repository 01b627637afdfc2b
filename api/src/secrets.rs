//! Credentials are sealed on the way in: the write-only `spec.password` becomes
//! `spec.encryptedPassword` (see `groundwork_types::secrets`), and any copy of the password in
//! kubectl's last-applied annotation is removed, so the store, the API output, watches and
//! logs never hold it in plaintext.

use std::sync::OnceLock;

use groundwork_types::secrets::SecretKey;
use serde_json::Value;

use crate::ApiError;

static KEY: OnceLock<SecretKey> = OnceLock::new();

/// Sets the process' secret key (the first call wins; the server calls it once at start).
pub fn set_secret_key(key: SecretKey) {
    let _ = KEY.set(key);
}

pub(crate) fn key() -> Option<&'static SecretKey> {
    KEY.get()
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

pub(crate) fn seal_credential(
    kind: &'static groundwork_types::KindInfo,
    obj: &mut Value,
    name: &str,
) -> Result<(), ApiError> {
    let context = format!("credentials/{name}");
    // A sealed value written back (an update, `groundwork secrets reseal`): it must open with
    // this cluster's keys, and is sealed again with the active key if a retired one sealed it.
    let has_password = obj.pointer("/spec/password").is_some();
    if !has_password
        && let Some(Value::String(sealed)) = obj.pointer("/spec/encryptedPassword").cloned()
    {
        let Some(key) = KEY.get() else {
            return Err(ApiError::Unavailable(
                "this server has no secret key, so it cannot store passwords".into(),
            ));
        };
        match key.open_with(&context, &sealed) {
            Ok((_, true)) => {}
            Ok((text, false)) => {
                obj["spec"]["encryptedPassword"] = key.seal(&context, &text).into();
            }
            Err(_) => {
                return Err(ApiError::invalid_one(
                    kind,
                    name,
                    groundwork_types::FieldError::invalid(
                        "spec.encryptedPassword",
                        "does not open with this cluster's keys for this Credential (sealed for another object or cluster, or altered): set spec.password instead",
                    ),
                ));
            }
        }
    }
    if let Some(pw) = obj
        .pointer_mut("/spec")
        .and_then(Value::as_object_mut)
        .and_then(|s| s.remove("password"))
    {
        let Some(key) = KEY.get() else {
            return Err(ApiError::Unavailable(
                "this server has no secret key, so it cannot store passwords".into(),
            ));
        };
        let text = pw
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| pw.to_string());
        obj["spec"]["encryptedPassword"] = key.seal(&context, &text).into();
    }
    // kubectl apply keeps the whole manifest in an annotation: drop the password from it.
    if let Some(ann) = obj
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
        && let Some(Value::String(text)) = ann.get(LAST_APPLIED).cloned()
    {
        match serde_json::from_str::<Value>(&text) {
            Ok(mut v) => {
                if let Some(spec) = v.pointer_mut("/spec").and_then(Value::as_object_mut) {
                    spec.remove("password");
                }
                ann.insert(LAST_APPLIED.into(), Value::String(v.to_string()));
            }
            // Not JSON we understand: do not keep what may contain the password.
            Err(_) => {
                ann.remove(LAST_APPLIED);
            }
        }
    }
    Ok(())
}

/// `GET .../credentials/NAME/reveal`: the Credential's user name and password, for a user
/// with the `use` verb on it (which `view` and `edit` do not grant). The answer is not an
/// object (`{"username", "password"}`), is never cached, and the audit log records the
/// request, never the answer.
pub(crate) fn reveal(
    store: &groundwork_store::Store,
    user: Option<&crate::auth::UserInfo>,
    name: &str,
    obj: &Value,
) -> Result<Value, ApiError> {
    if let Some(user) = user {
        let a = crate::auth::Attributes {
            verb: "use".into(),
            group: "groundwork.dev".into(),
            resource: "credentials".into(),
            name: name.into(),
            ..Default::default()
        };
        crate::rbac::authorize(store, user, &a).map_err(|why| {
            ApiError::Forbidden(format!(
                "credentials.groundwork.dev {name:?} is forbidden: User {:?} cannot use resource \"credentials\" in API group \"groundwork.dev\" ({why}): revealing a password needs the use verb",
                user.name
            ))
        })?;
        tracing::info!(credential = %name, user = %user.name, "a Credential's password was revealed");
    }
    let sealed = obj
        .pointer("/spec/encryptedPassword")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::BadRequest(format!("Credential {name} has no password")))?;
    let key = KEY.get().ok_or_else(|| {
        ApiError::Unavailable("this server has no secret key, so it cannot open passwords".into())
    })?;
    let password = key
        .open(&format!("credentials/{name}"), sealed)
        .map_err(|_| {
            ApiError::Unavailable(format!(
                "Credential {name} does not open with this cluster's keys"
            ))
        })?;
    Ok(serde_json::json!({
        "username": obj.pointer("/spec/username").cloned().unwrap_or(Value::Null),
        "password": password,
    }))
}
