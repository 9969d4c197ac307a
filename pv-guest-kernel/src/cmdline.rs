//! Kernel command lines: space-separated `key=value` words (a bare `key` has the empty
//! value). When a key repeats, the last occurrence wins.

use core::fmt;

/// A parsed view of a command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cmdline<'a> {
    text: &'a str,
}

/// A value that is not a valid number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidValue<'a> {
    /// The key.
    pub key: &'a str,
    /// Its value as written.
    pub value: &'a str,
}

impl fmt::Display for InvalidValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid number {}={:?}", self.key, self.value)
    }
}

impl<'a> Cmdline<'a> {
    /// Wraps `text`.
    pub const fn new(text: &'a str) -> Self {
        Cmdline { text }
    }

    /// The text as given.
    pub const fn as_str(&self) -> &'a str {
        self.text
    }

    /// The `(key, value)` pairs in order.
    pub fn pairs(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.text
            .split_ascii_whitespace()
            .map(|word| word.split_once('=').unwrap_or((word, "")))
    }

    /// The value of the last `key`, if present.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.pairs()
            .filter(|(k, _)| *k == key)
            .last()
            .map(|(_, v)| v)
    }

    /// True if `key` is present (with or without a value).
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The value of `key` as a number (decimal, or hex with `0x`); `Ok(None)` if absent.
    pub fn get_u64(&self, key: &'a str) -> Result<Option<u64>, InvalidValue<'a>> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => parse_u64(value)
                .map(Some)
                .ok_or(InvalidValue { key, value }),
        }
    }

    /// The value of `key` as a number, or `default` when absent; an invalid value prints
    /// a warning and gives `default`.
    pub fn u64_or(&self, key: &'a str, default: u64) -> u64 {
        match self.get_u64(key) {
            Ok(v) => v.unwrap_or(default),
            Err(e) => {
                crate::println!("cmdline: {e}, using {key}={default}");
                default
            }
        }
    }
}

/// Parses a decimal or `0x`-prefixed hexadecimal number.
pub fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() => u64::from_str_radix(hex, 16).ok(),
        Some(_) => None,
        None if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_lookup() {
        let c = Cmdline::new("  test=badptr verbose yields=7  x=a=b ");
        assert_eq!(
            c.pairs().collect::<Vec<_>>(),
            [
                ("test", "badptr"),
                ("verbose", ""),
                ("yields", "7"),
                ("x", "a=b")
            ]
        );
        assert_eq!(c.get("test"), Some("badptr"));
        assert_eq!(c.get("verbose"), Some(""));
        assert!(c.has("verbose"));
        assert_eq!(c.get("x"), Some("a=b"));
        assert_eq!(c.get("nope"), None);
        assert_eq!(c.get("tes"), None);
    }

    #[test]
    fn last_wins() {
        let c = Cmdline::new("test=a test=b");
        assert_eq!(c.get("test"), Some("b"));
    }

    #[test]
    fn numbers() {
        let c = Cmdline::new("yields=12 hex=0x1F bad=12a empty= neg=-1");
        assert_eq!(c.get_u64("yields"), Ok(Some(12)));
        assert_eq!(c.get_u64("hex"), Ok(Some(31)));
        assert_eq!(c.get_u64("missing"), Ok(None));
        assert_eq!(
            c.get_u64("bad"),
            Err(InvalidValue {
                key: "bad",
                value: "12a"
            })
        );
        assert!(c.get_u64("empty").is_err());
        assert!(c.get_u64("neg").is_err());
        assert_eq!(c.u64_or("yields", 5), 12);
        assert_eq!(c.u64_or("missing", 5), 5);
        assert_eq!(c.u64_or("bad", 5), 5);
        assert_eq!(parse_u64("0x"), None);
        assert_eq!(parse_u64("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64("18446744073709551616"), None);
        assert_eq!(
            c.get_u64("bad").unwrap_err().to_string(),
            "invalid number bad=\"12a\""
        );
    }

    #[test]
    fn empty() {
        let c = Cmdline::new("");
        assert_eq!(c.pairs().count(), 0);
        assert_eq!(c.get("test"), None);
    }
}
