//! The piece protocol's frame decoder (`peer/src/wire.rs`): any bytes decode to a frame or an
//! error, never a panic or an allocation past `MAX_FRAME`; a decoded frame re-encodes to bytes
//! that decode to the same frame; a bitmap passes `check_bitmap` only when it fits its claim.
#![no_main]

#[path = "../../peer/src/wire.rs"]
#[allow(dead_code)]
mod wire;

use libfuzzer_sys::fuzz_target;
use std::future::Future;
use std::task::{Context, Poll, Waker};

/// Runs a future over in-memory bytes, which never waits.
fn now<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("in-memory I/O waited"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    // Several frames in a row, as on a connection.
    while let Ok(Some(frame)) = now(wire::read_frame(&mut r)) {
        let mut out = Vec::new();
        now(wire::write_frame(&mut out, &frame)).expect("encodes");
        let again = now(wire::read_frame(&mut out.as_slice())).expect("re-decodes");
        assert_eq!(again.as_ref(), Some(&frame));
        if let wire::Frame::Bitmap { pieces, bits } = &frame
            && let Ok(v) = damselfly_proto::layout::check_bitmap(None, *pieces, bits)
        {
            assert_eq!(v.len(), *pieces as usize);
            assert!(*pieces <= damselfly_proto::layout::MAX_PIECES);
        }
    }
});
