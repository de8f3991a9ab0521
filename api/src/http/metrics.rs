//! Prometheus metrics: request counts and latency histograms by route (the matched
//! route template, so ids do not explode the label set), command outcomes, and the
//! command side's append counters, rendered at `/metrics`.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds: 0.5 ms to 10 s.
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide recorder. `metrics` has one global recorder per process, so
/// several servers in one process (tests) share it.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_SECONDS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
            }
            handle
        })
        .clone()
}

/// Counts each request and records its latency, labelled by method, route template
/// and status.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let handles = RouteHandles::of(&method, route, response.status().as_u16());
    handles.requests.increment(1);
    handles.duration.record(started.elapsed().as_secs_f64());
    response
}

/// The method as labelled: methods outside HTTP's standard set share `OTHER`, so
/// clients cannot grow the label set (and the handles cached for it) without bound.
fn method_label(method: &Method) -> Method {
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    if STANDARD.contains(method) {
        method.clone()
    } else {
        Method::from_bytes(b"OTHER").unwrap_or_default()
    }
}

/// A route's request counter (per status) and latency histogram, registered once.
///
/// Resolving a handle through the recorder hashes its name and labels and looks
/// them up under a lock, and the labels are owned strings: done on every request
/// that was about 2% of an HTTP command's CPU. The set of keys is bounded (the
/// route templates, their methods, the statuses the API answers).
#[derive(Clone)]
struct RouteHandles {
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

/// Handles by route template, then by method and status.
type HandlesByRoute = HashMap<String, Vec<(Method, u16, RouteHandles)>>;

impl RouteHandles {
    fn of(method: &Method, route: &str, status: u16) -> RouteHandles {
        static HANDLES: OnceLock<RwLock<HandlesByRoute>> = OnceLock::new();
        let handles = HANDLES.get_or_init(Default::default);
        let find = |by_route: &HandlesByRoute| {
            by_route.get(route).and_then(|entries| {
                entries
                    .iter()
                    .find(|(m, s, _)| m == method && *s == status)
                    .map(|(_, _, h)| h.clone())
            })
        };
        if let Some(found) = find(&handles.read().unwrap_or_else(|e| e.into_inner())) {
            return found;
        }
        let mut by_route = handles.write().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = find(&by_route) {
            return found;
        }
        let registered = RouteHandles {
            requests: metrics::counter!(
                "http_requests_total",
                "method" => method.as_str().to_owned(),
                "route" => route.to_owned(),
                "status" => status.to_string()
            ),
            duration: metrics::histogram!(
                "http_request_duration_seconds",
                "method" => method.as_str().to_owned(),
                "route" => route.to_owned()
            ),
        };
        by_route.entry(route.to_owned()).or_default().push((
            method.clone(),
            status,
            registered.clone(),
        ));
        registered
    }
}

/// Counts a command's outcome: `accepted`, `replayed`, or the problem code.
pub fn command_outcome(command: &'static str, outcome: &'static str) {
    metrics::counter!("commerce_commands_total", "command" => command, "outcome" => outcome)
        .increment(1);
}

/// Records how long a command took through the command side (load, decide,
/// append, commit), without the HTTP and idempotency work around it.
pub fn command_duration(command: &'static str, elapsed: std::time::Duration) {
    metrics::histogram!("commerce_command_duration_seconds", "command" => command)
        .record(elapsed.as_secs_f64());
}

/// Copies the command side's counters into gauges-as-counters before a scrape.
pub fn record_handler_stats(aggregate: &'static str, stats: commands::HandlerStats) {
    let set = |name: &'static str, value: u64| {
        metrics::counter!(name, "aggregate" => aggregate).absolute(value);
    };
    set("commerce_command_appends_total", stats.appends);
    set(
        "commerce_command_appended_commands_total",
        stats.appended_commands,
    );
    set("commerce_command_conflicts_total", stats.conflicts);
    set("commerce_command_stream_loads_total", stats.loads);
    set("commerce_command_events_read_total", stats.events_read);
    set("commerce_command_snapshots_total", stats.snapshots);
}

/// Sets each projection's gauges before a scrape: lag behind the head, checkpoint,
/// apply rate, and whether it has stopped at an event it cannot apply.
pub fn record_projections(statuses: &[projections::ProjectionStatus]) {
    for s in statuses {
        let name = s.projection.name();
        metrics::gauge!("commerce_projection_lag_events", "projection" => name).set(s.lag as f64);
        metrics::gauge!("commerce_projection_checkpoint", "projection" => name)
            .set(s.checkpoint as f64);
        metrics::gauge!("commerce_projection_events_per_second", "projection" => name)
            .set(s.events_per_sec);
        let failed = s.state == projections::ProjectionState::Failed;
        metrics::gauge!("commerce_projection_failed", "projection" => name).set(if failed {
            1.0
        } else {
            0.0
        });
    }
}
