//! HTTP for operators and tests: `/metrics`, `/healthz`, `/tasks/{id}` and
//! `/config` (the parent limits in force and the manager link).

use crate::service::Shared;
use crate::state::PeerState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use damselfly_service::https::{Allow, restrict};
use damselfly_service::tls::Role;
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::sync::Arc;

#[derive(Serialize)]
pub struct TaskView {
    pub task_id: String,
    pub content_length: Option<u64>,
    pub piece_length: Option<u32>,
    pub digests_known: usize,
    pub seed_host: Option<String>,
    pub bad_hosts: Vec<String>,
    pub peers: Vec<PeerView>,
}

#[derive(Serialize)]
pub struct PeerView {
    pub peer_id: String,
    pub host_id: String,
    pub state: &'static str,
    pub source: bool,
    pub pieces: u32,
    pub parents: Vec<String>,
    pub blocklist: Vec<String>,
}

/// Who reads `/tasks/{id}` and `/config` over TLS: they name the hosts that hold a task, which
/// a member of the mesh must not learn for tasks it never registered for (piece tickets keep
/// the pieces themselves from it), so only the control plane's certificates.
pub const OPERATORS: &[Role] = &[Role::Scheduler, Role::Manager];

/// Every route of the HTTP port. Over TLS (see `damselfly_service::https`): `/metrics`,
/// `/healthz` and `/readyz` for any client certificate of the cluster, `/tasks/{id}` and
/// `/config` for [`OPERATORS`].
pub fn router(
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    health: &damselfly_service::health::Health,
) -> axum::Router {
    let open = damselfly_service::telemetry::metrics_router(registry).merge(health.router());
    let ops = axum::Router::new()
        .route("/tasks/{id}", get(task))
        .route("/config", get(config))
        .with_state(shared);
    restrict(open, Allow::Member).merge(restrict(ops, Allow::Roles(OPERATORS)))
}

#[derive(Serialize)]
pub struct ConfigView {
    pub candidate_parent_limit: usize,
    pub filter_parent_limit: usize,
    pub manager: crate::manager::ManagerStatus,
}

async fn config(State(shared): State<Arc<Shared>>) -> Json<ConfigView> {
    let c = shared.planner.config();
    Json(ConfigView {
        candidate_parent_limit: c.candidate_parent_limit,
        filter_parent_limit: c.filter_parent_limit,
        manager: shared.manager.lock().expect("manager status lock").clone(),
    })
}

async fn task(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, StatusCode> {
    shared
        .with_state(|state| task_view(state, &id))
        .map(Json)
        .ok_or(StatusCode::NOT_FOUND)
}

fn task_view(state: &crate::state::State, id: &str) -> Option<TaskView> {
    let t = state.tasks.get(id)?;
    let mut peers: Vec<PeerView> = t
        .peers
        .values()
        .map(|p| {
            let mut blocklist: Vec<String> = p.blocklist.iter().cloned().collect();
            blocklist.sort();
            PeerView {
                peer_id: p.id.clone(),
                host_id: p.host_id.clone(),
                state: if p.state == PeerState::Running && !p.open {
                    "left"
                } else {
                    p.state.as_str()
                },
                source: p.source,
                pieces: p.pieces,
                parents: p.parents.clone(),
                blocklist,
            }
        })
        .collect();
    peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
    let mut bad_hosts: Vec<String> = t.bad_hosts.iter().cloned().collect();
    bad_hosts.sort();
    Some(TaskView {
        task_id: t.id.clone(),
        content_length: t.layout.map(|l| l.content_length),
        piece_length: t.layout.map(|l| l.piece_length),
        digests_known: t.digests_known(),
        seed_host: t.seed_host.clone(),
        bad_hosts,
        peers,
    })
}
