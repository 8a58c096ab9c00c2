//! A tiny blocking HTTP/1.0 GET for probes (`/healthz`, `/readyz`, `/metrics`)
//! from the test process, which reaches lab hosts through the lab's bridge.

use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

/// `GET path` on `ip:port`: the status code and the body.
pub fn get(ip: impl Into<IpAddr>, port: u16, path: &str) -> Result<(u16, String)> {
    let addr = SocketAddr::new(ip.into(), port);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("read {addr}{path}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status line from {addr}{path}: {head}"))?;
    Ok((status, body.to_string()))
}
