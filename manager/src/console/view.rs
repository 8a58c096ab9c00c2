//! Page templates. maud escapes every `(value)`; nothing here builds HTML
//! from strings by hand.

use crate::auth::{Principal, Scope};
use crate::db::now_ms;
use crate::store::audit::AuditEntry;
use crate::store::clusters::{SchedulerCluster, SeedPeerCluster};
use crate::store::instances::{Instance, InstanceKind};
use crate::store::preheat::{PreheatJob, Progress};
use crate::store::traffic::TrafficStats;
use crate::store::users::{CreatedToken, Token, User};
use axum::http::StatusCode;
use maud::{DOCTYPE, Markup, html};

fn layout(p: &Principal, active: &str, title: &str, refresh: Option<u32>, body: Markup) -> Markup {
    let nav = [
        ("/", "Overview"),
        ("/clusters", "Clusters"),
        ("/instances", "Instances"),
        ("/preheat", "Preheat"),
        ("/users", "Users & tokens"),
        ("/audit", "Audit log"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(s) = refresh { meta http-equiv="refresh" content=(s); }
                title { (title) " · Damselfly" }
                link rel="stylesheet" href="/assets/console.css";
            }
            body {
                nav.side {
                    div.logo { "Damsel" span { "fly" } }
                    @for (href, label) in nav {
                        @if href != "/audit" || p.scope == Scope::Admin {
                            a.on[active == href] href=(href) { (label) }
                        }
                    }
                }
                main {
                    header.top {
                        h1 { (title) }
                        div.who {
                            span #whoami { (p.username) " · " (p.scope.as_str()) }
                            form method="post" action="/logout" { button.ghost type="submit" { "Sign out" } }
                        }
                    }
                    div.content { (body) }
                }
            }
        }
    }
}

pub fn login(error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Sign in · Damselfly" }
                link rel="stylesheet" href="/assets/console.css";
            }
            body {
                div.login {
                    div.logo { "Damsel" span { "fly" } }
                    div.panel {
                        h1 { "Sign in" }
                        p.muted { "Manager console" }
                        @if let Some(e) = error { div.alert.err #login-error { (e) } }
                        form method="post" action="/login" {
                            label for="username" { "Username" }
                            input #username type="text" name="username" autocomplete="username" required autofocus;
                            label for="password" { "Password" }
                            input #password type="password" name="password" autocomplete="current-password" required;
                            button #signin type="submit" { "Sign in" }
                        }
                    }
                }
            }
        }
    }
}

pub fn error_page(p: Option<&Principal>, status: StatusCode, msg: &str) -> Markup {
    let body = html! {
        div.alert.err #error { strong { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) } ": " (msg) }
        a href="/" { "Back to the overview" }
    };
    match p {
        Some(p) => layout(p, "", "Error", None, body),
        None => {
            html! { (DOCTYPE) html { head { link rel="stylesheet" href="/assets/console.css"; } body { div.content { (body) } } } }
        }
    }
}

fn ago(ms: i64) -> String {
    let s = ((now_ms() - ms) / 1000).max(0);
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86400),
    }
}

/// `YYYY-MM-DD HH:MM` (UTC) from epoch milliseconds.
fn datetime(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86400);
    let tod = secs.rem_euclid(86400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", tod / 3600, tod % 3600 / 60)
}

fn bytes(n: i64) -> String {
    let n = n as f64;
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

fn badge(state: &str) -> Markup {
    html! { span class=(format!("badge b-{state}")) { (state) } }
}

fn progress_bar(p: &Progress) -> Markup {
    let total = p.total.max(1) as f64;
    let pct = |n: i64| format!("width:{:.1}%", n as f64 * 100.0 / total);
    html! {
        div.bar title=(format!("{} of {} done, {} failed", p.succeeded, p.total, p.failed)) {
            i.s style=(pct(p.succeeded)) {}
            i.f style=(pct(p.failed)) {}
            i.r style=(pct(p.running)) {}
        }
    }
}

/// Stacked bars of origin vs peer bytes per bucket, as inline SVG.
fn traffic_chart(t: &TrafficStats) -> Markup {
    let (w, h, left, bottom) = (760.0_f64, 200.0_f64, 56.0_f64, 22.0_f64);
    let max = t
        .buckets
        .iter()
        .map(|b| b.origin_bytes + b.peer_bytes)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let n = t.buckets.len().max(1) as f64;
    let slot = (w - left) / n;
    let bar = (slot * 0.7).max(1.0);
    let plot_h = h - bottom - 8.0;
    html! {
        svg.chart #traffic-chart viewBox=(format!("0 0 {w} {h}")) width="100%" role="img" aria-label="Origin vs peer traffic" {
            @for k in 1..=4 {
                @let y = h - bottom - plot_h * k as f64 / 4.0;
                line x1=(left) y1=(format!("{y:.1}")) x2=(w) y2=(format!("{y:.1}")) stroke="#f0f2f5" {}
            }
            line x1=(left) y1=(h - bottom) x2=(w) y2=(h - bottom) stroke="#e4e7ec" {}
            text x="4" y="14" { (bytes(max as i64)) }
            text x="4" y=(h - bottom) { "0" }
            @if t.buckets.is_empty() {
                text x=(w / 2.0 - 110.0) y=(h / 2.0) { "No traffic reported in the last 24 hours" }
            }
            @for (i, b) in t.buckets.iter().enumerate() {
                @let x = left + i as f64 * slot + (slot - bar) / 2.0;
                @let ph = b.peer_bytes as f64 / max * plot_h;
                @let oh = b.origin_bytes as f64 / max * plot_h;
                rect x=(format!("{x:.1}")) y=(format!("{:.1}", h - bottom - ph)) width=(format!("{bar:.1}")) height=(format!("{ph:.1}")) fill="var(--peer)" {
                    title { (datetime(b.at)) ": " (bytes(b.peer_bytes)) " from peers" }
                }
                rect x=(format!("{x:.1}")) y=(format!("{:.1}", h - bottom - ph - oh)) width=(format!("{bar:.1}")) height=(format!("{oh:.1}")) fill="var(--origin)" {
                    title { (datetime(b.at)) ": " (bytes(b.origin_bytes)) " from origin" }
                }
                @if i == 0 {
                    text x=(format!("{x:.1}")) y=(h - 6.0) { (datetime(b.at)[11..].to_string()) }
                } @else if i + 1 == t.buckets.len() {
                    text x=(format!("{:.1}", x + bar)) y=(h - 6.0) text-anchor="end" { (datetime(b.at)[11..].to_string()) }
                }
            }
        }
        div.legend {
            span { i style="background:var(--peer)" {} "From peers " (bytes(t.peer_bytes)) }
            span { i style="background:var(--origin)" {} "From origin " (bytes(t.origin_bytes)) }
            span { "Saved by the mesh: " strong { (format!("{:.1} %", t.peer_ratio * 100.0)) } }
        }
    }
}

fn jobs_table(jobs: &[PreheatJob]) -> Markup {
    html! {
        table #jobs {
            thead { tr { th { "Job" } th { "Images / URLs" } th { "State" } th { "Progress" } th { "By" } th { "Created" } } }
            tbody {
                @for j in jobs {
                    tr {
                        td { a href=(format!("/preheat/{}", j.id)) { "#" (j.id) } }
                        td.mono { @for u in &j.spec.urls { div { (u) } } }
                        td { (badge(&j.state)) }
                        td { (progress_bar(&j.progress)) span.muted { (j.progress.succeeded) "/" (j.progress.total) } }
                        td { (j.created_by) }
                        td.muted { (ago(j.created_at)) }
                    }
                }
                @if jobs.is_empty() { tr { td colspan="6" .muted { "No preheat jobs yet." } } }
            }
        }
    }
}

pub fn overview(
    p: &Principal,
    cl: &[SchedulerCluster],
    inst: &[Instance],
    jobs: &[PreheatJob],
    t: &TrafficStats,
) -> Markup {
    let count = |k: InstanceKind, active: bool| {
        inst.iter()
            .filter(|i| i.kind == k && (i.state == "active") == active)
            .count()
    };
    let running = jobs
        .iter()
        .filter(|j| j.state == "running" || j.state == "pending")
        .count();
    layout(
        p,
        "/",
        "Overview",
        Some(15),
        html! {
            div.cards {
                div.card { div.l { "Scheduler clusters" } div.n { (cl.len()) } }
                div.card { div.l { "Schedulers active" } div.n { (count(InstanceKind::Scheduler, true)) span.muted { " / " (count(InstanceKind::Scheduler, true) + count(InstanceKind::Scheduler, false)) } } }
                div.card { div.l { "Seed peers active" } div.n { (count(InstanceKind::SeedPeer, true)) span.muted { " / " (count(InstanceKind::SeedPeer, true) + count(InstanceKind::SeedPeer, false)) } } }
                div.card { div.l { "Preheat jobs in flight" } div.n { (running) } }
            }
            div.panel { h2 { "Traffic: origin vs peers (24 h)" } (traffic_chart(t)) }
            div.panel { h2 { "Recent preheat jobs" } (jobs_table(jobs)) }
        },
    )
}

pub fn clusters(
    p: &Principal,
    cl: &[SchedulerCluster],
    inst: &[Instance],
    seeds: &[SeedPeerCluster],
    error: Option<&str>,
) -> Markup {
    layout(
        p,
        "/clusters",
        "Clusters",
        None,
        html! {
            @if let Some(e) = error { div.alert.err #form-error { (e) } }
            div.panel {
                h2 { "Scheduler clusters" }
                table #clusters {
                    thead { tr { th { "Name" } th { "Scopes" } th { "Parents" } th { "Schedulers" } th { "Seed peer clusters" } } }
                    tbody {
                        @for c in cl {
                            @let live = inst.iter().filter(|i| i.kind == InstanceKind::Scheduler && i.cluster_id == c.id && i.state == "active").count();
                            @let all = inst.iter().filter(|i| i.kind == InstanceKind::Scheduler && i.cluster_id == c.id).count();
                            tr {
                                td { a.cluster-link href=(format!("/clusters/{}", c.id)) { (c.name) } " " @if c.is_default { span.badge.b-default { "default" } }
                                     div.muted { (c.description) } }
                                td.mono {
                                    @for s in &c.scopes.idc { div { "idc " (s) } }
                                    @for s in &c.scopes.location { div { "location " (s) } }
                                    @for s in &c.scopes.cidrs { div { "cidr " (s) } }
                                    @for s in &c.scopes.hostnames { div { "host " (s) } }
                                    @if c.scopes.idc.is_empty() && c.scopes.location.is_empty() && c.scopes.cidrs.is_empty() && c.scopes.hostnames.is_empty() { span.muted { "—" } }
                                }
                                td { (c.settings.candidate_parent_limit) " of " (c.settings.filter_parent_limit) }
                                td { (live) " active / " (all) }
                                td { @for s in seeds.iter().filter(|s| s.scheduler_cluster_id == c.id) { div { (s.name) } } }
                            }
                        }
                    }
                }
            }
            div.panel {
                h2 { "Seed peer clusters" }
                table #seed-clusters {
                    thead { tr { th { "Name" } th { "Serves scheduler cluster" } th { "Seed peers" } } }
                    tbody {
                        @for s in seeds {
                            @let live = inst.iter().filter(|i| i.kind == InstanceKind::SeedPeer && i.cluster_id == s.id && i.state == "active").count();
                            @let all = inst.iter().filter(|i| i.kind == InstanceKind::SeedPeer && i.cluster_id == s.id).count();
                            tr {
                                td { (s.name) " " @if s.is_default { span.badge.b-default { "default" } } div.muted { (s.description) } }
                                td { (cl.iter().find(|c| c.id == s.scheduler_cluster_id).map(|c| c.name.as_str()).unwrap_or("?")) }
                                td { (live) " active / " (all) }
                            }
                        }
                    }
                }
                @if p.scope == Scope::Admin {
                    h2 style="margin-top:18px" { "New seed peer cluster" }
                    form.grid method="post" action="/seed-peer-clusters" {
                        div { label for="new-seed-cluster-name" { "Name" } input #new-seed-cluster-name type="text" name="name" required; }
                        div { label for="new-seed-cluster-parent" { "Scheduler cluster" }
                            select #new-seed-cluster-parent name="scheduler_cluster_id" { @for c in cl { option value=(c.id) { (c.name) } } } }
                        div { button #create-seed-cluster type="submit" { "Create seed peer cluster" } }
                    }
                }
            }
            @if p.scope == Scope::Admin {
                div.panel {
                    h2 { "New scheduler cluster" }
                    form.grid method="post" action="/clusters" {
                        div { label for="new-cluster-name" { "Name" } input #new-cluster-name type="text" name="name" required; }
                        div { label for="new-cluster-description" { "Description" } input #new-cluster-description type="text" name="description"; }
                        div { button #create-cluster type="submit" { "Create cluster" } }
                    }
                }
            }
        },
    )
}

pub fn cluster(
    p: &Principal,
    c: &SchedulerCluster,
    schedulers: &[Instance],
    error: Option<&str>,
    saved: Option<&str>,
) -> Markup {
    let s = &c.settings;
    let admin = p.scope == Scope::Admin;
    let num = |name: &'static str, label: &'static str, hint: &'static str, v: u64| {
        html! {
            div { label for=(name) { (label) " " small { (hint) } } input id=(name) type="number" name=(name) value=(v) disabled[!admin]; }
        }
    };
    let list = |name: &'static str, label: &'static str, hint: &'static str, v: &[String]| {
        html! {
            div { label for=(name) { (label) " " small { (hint) } } textarea id=(name) name=(name) disabled[!admin] { (v.join("\n")) } }
        }
    };
    layout(
        p,
        "/clusters",
        &format!("Cluster: {}", c.name),
        None,
        html! {
            @if let Some(e) = error { div.alert.err #form-error { (e) } }
            @if let Some(m) = saved { div.alert.ok #saved { (m) } }
            form method="post" action=(format!("/clusters/{}", c.id)) {
                div.panel {
                    h2 { "General" }
                    div.grid style="display:grid;grid-template-columns:1fr 2fr;gap:14px 18px" {
                        div { label for="name" { "Name" } input #name type="text" name="name" value=(c.name) disabled[!admin]; }
                        div { label for="description" { "Description" } input #description type="text" name="description" value=(c.description) disabled[!admin]; }
                    }
                }
                div.panel {
                    h2 { "Scheduling settings" }
                    div style="display:grid;grid-template-columns:repeat(auto-fit,minmax(220px,1fr));gap:14px 18px" {
                        (num("candidate_parent_limit", "Candidate parents", "(1–20)", s.candidate_parent_limit as u64))
                        (num("filter_parent_limit", "Parents examined", "(≤ 1000)", s.filter_parent_limit as u64))
                        (num("peer_upload_concurrency", "Uploads per peer", "(1–1000)", s.peer_upload_concurrency as u64))
                        (num("peer_download_concurrency", "Downloads per peer", "(1–1000)", s.peer_download_concurrency as u64))
                        (num("min_piece_length", "Min piece length", "(bytes)", s.min_piece_length))
                        (num("max_piece_length", "Max piece length", "(bytes)", s.max_piece_length))
                    }
                }
                div.panel {
                    h2 { "Scopes " small.muted { "— which peers this cluster serves (one per line)" } }
                    div style="display:grid;grid-template-columns:repeat(auto-fit,minmax(220px,1fr));gap:14px 18px" {
                        (list("idc", "IDC", "exact", &c.scopes.idc))
                        (list("location", "Location", "a|b|c prefix", &c.scopes.location))
                        (list("cidrs", "CIDRs", "10.0.0.0/8", &c.scopes.cidrs))
                        (list("hostnames", "Hostnames", "globs: node-*", &c.scopes.hostnames))
                    }
                }
                @if admin { button #save-cluster type="submit" { "Save changes" } }
            }
            div.panel style="margin-top:20px" {
                h2 { "Schedulers in this cluster" }
                (instance_rows(schedulers, &[], &[]))
            }
        },
    )
}

fn instance_rows(inst: &[Instance], cl: &[SchedulerCluster], seeds: &[SeedPeerCluster]) -> Markup {
    html! {
        table #instances {
            thead { tr { th { "Kind" } th { "Hostname" } th { "Address" } th { "Cluster" } th { "IDC / location" } th { "State" } th { "Last keepalive" } } }
            tbody {
                @for i in inst {
                    @let cluster = match i.kind {
                        InstanceKind::Scheduler | InstanceKind::Peer => cl.iter().find(|c| c.id == i.cluster_id).map(|c| c.name.clone()),
                        InstanceKind::SeedPeer => seeds.iter().find(|c| c.id == i.cluster_id).map(|c| c.name.clone()),
                    }.unwrap_or_else(|| format!("#{}", i.cluster_id));
                    tr.instance data-hostname=(i.hostname) data-state=(i.state) {
                        td { (match i.kind { InstanceKind::Scheduler => "scheduler", InstanceKind::SeedPeer => "seed peer", InstanceKind::Peer => "peer" }) }
                        td.mono { (i.hostname) }
                        td.mono { (i.ip) ":" (i.port) }
                        td { (cluster) }
                        td.muted { (i.idc) " " (i.location) }
                        td { (badge(&i.state)) }
                        td.muted { (ago(i.last_keepalive_at)) }
                    }
                }
                @if inst.is_empty() { tr { td colspan="7" .muted { "Nothing registered yet. Start a scheduler or seed peer with --manager." } } }
            }
        }
    }
}

pub fn instances(
    p: &Principal,
    inst: &[Instance],
    cl: &[SchedulerCluster],
    seeds: &[SeedPeerCluster],
) -> Markup {
    layout(
        p,
        "/instances",
        "Instances",
        Some(3),
        html! {
            div.panel { h2 { "Schedulers, seed peers and peers" } (instance_rows(inst, cl, seeds)) }
        },
    )
}

pub fn preheat(p: &Principal, jobs: &[PreheatJob], cl: &[SchedulerCluster], error: Option<&str>) -> Markup {
    layout(
        p,
        "/preheat",
        "Preheat",
        None,
        html! {
            @if let Some(e) = error { div.alert.err #form-error { (e) } }
            @if p.scope >= Scope::Preheat {
                div.panel {
                    h2 { "Warm images before a deploy" }
                    form.grid method="post" action="/preheat" {
                        div.span-all { label for="preheat-urls" { "Images " small { "one per line: registry:5000/team/app:1.2 (or URLs for kind file)" } }
                            textarea #preheat-urls name="urls" required {} }
                        div { label for="kind" { "Kind" } select #kind name="kind" { option value="image" { "image" } option value="file" { "file (URL)" } } }
                        div { label for="platform" { "Platform" } input #platform type="text" name="platform" placeholder="linux/amd64"; }
                        div { label for="scope" { "Scope" } select #scope name="scope" {
                            option value="all_seed_peers" { "every seed peer" } option value="single_seed_peer" { "one seed peer per cluster" }
                            option value="all_peers" { "every peer (through the mesh)" } } }
                        div { label for="reg-user" { "Registry user " small { "(optional)" } } input #reg-user type="text" name="username" autocomplete="off"; }
                        div { label for="reg-pass" { "Registry password" } input #reg-pass type="password" name="password" autocomplete="new-password"; }
                        div.span-all { label { "Clusters " small { "(none ticked: all)" } }
                            @for c in cl { label style="display:inline-block;font-weight:400;margin-right:14px" { input type="checkbox" name="cluster" value=(c.id); " " (c.name) } } }
                        div { button #start-preheat type="submit" { "Start preheat" } }
                    }
                }
            }
            div.panel { h2 { "Jobs" } (jobs_table(jobs)) }
        },
    )
}

pub fn job(p: &Principal, j: &PreheatJob) -> Markup {
    let live = j.state == "pending" || j.state == "running";
    layout(
        p,
        "/preheat",
        &format!("Preheat job #{}", j.id),
        live.then_some(1),
        html! {
            div.cards {
                div.card { div.l { "State" } div.n #job-state data-state=(j.state) { (j.state) } }
                div.card { div.l { "Layers × seeds done" } div.n { (j.progress.succeeded) span.muted { " / " (j.progress.total) } } }
                div.card { div.l { "Failed" } div.n { (j.progress.failed) } }
                div.card { div.l { "Started by" } div.n style="font-size:16px" { (j.created_by) } div.muted { (datetime(j.created_at)) " UTC" } }
            }
            @if !j.error.is_empty() { div.alert.err #job-error { (j.error) } }
            div.panel {
                h2 { "Progress" } (progress_bar(&j.progress))
                div.muted style="margin-top:8px" { @for u in &j.spec.urls { div.mono { (u) } } }
            }
            div.panel {
                h2 { "Per layer and seed peer" }
                table #tasks {
                    thead { tr { th { "Digest / URL" } th { "Seed peer" } th { "State" } th { "Attempts" } th { "Bytes" } th { "Error" } } }
                    tbody {
                        @for t in &j.tasks {
                            tr {
                                td.mono { @if t.digest.is_empty() { (t.url) } @else { (t.digest.get(..19).unwrap_or(&t.digest)) "…" } }
                                td.mono { (t.seed_hostname) }
                                td { (badge(&t.state)) }
                                td { (t.attempts) }
                                td { (bytes(t.bytes.max(t.size))) }
                                td.muted { (t.error) }
                            }
                        }
                        @if j.tasks.is_empty() { tr { td colspan="6" .muted { "Resolving the image…" } } }
                    }
                }
            }
        },
    )
}

pub fn users(
    p: &Principal,
    all: &[User],
    tokens: &[Token],
    error: Option<&str>,
    new_token: Option<&CreatedToken>,
) -> Markup {
    let admin = p.scope == Scope::Admin;
    let scopes = [Scope::ReadOnly, Scope::Preheat, Scope::Admin];
    layout(
        p,
        "/users",
        "Users & tokens",
        None,
        html! {
            @if let Some(e) = error { div.alert.err #form-error { (e) } }
            @if let Some(t) = new_token {
                div.alert.ok { "Token " strong { (t.token.name) } " created. Copy it now; it is not shown again:" div.token.mono #new-token { (t.token_value) } }
            }
            @if admin {
                div.panel {
                    h2 { "Users" }
                    table #users {
                        thead { tr { th { "User" } th { "Role" } th { "Created" } } }
                        tbody { @for u in all { tr { td { (u.username) } td { (u.role.as_str()) } td.muted { (datetime(u.created_at)) } } } }
                    }
                    h2 style="margin-top:18px" { "Add a user" }
                    form.grid method="post" action="/users" {
                        div { label for="new-username" { "Username" } input #new-username type="text" name="username" required; }
                        div { label for="new-password" { "Password " small { "(8+ characters)" } } input #new-password type="password" name="password" autocomplete="new-password" required; }
                        div { label for="new-role" { "Role" } select #new-role name="role" { @for s in scopes { option value=(s.as_str()) { (s.as_str()) } } } }
                        div { button type="submit" { "Add user" } }
                    }
                }
            }
            div.panel {
                h2 { "Personal access tokens" }
                table #tokens {
                    thead { tr { th { "Name" } th { "Owner" } th { "Scope" } th { "Expires" } th { "Last used" } th {} } }
                    tbody {
                        @for t in tokens {
                            tr {
                                td { (t.name) } td { (t.username) } td { (t.scope.as_str()) }
                                td.muted { @if let Some(e) = t.expires_at { (datetime(e)) } @else { "never" } }
                                td.muted { @if let Some(u) = t.last_used_at { (ago(u)) } @else { "never" } }
                                td { form method="post" action=(format!("/tokens/{}/delete", t.id)) { button.danger type="submit" { "Revoke" } } }
                            }
                        }
                        @if tokens.is_empty() { tr { td colspan="6" .muted { "No tokens." } } }
                    }
                }
                h2 style="margin-top:18px" { "New token" }
                form.grid method="post" action="/tokens" {
                    div { label for="token-name" { "Name" } input #token-name type="text" name="name" required placeholder="ci-preheat"; }
                    div { label for="token-scope" { "Scope" } select #token-scope name="scope" {
                        @for s in scopes { @if s <= p.scope { option value=(s.as_str()) { (s.as_str()) } } } } }
                    div { label for="token-days" { "Expires in days " small { "(empty: never)" } } input #token-days type="number" name="days" min="1"; }
                    div { button #create-token type="submit" { "Create token" } }
                }
                p.muted { "Use as " code { "Authorization: Bearer <token>" } " with the API at " code { "/api/v1" } " (" a href="/api/v1/openapi.json" { "OpenAPI" } ")." }
            }
        },
    )
}

pub fn audit(p: &Principal, entries: &[AuditEntry]) -> Markup {
    layout(
        p,
        "/audit",
        "Audit log",
        None,
        html! {
            div.panel {
                table #audit {
                    thead { tr { th { "When (UTC)" } th { "Who" } th { "Action" } th { "Target" } th { "Outcome" } th { "Detail" } } }
                    tbody {
                        @for e in entries {
                            tr {
                                td.muted { (datetime(e.at)) }
                                td { (e.actor) }
                                td.mono { (e.action) }
                                td.mono { (e.target_type) " " (e.target_id) }
                                td { @if e.outcome == "ok" { span.badge.b-succeeded { "ok" } } @else { span.badge.b-failed { (e.outcome) } } }
                                td.mono.muted { (e.detail) }
                            }
                        }
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_sizes() {
        assert_eq!(datetime(0), "1970-01-01 00:00");
        assert_eq!(datetime(1_700_000_000_000), "2023-11-14 22:13");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
    }

    #[test]
    fn names_are_escaped() {
        let p = Principal {
            user_id: 1,
            username: "<b>root</b>".into(),
            scope: Scope::Admin,
            token_id: None,
        };
        let c = SchedulerCluster {
            id: 2,
            name: "<script>alert(1)</script>".into(),
            description: "\"><img src=x onerror=alert(1)>".into(),
            is_default: false,
            settings: Default::default(),
            scopes: Default::default(),
            created_at: 0,
            updated_at: 0,
        };
        let html = clusters(&p, &[c], &[], &[], None).into_string();
        assert!(!html.contains("<script>alert(1)"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("<img src=x"));
        assert!(!html.contains("<b>root</b>"));
    }
}
