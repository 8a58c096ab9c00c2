//! Polling helpers and the interrupt flag.
//!
//! Tests never sleep for a fixed time to synchronise: they poll a condition
//! with a deadline. Every poll also checks the process-wide interrupt flag, so
//! a Ctrl-C turns into an error that unwinds through `Lab`'s `Drop`, which
//! removes namespaces and processes.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// How often [`wait_for`] checks its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

static INTERRUPTED: OnceLock<Arc<AtomicBool>> = OnceLock::new();

fn flag() -> &'static Arc<AtomicBool> {
    INTERRUPTED.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Turns SIGINT and SIGTERM into the interrupt flag. A second signal while
/// the flag is already set exits the process at once.
pub fn install_interrupt_handler() -> Result<()> {
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(flag()))?;
        signal_hook::flag::register(signal, Arc::clone(flag()))?;
    }
    Ok(())
}

/// True once SIGINT or SIGTERM arrived (after [`install_interrupt_handler`]).
pub fn interrupted() -> bool {
    flag().load(Ordering::Relaxed)
}

/// Fails with "interrupted" once a signal arrived; call it in long loops.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Polls `cond` until it returns true, failing after `timeout` with `what`
/// in the message.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return Ok(());
        }
        check_interrupted()?;
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Waits until a TCP connect to `ip:port` succeeds. The connect runs in the
/// caller's network namespace, so `ip` must be reachable from there (lab
/// hosts are reachable from the root namespace through the lab's bridge).
pub fn wait_for_tcp(ip: impl Into<IpAddr>, port: u16, timeout: Duration) -> Result<()> {
    let addr = SocketAddr::new(ip.into(), port);
    wait_for(&format!("tcp {addr}"), timeout, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    })
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for loopback tests).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
