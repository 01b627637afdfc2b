//! The Groundwork API server: Kubernetes REST and watch conventions for the Groundwork kinds
//! (group `groundwork.dev/v1alpha1`), core/v1 Events, coordination.k8s.io/v1 Leases and
//! rbac.authorization.k8s.io/v1 ClusterRoles and bindings, over the object store, so that
//! `kubectl` and kube-rs work unmodified. This crate is the only one that knows the wire format.

pub mod auth;
mod discovery;
mod error;
mod handlers;
mod hooks;
mod logs;
mod objects;
mod openapi;
mod protobuf;
mod query;
mod rbac;
mod secrets;
mod selector;
mod server;
mod ssa;
mod strategic;
mod table;
pub mod tls;
mod ui;
mod watch;

pub use error::ApiError;
pub use secrets::set_secret_key;
pub use selector::{FieldSelector, LabelSelector};
pub use server::{ServerConfig, router, router_with, serve, serve_tls};
pub use table::human_duration;
