#!/usr/bin/env python3
"""Writes traffic.json and control-plane.json (Grafana dashboard JSON, schemaVersion 39).

Edit the panel lists here and run it again; the e2e test `observe` runs every panel's
query against a Prometheus that scraped a lab swarm and wants each to return a series.
"""
import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}


def panel(pid, title, exprs, x, y, unit="short", kind="timeseries", w=12, h=8):
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DS, "expr": e, "legendFormat": legend}
            for i, (e, legend) in enumerate(exprs)
        ],
    }


def dashboard(uid, title, panels):
    return {
        "uid": uid,
        "title": title,
        "tags": ["damselfly"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}
            ]
        },
        "panels": [panel(i + 1, *p) for i, p in enumerate(panels)],
    }


def q(quantile, metric, by=""):
    by = f", {by}" if by else ""
    return f"histogram_quantile({quantile}, sum by (le{by}) (rate({metric}_bucket[5m])))"


traffic = [
    ("Bytes fetched, by where they came from", [
        ("sum(rate(damselfly_peer_source_bytes_total[5m]))", "origin"),
        ("sum(rate(damselfly_peer_peer_bytes_total[5m]))", "peers"),
        ("sum(rate(damselfly_peer_cache_bytes_total[5m]))", "local cache"),
    ], 0, 0, "Bps"),
    ("Back-to-source ratio (origin bytes / all fetched bytes)", [
        ("sum(damselfly_peer_source_bytes_total) / clamp_min(sum(damselfly_peer_source_bytes_total) + sum(damselfly_peer_peer_bytes_total), 1)", "ratio"),
    ], 12, 0, "percentunit"),
    ("Upload per host (where bytes went)", [
        ("sum by (instance) (rate(damselfly_peer_uploaded_bytes_total[5m]))", "{{instance}}"),
    ], 0, 8, "Bps"),
    ("Downloads ended, by result", [
        ("sum by (result) (increase(damselfly_peer_tasks_total[5m]))", "{{result}}"),
    ], 12, 8),
    ("Piece latency from parents", [
        (q(0.5, "damselfly_peer_piece_seconds"), "p50"),
        (q(0.99, "damselfly_peer_piece_seconds"), "p99"),
    ], 0, 16, "s"),
    ("Origin request latency (to headers)", [
        (q(0.5, "damselfly_peer_source_request_seconds"), "p50"),
        (q(0.99, "damselfly_peer_source_request_seconds"), "p99"),
    ], 12, 16, "s"),
    ("Registry proxy requests, by route and status", [
        ("sum by (route, status) (rate(damselfly_registry_proxy_requests_total[5m]))", "{{route}} {{status}}"),
    ], 0, 24, "reqps"),
    ("Registry proxy latency (to headers), p99 by route", [
        (q(0.99, "damselfly_registry_proxy_request_seconds", "route"), "{{route}}"),
    ], 12, 24, "s"),
    ("Active downloads and uploads", [
        ("sum(damselfly_peer_active_downloads)", "downloads"),
        ("sum(damselfly_peer_active_uploads)", "uploads"),
    ], 0, 32),
    ("Snapshotter: layers from the mesh and fallbacks to containerd's pull", [
        ("sum(increase(damselfly_snapshotter_remote_layers_total[5m]))", "from the mesh"),
        ("sum(increase(damselfly_snapshotter_fallbacks_total[5m]))", "fallbacks"),
        ("sum(increase(damselfly_snapshotter_layer_failures_total[5m]))", "refused"),
    ], 12, 32),
    ("Snapshotter: prepare latency by outcome", [
        (q(0.5, "damselfly_snapshotter_prepare_seconds", "outcome"), "p50 {{outcome}}"),
        (q(0.99, "damselfly_snapshotter_prepare_seconds", "outcome"), "p99 {{outcome}}"),
    ], 0, 40, "s"),
]

control = [
    ("Roles up and ready", [
        ("sum by (role) (damselfly_up)", "up {{role}}"),
        ("sum by (role) (damselfly_ready)", "ready {{role}}"),
    ], 0, 0),
    ("Swarm sizes", [
        ("sum(damselfly_scheduler_hosts)", "hosts"),
        ("sum(damselfly_scheduler_tasks)", "tasks"),
        ("sum(damselfly_scheduler_peers)", "peers"),
    ], 12, 0),
    ("Scheduling latency (parents for one peer)", [
        (q(0.5, "damselfly_scheduler_schedule_seconds"), "p50"),
        (q(0.9, "damselfly_scheduler_schedule_seconds"), "p90"),
        (q(0.99, "damselfly_scheduler_schedule_seconds"), "p99"),
    ], 0, 8, "s"),
    ("Piece failures, by reason", [
        ("sum by (reason) (increase(damselfly_scheduler_piece_failures_total[5m]))", "{{reason}}"),
    ], 12, 8),
    ("Seed triggers and back-to-source decisions", [
        ("sum(increase(damselfly_scheduler_seed_triggers_total[5m]))", "seed triggers"),
        ("sum(increase(damselfly_scheduler_back_to_source_total[5m]))", "back to source"),
    ], 0, 16),
    ("Manager: instances by kind and state", [
        ("sum by (kind, state) (damselfly_manager_instances)", "{{kind}} {{state}}"),
    ], 12, 16),
    ("Manager: gRPC calls", [
        ("sum by (method) (rate(damselfly_manager_grpc_requests_total[5m]))", "{{method}}"),
    ], 0, 24, "reqps"),
]

here = os.path.dirname(os.path.abspath(__file__))
for name, d in [
    ("traffic.json", dashboard("damselfly-traffic", "Damselfly: traffic", traffic)),
    ("control-plane.json", dashboard("damselfly-control-plane", "Damselfly: control plane", control)),
]:
    with open(os.path.join(here, name), "w") as f:
        json.dump(d, f, indent=2)
        f.write("\n")
