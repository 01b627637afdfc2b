//! `Datacenter`: availability zones, the network design, boot networks, power and cooling.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::{
    FieldError, Validate, check_cidr, check_ip, check_non_negative, check_unique,
};

/// A datacenter: the zones, networks and budgets every Rack and Node lives in.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "groundwork.dev",
    version = "v1alpha1",
    kind = "Datacenter",
    plural = "datacenters",
    shortname = "dc",
    category = "groundwork",
    status = "DatacenterStatus",
    doc = "A datacenter: availability zones, network design, boot networks, power and cooling budgets.",
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct DatacenterSpec {
    /// Human-readable name shown in listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Availability zones: failure domains with their own power and uplinks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub availability_zones: Vec<AvailabilityZone>,
    /// Transit uplinks, core links between zones and the edge perimeter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkDesign>,
    /// Networks machines PXE-boot on, one or more per zone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boot_networks: Vec<BootNetwork>,
    /// Total power budget in kW.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_budget_kw: Option<f64>,
    /// Total cooling capacity in kW of heat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooling_budget_kw: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AvailabilityZone {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkDesign {
    /// Uplinks to transit providers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transit: Vec<Uplink>,
    /// Links between availability zones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub core_links: Vec<CoreLink>,
    /// What may reach what at the edge perimeter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edge: Vec<EdgeRule>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Uplink {
    pub name: String,
    /// Zone the uplink lands in.
    pub availability_zone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_gbps: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CoreLink {
    pub from: String,
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_gbps: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EdgeRule {
    /// Source: "internet", a zone name, or a boot network name.
    pub from: String,
    /// Destination, same vocabulary as `from`.
    pub to: String,
    /// Ports allowed, e.g. "443/tcp"; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
}

/// How the boot plane answers DHCP on a boot network.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum DhcpMode {
    /// Groundwork is the DHCP server: addresses and PXE options.
    #[default]
    Authoritative,
    /// Another DHCP server hands out addresses; Groundwork sends PXE options only.
    Proxy,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BootNetwork {
    pub name: String,
    pub availability_zone: String,
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ntp: Vec<String>,
    #[serde(default)]
    pub dhcp_mode: DhcpMode,
    /// Address pool for machines not yet known (discovery); authoritative mode only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_pool: Option<AddressRange>,
    /// Lease time in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_seconds: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AddressRange {
    pub start: String,
    pub end: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatacenterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub racks: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units_used: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units_free: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_used_kw: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_free_kw: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl Validate for Datacenter {
    fn validate(&self) -> Vec<FieldError> {
        let s = &self.spec;
        let mut errs = Vec::new();
        check_unique(
            "spec.availabilityZones",
            s.availability_zones.iter().map(|z| z.name.as_str()),
            &mut errs,
        );
        let zones: BTreeSet<&str> = s
            .availability_zones
            .iter()
            .map(|z| z.name.as_str())
            .collect();
        let zone_ok = |field: String, z: &str, errs: &mut Vec<FieldError>| {
            if !zones.contains(z) {
                errs.push(FieldError::invalid(
                    field,
                    format!(
                        "{z:?}: not one of spec.availabilityZones ({})",
                        zones.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        };
        for (i, z) in s.availability_zones.iter().enumerate() {
            crate::validate::check_name(
                &format!("spec.availabilityZones[{i}].name"),
                &z.name,
                &mut errs,
            );
        }
        if let Some(net) = &s.network {
            for (i, u) in net.transit.iter().enumerate() {
                zone_ok(
                    format!("spec.network.transit[{i}].availabilityZone"),
                    &u.availability_zone,
                    &mut errs,
                );
                if let Some(c) = &u.cidr {
                    check_cidr(&format!("spec.network.transit[{i}].cidr"), c, &mut errs);
                }
                check_non_negative(
                    &format!("spec.network.transit[{i}].bandwidthGbps"),
                    u.bandwidth_gbps,
                    &mut errs,
                );
            }
            for (i, l) in net.core_links.iter().enumerate() {
                zone_ok(
                    format!("spec.network.coreLinks[{i}].from"),
                    &l.from,
                    &mut errs,
                );
                zone_ok(format!("spec.network.coreLinks[{i}].to"), &l.to, &mut errs);
                if l.from == l.to {
                    errs.push(FieldError::invalid(
                        format!("spec.network.coreLinks[{i}].to"),
                        "a core link joins two different zones",
                    ));
                }
            }
        }
        check_unique(
            "spec.bootNetworks",
            s.boot_networks.iter().map(|n| n.name.as_str()),
            &mut errs,
        );
        let mut nets: Vec<(usize, ipnet::IpNet)> = Vec::new();
        for (i, n) in s.boot_networks.iter().enumerate() {
            let f = format!("spec.bootNetworks[{i}]");
            zone_ok(
                format!("{f}.availabilityZone"),
                &n.availability_zone,
                &mut errs,
            );
            let net = check_cidr(&format!("{f}.cidr"), &n.cidr, &mut errs);
            let inside = |field: String, ip: &str, errs: &mut Vec<FieldError>| {
                let before = errs.len();
                check_ip(&field, ip, errs);
                if errs.len() == before
                    && let (Some(net), Ok(addr)) = (net, ip.parse::<std::net::IpAddr>())
                    && !net.contains(&addr)
                {
                    errs.push(FieldError::invalid(
                        field,
                        format!("{ip:?}: outside the boot network {net}"),
                    ));
                }
            };
            if let Some(gw) = &n.gateway {
                inside(format!("{f}.gateway"), gw, &mut errs);
            }
            for (j, d) in n.dns.iter().enumerate() {
                check_ip(&format!("{f}.dns[{j}]"), d, &mut errs);
            }
            if let Some(pool) = &n.discovery_pool {
                inside(format!("{f}.discoveryPool.start"), &pool.start, &mut errs);
                inside(format!("{f}.discoveryPool.end"), &pool.end, &mut errs);
                if let (Ok(a), Ok(b)) = (
                    pool.start.parse::<std::net::IpAddr>(),
                    pool.end.parse::<std::net::IpAddr>(),
                ) && a > b
                {
                    errs.push(FieldError::invalid(
                        format!("{f}.discoveryPool.end"),
                        "the pool ends before it starts",
                    ));
                }
                if n.dhcp_mode == DhcpMode::Proxy {
                    errs.push(FieldError::invalid(
                        format!("{f}.discoveryPool"),
                        "proxy DHCP hands out no addresses; remove the pool or use dhcpMode: Authoritative",
                    ));
                }
            }
            if let Some(net) = net {
                for (j, other) in &nets {
                    if net.contains(&other.network()) || other.contains(&net.network()) {
                        errs.push(FieldError::invalid(
                            format!("{f}.cidr"),
                            format!("{net} overlaps spec.bootNetworks[{j}].cidr {other}"),
                        ));
                    }
                }
                nets.push((i, net));
            }
        }
        check_non_negative("spec.powerBudgetKw", s.power_budget_kw, &mut errs);
        check_non_negative("spec.coolingBudgetKw", s.cooling_budget_kw, &mut errs);
        errs
    }
}
