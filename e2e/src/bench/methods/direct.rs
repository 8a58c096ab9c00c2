//! `direct`: every host pulls the blob from the origin over HTTP with curl,
//! which is what users have without P2P.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::bench::swarm::{BLOB, Download, Method, Swarm};

pub struct Direct;

impl Method for Direct {
    fn name(&self) -> &'static str {
        "direct"
    }

    fn notes(&self) -> String {
        "every host runs `curl -o` against the origin at the same time".to_string()
    }

    fn prepare(&mut self, _swarm: &Swarm, _workdir: &Path) -> Result<()> {
        Ok(())
    }

    fn start(&mut self, swarm: &Swarm, host: &str, out_dir: &Path) -> Result<Download> {
        let output = out_dir.join(BLOB);
        let mut curl = Command::new("curl");
        curl.args(["-sSf", "-o"]).arg(&output).arg(swarm.blob_url());
        let job = swarm.lab.start(host, "curl", &curl)?;
        let agent_pid = job.pid();
        Ok(Download {
            job,
            output,
            done_marker: None,
            agent_pid,
        })
    }

    fn stop(&mut self) {}
}
