//! Small value types that Kuma's YAML uses: Go-style durations and percentages.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::validate::Validator;

/// A duration written as Go writes it (`500ms`, `10s`, `1m30s`, `1.5h`), as Kuma's policies do.
/// The text is kept as written so that a resource reads back the way it was applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoDuration {
    text: String,
    value: Duration,
}

impl GoDuration {
    pub fn parse(text: &str) -> Result<Self, String> {
        parse_go_duration(text).map(|value| Self {
            text: text.to_owned(),
            value,
        })
    }

    pub fn as_duration(&self) -> Duration {
        self.value
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let err = || {
        format!(
            "invalid duration {text:?}: expected a non-negative number with a unit (ns, us, ms, s, m, h, d, y), such as 500ms, 10s or 1m30s"
        )
    };
    let s = text.strip_prefix('+').unwrap_or(text);
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return Err(err());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if num_len == 0 {
            return Err(err());
        }
        let number: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            // Kuma accepts days and years for certificate lifetimes (`expiration: 1d`, `10y`).
            "d" => 86_400e9,
            "y" => 365.0 * 86_400e9,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total += number * nanos_per_unit;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(err());
    }
    Ok(Duration::from_nanos(total as u64))
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        GoDuration::parse(&text).map_err(de::Error::custom)
    }
}

impl JsonSchema for GoDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration such as 500ms, 10s or 1m30s (Go syntax).",
            "pattern": "^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h|d))+$|^0$"
        })
    }
}

/// A percentage between 0 and 100, written as a number (`80`, `99.5`) or a string (`"99.5"`),
/// as Kuma accepts for sampling rates and failover thresholds.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Percentage(f64);

impl Percentage {
    pub fn new(value: f64) -> Result<Self, String> {
        if (0.0..=100.0).contains(&value) {
            Ok(Self(value))
        } else {
            Err(format!("must be between 0 and 100, got {value}"))
        }
    }

    pub fn value(self) -> f64 {
        self.0
    }
}

impl Serialize for Percentage {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.fract() == 0.0 {
            s.serialize_u64(self.0 as u64)
        } else {
            s.serialize_f64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Percentage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Percentage;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a percentage between 0 and 100, as a number or a string")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Percentage, E> {
                Percentage::new(v as f64).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Percentage, E> {
                Percentage::new(v as f64).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Percentage, E> {
                Percentage::new(v).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Percentage, E> {
                let n: f64 = v.trim().trim_end_matches('%').parse().map_err(|_| {
                    E::custom(format!(
                        "invalid percentage {v:?}: expected a number between 0 and 100"
                    ))
                })?;
                Percentage::new(n).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Percentage {
    fn schema_name() -> Cow<'static, str> {
        "Percentage".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A percentage between 0 and 100, as a number or a decimal string.",
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": 100},
                {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$"}
            ]
        })
    }
}

/// A number written as an integer or as a decimal string (`2`, `"1.9"`), as Kuma's
/// int-or-string fields take it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum IntOrDecimal {
    Int(i64),
    Float(f64),
    Text(String),
}

impl IntOrDecimal {
    /// The number, or `None` when the text is not a decimal number.
    pub fn value(&self) -> Option<f64> {
        match self {
            IntOrDecimal::Int(n) => Some(*n as f64),
            IntOrDecimal::Float(x) => Some(*x),
            IntOrDecimal::Text(t) => {
                let t = t.trim();
                let decimal = !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.' || c == '-');
                if decimal { t.parse::<f64>().ok() } else { None }
            }
        }
    }

    /// Records an error at the current path unless the value is a number satisfying `ok`.
    pub fn check(&self, v: &mut Validator, ok: impl Fn(f64) -> bool, message: &str) {
        match self.value() {
            None => v.error("must be an integer or a decimal number"),
            Some(x) if !ok(x) => v.error(message),
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ms = |t: &str| GoDuration::parse(t).map(|d| d.as_duration().as_millis());
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("10s"), Ok(10_000));
        assert_eq!(ms("1m30s"), Ok(90_000));
        assert_eq!(ms("1.5h"), Ok(5_400_000));
        assert_eq!(ms("0"), Ok(0));
        for bad in ["", "10", "s", "-1s", "10x", "1m-3s", "ten seconds"] {
            assert!(GoDuration::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn percentages_from_numbers_and_strings() {
        let p = |v: serde_json::Value| serde_json::from_value::<Percentage>(v).map(Percentage::value);
        assert_eq!(p(serde_json::json!(80)).ok(), Some(80.0));
        assert_eq!(p(serde_json::json!("99.5")).ok(), Some(99.5));
        assert!(p(serde_json::json!(101)).is_err());
        assert!(p(serde_json::json!("lots")).is_err());
    }
}
