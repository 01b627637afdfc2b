//! Observability shared by the API server and the controllers: Prometheus metrics
//! ([`metrics()`]) and the per-object log hub ([`LogHub`]) behind `groundwork logs KIND/NAME`.

mod logs;
mod metrics;

pub use logs::{HubLayer, LogHub, LogLine};
pub use metrics::{
    ApiLabels, ControllerLabels, Metrics, OPENMETRICS_CONTENT_TYPE, ReconcileLabels,
    ResourceLabels, metrics,
};
