//! Label and field selectors in the Kubernetes string syntax.

use serde_json::Value;

use crate::ApiError;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector, e.g. `role=worker,tier in (a,b),!maintenance`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Req>);

fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn check_key(k: &str, whole: &str) -> Result<String, ApiError> {
    let ok = !k.is_empty()
        && k.len() <= 316
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if ok {
        Ok(k.to_string())
    } else {
        Err(ApiError::BadRequest(format!(
            "labelSelector {whole:?}: invalid label key {k:?}"
        )))
    }
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for part in split_top(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let bad =
                || ApiError::BadRequest(format!("labelSelector {s:?}: cannot parse {part:?}"));
            let set = |rest: &str| -> Result<Vec<String>, ApiError> {
                let rest = rest.trim();
                let inner = rest
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(bad)?;
                Ok(inner
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect())
            };
            if let Some(k) = part.strip_prefix('!') {
                reqs.push(Req::NotExists(check_key(k.trim(), s)?));
            } else if let Some((k, v)) = part.split_once("!=") {
                reqs.push(Req::NotEq(check_key(k.trim(), s)?, v.trim().to_string()));
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                reqs.push(Req::Eq(check_key(k.trim(), s)?, v.trim().to_string()));
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                reqs.push(Req::NotIn(check_key(k.trim(), s)?, set(rest)?));
            } else if let Some((k, rest)) = part.split_once(" in ") {
                reqs.push(Req::In(check_key(k.trim(), s)?, set(rest)?));
            } else {
                reqs.push(Req::Exists(check_key(part, s)?));
            }
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether an object's `metadata.labels` match.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => get(k) == Some(v.as_str()),
            Req::NotEq(k, v) => get(k) != Some(v.as_str()),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
        })
    }
}

/// A parsed field selector over the fields a kind supports, e.g. `metadata.name=n1`.
#[derive(Clone, Debug, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

const COMMON_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];
const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

impl FieldSelector {
    pub fn parse(s: &str, is_event: bool) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (field, eq, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, true, v)
            } else {
                return Err(ApiError::BadRequest(format!(
                    "fieldSelector {s:?}: {part:?} is not field=value or field!=value"
                )));
            };
            let field = field.trim();
            if !(COMMON_FIELDS.contains(&field) || (is_event && EVENT_FIELDS.contains(&field))) {
                return Err(ApiError::BadRequest(format!(
                    "field label not supported: {field}"
                )));
            }
            reqs.push((field.to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    /// The name this selector pins (`metadata.name=X`), if any.
    pub fn pinned_name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, eq, _)| f == "metadata.name" && *eq)
            .map(|(_, _, v)| v.as_str())
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, eq, want)| {
            let value = if field == "source" {
                obj.pointer("/source/component")
            } else {
                obj.pointer(&format!("/{}", field.replace('.', "/")))
            };
            let have = value.and_then(Value::as_str).unwrap_or("");
            (have == want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors() {
        let o = json!({"metadata": {"labels": {"role": "worker", "tier": "b"}}});
        for (sel, want) in [
            ("role=worker", true),
            ("role==worker,tier=b", true),
            ("role!=worker", false),
            ("tier in (a, b)", true),
            ("tier notin (a,b)", false),
            ("role", true),
            ("!maintenance", true),
            ("!role", false),
            ("zone in (x),role", false),
            ("", true),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&o),
                want,
                "{sel}"
            );
        }
        assert!(LabelSelector::parse("tier in a,b").is_err());
        assert!(LabelSelector::parse("bad key=1").is_err());
    }

    #[test]
    fn field_selectors() {
        let ev = json!({"metadata": {"name": "e1", "namespace": "default"}, "involvedObject": {"name": "n1", "kind": "Node"}, "source": {"component": "c"}});
        let f = FieldSelector::parse(
            "involvedObject.name=n1,involvedObject.kind=Node,involvedObject.namespace=",
            true,
        )
        .unwrap();
        assert!(f.matches(&ev));
        assert!(FieldSelector::parse("source=c", true).unwrap().matches(&ev));
        assert!(
            !FieldSelector::parse("metadata.name!=e1", true)
                .unwrap()
                .matches(&ev)
        );
        assert!(FieldSelector::parse("spec.power=On", false).is_err());
        assert_eq!(
            FieldSelector::parse("metadata.name=x", false)
                .unwrap()
                .pinned_name(),
            Some("x")
        );
    }
}
