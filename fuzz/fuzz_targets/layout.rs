//! Layout and bitmap checks (`proto/src/layout.rs`), what every host runs on numbers from the
//! network: an accepted layout is bounded, its piece math does not wrap, and a bitmap accepted
//! for it has one flag per piece.
#![no_main]

use damselfly_proto::layout::{MAX_CONTENT_LENGTH, MAX_PIECES, check_bitmap, check_piece_length};
use damselfly_proto::piece::Layout;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 20 {
        return;
    }
    let content_length = u64::from_be_bytes(data[..8].try_into().unwrap());
    let piece_length = u32::from_be_bytes(data[8..12].try_into().unwrap());
    let bits = u32::from_be_bytes(data[12..16].try_into().unwrap());
    let index = u32::from_be_bytes(data[16..20].try_into().unwrap());
    let bytes = &data[20..];
    let _ = check_piece_length(content_length);
    let known = Layout::try_new(content_length, piece_length).ok();
    if let Some(l) = known {
        assert!(l.content_length <= MAX_CONTENT_LENGTH);
        assert!(l.piece_count() <= MAX_PIECES);
        let covered = l.piece_count() as u64 * l.piece_length as u64;
        assert!(covered >= l.content_length && covered < l.content_length + l.piece_length as u64 + 1);
        if let Ok(i) = l.check_index(index) {
            assert!(i < l.piece_count());
        }
        assert!(Layout::matches(Some(l), l).is_ok());
    }
    for k in [known, None] {
        if let Ok(v) = check_bitmap(k, bits, bytes) {
            assert_eq!(v.len(), bits as usize);
            assert!(bits <= MAX_PIECES);
            if let Some(l) = k {
                assert_eq!(bits, l.piece_count());
            }
        }
    }
});
