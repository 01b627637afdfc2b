//! Query-string parameters of Kubernetes requests. kube-rs sends `?&limit=500`, so empty pairs
//! are accepted; unknown parameters are ignored, as the Kubernetes API server does.

use crate::ApiError;

#[derive(Debug, Default, Clone)]
pub(crate) struct Params {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub limit: usize,
    pub continue_: Option<String>,
    pub resource_version: Option<String>,
    pub watch: bool,
    pub allow_bookmarks: bool,
    pub timeout_seconds: Option<u64>,
    pub send_initial_events: bool,
    pub dry_run: bool,
    pub field_validation: FieldValidation,
    pub force: bool,
    /// `fieldManager`, else the client's User-Agent product (as Kubernetes derives it).
    pub field_manager: Option<String>,
    /// Set by the handler for a create that came through server-side apply.
    pub ssa: bool,
    /// Who asks (set by the handlers from the authentication layer; None without it).
    pub user: Option<crate::auth::UserInfo>,
}

/// What to do with fields the schema does not know.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

/// How every query flag (`watch`, ...) is read: the authorizer and the handlers agree.
pub(crate) fn truthy(v: &str) -> bool {
    matches!(v, "true" | "1" | "True" | "")
}

/// Whether the query asks for a watch: the last `watch` wins, as in the handlers.
pub(crate) fn is_watch(query: Option<&str>) -> bool {
    query
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .filter(|(k, _)| k == "watch")
                .last()
                .is_some_and(|(_, v)| truthy(&v))
        })
        .unwrap_or(false)
}

impl Params {
    pub fn parse(raw: Option<&str>) -> Result<Params, ApiError> {
        let mut p = Params::default();
        let Some(raw) = raw else { return Ok(p) };
        for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
            let v = v.into_owned();
            let truthy = |v: &str| truthy(v);
            match k.as_ref() {
                "labelSelector" => p.label_selector = Some(v).filter(|s| !s.is_empty()),
                "fieldSelector" => p.field_selector = Some(v).filter(|s| !s.is_empty()),
                "limit" => {
                    p.limit = v.parse().map_err(|_| {
                        ApiError::BadRequest(format!("limit: {v:?} is not a number"))
                    })?
                }
                "continue" => p.continue_ = Some(v).filter(|s| !s.is_empty()),
                "resourceVersion" => p.resource_version = Some(v).filter(|s| !s.is_empty()),
                "watch" => p.watch = truthy(&v),
                "allowWatchBookmarks" => p.allow_bookmarks = truthy(&v),
                "timeoutSeconds" => {
                    p.timeout_seconds = Some(v.parse().map_err(|_| {
                        ApiError::BadRequest(format!("timeoutSeconds: {v:?} is not a number"))
                    })?)
                }
                "sendInitialEvents" => p.send_initial_events = truthy(&v),
                "dryRun" => match v.as_str() {
                    "All" => p.dry_run = true,
                    "" => {}
                    other => {
                        return Err(ApiError::BadRequest(format!(
                            "dryRun: unsupported value {other:?}; use All"
                        )));
                    }
                },
                "fieldValidation" => {
                    p.field_validation = match v.as_str() {
                        "Strict" => FieldValidation::Strict,
                        "Warn" | "" => FieldValidation::Warn,
                        "Ignore" => FieldValidation::Ignore,
                        other => {
                            return Err(ApiError::BadRequest(format!(
                                "fieldValidation: {other:?} is not one of Strict, Warn, Ignore"
                            )));
                        }
                    }
                }
                "force" => p.force = truthy(&v),
                "fieldManager" => {
                    if v.len() > 128 {
                        return Err(ApiError::BadRequest(
                            "fieldManager: at most 128 characters".into(),
                        ));
                    }
                    p.field_manager = Some(v).filter(|s| !s.is_empty())
                }
                _ => {}
            }
        }
        Ok(p)
    }

    /// The field manager of a write.
    pub fn manager(&self) -> String {
        self.field_manager
            .clone()
            .unwrap_or_else(|| "unknown".to_string())
    }

    /// The request's label and field selectors as one predicate over objects of `kind`.
    pub fn selector(
        &self,
        kind: &groundwork_types::KindInfo,
    ) -> Result<impl Fn(&serde_json::Value) -> bool + Send + Sync + 'static, ApiError> {
        let labels = crate::LabelSelector::parse(self.label_selector.as_deref().unwrap_or(""))?;
        let fields = crate::FieldSelector::parse(
            self.field_selector.as_deref().unwrap_or(""),
            kind.kind == "Event",
        )?;
        Ok(move |o: &serde_json::Value| labels.matches(o) && fields.matches(o))
    }

    /// Whether the request selects by label or field.
    pub fn has_selector(&self) -> bool {
        self.label_selector
            .as_deref()
            .is_some_and(|s| !s.is_empty())
            || self
                .field_selector
                .as_deref()
                .is_some_and(|s| !s.is_empty())
    }

    /// The requested resourceVersion as a number; `None` for absent or "0" ("any").
    pub fn resource_version_number(&self) -> Result<Option<u64>, ApiError> {
        match self.resource_version.as_deref() {
            None | Some("0") => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| {
                ApiError::BadRequest(format!(
                    "resourceVersion: {s:?} is not a valid resource version"
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_rs_style_queries() {
        let p = Params::parse(Some(
            "&limit=500&watch=true&resourceVersion=12&allowWatchBookmarks=true&timeoutSeconds=290",
        ))
        .unwrap();
        assert_eq!(p.limit, 500);
        assert!(p.watch && p.allow_bookmarks);
        assert_eq!(p.resource_version_number().unwrap(), Some(12));
        assert_eq!(p.timeout_seconds, Some(290));
        let p = Params::parse(Some(
            "fieldSelector=metadata.name%3Dr1&fieldValidation=Strict",
        ))
        .unwrap();
        assert_eq!(p.field_selector.as_deref(), Some("metadata.name=r1"));
        assert_eq!(p.field_validation, FieldValidation::Strict);
        assert!(Params::parse(Some("limit=ten")).is_err());
        assert!(Params::parse(Some("fieldValidation=Loose")).is_err());
    }
}
