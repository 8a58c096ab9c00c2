//! The snapshotter restarted: every snapshot, in every namespace, is still there with the same
//! mounts. Through the gRPC socket, as containerd uses it.

use damselfly_service::shutdown::Shutdown;
use damselfly_snapshotter::proto::snapshots::snapshots_client::SnapshotsClient;
use damselfly_snapshotter::proto::snapshots::*;
use damselfly_snapshotter::server::{SnapshotterConfig, run};
use std::path::Path;
use tonic::transport::Channel;

async fn connect(socket: &Path) -> SnapshotsClient<Channel> {
    let socket = socket.to_path_buf();
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connect to the snapshotter socket");
    SnapshotsClient::new(channel)
}

fn in_ns<T>(ns: &str, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("containerd-namespace", ns.parse().unwrap());
    req
}

fn start(config: &SnapshotterConfig) -> (Shutdown, tokio::task::JoinHandle<()>) {
    let (stop, _drain) = Shutdown::new();
    let (config, s) = (config.clone(), stop.clone());
    let task = tokio::spawn(async move { run(config, s).await.expect("snapshotter runs") });
    (stop, task)
}

#[tokio::test]
async fn restart_keeps_snapshots_and_namespaces_apart() {
    let dir = tempfile::tempdir().unwrap();
    let config = SnapshotterConfig {
        root: dir.path().join("root"),
        socket: dir.path().join("snap.sock"),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let (stop, task) = start(&config);
    let mut c = connect(&config.socket).await;
    let prep = |ns: &str, key: &str, parent: &str| {
        in_ns(
            ns,
            PrepareSnapshotRequest {
                key: key.into(),
                parent: parent.into(),
                ..Default::default()
            },
        )
    };
    c.prepare(prep("a", "base-tmp", "")).await.unwrap();
    c.commit(in_ns(
        "a",
        CommitSnapshotRequest {
            name: "base".into(),
            key: "base-tmp".into(),
            labels: [("l".to_string(), "1".to_string())].into(),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    let before = c
        .prepare(prep("a", "work", "base"))
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(before[0].r#type, "overlay");
    // Namespace b sees nothing of a, and may use the same names.
    let err = c.prepare(prep("b", "work", "base")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    c.prepare(prep("b", "work", "")).await.unwrap();
    let missing_ns = c
        .stat(tonic::Request::new(StatSnapshotRequest {
            key: "work".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    // No namespace header (containerd's own calls): a keyspace of its own.
    assert_eq!(missing_ns.code(), tonic::Code::NotFound);

    stop.trigger();
    task.await.unwrap();
    drop(c);
    let (stop, task) = start(&config);
    let mut c = connect(&config.socket).await;
    let after = c
        .mounts(in_ns(
            "a",
            MountsRequest {
                key: "work".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(after, before);
    let base = c
        .stat(in_ns(
            "a",
            StatSnapshotRequest {
                key: "base".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(base.kind, Kind::Committed as i32);
    assert_eq!(base.labels.get("l").map(String::as_str), Some("1"));
    let mut listed = c
        .list(in_ns("b", ListSnapshotsRequest { ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    let mut names = Vec::new();
    while let Some(batch) = listed.message().await.unwrap() {
        names.extend(batch.info.into_iter().map(|i| i.name));
    }
    assert_eq!(names, ["work"]);
    stop.trigger();
    task.await.unwrap();
}
