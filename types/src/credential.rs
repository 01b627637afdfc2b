//! `Credential`: a user name and password for a BMC (or any other machine-facing service).
//! The password is write-only: the API server encrypts it into `encryptedPassword` (AES-256-GCM
//! with the server's secret key, bound to the object's name) before it is stored, and never
//! returns, logs or keeps it in plaintext; the controllers decrypt it with the same key.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use crate::validate::{FieldError, Validate};

#[derive(CustomResource, Clone, Deserialize, Serialize, JsonSchema, PartialEq, Default)]
#[kube(
    group = "groundwork.dev",
    version = "v1alpha1",
    kind = "Credential",
    plural = "credentials",
    shortname = "cred",
    category = "groundwork",
    doc = "A user name and password (write-only; stored encrypted, never returned) for BMCs and other services.",
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct CredentialSpec {
    /// User name.
    pub username: String,
    /// Write-only: the server encrypts it into `encryptedPassword` and drops it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "string_or_number"
    )]
    pub password: Option<String>,
    /// Set by the server: the password sealed with the server's secret key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_password: Option<String>,
}

impl std::fmt::Debug for CredentialSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialSpec")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field(
                "encrypted_password",
                &self.encrypted_password.as_ref().map(|_| "<sealed>"),
            )
            .finish()
    }
}

/// YAML reads `password: 12345` as a number; take it as the string it was meant to be, and
/// never echo the value in an error.
fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
        Some(serde_json::Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(_) => Err(serde::de::Error::custom(
            "expected a string (value not shown)",
        )),
    }
}

/// The largest secret a Credential holds: room for what Groundwork generates and keeps
/// (a Vault init answer with every key share is ~70 bytes a share), not only passwords.
pub const MAX_SECRET_BYTES: usize = 16 * 1024;

impl Validate for Credential {
    fn validate(&self) -> Vec<FieldError> {
        let s = &self.spec;
        let mut errs = Vec::new();
        if s.username.is_empty() {
            errs.push(FieldError::required("spec.username", "the user name"));
        } else if s.username.len() > 64 || s.username.chars().any(char::is_control) {
            errs.push(FieldError::invalid(
                "spec.username",
                "at most 64 printable characters",
            ));
        }
        if let Some(p) = &s.password
            && (p.is_empty() || p.len() > MAX_SECRET_BYTES)
        {
            errs.push(FieldError::invalid(
                "spec.password",
                format!("must be 1 to {MAX_SECRET_BYTES} bytes (value not shown)"),
            ));
        }
        if s.password.is_none() && s.encrypted_password.is_none() {
            errs.push(FieldError::required(
                "spec.password",
                "a password (it is stored encrypted and never shown again)",
            ));
        }
        errs
    }
}
