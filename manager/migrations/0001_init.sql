-- Damselfly manager schema, version 1.
-- One file for SQLite and PostgreSQL: plain SQL both understand. The only
-- dialect difference, the auto-increment key, is written __ID__ and replaced
-- by db.rs. Times are BIGINT milliseconds since the Unix epoch; structured
-- settings are JSON in TEXT columns, validated by the manager.

CREATE TABLE scheduler_clusters (
    id __ID__,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    is_default BIGINT NOT NULL DEFAULT 0,
    settings TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE seed_peer_clusters (
    id __ID__,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    scheduler_cluster_id BIGINT NOT NULL REFERENCES scheduler_clusters (id),
    is_default BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Schedulers (cluster_id -> scheduler_clusters) and seed peers (cluster_id -> seed_peer_clusters).
CREATE TABLE instances (
    id __ID__,
    kind TEXT NOT NULL,
    hostname TEXT NOT NULL,
    ip TEXT NOT NULL,
    port BIGINT NOT NULL,
    download_port BIGINT NOT NULL DEFAULT 0,
    idc TEXT NOT NULL DEFAULT '',
    location TEXT NOT NULL DEFAULT '',
    cluster_id BIGINT NOT NULL,
    state TEXT NOT NULL,
    last_keepalive_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (kind, hostname, ip, cluster_id)
);
CREATE INDEX instances_cluster ON instances (kind, cluster_id, state);

CREATE TABLE users (
    id __ID__,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE sessions (
    id __ID__,
    token_hash TEXT NOT NULL UNIQUE,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE tokens (
    id __ID__,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    scope TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    last_used_at BIGINT
);

CREATE TABLE audit_logs (
    id __ID__,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_logs_at ON audit_logs (at);

CREATE TABLE preheat_jobs (
    id __ID__,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    attempts BIGINT NOT NULL DEFAULT 0,
    created_by TEXT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX preheat_jobs_state ON preheat_jobs (state);

-- One row per (layer or URL) x seed peer.
CREATE TABLE preheat_tasks (
    id __ID__,
    job_id BIGINT NOT NULL REFERENCES preheat_jobs (id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    digest TEXT NOT NULL,
    size BIGINT NOT NULL DEFAULT 0,
    headers TEXT NOT NULL,
    seed_instance_id BIGINT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    bytes BIGINT NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX preheat_tasks_job ON preheat_tasks (job_id);
CREATE INDEX preheat_tasks_state ON preheat_tasks (state, seed_instance_id);

CREATE TABLE traffic (
    id __ID__,
    scheduler_cluster_id BIGINT NOT NULL,
    instance_id BIGINT NOT NULL DEFAULT 0,
    at BIGINT NOT NULL,
    origin_bytes BIGINT NOT NULL,
    peer_bytes BIGINT NOT NULL
);
CREATE INDEX traffic_at ON traffic (scheduler_cluster_id, at);
