//! A moto S3 server in a lab host, for the bench's object storage methods:
//! `scripts/moto_counting.py` (moto's own server with a WSGI layer that logs
//! the body bytes of every response), so the bytes storage served are
//! counted at the server, never by a client. Needs the moto venv that
//! `scripts/install-deps.sh` makes at [`VENV`].

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::lab::Lab;
use crate::process::Proc;
use crate::wait::wait_for_tcp;

pub const VENV: &str = "/opt/damselfly-moto";
pub const PORT: u16 = 5000;

pub struct Moto {
    pub proc: Proc,
    /// `http://IP:PORT`.
    pub endpoint: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl Moto {
    /// Starts moto (authentication off: any credentials, or none, are
    /// accepted) in `host` and stores `file` as `bucket/key`.
    pub fn start(lab: &Lab, host: &str, bucket: &str, key: &str, file: &Path) -> Result<Moto> {
        let ip = lab.ip(host);
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/moto_counting.py");
        let mut cmd = Command::new(format!("{VENV}/bin/python"));
        cmd.args([script, &ip.to_string(), &PORT.to_string()]);
        let proc = lab.spawn(host, "moto", &cmd)?;
        wait_for_tcp(ip, PORT, Duration::from_secs(30)).context("moto did not start")?;
        let endpoint = format!("http://{ip}:{PORT}");
        let setup = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/moto_setup.py");
        let keys = lab
            .run_ok(
                host,
                Command::new(format!("{VENV}/bin/python"))
                    .args([setup, &endpoint, bucket, key])
                    .arg(file),
            )
            .context("store the object in moto")?;
        let (id, secret) = keys.trim().split_once(' ').context("moto_setup output")?;
        Ok(Moto {
            proc,
            endpoint,
            access_key_id: id.to_string(),
            secret_access_key: secret.to_string(),
        })
    }

    /// `[source.s3]` for a peer's config file that reaches this server.
    pub fn peer_config(&self) -> String {
        format!(
            "[source.s3]\nregion = \"us-east-1\"\nendpoint = \"{}\"\n\
             access_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
            self.endpoint, self.access_key_id, self.secret_access_key
        )
    }

    /// A presigned GET URL of `bucket/key` (SigV4 in the query, valid for an
    /// hour), as an S3 client signs it: the server refuses an unsigned GET
    /// of a private object even with authentication off.
    pub fn presigned_url(&self, lab: &Lab, host: &str, bucket: &str, key: &str) -> Result<String> {
        let script = "import sys, boto3\n\
            e, b, k, i, s = sys.argv[1:6]\n\
            c = boto3.client('s3', endpoint_url=e, region_name='us-east-1', \
            aws_access_key_id=i, aws_secret_access_key=s)\n\
            print(c.generate_presigned_url('get_object', Params={'Bucket': b, 'Key': k}, ExpiresIn=3600))\n";
        let url = lab
            .run_ok(
                host,
                Command::new(format!("{VENV}/bin/python")).args([
                    "-c",
                    script,
                    &self.endpoint,
                    bucket,
                    key,
                    &self.access_key_id,
                    &self.secret_access_key,
                ]),
            )
            .context("presign the object's URL")?;
        Ok(url.trim().to_string())
    }

    /// (GETs, body bytes) the server has sent for `path` (`/bucket/key`) so far.
    pub fn served(&self, path: &str) -> (usize, u64) {
        served(&self.proc.log(), path)
    }
}

/// Sums the `served GET PATH STATUS BYTES` lines of `log` for `path`.
pub fn served(log: &str, path: &str) -> (usize, u64) {
    let mut gets = 0;
    let mut bytes = 0;
    for line in log.lines() {
        let mut f = line.split_whitespace();
        if f.next() == Some("served") && f.next() == Some("GET") && f.next() == Some(path) {
            gets += 1;
            bytes += f.nth(1).and_then(|b| b.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    (gets, bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn served_sums_the_gets_of_one_path() {
        let log = "served GET /bkt/blob 206 8388608\n\
                   127.0.0.1 - - \"GET /bkt/blob HTTP/1.1\" 206 -\n\
                   served HEAD /bkt/blob 200 0\n\
                   served GET /bkt/blob 206 100\n\
                   served GET /bkt/blob2 200 5\n";
        assert_eq!(super::served(log, "/bkt/blob"), (2, 8388708));
    }
}
