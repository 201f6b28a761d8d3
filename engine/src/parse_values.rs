//! The serde path's value readers: how a known field's JSON value becomes
//! the event's typed value (an address, a protocol number, a timestamp, a
//! captured text), with the conversions the fast path must agree with.
//! Split from `parse.rs`, which walks envelopes and records.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::IpValue;
use crate::format::protocol_number;

/// A map key or string value, borrowed from the input when it has no escapes.
pub(super) struct Str<'de>(pub(super) Cow<'de, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for IpValue {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IpValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an IP address string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IpValue, E> {
                Ok(match v.parse() {
                    Ok(ip) => IpValue::Valid(ip),
                    Err(_) => IpValue::Invalid(v.to_owned()),
                })
            }
            fn visit_unit<E: de::Error>(self) -> Result<IpValue, E> {
                Ok(IpValue::Absent)
            }
        }
        d.deserialize_any(V)
    }
}

macro_rules! optional_number {
    ($name:ident, $ty:ty, $max:expr, $what:literal) => {
        pub(super) struct $name(pub(super) Option<$ty>);
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$name, E> {
                        if v > $max {
                            return Err(E::invalid_value(de::Unexpected::Unsigned(v), &self));
                        }
                        Ok($name(Some(v as $ty)))
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$name, E> {
                        if v < 0 {
                            return Err(E::invalid_value(de::Unexpected::Signed(v), &self));
                        }
                        self.visit_u64(v as u64)
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<$name, E> {
                        // Some exporters write counters as 1024.0; accept
                        // whole numbers, refuse fractions.
                        if v.fract() != 0.0 || v < 0.0 || v > $max as f64 {
                            return Err(E::invalid_value(de::Unexpected::Float(v), &self));
                        }
                        Ok($name(Some(v as $ty)))
                    }
                    fn visit_unit<E: de::Error>(self) -> Result<$name, E> {
                        Ok($name(None))
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

optional_number!(Port, u16, 65_535u64, "a port number (integer 0-65535)");
optional_number!(Count, u64, u64::MAX, "a non-negative integer");

pub(super) struct Protocol(pub(super) Option<u8>);

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Protocol;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a protocol name (tcp, udp, icmp, ...) or IANA number (0-255)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Protocol, E> {
                // Unknown names (Zeek's `unknown_transport`, ...) are kept as
                // sent; the engine just does not know the number.
                Ok(Protocol(protocol_number(v).or_else(|| v.parse().ok())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Protocol, E> {
                u8::try_from(v)
                    .map(|p| Protocol(Some(p)))
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Protocol, E> {
                u8::try_from(v)
                    .map(|p| Protocol(Some(p)))
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Protocol, E> {
                Ok(Protocol(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// `ts` as epoch seconds; an ISO 8601 string (Zeek's JSON `ts` option) is
/// accepted and passed through, the engine simply has no numeric time then.
pub(super) struct Timestamp(pub(super) Option<f64>);

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("epoch seconds (number) or a timestamp string")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Timestamp, E> {
                Ok(Timestamp(Some(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timestamp, E> {
                Ok(Timestamp(Some(v as f64)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timestamp, E> {
                Ok(Timestamp(Some(v as f64)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Timestamp, E> {
                Ok(Timestamp(v.trim().parse().ok()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Timestamp, E> {
                Ok(Timestamp(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// A captured text field: strings are kept, any other JSON value is skipped.
pub(super) struct AnyText<'de>(pub(super) Option<Cow<'de, str>>);

impl<'de> Deserialize<'de> for AnyText<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AnyText<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<AnyText<'de>, E> {
                Ok(AnyText(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AnyText<'de>, E> {
                Ok(AnyText(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<AnyText<'de>, E> {
                Ok(AnyText(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<AnyText<'de>, E> {
                Ok(AnyText(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<AnyText<'de>, E> {
                Ok(AnyText(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<AnyText<'de>, E> {
                Ok(AnyText(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<AnyText<'de>, E> {
                Ok(AnyText(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AnyText<'de>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(AnyText(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnyText<'de>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(AnyText(None))
            }
        }
        d.deserialize_any(V)
    }
}
