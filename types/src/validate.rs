//! Semantic validation beyond the schema. Every error names the field it is about with a
//! Kubernetes-style path (`spec.bootNetworks[0].cidr`), so the API can return it in
//! `Status.details.causes` and an operator can find the line to fix.

use std::collections::BTreeSet;
use std::fmt;

use crate::{Node, Rack};

/// What is wrong with a field; the names are Kubernetes' `field.ErrorType` reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldErrorKind {
    /// A required value is missing.
    Required,
    /// The value is malformed or out of range.
    Invalid,
    /// The value repeats one that must be unique.
    Duplicate,
    /// The value is not one of the supported ones.
    NotSupported,
    /// The field is not part of the kind's schema.
    Unknown,
}

impl FieldErrorKind {
    /// The reason string Kubernetes uses in `Status.details.causes[].reason`.
    pub fn reason(self) -> &'static str {
        match self {
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Invalid => "FieldValueInvalid",
            FieldErrorKind::Duplicate => "FieldValueDuplicate",
            FieldErrorKind::NotSupported => "FieldValueNotSupported",
            FieldErrorKind::Unknown => "FieldValueInvalid",
        }
    }
}

/// One problem with one field of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.rack.position`.
    pub field: String,
    /// What kind of problem it is.
    pub kind: FieldErrorKind,
    /// Human-readable detail, saying what a valid value looks like.
    pub message: String,
}

impl FieldError {
    pub fn required(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::Required,
            message: message.into(),
        }
    }
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::Invalid,
            message: message.into(),
        }
    }
    pub fn duplicate(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::Duplicate,
            message: message.into(),
        }
    }
    pub fn unknown(field: impl Into<String>) -> Self {
        let field = field.into();
        let message = format!("unknown field \"{field}\"");
        Self {
            field,
            kind: FieldErrorKind::Unknown,
            message,
        }
    }
}

impl FieldError {
    /// The message without the field path, as Kubernetes puts it in `causes[].message`.
    pub fn detail(&self) -> String {
        match self.kind {
            FieldErrorKind::Unknown => self.message.clone(),
            FieldErrorKind::Required => format!("Required value: {}", self.message),
            FieldErrorKind::Duplicate => format!("Duplicate value: {}", self.message),
            FieldErrorKind::NotSupported => format!("Unsupported value: {}", self.message),
            FieldErrorKind::Invalid => format!("Invalid value: {}", self.message),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.kind, self.field.is_empty()) {
            (FieldErrorKind::Unknown, _) | (_, true) => write!(f, "{}", self.detail()),
            _ => write!(f, "{}: {}", self.field, self.detail()),
        }
    }
}

/// Checks an object's own fields (no lookups of other objects).
pub trait Validate {
    /// Every problem found; empty when the object is valid.
    fn validate(&self) -> Vec<FieldError>;
}

/// Cross-object check made at admission when the Node's rack exists: the Node must fit inside
/// the rack's height. (When the rack does not exist yet, the rack controller reports it.)
pub fn validate_node_in_rack(node: &Node, rack: &Rack) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(place) = &node.spec.rack {
        let top = u64::from(place.position) + u64::from(place.height_u) - 1;
        if top > u64::from(rack.spec.height_u) {
            errs.push(FieldError::invalid(
                "spec.rack.position",
                format!(
                    "{}: a {} U node at U{} reaches U{}, beyond rack {:?}'s {} U",
                    place.position,
                    place.height_u,
                    place.position,
                    top,
                    rack.metadata.name.as_deref().unwrap_or(""),
                    rack.spec.height_u
                ),
            ));
        }
    }
    errs
}

/// Checks a Kubernetes object name (RFC 1123 subdomain: lower-case alphanumerics, '-' and
/// '.', starting and ending alphanumeric, at most 253 characters).
pub fn check_name(field: &str, name: &str, errs: &mut Vec<FieldError>) {
    if name.is_empty() {
        errs.push(FieldError::required(field, "a name is required"));
        return;
    }
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.len() > 253
        || !ok_chars
        || !ends_ok(name.chars().next())
        || !ends_ok(name.chars().last())
    {
        errs.push(FieldError::invalid(
            field,
            format!(
                "{name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
                 characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        ));
    }
}

/// Checks a reference to another object by name: present and a valid name.
pub fn check_ref(field: &str, name: &str, errs: &mut Vec<FieldError>) {
    check_name(field, name, errs);
}

/// Normalises a MAC address to lower-case colon form (`52:54:00:ab:cd:ef`), accepting ':' or
/// '-' separators. `None` when it is not 6 hexadecimal octets.
pub fn normalize_mac(mac: &str) -> Option<String> {
    let parts: Vec<&str> = mac.split([':', '-']).collect();
    if parts.len() != 6
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return None;
    }
    Some(parts.join(":").to_ascii_lowercase())
}

pub fn check_mac(field: &str, mac: &str, errs: &mut Vec<FieldError>) {
    if normalize_mac(mac).is_none() {
        errs.push(FieldError::invalid(
            field,
            format!("{mac:?}: not a MAC address (six hex octets, e.g. 52:54:00:12:34:56)"),
        ));
    }
}

pub fn check_ip(field: &str, ip: &str, errs: &mut Vec<FieldError>) {
    if ip.parse::<std::net::IpAddr>().is_err() {
        errs.push(FieldError::invalid(
            field,
            format!("{ip:?}: not an IP address"),
        ));
    }
}

/// Parses a CIDR; the host bits must be zero (`10.0.0.0/24`, not `10.0.0.1/24`).
pub fn check_cidr(field: &str, cidr: &str, errs: &mut Vec<FieldError>) -> Option<ipnet::IpNet> {
    match cidr.parse::<ipnet::IpNet>() {
        Ok(net) if net.trunc() == net => Some(net),
        Ok(net) => {
            errs.push(FieldError::invalid(
                field,
                format!("{cidr:?}: host bits set; did you mean {}?", net.trunc()),
            ));
            None
        }
        Err(_) => {
            errs.push(FieldError::invalid(
                field,
                format!("{cidr:?}: not a CIDR (e.g. 10.1.0.0/24)"),
            ));
            None
        }
    }
}

pub fn check_non_negative(field: &str, v: Option<f64>, errs: &mut Vec<FieldError>) {
    if let Some(v) = v
        && !(v.is_finite() && v >= 0.0)
    {
        errs.push(FieldError::invalid(
            field,
            format!("{v}: must be a finite number >= 0"),
        ));
    }
}

/// Reports a duplicate for every name seen twice in `names` (`field` gets the index).
pub fn check_unique<'a>(
    field: &str,
    names: impl Iterator<Item = &'a str>,
    errs: &mut Vec<FieldError>,
) {
    let mut seen = BTreeSet::new();
    for (i, n) in names.enumerate() {
        if !seen.insert(n) {
            errs.push(FieldError::duplicate(
                format!("{field}[{i}].name"),
                format!("{n:?}"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_forms() {
        assert_eq!(
            normalize_mac("52-54-00-AB-cd-EF").as_deref(),
            Some("52:54:00:ab:cd:ef")
        );
        assert_eq!(normalize_mac("52:54:00:ab:cd"), None);
        assert_eq!(normalize_mac("52:54:00:ab:cd:eg"), None);
        assert_eq!(normalize_mac("525400abcdef"), None);
    }

    #[test]
    fn cidr_host_bits() {
        let mut errs = vec![];
        assert!(check_cidr("f", "10.0.0.0/24", &mut errs).is_some());
        assert!(check_cidr("f", "10.0.0.1/24", &mut errs).is_none());
        assert!(check_cidr("f", "10.0.0.0/33", &mut errs).is_none());
        assert_eq!(errs.len(), 2);
        assert!(
            errs[0].message.contains("10.0.0.0/24"),
            "{}",
            errs[0].message
        );
    }

    #[test]
    fn names() {
        let mut errs = vec![];
        check_name("metadata.name", "rack-a1.dc1", &mut errs);
        assert!(errs.is_empty());
        for bad in ["", "Rack", "-a", "a-", "a_b"] {
            let mut errs = vec![];
            check_name("metadata.name", bad, &mut errs);
            assert_eq!(errs.len(), 1, "{bad:?}");
        }
    }
}
