//! `Rack`: a cabinet in a datacenter zone; its elevation is derived from the Nodes in it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::{FieldError, Validate, check_non_negative, check_ref, check_unique};

fn default_height() -> u32 {
    42
}

/// A rack: height in U, power budget, PDUs.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "groundwork.dev",
    version = "v1alpha1",
    kind = "Rack",
    plural = "racks",
    shortname = "rk",
    category = "groundwork",
    status = "RackStatus",
    doc = "A rack in a datacenter zone: height, power budget, PDUs; its elevation is derived from Nodes.",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct RackSpec {
    /// Name of the Datacenter the rack stands in.
    pub datacenter: String,
    /// Availability zone (one of the Datacenter's).
    pub availability_zone: String,
    /// Usable height in rack units.
    #[serde(default = "default_height")]
    #[schemars(range(min = 1, max = 60))]
    pub height_u: u32,
    /// Power the rack may draw, in kW.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_budget_kw: Option<f64>,
    /// Heat the rack's cooling removes, in kW.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooling_kw: Option<f64>,
    /// Power distribution units.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pdus: Vec<Pdu>,
    /// Where the rack stands, e.g. row and position in the row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Pdu {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlets: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_kw: Option<f64>,
}

/// One occupied slot of the elevation.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ElevationSlot {
    pub position: u32,
    pub height_u: u32,
    pub node: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RackStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units_used: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units_free: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_drawn_kw: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_free_kw: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub elevation: Vec<ElevationSlot>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl Validate for Rack {
    fn validate(&self) -> Vec<FieldError> {
        let s = &self.spec;
        let mut errs = Vec::new();
        check_ref("spec.datacenter", &s.datacenter, &mut errs);
        check_ref("spec.availabilityZone", &s.availability_zone, &mut errs);
        if s.height_u == 0 || s.height_u > 60 {
            errs.push(FieldError::invalid(
                "spec.heightU",
                format!("{}: must be between 1 and 60", s.height_u),
            ));
        }
        check_non_negative("spec.powerBudgetKw", s.power_budget_kw, &mut errs);
        check_non_negative("spec.coolingKw", s.cooling_kw, &mut errs);
        check_unique(
            "spec.pdus",
            s.pdus.iter().map(|p| p.name.as_str()),
            &mut errs,
        );
        for (i, p) in s.pdus.iter().enumerate() {
            check_non_negative(&format!("spec.pdus[{i}].maxKw"), p.max_kw, &mut errs);
        }
        errs
    }
}
