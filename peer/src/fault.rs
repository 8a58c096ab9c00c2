//! Fault switches for end-to-end tests.
//!
//! Compiled in only with the `fault-injection` feature, which release builds
//! never enable; then `DAMSELFLY_FAULT=corrupt-upload` makes the piece server
//! flip a byte in every piece it sends (a lying peer).

/// Should served pieces be corrupted?
#[cfg(feature = "fault-injection")]
pub fn corrupt_uploads() -> bool {
    std::env::var("DAMSELFLY_FAULT").is_ok_and(|v| v.split(',').any(|f| f == "corrupt-upload"))
}

#[cfg(not(feature = "fault-injection"))]
pub fn corrupt_uploads() -> bool {
    false
}
