//! Naming the record a syntax error in an envelope is in (the error path
//! of [`super::parse_envelope`] only).

use std::cell::Cell;
use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use super::values::Str;
use super::{bare_message, InputError};

/// The error for a syntax error met inside a record of the envelope: the
/// record named by its index like any other record error (as NDJSON lines
/// are), and the position, here counted in the whole body. The envelope
/// reads its records as raw text in one pass, so a broken record fails the
/// whole parse with a position only; on that (rare) path the body is read
/// again, counting the records, and the record the same error is met in is
/// named. `None` (the plain `invalid_json`) when the error is outside the
/// records array, or is not met again at the same place.
pub(super) fn record_of_error(source: &str, err: &serde_json::Error) -> Option<InputError> {
    /// Where the walk stopped: the index of the element being read, and
    /// whether reading it had begun (the array's own syntax, a comma or the
    /// end, is checked before an element starts).
    #[derive(Default)]
    struct At {
        index: Cell<Option<usize>>,
        started: Cell<bool>,
    }
    /// The envelope, with `records` walked element by element.
    struct Walk<'c>(&'c At);
    impl<'de> DeserializeSeed<'de> for Walk<'_> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an envelope")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
                if key == "records" {
                    map.next_value_seed(Records(self.0))?;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        }
    }
    /// The records array: the index of the element being read is kept in
    /// `At`, and left there when reading it fails.
    struct Records<'c>(&'c At);
    impl<'de> DeserializeSeed<'de> for Records<'_> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de> Visitor<'de> for Records<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array of records")
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut index = 0;
            loop {
                self.0.index.set(Some(index));
                self.0.started.set(false);
                if seq.next_element_seed(Element(self.0))?.is_none() {
                    break;
                }
                index += 1;
            }
            self.0.index.set(None);
            Ok(())
        }
    }
    /// One record, skipped; marks that it started.
    struct Element<'c>(&'c At);
    impl<'de> DeserializeSeed<'de> for Element<'_> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            self.0.started.set(true);
            IgnoredAny::deserialize(d).map(|_| ())
        }
    }

    if !err.is_syntax() && !err.is_eof() {
        return None;
    }
    let at = At::default();
    let mut de = serde_json::Deserializer::from_str(source);
    let again = Walk(&at).deserialize(&mut de).and_then(|()| de.end()).err()?;
    // Only the same error at the same place: otherwise this walk and the
    // envelope's parse disagree on where it went wrong, and no index is
    // better than a wrong one.
    if (again.line(), again.column(), again.classify()) != (err.line(), err.column(), err.classify()) {
        return None;
    }
    let index = at.index.get()?;
    // Met between elements (a trailing comma, a body cut after a comma or
    // after a whole record): no record to name. A missing comma is met
    // there too, at the next record, which is named.
    if !at.started.get() && (err.is_eof() || !element_started(source, err)) {
        return None;
    }
    let message = format!("{} (at line {} column {} of the body)", bare_message(err), err.line(), err.column());
    Some(InputError::Record { index, field: None, message })
}

/// Whether something of a value stands where `err`, met between the
/// records array's elements, is: not so when only whitespace lies between
/// the comma or bracket before it and the closing bracket or end of the
/// body at it. serde_json's column is the 1-based
/// byte position of the character it stopped at (for a body cut short,
/// its last one).
fn element_started(source: &str, err: &serde_json::Error) -> bool {
    let line_start: usize = source.split_inclusive('\n').take(err.line().saturating_sub(1)).map(str::len).sum();
    // At the end of the body, the column is that of its last character.
    let at = if err.is_eof() { source.len() } else { (line_start + err.column().saturating_sub(1)).min(source.len()) };
    let (Some(before), Some(after)) = (source.get(..at), source.get(at..)) else { return true };
    let after = after.trim_start();
    !(before.trim_end().ends_with([',', '[']) && (after.is_empty() || after.starts_with(']')))
}
