//! The Groundwork object model: every kind an operator writes or a controller reports on,
//! with its validation and schema. This crate does no I/O; the server, the controllers, the
//! CLI and the tests all share it.

mod admission;
pub mod agent;
mod conditions;
mod credential;
mod datacenter;
mod gitsource;
mod kinds;
pub mod manifests;
mod node;
mod profile;
mod rack;
pub mod secrets;
mod serviceinstance;
mod servicestack;
pub mod transit;
mod validate;

pub use admission::{Decoded, decode};
pub use conditions::{condition_is_true, find_condition, set_condition};
pub use credential::*;
pub use datacenter::*;
pub use gitsource::*;
pub use kinds::{
    API_VERSION, Admitted, Column, GROUP, KindInfo, VERSION, all_kinds, check_object_name,
    crd_yaml_documents, group_versions, kind_by_kind, kind_by_plural,
};
pub use node::*;
pub use profile::*;
pub use rack::*;
pub use serviceinstance::*;
pub use servicestack::*;
pub use validate::{FieldError, FieldErrorKind, Validate, normalize_mac, validate_node_in_rack};

/// Kubernetes' own `Lease` (coordination.k8s.io/v1): controller leader election.
pub use k8s_openapi::api::coordination::v1::Lease;
/// Kubernetes' own `Event` (core/v1): what controllers record, served at `/api/v1/events`.
pub use k8s_openapi::api::core::v1::Event;
/// Kubernetes' own `Condition` (meta/v1), used by every kind's status.
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
/// Kubernetes' own `ObjectMeta`, the `metadata` of every object.
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
