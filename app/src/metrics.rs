//! Prometheus metrics, served as text at `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

// The labels of the per-request series are `&'static str`s (routes through [`label`]): a
// series is looked up on every request, and its key is then built without copying a string.

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    command: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AggregateLabels {
    aggregate_type: &'static str,
}

/// Most distinct values [`label`] keeps; later ones are labelled `other`.
const MAX_LABELS: usize = 4096;

/// `value` as a label kept for the life of the process, each distinct value once. It is given
/// route templates, a finite set (command names, outcomes and aggregate types are
/// `&'static str`s already); were it ever given outside input, it would still keep at most
/// [`MAX_LABELS`] values and label later ones `other`.
fn label(value: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{LazyLock, RwLock};
    static KEPT: LazyLock<RwLock<HashSet<&'static str>>> = LazyLock::new(Default::default);
    if let Some(kept) = KEPT.read().expect("labels lock").get(value) {
        return kept;
    }
    let mut kept = KEPT.write().expect("labels lock");
    if let Some(kept) = kept.get(value) {
        return kept;
    }
    if kept.len() >= MAX_LABELS {
        return "other";
    }
    let value: &'static str = Box::leak(value.into());
    kept.insert(value);
    value
}

/// An HTTP method as a label: a standard method's name, else `other` (a client may send any
/// token as a method, and each would otherwise start series of its own).
fn method_label(method: &str) -> &'static str {
    const STANDARD: [&str; 9] = [
        "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT", "TRACE",
    ];
    STANDARD
        .into_iter()
        .find(|standard| *standard == method)
        .unwrap_or("other")
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProjectorLabels {
    projector: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailingEventLabels {
    projector: String,
    event_id: String,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric of the gateway.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    commands: Family<CommandLabels, Counter>,
    events_appended: Family<AggregateLabels, Counter>,
    projector_lag_events: Family<ProjectorLabels, Gauge>,
    projector_lag_seconds: Family<ProjectorLabels, Gauge<f64, AtomicU64>>,
    projector_failing: Family<ProjectorLabels, Gauge>,
    projector_failing_event_info: Family<FailingEventLabels, Gauge>,
    /// The label set of each projector's failing-event series, to remove it when it changes.
    projector_failing_event:
        std::sync::Mutex<std::collections::HashMap<String, FailingEventLabels>>,
    relay_healthy: Gauge,
    relay_lag_events: Gauge,
    relay_lag_seconds: Gauge<f64, AtomicU64>,
    process_roles: Family<RoleLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_seconds =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        let commands = Family::<CommandLabels, Counter>::default();
        let events_appended = Family::<AggregateLabels, Counter>::default();
        let projector_lag_events = Family::<ProjectorLabels, Gauge>::default();
        let projector_lag_seconds = Family::<ProjectorLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route pattern and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by method and route pattern",
            request_seconds.clone(),
        );
        registry.register(
            "commands",
            "Commands by name and outcome (accepted, rejected, conflict, error)",
            commands.clone(),
        );
        registry.register(
            "events_appended",
            "Events appended to the log by aggregate type",
            events_appended.clone(),
        );
        registry.register(
            "projector_lag_events",
            "Events in the log not yet applied by the projector",
            projector_lag_events.clone(),
        );
        registry.register(
            "projector_lag_seconds",
            "Age of the oldest event not yet applied by the projector",
            projector_lag_seconds.clone(),
        );
        let projector_failing = Family::<ProjectorLabels, Gauge>::default();
        registry.register(
            "projector_failing",
            "1 while the projector's batches fail (it retries with a back-off; others go on)",
            projector_failing.clone(),
        );
        let projector_failing_event_info = Family::<FailingEventLabels, Gauge>::default();
        registry.register(
            "projector_failing_event",
            "The event a failing projector stumbles on (value 1; the event in the label)",
            projector_failing_event_info.clone(),
        );
        let relay_healthy = Gauge::default();
        let relay_lag_events = Gauge::default();
        let relay_lag_seconds = Gauge::<f64, AtomicU64>::default();
        let process_roles = Family::<RoleLabels, Gauge>::default();
        registry.register(
            "process_role",
            "1 for each role this process has (api, projectors, relay)",
            process_roles.clone(),
        );
        registry.register(
            "relay_healthy",
            "1 when the NATS relay's last publish or connection attempt succeeded",
            relay_healthy.clone(),
        );
        registry.register(
            "relay_lag_events",
            "Events in the log not yet published to NATS",
            relay_lag_events.clone(),
        );
        registry.register(
            "relay_lag_seconds",
            "Age of the oldest event not yet published to NATS",
            relay_lag_seconds.clone(),
        );
        Self {
            registry,
            process_roles,
            relay_healthy,
            relay_lag_events,
            relay_lag_seconds,
            requests,
            request_seconds,
            commands,
            events_appended,
            projector_lag_events,
            projector_lag_seconds,
            projector_failing,
            projector_failing_event_info,
            projector_failing_event: Default::default(),
        }
    }
}

impl Metrics {
    /// A request answered: `route` is its route's template (or `unmatched`), never its path.
    pub fn observe_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let (method, route) = (method_label(method), label(route));
        self.requests
            .get_or_create(&RequestLabels {
                method,
                route,
                status,
            })
            .inc();
        self.request_seconds
            .get_or_create(&RouteLabels { method, route })
            .observe(elapsed.as_secs_f64());
    }

    pub fn command(&self, command: &'static str, outcome: &'static str) {
        self.commands
            .get_or_create(&CommandLabels { command, outcome })
            .inc();
    }

    pub fn events_appended(&self, aggregate_type: &'static str, count: usize) {
        self.events_appended
            .get_or_create(&AggregateLabels { aggregate_type })
            .inc_by(count as u64);
    }

    /// A projector's lag, and whether it fails (`failing`: `Some`, with the event it fails on
    /// when known).
    pub fn projector_lag(
        &self,
        projector: &str,
        events: u64,
        seconds: f64,
        failing: Option<Option<uuid::Uuid>>,
    ) {
        let labels = ProjectorLabels {
            projector: projector.to_string(),
        };
        self.projector_failing
            .get_or_create(&labels)
            .set(i64::from(failing.is_some()));
        // One series per projector: the event it fails on now, or none.
        let mut failing_events = self.projector_failing_event.lock().expect("metrics lock");
        if let Some(previous) = failing_events.remove(projector) {
            self.projector_failing_event_info.remove(&previous);
        }
        if let Some(Some(event_id)) = failing {
            let labels = FailingEventLabels {
                projector: projector.to_string(),
                event_id: event_id.to_string(),
            };
            self.projector_failing_event_info
                .get_or_create(&labels)
                .set(1);
            failing_events.insert(projector.to_string(), labels);
        }
        drop(failing_events);
        self.projector_lag_events
            .get_or_create(&labels)
            .set(events as i64);
        self.projector_lag_seconds
            .get_or_create(&labels)
            .set(seconds);
    }

    /// Records the process's roles.
    pub fn roles(&self, roles: &[&str]) {
        for role in roles {
            self.process_roles
                .get_or_create(&RoleLabels {
                    role: role.to_string(),
                })
                .set(1);
        }
    }

    pub fn relay(&self, healthy: bool, events: u64, seconds: f64) {
        self.relay_healthy.set(i64::from(healthy));
        self.relay_lag_events.set(events as i64);
        self.relay_lag_seconds.set(seconds);
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_is_kept_once() {
        let first = label("/v1/{entity}");
        let again = label(&String::from("/v1/{entity}"));
        assert_eq!(first, "/v1/{entity}");
        assert!(std::ptr::eq(first, again));
    }

    #[test]
    fn methods_outside_the_standard_ones_share_a_label() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("PATCH"), "PATCH");
        assert_eq!(method_label("BREW"), "other");
        assert_eq!(method_label("get"), "other");
        assert_eq!(method_label(""), "other");
    }
}
