//! Prometheus metrics: request counts and latency histograms by route (the matched
//! route template, so ids do not explode the label set), command outcomes, and the
//! command side's append counters, rendered at `/metrics`.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
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
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(
        "http_requests_total",
        "method" => method.clone(),
        "route" => route.clone(),
        "status" => status
    )
    .increment(1);
    metrics::histogram!(
        "http_request_duration_seconds",
        "method" => method,
        "route" => route
    )
    .record(started.elapsed().as_secs_f64());
    response
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
