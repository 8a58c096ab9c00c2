//! Sizes ("128MiB") and link rates ("100mbit") as people write them.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};

/// A byte count, parsed from `8MiB`, `1GiB`, `500MB`, `4096`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (number, unit) = split_number(s)?;
        let factor: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            other => {
                return Err(anyhow!(
                    "unknown size unit {other:?} in {s:?} (use B, KiB, MiB, GiB, KB, MB, GB)"
                ));
            }
        };
        Ok(Size((number * factor as f64).round() as u64))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        match units
            .iter()
            .find(|(factor, _)| self.0 >= *factor && self.0.is_multiple_of(*factor))
        {
            Some((factor, unit)) => write!(f, "{}{unit}", self.0 / factor),
            None => write!(f, "{}B", self.0),
        }
    }
}

/// A link rate in tc's notation (`100mbit` = 100,000,000 bit/s), or `none`
/// for unshaped links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rate {
    Unshaped,
    Shaped { tc: String, bits_per_sec: u64 },
}

impl Rate {
    /// The tc rate string, or `None` for unshaped links.
    pub fn tc(&self) -> Option<&str> {
        match self {
            Rate::Unshaped => None,
            Rate::Shaped { tc, .. } => Some(tc),
        }
    }

    pub fn bits_per_sec(&self) -> Option<u64> {
        match self {
            Rate::Unshaped => None,
            Rate::Shaped { bits_per_sec, .. } => Some(*bits_per_sec),
        }
    }
}

impl FromStr for Rate {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        if s.eq_ignore_ascii_case("none") {
            return Ok(Rate::Unshaped);
        }
        let (number, unit) = split_number(s)?;
        let factor = match unit.to_ascii_lowercase().as_str() {
            "bit" => 1.0,
            "kbit" => 1e3,
            "mbit" => 1e6,
            "gbit" => 1e9,
            other => {
                return Err(anyhow!(
                    "unknown rate unit {other:?} in {s:?} (use kbit, mbit, gbit or none)"
                ));
            }
        };
        Ok(Rate::Shaped {
            tc: s.to_ascii_lowercase(),
            bits_per_sec: (number * factor).round() as u64,
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.tc().unwrap_or("none"))
    }
}

fn split_number(s: &str) -> Result<(f64, &str)> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(end);
    let number = number.parse().with_context(|| format!("no number in {s:?}"))?;
    Ok((number, unit.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!("128MiB".parse::<Size>().unwrap(), Size(128 << 20));
        assert_eq!("1 GiB".parse::<Size>().unwrap(), Size(1 << 30));
        assert_eq!("4096".parse::<Size>().unwrap(), Size(4096));
        assert_eq!("2MB".parse::<Size>().unwrap(), Size(2_000_000));
        assert!("12parsecs".parse::<Size>().is_err());
        assert_eq!(Size(128 << 20).to_string(), "128MiB");
        assert_eq!(Size(1000).to_string(), "1000B");
    }

    #[test]
    fn rates() {
        assert_eq!(
            "100mbit".parse::<Rate>().unwrap().bits_per_sec(),
            Some(100_000_000)
        );
        assert_eq!("none".parse::<Rate>().unwrap(), Rate::Unshaped);
        assert!("100mbps".parse::<Rate>().is_err());
    }
}
