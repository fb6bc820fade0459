//! The orchestrator's own figures, for `/metrics` beside the sandboxes': how long reconciles
//! take, how plugin calls do (latency and failures), how many image bytes were pulled, and the
//! API's requests. Process-wide: what `serve` (and its API, controller, pulls and plugins in
//! the same process) records; a shim's own plugin calls (network policy) are its process's.
//!
//! Recording is cheap and never fails: atomics under `prometheus-client`'s families, whose
//! label sets are bounded (a route template, never a raw path; a plugin's name and call).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::OnceLock;
use std::time::Duration;

type Labels = Vec<(String, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_buckets() -> Histogram {
    // 100 µs .. about 26 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

pub struct Telemetry {
    reconcile: Histograms,
    plugin_calls: Histograms,
    plugin_failures: Family<Labels, Counter>,
    pull_bytes: Counter,
    api_requests: Family<Labels, Counter>,
    api_latency: Histograms,
}

pub fn get() -> &'static Telemetry {
    static T: OnceLock<Telemetry> = OnceLock::new();
    T.get_or_init(|| Telemetry {
        reconcile: Family::new_with_constructor(latency_buckets),
        plugin_calls: Family::new_with_constructor(latency_buckets),
        plugin_failures: Family::default(),
        pull_bytes: Counter::default(),
        api_requests: Family::default(),
        api_latency: Family::new_with_constructor(latency_buckets),
    })
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

impl Telemetry {
    /// One sandbox converged (`outcome`: created, recreated, removed, nothing, failed, ...).
    pub fn reconciled(&self, outcome: &str, took: Duration) {
        self.reconcile.get_or_create(&labels(&[("outcome", outcome)])).observe(took.as_secs_f64());
    }

    /// One call into a plugin; `failure` names how it failed (timeout, memory, trap, ...).
    pub fn plugin_call(&self, plugin: &str, call: &str, took: Duration, failure: Option<&str>) {
        self.plugin_calls.get_or_create(&labels(&[("plugin", plugin), ("call", call)])).observe(took.as_secs_f64());
        if let Some(reason) = failure {
            self.plugin_failures.get_or_create(&labels(&[("plugin", plugin), ("call", call), ("reason", reason)])).inc();
        }
    }

    pub fn pulled(&self, bytes: u64) {
        self.pull_bytes.inc_by(bytes);
    }

    /// One API request: `route` is the matched template (`/v1/sandboxes/{name}`), or
    /// `unmatched`.
    pub fn api_request(&self, method: &str, route: &str, status: u16, took: Duration) {
        let class = format!("{}xx", status / 100);
        self.api_requests.get_or_create(&labels(&[("method", method), ("route", route), ("code", &class)])).inc();
        self.api_latency.get_or_create(&labels(&[("method", method), ("route", route)])).observe(took.as_secs_f64());
    }

    /// Adds these families to `registry` (under the `orchestrator` prefix).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("orchestrator");
        r.register_with_unit("reconcile_duration", "How long converging one sandbox took, by outcome", Unit::Seconds, self.reconcile.clone());
        r.register_with_unit("plugin_call_duration", "Calls into plugins in this process, by plugin and call", Unit::Seconds, self.plugin_calls.clone());
        r.register("plugin_call_failures", "Plugin calls that failed, by plugin, call and reason", self.plugin_failures.clone());
        r.register_with_unit("image_pull", "Image layer bytes downloaded", Unit::Bytes, self.pull_bytes.clone());
        r.register("api_requests", "API requests, by method, route template and status class", self.api_requests.clone());
        r.register_with_unit("api_request_duration", "API request handling time, by method and route template", Unit::Seconds, self.api_latency.clone());
    }
}
