//! Serde helpers that keep non-finite floats in JSON logs.
//!
//! JSON has no NaN or infinity and serde_json writes them as `null`, which would turn a NaN loss
//! into a missing value. These helpers write them as the strings `"NaN"`, `"inf"` and `"-inf"`
//! and read them back; finite values stay plain JSON numbers.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

fn non_finite_name(x: f64) -> Option<&'static str> {
    if x.is_nan() {
        Some("NaN")
    } else if x == f64::INFINITY {
        Some("inf")
    } else if x == f64::NEG_INFINITY {
        Some("-inf")
    } else {
        None
    }
}

/// An `f64` that serialises NaN and infinities as strings.
#[derive(Debug, Clone, Copy)]
struct F64(f64);

impl Serialize for F64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match non_finite_name(self.0) {
            Some(name) => s.serialize_str(name),
            None => s.serialize_f64(self.0),
        }
    }
}

/// An `f32` that serialises NaN and infinities as strings (and finite values as short f32s).
#[derive(Debug, Clone, Copy)]
struct F32(f32);

impl Serialize for F32 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match non_finite_name(f64::from(self.0)) {
            Some(name) => s.serialize_str(name),
            None => s.serialize_f32(self.0),
        }
    }
}

struct FloatVisitor;

impl Visitor<'_> for FloatVisitor {
    type Value = f64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number or one of \"NaN\", \"inf\", \"-inf\"")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        match v {
            "NaN" => Ok(f64::NAN),
            "inf" => Ok(f64::INFINITY),
            "-inf" => Ok(f64::NEG_INFINITY),
            _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
        }
    }
}

impl<'de> Deserialize<'de> for F64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FloatVisitor).map(F64)
    }
}

impl<'de> Deserialize<'de> for F32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FloatVisitor).map(|x| F32(x as f32))
    }
}

/// `#[serde(with = "floats::option")]` for `Option<f64>` (`None` is `null` or absent).
pub(crate) mod option {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        value.map(F64).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Ok(Option::<F64>::deserialize(d)?.map(|x| x.0))
    }
}

/// `#[serde(with = "floats::map")]` for `BTreeMap<String, f64>`.
pub(crate) mod map {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        value: &BTreeMap<String, f64>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(value.iter().map(|(k, v)| (k, F64(*v))))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, f64>, D::Error> {
        let raw = BTreeMap::<String, F64>::deserialize(d)?;
        Ok(raw.into_iter().map(|(k, v)| (k, v.0)).collect())
    }
}

/// `#[serde(with = "floats::vec_f32")]` for `Vec<f32>`.
pub(crate) mod vec_f32 {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(value: &[f32], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(value.iter().map(|x| F32(*x)))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
        Ok(Vec::<F32>::deserialize(d)?
            .into_iter()
            .map(|x| x.0)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize)]
    struct Probe {
        #[serde(with = "option")]
        a: Option<f64>,
        #[serde(with = "map")]
        m: BTreeMap<String, f64>,
        #[serde(with = "vec_f32")]
        v: Vec<f32>,
    }

    #[test]
    fn non_finite_values_survive_a_round_trip() -> Result<(), serde_json::Error> {
        let probe = Probe {
            a: Some(f64::NAN),
            m: BTreeMap::from([("x".into(), f64::NEG_INFINITY), ("y".into(), 0.25)]),
            v: vec![-0.1, f32::INFINITY, f32::NAN],
        };
        let text = serde_json::to_string(&probe)?;
        assert_eq!(
            text,
            r#"{"a":"NaN","m":{"x":"-inf","y":0.25},"v":[-0.1,"inf","NaN"]}"#
        );
        let back: Probe = serde_json::from_str(&text)?;
        assert!(back.a.is_some_and(f64::is_nan));
        assert_eq!(back.m["x"], f64::NEG_INFINITY);
        assert_eq!(back.v[0], -0.1);
        assert!(back.v[2].is_nan());
        let none: Probe = serde_json::from_str(r#"{"a":null,"m":{"k":3},"v":[1]}"#)?;
        assert_eq!((none.a, none.m["k"], none.v[0]), (None, 3.0, 1.0));
        assert!(serde_json::from_str::<Probe>(r#"{"a":"nan","m":{},"v":[]}"#).is_err());
        Ok(())
    }
}
