//! `ServiceStack`: the ordered platform layers (Vault, Consul, Nomad, ...) run on machines.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::{FieldError, Validate, check_name, check_unique};

/// A stack of service layers with dependencies between them.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "groundwork.dev",
    version = "v1alpha1",
    kind = "ServiceStack",
    plural = "servicestacks",
    shortname = "stack",
    category = "groundwork",
    status = "ServiceStackStatus",
    doc = "The platform service layers (Vault, Consul, Nomad, ...) in dependency order.",
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStackSpec {
    /// Name of the Datacenter the stack runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacenter: Option<String>,
    /// The layers; a layer starts when every layer it depends on is Ready.
    pub layers: Vec<Layer>,
}

/// The services Groundwork knows how to bootstrap.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceType {
    Vault,
    Consul,
    Nomad,
    Prometheus,
    Elastic,
    Grafana,
    StorageGateway,
    Boundary,
    Openldap,
    VaultSshCa,
    Mysql,
    Workers,
    Gitea,
    Jenkins,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Layer {
    pub name: String,
    /// Service types the layer runs (a layer such as identity runs several).
    pub services: Vec<ServiceType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// Names of layers that must be Ready first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Service configuration, passed to the layer's driver.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "free_form")]
    pub config: BTreeMap<String, serde_json::Value>,
}

fn free_form(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "description": "Free-form service configuration."
    })
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// How many members; absent means every matching Node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum LayerPhase {
    Pending,
    Bootstrapping,
    Ready,
    Degraded,
    Failed,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LayerStatus {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<LayerPhase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bootstrap_steps_done: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStackStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl ServiceStackSpec {
    /// Layer names in an order that respects `dependsOn` (dependencies first), or the layers
    /// that take part in a cycle.
    pub fn topological_order(&self) -> Result<Vec<&str>, Vec<&str>> {
        let mut done: BTreeSet<&str> = BTreeSet::new();
        let mut order = Vec::new();
        let known: BTreeSet<&str> = self.layers.iter().map(|l| l.name.as_str()).collect();
        loop {
            let before = order.len();
            for l in &self.layers {
                if !done.contains(l.name.as_str())
                    && l.depends_on
                        .iter()
                        .all(|d| done.contains(d.as_str()) || !known.contains(d.as_str()))
                {
                    done.insert(&l.name);
                    order.push(l.name.as_str());
                }
            }
            if order.len() == self.layers.len() {
                return Ok(order);
            }
            if order.len() == before {
                return Err(self
                    .layers
                    .iter()
                    .map(|l| l.name.as_str())
                    .filter(|n| !done.contains(n))
                    .collect());
            }
        }
    }
}

impl Validate for ServiceStack {
    fn validate(&self) -> Vec<FieldError> {
        let s = &self.spec;
        let mut errs = Vec::new();
        if s.layers.is_empty() {
            errs.push(FieldError::required(
                "spec.layers",
                "a stack needs at least one layer",
            ));
        }
        check_unique(
            "spec.layers",
            s.layers.iter().map(|l| l.name.as_str()),
            &mut errs,
        );
        let names: BTreeSet<&str> = s.layers.iter().map(|l| l.name.as_str()).collect();
        for (i, l) in s.layers.iter().enumerate() {
            check_name(&format!("spec.layers[{i}].name"), &l.name, &mut errs);
            if l.services.is_empty() {
                errs.push(FieldError::required(
                    format!("spec.layers[{i}].services"),
                    "name at least one service",
                ));
            }
            for (j, d) in l.depends_on.iter().enumerate() {
                if !names.contains(d.as_str()) {
                    errs.push(FieldError::invalid(
                        format!("spec.layers[{i}].dependsOn[{j}]"),
                        format!("{d:?}: no layer of that name"),
                    ));
                } else if d == &l.name {
                    errs.push(FieldError::invalid(
                        format!("spec.layers[{i}].dependsOn[{j}]"),
                        "a layer cannot depend on itself",
                    ));
                }
            }
            if l.placement.as_ref().and_then(|p| p.count) == Some(0) {
                errs.push(FieldError::invalid(
                    format!("spec.layers[{i}].placement.count"),
                    "0: omit count to run on every matching node",
                ));
            }
        }
        if let Err(cycle) = s.topological_order() {
            errs.push(FieldError::invalid(
                "spec.layers",
                format!("dependency cycle among layers: {}", cycle.join(", ")),
            ));
        }
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(name: &str, deps: &[&str]) -> Layer {
        Layer {
            name: name.into(),
            services: vec![ServiceType::Vault],
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn order_and_cycles() {
        let spec = ServiceStackSpec {
            datacenter: None,
            layers: vec![layer("b", &["a"]), layer("a", &[]), layer("c", &["b", "a"])],
        };
        assert_eq!(spec.topological_order().unwrap(), vec!["a", "b", "c"]);
        let cyc = ServiceStackSpec {
            datacenter: None,
            layers: vec![layer("a", &["b"]), layer("b", &["a"]), layer("c", &[])],
        };
        assert_eq!(cyc.topological_order().unwrap_err(), vec!["a", "b"]);
        let st = ServiceStack::new("s", cyc);
        let errs = st.validate();
        assert!(errs.iter().any(|e| e.message.contains("cycle")), "{errs:?}");
    }
}
