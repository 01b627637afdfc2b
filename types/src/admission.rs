//! Decoding an object the way the API server admits it: unknown fields are collected (for
//! `fieldValidation=Strict|Warn|Ignore`), type errors name their field path, and the result is
//! re-serialised from the typed struct, so what is stored is exactly what the schema allows.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::validate::FieldError;

/// A decoded object and the fields that were not part of its schema (dropped).
#[derive(Debug)]
pub struct Decoded<T> {
    pub object: T,
    /// Paths such as `spec.bogus` or `spec.layers[2].colour`.
    pub unknown_fields: Vec<String>,
}

/// Decodes `value` into `T`. Errors name the offending field; unknown fields are reported,
/// not fatal (the caller decides per `fieldValidation`).
pub fn decode<T: DeserializeOwned + Serialize>(
    value: serde_json::Value,
) -> Result<Decoded<T>, FieldError> {
    let mut unknown = Vec::new();
    let mut on_ignored = |path: serde_ignored::Path<'_>| unknown.push(render(&path));
    let de = serde_ignored::Deserializer::new(value, &mut on_ignored);
    let object: T = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        FieldError::invalid(field, e.into_inner().to_string())
    })?;
    // apiVersion/kind are read by the derived type but the generated root struct may treat
    // them as ignored; they are not unknown.
    unknown.retain(|p| p != "apiVersion" && p != "kind");
    Ok(Decoded {
        object,
        unknown_fields: unknown,
    })
}

fn render(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", render(parent)),
        Path::Map { parent, key } => {
            let p = render(parent);
            if p.is_empty() {
                key.clone()
            } else {
                format!("{p}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => render(parent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Rack, ServiceStack};
    use serde_json::json;

    #[test]
    fn unknown_fields_have_paths() {
        let v = json!({
            "apiVersion": "groundwork.dev/v1alpha1", "kind": "ServiceStack",
            "metadata": {"name": "s", "colour": "red"},
            "spec": {"layers": [{"name": "a", "services": ["vault"], "bogus": 1}], "extra": true},
            "stray": 1
        });
        let d = decode::<ServiceStack>(v).unwrap();
        let mut u = d.unknown_fields.clone();
        u.sort();
        assert_eq!(
            u,
            vec![
                "metadata.colour",
                "spec.extra",
                "spec.layers[0].bogus",
                "stray"
            ]
        );
    }

    #[test]
    fn type_errors_name_the_field() {
        let v = json!({"apiVersion": "groundwork.dev/v1alpha1", "kind": "Rack", "metadata": {"name": "r"},
            "spec": {"datacenter": "dc", "availabilityZone": "a", "heightU": "tall"}});
        let e = decode::<Rack>(v).unwrap_err();
        assert_eq!(e.field, "spec.heightU");
        assert!(e.message.contains("invalid type"), "{}", e.message);
    }

    #[test]
    fn missing_required_field() {
        let v = json!({"apiVersion": "groundwork.dev/v1alpha1", "kind": "Rack", "metadata": {"name": "r"}, "spec": {"availabilityZone": "a"}});
        let e = decode::<Rack>(v).unwrap_err();
        assert_eq!(e.field, "spec");
        assert!(e.message.contains("datacenter"), "{}", e.message);
    }
}
