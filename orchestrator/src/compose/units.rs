//! Compose scalar units: durations (`1h5m30s20ms`), byte sizes (`512m`, `1g`), octal file modes
//! (`0440`), and the lenient number/boolean reading that interpolation makes necessary
//! (`${PORT}` always yields a string, so every number may arrive as one).

use std::fmt;
use std::str::FromStr;
use std::time::Duration as StdDuration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A compose duration. Written back in Go's `time.Duration` form, as `docker compose config` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub StdDuration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}")]
pub struct DurationError {
    pub input: String,
    pub reason: String,
}

impl FromStr for Duration {
    type Err = DurationError;

    /// Go's `time.ParseDuration` grammar: one or more `<decimal><unit>` with units
    /// ns, us (µs), ms, s, m, h; `0` alone is allowed; an optional leading `+`.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason: &str| DurationError { input: input.to_string(), reason: reason.to_string() };
        let s = input.trim();
        let s = s.strip_prefix('+').unwrap_or(s);
        if s == "0" {
            return Ok(Duration(StdDuration::ZERO));
        }
        if s.is_empty() {
            return Err(fail("empty"));
        }
        if s.starts_with('-') {
            return Err(fail("durations cannot be negative"));
        }
        let mut total_nanos: f64 = 0.0;
        let mut rest = s;
        while !rest.is_empty() {
            let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
            if number_len == 0 {
                return Err(fail("expected a number"));
            }
            let number: f64 = rest[..number_len].parse().map_err(|_| fail("malformed number"))?;
            rest = &rest[number_len..];
            let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let scale = match unit {
                "ns" => 1.0,
                "us" | "µs" | "μs" => 1e3,
                "ms" => 1e6,
                "s" => 1e9,
                "m" => 60e9,
                "h" => 3600e9,
                "" => return Err(fail("missing unit (use one of h, m, s, ms, us, ns, e.g. 10s)")),
                _ => return Err(fail(&format!("unknown unit {unit:?} (use h, m, s, ms, us or ns)"))),
            };
            total_nanos += number * scale;
        }
        if !total_nanos.is_finite() || total_nanos > u64::MAX as f64 {
            return Err(fail("too large"));
        }
        Ok(Duration(StdDuration::from_nanos(total_nanos.round() as u64)))
    }
}

impl fmt::Display for Duration {
    /// Go's `Duration.String()` form for whole units (`1h5m30.02s`, `500ms`, `0s`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        if nanos < 1_000 {
            return write!(f, "{nanos}ns");
        }
        if nanos < 1_000_000 {
            return write!(f, "{}us", trim_fraction(nanos as f64 / 1e3));
        }
        if nanos < 1_000_000_000 {
            return write!(f, "{}ms", trim_fraction(nanos as f64 / 1e6));
        }
        let hours = nanos / 3_600_000_000_000;
        let minutes = (nanos / 60_000_000_000) % 60;
        let seconds = (nanos % 60_000_000_000) as f64 / 1e9;
        if hours > 0 {
            write!(f, "{hours}h{minutes}m")?;
        } else if minutes > 0 {
            write!(f, "{minutes}m")?;
        }
        write!(f, "{}s", trim_fraction(seconds))
    }
}

fn trim_fraction(value: f64) -> String {
    let text = format!("{value:.9}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = ScalarText::deserialize(d)?.0;
        text.parse()
            .map_err(|e: DurationError| de::Error::custom(format!("{e}; write a duration like 1m30s, 10s or 500ms")))
    }
}

/// A size in bytes, read from `1024`, `512m`, `1g`, `1.5GB`, `2KiB` (binary multiples, as
/// docker's `RAMInBytes`). Written back as a decimal string of bytes, like `docker compose config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: {reason}")]
pub struct ByteSizeError {
    pub input: String,
    pub reason: String,
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason: &str| ByteSizeError { input: input.to_string(), reason: reason.to_string() };
        let s = input.trim();
        let number_len = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        if number_len == 0 {
            return Err(fail("expected a number followed by an optional unit (b, k, m, g, t, p)"));
        }
        let number: f64 = s[..number_len].parse().map_err(|_| fail("malformed number"))?;
        let unit = s[number_len..].trim().to_ascii_lowercase();
        let power = match unit.as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 1,
            "m" | "mb" | "mib" => 2,
            "g" | "gb" | "gib" => 3,
            "t" | "tb" | "tib" => 4,
            "p" | "pb" | "pib" => 5,
            _ => return Err(fail(&format!("unknown unit {unit:?} (use b, k, m, g, t or p)"))),
        };
        let bytes = number * 1024f64.powi(power);
        if !bytes.is_finite() || bytes > u64::MAX as f64 {
            return Err(fail("too large"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = ScalarText::deserialize(d)?.0;
        text.parse().map_err(|e: ByteSizeError| de::Error::custom(format!("{e}; write a size like 512m, 1g or 1024")))
    }
}

/// A Unix file mode. YAML reads `0440` as the decimal number 440 (YAML 1.2 has no leading-zero
/// octal), so integers are read as octal digits, as docker compose does; `0o440` too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileMode(pub u32);

impl FromStr for FileMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.trim().trim_start_matches("0o");
        u32::from_str_radix(digits, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .map(FileMode)
            .ok_or_else(|| format!("invalid file mode {s:?}; write octal digits like 0440 or 0755"))
    }
}

impl Serialize for FileMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("0{:o}", self.0))
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ScalarText::deserialize(d)?.0.parse().map_err(de::Error::custom)
    }
}

/// Any scalar read as its text: numbers and booleans as YAML wrote them.
pub struct ScalarText(pub String);

impl<'de> Deserialize<'de> for ScalarText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ScalarText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a single value (a string, number or boolean)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Words YAML 1.1 read as booleans and YAML 1.2 reads as strings. Compose files written for
/// docker-compose v1 use them; we accept them where a boolean is expected, with a warning.
pub fn yaml11_bool(word: &str) -> Option<bool> {
    match word.to_ascii_lowercase().as_str() {
        "y" | "yes" | "on" => Some(true),
        "n" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Lenient readers for `#[serde(deserialize_with)]`: numbers and booleans may arrive as strings.
pub mod lenient {
    use super::*;

    /// A number given as a number or as a string of one.
    pub fn number<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr,
        T::Err: fmt::Display,
    {
        let text = ScalarText::deserialize(d)?.0;
        text.trim().parse().map_err(|e| de::Error::custom(format!("expected a number, got {text:?} ({e})")))
    }

    pub fn opt_number<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr,
        T::Err: fmt::Display,
    {
        Option::<ScalarText>::deserialize(d)?
            .map(|t| {
                t.0.trim().parse().map_err(|e| de::Error::custom(format!("expected a number, got {:?} ({e})", t.0)))
            })
            .transpose()
    }

    fn parse_bool<E: de::Error>(text: &str) -> Result<bool, E> {
        match text.to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            other => yaml11_bool(other)
                .ok_or_else(|| de::Error::custom(format!("expected a boolean (true or false), got {text:?}"))),
        }
    }

    /// Reads a boolean, or a string spelling one; anything else is "expected a boolean".
    fn bool_from_value<E: de::Error>(value: serde_yaml::Value) -> Result<Option<bool>, E> {
        match value {
            serde_yaml::Value::Null => Ok(None),
            serde_yaml::Value::Bool(b) => Ok(Some(b)),
            serde_yaml::Value::String(s) => parse_bool(&s).map(Some),
            other => Err(de::Error::custom(format!(
                "expected a boolean (true or false), got {}",
                crate::compose::canonical::kind(&other)
            ))),
        }
    }

    pub fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        bool_from_value(serde_yaml::Value::deserialize(d)?)?
            .ok_or_else(|| de::Error::custom("expected a boolean (true or false), got nothing (null)"))
    }

    pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        bool_from_value(serde_yaml::Value::deserialize(d)?)
    }

    /// A string given as a string or as a number (`published: 8080`, `user: 1000`).
    pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(Option::<ScalarText>::deserialize(d)?.map(|t| t.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_compose_durations() {
        let d = |s: &str| s.parse::<Duration>().map(|d| d.0);
        assert_eq!(d("1h5m30s20ms").unwrap(), StdDuration::from_millis(3_930_020));
        assert_eq!(d("10s").unwrap(), StdDuration::from_secs(10));
        assert_eq!(d("1.5s").unwrap(), StdDuration::from_millis(1500));
        assert_eq!(d("0").unwrap(), StdDuration::ZERO);
        assert_eq!(d("250us").unwrap(), StdDuration::from_micros(250));
        assert!(d("10").unwrap_err().reason.contains("missing unit"));
        assert!(d("10x").is_err());
        assert!(d("").is_err());
        assert!(d("-1s").is_err());
        assert!(d("s").is_err());
    }

    #[test]
    fn prints_durations_like_go() {
        let p = |s: &str| s.parse::<Duration>().unwrap().to_string();
        assert_eq!(p("1h5m30s20ms"), "1h5m30.02s");
        assert_eq!(p("90s"), "1m30s");
        assert_eq!(p("500ms"), "500ms");
        assert_eq!(p("0s"), "0s");
        assert_eq!(p("2h"), "2h0m0s");
    }

    #[test]
    fn parses_byte_sizes() {
        let b = |s: &str| s.parse::<ByteSize>().map(|b| b.0);
        assert_eq!(b("1024").unwrap(), 1024);
        assert_eq!(b("512m").unwrap(), 512 * 1024 * 1024);
        assert_eq!(b("1g").unwrap(), 1 << 30);
        assert_eq!(b("1GB").unwrap(), 1 << 30);
        assert_eq!(b("2KiB").unwrap(), 2048);
        assert_eq!(b("1.5k").unwrap(), 1536);
        assert!(b("12q").is_err());
        assert!(b("m").is_err());
        assert!(b("").is_err());
    }

    #[test]
    fn reads_file_modes_as_octal() {
        assert_eq!("0440".parse::<FileMode>().unwrap(), FileMode(0o440));
        assert_eq!("440".parse::<FileMode>().unwrap(), FileMode(0o440));
        assert_eq!("0o755".parse::<FileMode>().unwrap(), FileMode(0o755));
        assert!("0999".parse::<FileMode>().is_err());
    }

    proptest! {
        #[test]
        fn duration_parser_never_panics(s in "\\PC*") {
            let _ = s.parse::<Duration>();
        }

        #[test]
        fn byte_size_parser_never_panics(s in "\\PC*") {
            let _ = s.parse::<ByteSize>();
        }

        #[test]
        fn durations_round_trip_through_their_text(ms in 0u64..10_000_000_000) {
            let d = Duration(StdDuration::from_millis(ms));
            let again: Duration = d.to_string().parse().unwrap();
            prop_assert_eq!(again, d);
        }

        #[test]
        fn composed_durations_add_up(h in 0u64..100, m in 0u64..60, s in 0u64..60, ms in 0u64..1000) {
            let d: Duration = format!("{h}h{m}m{s}s{ms}ms").parse().unwrap();
            prop_assert_eq!(d.0, StdDuration::from_millis(((h * 60 + m) * 60 + s) * 1000 + ms));
        }

        #[test]
        fn byte_sizes_scale_by_unit(n in 0u64..1_000_000, unit in 0usize..4) {
            let suffix = ["", "k", "m", "g"][unit];
            let b: ByteSize = format!("{n}{suffix}").parse().unwrap();
            prop_assert_eq!(b.0, n * 1024u64.pow(unit as u32));
        }
    }
}
