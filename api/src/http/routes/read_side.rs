//! The read side for operators and analysts: every projection's checkpoint, lag,
//! rate, state and error, and rebuilds of read models started over HTTP.
//!
//! A rebuild is the same one as `commerce projections rebuild`: shadow tables filled
//! from position 0, caught up to the head and swapped in within one transaction while
//! the live read models keep serving. It runs in this process after the request has
//! been answered (`202`); its progress and outcome are in `GET /v1/admin/projections`.
//! One rebuild runs per process at a time; one that another process runs is refused
//! as well. Interrupting one (the process stops) is safe: the next resumes it.

use std::sync::{Mutex, MutexGuard, PoisonError};

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use projections::{Projection, ProjectionStatus, RebuildOptions, RebuildPhase, RebuildProgress};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::http::extract::JsonBody;
use crate::http::problem::{ApiError, Problem};
use crate::http::{json_response, AppState, Principal, Role};

/// Where a rebuild's progress is read.
const STATUS_PATH: &str = "/v1/admin/projections";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RebuildJobState {
    Running,
    /// The rebuilt read models are swapped in.
    Done,
    /// Stopped with `error`; the live read models are untouched, and a new rebuild
    /// resumes the shadow tables where this one stopped.
    Failed,
}

/// A rebuild started through this API, while it runs and once it has ended.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RebuildJob {
    pub id: Uuid,
    pub projections: Vec<Projection>,
    /// Started from position 0, dropping an interrupted rebuild's shadow.
    pub fresh: bool,
    /// Who asked for it (`role:subject`).
    pub requested_by: String,
    pub state: RebuildJobState,
    pub phase: Option<RebuildPhase>,
    /// Events applied so far, of `events_total` up to the head as last seen.
    pub events_done: u64,
    pub events_total: u64,
    pub events_per_sec: f64,
    /// Seconds left at the current rate.
    pub eta_secs: Option<u64>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Where the shadows started (0, or where an interrupted rebuild had got to).
    pub resumed_from: Option<u64>,
    /// The checkpoint the rebuilt read models were swapped in at.
    pub position: Option<u64>,
    pub error: Option<String>,
}

/// The rebuild this process runs or ran last.
#[derive(Default)]
pub(crate) struct RebuildJobs {
    last: Mutex<Option<RebuildJob>>,
}

impl RebuildJobs {
    fn lock(&self) -> MutexGuard<'_, Option<RebuildJob>> {
        // Holders replace or update the job in one step each: never half-written.
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn last(&self) -> Option<RebuildJob> {
        self.lock().clone()
    }

    /// Records `job` as running, unless one is running already.
    fn begin(&self, job: RebuildJob) -> Result<(), ApiError> {
        let mut last = self.lock();
        if let Some(running) = last
            .as_ref()
            .filter(|j| j.state == RebuildJobState::Running)
        {
            return Err(in_progress(&running.projections));
        }
        *last = Some(job);
        Ok(())
    }

    fn update(&self, id: Uuid, change: impl FnOnce(&mut RebuildJob)) {
        if let Some(job) = self.lock().as_mut().filter(|j| j.id == id) {
            change(job);
        }
    }
}

fn in_progress(projections: &[Projection]) -> ApiError {
    let names: Vec<&str> = projections.iter().map(|p| p.name()).collect();
    let mut error = ApiError::new(
        StatusCode::CONFLICT,
        "rebuild-in-progress",
        format!("a rebuild of {} is running", names.join(", ")),
    );
    error.retry_after_secs = Some(5);
    error
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectionsResponse {
    pub projections: Vec<ProjectionStatus>,
    /// The rebuild this process runs or ran last, if any.
    pub rebuild: Option<RebuildJob>,
}

/// Every projection's checkpoint, head, lag, events/s, state and last error, and the
/// last rebuild started through this API. Staff (admin, auditor, analyst).
#[utoipa::path(get, path = "/v1/admin/projections", tag = "projections",
    responses((status = 200, body = ProjectionsResponse),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn status(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin, Role::Auditor, Role::Analyst])?;
    let projections = projections::status(state.store()).await?;
    Ok(json_response(
        StatusCode::OK,
        &ProjectionsResponse {
            projections,
            rebuild: state.rebuilds().last(),
        },
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RebuildRequest {
    /// Projections to rebuild: `catalog`, `inventory`, `carts`, `orders`, `sales`.
    #[serde(default)]
    pub projections: Vec<String>,
    /// Rebuild every projection (then `projections` stays empty).
    #[serde(default)]
    pub all: bool,
    /// Drop an interrupted rebuild's shadow tables and start from position 0.
    #[serde(default)]
    pub fresh: bool,
}

impl RebuildRequest {
    fn chosen(&self) -> Result<Vec<Projection>, ApiError> {
        let invalid = |field: String, detail: String| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-field", detail)
                .with_field(field)
        };
        match (self.all, self.projections.is_empty()) {
            (true, true) => Ok(Projection::ALL.to_vec()),
            (true, false) => Err(invalid(
                "projections".into(),
                "name projections or set all, not both".into(),
            )),
            (false, true) => Err(invalid(
                "projections".into(),
                "name the projections to rebuild, or set all".into(),
            )),
            (false, false) => {
                let mut chosen = self
                    .projections
                    .iter()
                    .enumerate()
                    .map(|(i, name)| {
                        Projection::parse(name)
                            .map_err(|e| invalid(format!("projections[{i}]"), e.to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                chosen.sort();
                chosen.dedup();
                Ok(chosen)
            }
        }
    }
}

/// Starts a rebuild of read models: `202` with the job, whose progress (phase,
/// events/s, ETA) and outcome `GET /v1/admin/projections` shows. Admins and
/// analysts. `409 rebuild-in-progress` while one of these projections is being
/// rebuilt (by this process or another).
#[utoipa::path(post, path = "/v1/admin/projections/rebuild", tag = "projections",
    request_body = RebuildRequest,
    responses((status = 202, body = RebuildJob),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn rebuild(
    State(state): State<AppState>,
    principal: Principal,
    body: JsonBody<RebuildRequest>,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin, Role::Analyst])?;
    let request = body.value;
    let chosen = request.chosen()?;
    // Another process rebuilding one of them would make this one fail at once:
    // say so now rather than in the job.
    let busy: Vec<Projection> = projections::status(state.store())
        .await?
        .into_iter()
        .filter(|s| chosen.contains(&s.projection) && s.rebuild.as_ref().is_some_and(|r| r.active))
        .map(|s| s.projection)
        .collect();
    if !busy.is_empty() {
        return Err(in_progress(&busy));
    }
    let job = RebuildJob {
        id: Uuid::new_v4(),
        projections: chosen.clone(),
        fresh: request.fresh,
        requested_by: principal.actor(),
        state: RebuildJobState::Running,
        phase: None,
        events_done: 0,
        events_total: 0,
        events_per_sec: 0.0,
        eta_secs: None,
        started_at: Utc::now(),
        finished_at: None,
        resumed_from: None,
        position: None,
        error: None,
    };
    state.rebuilds().begin(job.clone())?;
    // Shutdown waits for in-flight work; a rebuild may take minutes and is safe to
    // interrupt, so it is not tracked: it stops with the process and resumes later.
    tokio::spawn(run(state, principal, job.id, chosen, request.fresh));
    let mut response = json_response(StatusCode::ACCEPTED, &job).into_response();
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(STATUS_PATH));
    Ok(response)
}

/// Runs the rebuild, keeping its job up to date, and records it in the audit trail.
async fn run(
    state: AppState,
    principal: Principal,
    id: Uuid,
    chosen: Vec<Projection>,
    fresh: bool,
) {
    let options = RebuildOptions {
        fresh,
        ..RebuildOptions::default()
    };
    let jobs = state.rebuilds();
    let outcome = projections::rebuild(state.store(), &chosen, &options, |p: &RebuildProgress| {
        jobs.update(id, |job| {
            job.phase = Some(p.phase);
            job.events_done = p.events_done;
            job.events_total = p.events_total;
            job.events_per_sec = p.events_per_sec;
            job.eta_secs = p.eta.map(|d| d.as_secs());
        });
    })
    .await;
    let names: Vec<&str> = chosen.iter().map(|p| p.name()).collect();
    let details = match &outcome {
        Ok(report) => serde_json::json!({
            "projections": names,
            "fresh": fresh,
            "from": report.resumed_from,
            "to": report.position,
            "events": report.events,
        }),
        Err(e) => {
            serde_json::json!({ "projections": names, "fresh": fresh, "error": e.to_string() })
        }
    };
    // On the record before the job says it has ended.
    super::privacy::record(&state, &principal, "projections.rebuild", details).await;
    jobs.update(id, |job| {
        job.finished_at = Some(Utc::now());
        match &outcome {
            Ok(report) => {
                job.state = RebuildJobState::Done;
                job.phase = Some(RebuildPhase::Done);
                job.resumed_from = Some(report.resumed_from);
                job.position = Some(report.position);
                job.events_per_sec = report.events_per_sec;
                job.eta_secs = Some(0);
            }
            Err(e) => {
                job.state = RebuildJobState::Failed;
                job.error = Some(e.to_string());
            }
        }
    });
    match &outcome {
        Ok(_) => tracing::info!(projections = ?names, "rebuild done"),
        Err(e) => tracing::error!(projections = ?names, error = %e, "rebuild failed"),
    }
}
