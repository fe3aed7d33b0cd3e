//! Human-friendly units in the file: durations (`"250ms"`, `"5s"`, `"1h"`) and byte sizes
//! (`32768` or `"32KiB"`).

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// A duration written as a string with a unit: `"250ms"`, `"5s"`, `"1m30s"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a duration string like "250ms", "5s" or "1h""#)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
                humantime::parse_duration(s).map(Duration).map_err(|e| {
                    E::custom(format!(
                        r#"invalid duration "{s}" ({e}); write a number with a unit, like "250ms", "5s" or "1h""#
                    ))
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A size in bytes: an integer, or a string with a binary unit (`"32KiB"`, `"16MiB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    fn parse(s: &str) -> Option<u64> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits.parse().ok()?;
        let scale = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            _ => return None,
        };
        n.checked_mul(scale)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a size: a number of bytes or a string like "32KiB" or "16MiB""#)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<ByteSize, E> {
                u64::try_from(n)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(n))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ByteSize, E> {
                ByteSize::parse(s).map(ByteSize).ok_or_else(|| {
                    E::custom(format!(
                        r#"invalid size "{s}"; write a number of bytes or a number with a unit B, KiB, MiB or GiB, like "32KiB""#
                    ))
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(ByteSize::parse("32KiB"), Some(32 * 1024));
        assert_eq!(ByteSize::parse("16MiB"), Some(16 << 20));
        assert_eq!(ByteSize::parse("100"), Some(100));
        assert_eq!(ByteSize::parse("100 B"), Some(100));
        assert_eq!(ByteSize::parse("32kb"), None);
        assert_eq!(ByteSize::parse("KiB"), None);
        assert_eq!(ByteSize::parse("99999999999999999999GiB"), None);
    }
}
