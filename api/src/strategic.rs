//! Strategic merge patch, the part of it the server's kinds need: an RFC 7386 merge patch in
//! which a `conditions` list is a map keyed by `type` (Kubernetes' `patchMergeKey` for
//! conditions). A patch's condition replaces the one of its type and leaves the others in
//! place; `{"type": T, "$patch": "delete"}` removes one. Every controller writes its own
//! conditions this way, never another's (docs/ARCHITECTURE.md, "Node.status ownership").
//! Other lists are replaced whole, as in a merge patch.

use serde_json::{Map, Value};

/// Lists merged by a key: (field name, merge key).
const LIST_MAPS: &[(&str, &str)] = &[("conditions", "type")];

pub(crate) fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("an object");
    for (k, pv) in p {
        if pv.is_null() {
            t.remove(k);
            continue;
        }
        let key = LIST_MAPS.iter().find(|(f, _)| f == k).map(|(_, key)| *key);
        match (key, pv, t.get_mut(k)) {
            (Some(key), Value::Array(items), Some(Value::Array(current))) => {
                merge_list(current, items, key)
            }
            (Some(_), Value::Array(items), _) => {
                // Nothing to merge into: the patch's items, without delete directives.
                let kept = items
                    .iter()
                    .filter(|i| i.get("$patch").is_none())
                    .cloned()
                    .collect();
                t.insert(k.clone(), Value::Array(kept));
            }
            (_, Value::Object(_), _) => merge(t.entry(k.clone()).or_insert(Value::Null), pv),
            _ => {
                t.insert(k.clone(), pv.clone());
            }
        }
    }
}

fn merge_list(current: &mut Vec<Value>, items: &[Value], key: &str) {
    for item in items {
        let Some(id) = item.get(key).cloned() else {
            // No key: nothing to merge it with (a condition always has a type; admission
            // names the field): left out, so repeating a patch converges.
            continue;
        };
        let at = current.iter().position(|c| c.get(key) == Some(&id));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (at, delete) {
            (Some(i), true) => {
                current.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => current[i] = item.clone(),
            (None, false) => current.push(item.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::merge;
    use serde_json::json;

    #[test]
    fn conditions_merge_by_type_and_the_rest_as_a_merge_patch() {
        let mut node = json!({
            "metadata": {"labels": {"a": "1", "b": "2"}},
            "status": {
                "phase": "Discovering",
                "addresses": ["10.0.0.1"],
                "conditions": [
                    {"type": "BmcReachable", "status": "True", "reason": "Reachable"},
                    {"type": "Provisioned", "status": "False", "reason": "Discovering"},
                    {"type": "Placed", "status": "True"},
                ],
            },
        });
        merge(
            &mut node,
            &json!({
                "metadata": {"labels": {"b": null, "c": "3"}},
                "status": {
                    "phase": "Inventoried",
                    "addresses": ["10.0.0.2"],
                    "conditions": [
                        {"type": "Provisioned", "status": "False", "reason": "Inventoried"},
                        {"type": "NodeAgentReady", "status": "True"},
                        {"type": "Placed", "$patch": "delete"},
                        {"type": "Gone", "$patch": "delete"},
                    ],
                },
            }),
        );
        assert_eq!(
            node,
            json!({
                "metadata": {"labels": {"a": "1", "c": "3"}},
                "status": {
                    "phase": "Inventoried",
                    "addresses": ["10.0.0.2"],
                    "conditions": [
                        {"type": "BmcReachable", "status": "True", "reason": "Reachable"},
                        {"type": "Provisioned", "status": "False", "reason": "Inventoried"},
                        {"type": "NodeAgentReady", "status": "True"},
                    ],
                },
            })
        );
        // Into an object without conditions yet, and with conditions: null removing them.
        let mut bare = json!({"status": {}});
        merge(
            &mut bare,
            &json!({"status": {"conditions": [{"type": "A"}, {"type": "B", "$patch": "delete"}]}}),
        );
        assert_eq!(bare, json!({"status": {"conditions": [{"type": "A"}]}}));
        merge(&mut bare, &json!({"status": {"conditions": null}}));
        assert_eq!(bare, json!({"status": {}}));
    }
}
