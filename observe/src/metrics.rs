//! Prometheus metrics of one process, in one registry. Families are created once at first use;
//! `/metrics` renders them in the OpenMetrics text format Prometheus scrapes.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// An API request: Kubernetes verb (get, list, watch, create, update, patch, delete, ...),
/// resource (`nodes`, `nodes/status`, ...) and HTTP status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub verb: String,
    pub resource: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub verb: String,
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

/// `result` is `success`, `requeue`, `conflict` (stale cache, 409) or `error`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub controller: String,
    pub result: String,
}

type Hist<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric the process exports.
pub struct Metrics {
    registry: Registry,
    pub api_requests: Family<ApiLabels, Counter>,
    pub api_request_duration: Hist<ResourceLabels>,
    pub api_watches: Family<ResourceLabels, Gauge>,
    pub store_revision: Gauge,
    pub queue_depth: Family<ControllerLabels, Gauge>,
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub reconcile_errors: Family<ControllerLabels, Counter>,
    pub reconcile_duration: Hist<ControllerLabels>,
    pub leader: Family<ControllerLabels, Gauge>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("groundwork");
        let m = Metrics {
            api_requests: Family::default(),
            api_request_duration: Family::new_with_constructor(latency_histogram),
            api_watches: Family::default(),
            store_revision: Gauge::default(),
            queue_depth: Family::default(),
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(latency_histogram),
            leader: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "api_requests",
            "API requests by verb, resource and HTTP code",
            m.api_requests.clone(),
        );
        registry.register(
            "api_request_duration_seconds",
            "API request latency (watches: until the response starts)",
            m.api_request_duration.clone(),
        );
        registry.register("api_watches", "Open watch streams", m.api_watches.clone());
        registry.register(
            "store_revision",
            "Newest committed revision (resourceVersion) of the object store",
            m.store_revision.clone(),
        );
        registry.register(
            "controller_queue_depth",
            "Objects waiting in a controller's work queue (due now or later)",
            m.queue_depth.clone(),
        );
        registry.register(
            "controller_reconciles",
            "Reconciles by controller and result",
            m.reconciles.clone(),
        );
        registry.register(
            "controller_reconcile_errors",
            "Reconciles that failed and were requeued with backoff",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "controller_reconcile_duration_seconds",
            "Time spent in one reconcile",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "controller_leader",
            "1 while this process holds the controller's Lease",
            m.leader.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The process' metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_prefix_and_labels() {
        let m = metrics();
        m.reconciles
            .get_or_create(&ReconcileLabels {
                controller: "rack".into(),
                result: "success".into(),
            })
            .inc();
        m.queue_depth
            .get_or_create(&ControllerLabels {
                controller: "rack".into(),
            })
            .set(3);
        let text = m.encode();
        assert!(
            text.contains(
                r#"groundwork_controller_reconciles_total{controller="rack",result="success"} "#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"groundwork_controller_queue_depth{controller="rack"} 3"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
