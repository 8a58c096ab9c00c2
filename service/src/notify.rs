//! systemd's readiness protocol (`Type=notify`): one `READY=1` datagram to the
//! socket named by `$NOTIFY_SOCKET` (a path, or `@name` for an abstract
//! socket). Without the variable (not under systemd) nothing is sent.

use std::os::unix::net::UnixDatagram;

/// Sends `READY=1` if `$NOTIFY_SOCKET` is set.
pub fn ready() -> std::io::Result<()> {
    notify("READY=1\n")
}

/// Sends one state line (`READY=1`, `STOPPING=1`, `STATUS=...`).
pub fn notify(state: &str) -> std::io::Result<()> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) => send(&path, state),
        None => Ok(()),
    }
}

/// Sends `state` to the notify socket `path` (`@name`: abstract).
fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sends_ready_to_the_notify_socket() {
        let dir = std::env::temp_dir().join(format!("dfd-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        super::send(path.as_os_str(), "READY=1\n").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
