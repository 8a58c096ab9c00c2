//! `Range: bytes=...` for blob GETs: one range, resolved against the blob's
//! length. Several ranges or another unit: the whole blob (RFC 9110 lets a
//! server ignore them). Anything malformed or outside the blob: 416.

use crate::error::ProxyError;

/// An inclusive byte range `start..=end` within a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The `Range` request header value for this range.
    pub fn header_value(&self) -> String {
        format!("bytes={}-{}", self.start, self.end)
    }

    /// The `Content-Range` response header value.
    pub fn content_range(&self, total: u64) -> String {
        format!("bytes {}-{}/{}", self.start, self.end, total)
    }
}

/// Resolves a `Range` header against a blob of `total` bytes.
pub fn parse_range(header: Option<&str>, total: u64) -> Result<Option<ByteRange>, ProxyError> {
    let Some(value) = header else {
        return Ok(None);
    };
    let value = value.trim();
    let Some(spec) = value
        .get(..6)
        .filter(|p| p.eq_ignore_ascii_case("bytes="))
        .map(|_| &value[6..])
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let bad = || ProxyError::RangeNotSatisfiable { total };
    let (first, last) = spec.trim().split_once('-').ok_or_else(bad)?;
    let num = |s: &str| -> Result<u64, ProxyError> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<u64>().map_err(|_| bad())
    };
    if total == 0 {
        return Err(bad());
    }
    let range = if first.trim().is_empty() {
        let suffix = num(last)?;
        if suffix == 0 {
            return Err(bad());
        }
        ByteRange {
            start: total.saturating_sub(suffix),
            end: total - 1,
        }
    } else {
        let start = num(first)?;
        let end = if last.trim().is_empty() {
            total - 1
        } else {
            num(last)?.min(total - 1)
        };
        if start >= total || start > end {
            return Err(bad());
        }
        ByteRange { start, end }
    };
    Ok(Some(range))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> Option<ByteRange> {
        Some(ByteRange { start, end })
    }

    #[test]
    fn satisfiable_ranges() {
        assert_eq!(parse_range(None, 10).unwrap(), None);
        assert_eq!(parse_range(Some("bytes=0-3"), 10).unwrap(), r(0, 3));
        assert_eq!(parse_range(Some("bytes=5-"), 10).unwrap(), r(5, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10).unwrap(), r(7, 9));
        assert_eq!(parse_range(Some("bytes=-30"), 10).unwrap(), r(0, 9));
        assert_eq!(parse_range(Some("bytes=8-100"), 10).unwrap(), r(8, 9));
        assert_eq!(parse_range(Some("BYTES=1-1"), 10).unwrap(), r(1, 1));
        assert_eq!(r(2, 4).unwrap().len(), 3);
        assert_eq!(r(2, 4).unwrap().content_range(10), "bytes 2-4/10");
    }

    #[test]
    fn ignored_ranges() {
        assert_eq!(parse_range(Some("items=0-3"), 10).unwrap(), None);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10).unwrap(), None);
        assert_eq!(parse_range(Some("b"), 10).unwrap(), None);
    }

    #[test]
    fn unsatisfiable_ranges() {
        for bad in [
            "bytes=10-",
            "bytes=10-20",
            "bytes=5-2",
            "bytes=-0",
            "bytes=abc",
            "bytes=-",
            "bytes=1-x",
            "bytes=+1-2",
            "bytes=99999999999999999999999-",
            "bytes= - ",
        ] {
            let e = parse_range(Some(bad), 10).unwrap_err();
            assert!(
                matches!(e, ProxyError::RangeNotSatisfiable { total: 10 }),
                "{bad}"
            );
        }
        assert!(parse_range(Some("bytes=0-"), 0).is_err());
    }
}
