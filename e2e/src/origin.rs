//! The origin HTTP server (`damselfly-origin`) as seen from tests: its
//! request log format and a handle to run it in a lab host.
//!
//! The server writes one line per request to stderr, e.g.
//! `origin: GET /blob range=bytes=0-1023 status=206 bytes=1024 from=10.213.5.12:40312`,
//! so a test can count what reached the origin.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use crate::lab::Lab;
use crate::process::Proc;
use crate::wait::wait_for_tcp;

const TAG: &str = "origin:";
const NONE: &str = "-";

/// One request as the origin logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLog {
    pub method: String,
    pub path: String,
    /// The Range header, if the request had one.
    pub range: Option<String>,
    pub status: u16,
    /// The response's Content-Length, if it had one.
    pub bytes: Option<u64>,
    pub from: String,
}

impl fmt::Display for RequestLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.bytes.map_or(NONE.to_string(), |b| b.to_string());
        write!(
            f,
            "{TAG} {} {} range={} status={} bytes={bytes} from={}",
            self.method,
            self.path,
            self.range.as_deref().unwrap_or(NONE),
            self.status,
            self.from
        )
    }
}

impl FromStr for RequestLog {
    type Err = anyhow::Error;

    fn from_str(line: &str) -> Result<Self> {
        let bad = || anyhow!("not an origin request line: {line:?}");
        let mut words = line.split_whitespace();
        if words.next() != Some(TAG) {
            return Err(bad());
        }
        let method = words.next().ok_or_else(bad)?.to_string();
        let path = words.next().ok_or_else(bad)?.to_string();
        let mut field = |key: &str| {
            let word = words.next().ok_or_else(bad)?;
            word.strip_prefix(key)
                .and_then(|w| w.strip_prefix('='))
                .map(str::to_string)
                .ok_or_else(bad)
        };
        let range = Some(field("range")?).filter(|r| r != NONE);
        let status = field("status")?.parse().map_err(|_| bad())?;
        let bytes = field("bytes")?;
        let bytes = if bytes == NONE {
            None
        } else {
            Some(bytes.parse().map_err(|_| bad())?)
        };
        let from = field("from")?;
        Ok(RequestLog {
            method,
            path,
            range,
            status,
            bytes,
            from,
        })
    }
}

/// Every request line in an origin's log (other lines are skipped).
pub fn parse_requests(log: &str) -> Vec<RequestLog> {
    log.lines()
        .filter(|l| l.starts_with(TAG))
        .filter_map(|l| l.parse().ok())
        .collect()
}

/// A `damselfly-origin` running in a lab host.
pub struct Origin {
    proc: Proc,
    ip: Ipv4Addr,
    port: u16,
}

impl Origin {
    /// Serves `dir` from `host` on `port` and waits until it accepts
    /// connections.
    pub fn start(lab: &Lab, host: &str, dir: &Path, port: u16) -> Result<Origin> {
        let ip = lab.ip(host);
        let mut cmd = Command::new(crate::bins::origin()?);
        cmd.arg("--dir")
            .arg(dir)
            .arg("--listen")
            .arg(format!("{ip}:{port}"));
        let proc = lab.spawn(host, "origin", &cmd)?;
        wait_for_tcp(ip, port, Duration::from_secs(10))
            .with_context(|| format!("origin in {host} did not start:\n{}", proc.log_tail(20)))?;
        Ok(Origin { proc, ip, port })
    }

    /// `http://IP:PORT/<path>` (path without a leading slash).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}/{path}", self.ip, self.port)
    }

    /// The requests served so far.
    pub fn requests(&self) -> Vec<RequestLog> {
        parse_requests(&self.proc.log())
    }

    pub fn proc(&self) -> &Proc {
        &self.proc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_round_trip() {
        let req = RequestLog {
            method: "GET".into(),
            path: "/blob".into(),
            range: Some("bytes=0-1023".into()),
            status: 206,
            bytes: Some(1024),
            from: "10.213.5.12:40312".into(),
        };
        let line = req.to_string();
        assert_eq!(
            line,
            "origin: GET /blob range=bytes=0-1023 status=206 bytes=1024 from=10.213.5.12:40312"
        );
        assert_eq!(line.parse::<RequestLog>().unwrap(), req);
        let head = RequestLog {
            method: "HEAD".into(),
            range: None,
            bytes: None,
            ..req
        };
        assert_eq!(parse_requests(&format!("noise\n{head}\n")), vec![head]);
    }
}
