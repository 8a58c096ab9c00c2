//! The registry proxy's parsing of what a client sends (`registry-proxy/src/route.rs`,
//! `range.rs`, `reference.rs`) and digests (`proto/src/task_id.rs`): errors, never panics; what
//! is accepted is well-formed (a range lies within the blob, a digest is 64 hex digits).
#![no_main]

use damselfly_proto::task_id::Sha256Digest;
use damselfly_registry_proxy::range::parse_range;
use damselfly_registry_proxy::reference::ImageRef;
use damselfly_registry_proxy::route::{parse_path, validate_digest, validate_name, validate_registry_host};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let total = u64::from_be_bytes(data[..8].try_into().unwrap());
    let Ok(s) = std::str::from_utf8(&data[8..]) else {
        return;
    };
    if let Ok(route) = parse_path(s) {
        let _ = route.origin_path();
        if let Some(name) = route.name() {
            assert!(validate_name(name).is_ok(), "{s:?} -> {name:?}");
        }
    }
    if let Ok(Some(r)) = parse_range(Some(s), total) {
        assert!(r.start <= r.end && r.end < total, "{s:?} of {total}: {r:?}");
        let _ = (r.header_value(), r.content_range(total));
    }
    if validate_digest(s).is_ok() && s.starts_with("sha256:") {
        assert!(Sha256Digest::parse(s).is_ok(), "{s:?}");
    }
    if let Ok(d) = Sha256Digest::parse(s) {
        assert_eq!(d.hex().len(), 64);
    }
    let _ = validate_registry_host(s);
    if let Ok(r) = ImageRef::parse(s) {
        let _ = (r.api_host(), r.base(&[]));
    }
});
