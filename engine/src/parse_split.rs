//! Reading one large records array on several threads (issue 18 point 4):
//! a batch alone in the pipeline should not be decoded on one core while
//! the others idle.
//!
//! Record boundaries are only known once the bytes before them are read
//! (a `},{` may lie inside a string), so the other threads start at
//! *guessed* boundaries and this thread checks each guess by reading up to
//! it: a run that lands exactly on a guess, after a comma, proves it is a
//! record start of this array, and from a record start the rest of an
//! array reads the same whoever reads it. So a proven part's events are
//! exactly those the one-thread walk would make, and are taken; a run that
//! passes a guess without landing on it reads on itself, and the parts
//! after the wrong guess are dropped. The answer is the one-thread answer
//! in every case; a wrong guess only costs the wasted work.
//!
//! A part that fails from a proven start means the one-thread walk would
//! fail there too: the whole envelope goes to the serde path, as it would.

use std::thread::ScopedJoinHandle;

use super::cursor::Cursor;
use super::{run, KeyFilter, Stop};
use crate::event::Event;
use crate::parse::Limits;

/// How far past its target a guess is looked for before that part is
/// left to the thread before it.
const MAX_GUESS_SCAN: usize = 64 << 10;

/// One guessed part: `(events, how its run stopped, where)`.
type Part = Option<(Vec<Event>, Stop, usize)>;

/// The records of the array at the cursor (past `[`, on the first record)
/// in up to `parts` runs, one per thread; the cursor ends after the `]`.
pub(super) fn records(c: &mut Cursor, filter: &KeyFilter, limits: Limits, parts: usize) -> Option<Vec<Event>> {
    let starts = guesses(c.b, c.at, parts);
    records_from(c, filter, limits, &starts)
}

/// [`records`] with other threads starting at `starts` (increasing, after
/// the cursor; any positions at all: a wrong one only wastes work).
fn records_from(c: &mut Cursor, filter: &KeyFilter, limits: Limits, starts: &[usize]) -> Option<Vec<Event>> {
    let source = c.s;
    let max = limits.max_records;
    std::thread::scope(|scope| {
        // Part i reads from its guess until it lands on the next one.
        let others: Vec<(usize, Option<ScopedJoinHandle<'_, Part>>)> = starts
            .iter()
            .enumerate()
            .map(|(i, &from)| {
                let until = starts.get(i + 1).copied().unwrap_or(usize::MAX);
                let part = move || -> Part {
                    let mut c = Cursor::new(source, from, source.len());
                    let mut events = Vec::new();
                    let stop = run(&mut c, filter, max, until, &mut events)?;
                    Some((events, stop, c.at))
                };
                // A part whose thread cannot start is read here instead.
                (until, std::thread::Builder::new().spawn_scoped(scope, part).ok())
            })
            .collect();
        let mut events = Vec::new();
        let mut stop = run(c, filter, max, starts.first().copied().unwrap_or(usize::MAX), &mut events)?;
        let mut others = others.into_iter();
        while stop == Stop::Landed {
            let (until, part) = others.next().expect("a run lands only on a guess, and each guess has a part");
            stop = match part {
                Some(handle) => {
                    let (mut part, part_stop, at) =
                        handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
                    if events.len() + part.len() > max {
                        return None;
                    }
                    events.append(&mut part);
                    c.at = at;
                    part_stop
                }
                None => run(c, filter, max, until, &mut events)?,
            };
        }
        Some(events)
    })
}

/// Up to `parts - 1` guessed record starts after `from`, near evenly spaced
/// targets and increasing: a `{` whose previous non-whitespace byte is a
/// comma, and the one before that a `}`.
fn guesses(b: &[u8], from: usize, parts: usize) -> Vec<usize> {
    let span = b.len() - from;
    let mut found: Vec<usize> = Vec::with_capacity(parts.saturating_sub(1));
    for i in 1..parts {
        let mut at = (from + span / parts * i).max(found.last().map_or(from, |&g| g + 1));
        let end = at.saturating_add(MAX_GUESS_SCAN).min(b.len());
        while let Some(p) = b.get(at..end).and_then(|window| memchr::memchr(b'{', window)) {
            let p = at + p;
            if looks_like_record_start(b, p) {
                found.push(p);
                break;
            }
            at = p + 1;
        }
    }
    found
}

/// Whether `b[p]` (a `{`) follows `}` `,` with only whitespace between.
fn looks_like_record_start(b: &[u8], p: usize) -> bool {
    // The last non-whitespace byte before `i`, with its position.
    let before = |i: usize| {
        let q = b[..i].iter().rposition(|c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r'))?;
        Some((q, b[q]))
    };
    matches!(before(p), Some((comma, b',')) if matches!(before(comma), Some((_, b'}'))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::ParseSpec;

    /// A records array with strings and nested values that look like
    /// record boundaries, compact and spaced.
    fn array() -> String {
        let records = [
            r#"{"src_ip":"10.0.0.1","note":"},{\"a\":1},{","x":[{"y":1},{"z":2}]}"#,
            r#"{ "dst_ip" : "8.8.8.8" , "nested" : { "k" : [ 1 , { } ] } }"#,
            r#"{"src_ip":"10.0.0.2","s":"} , {","bytes":12}"#,
            r#"{}"#,
            r#"{"dst_port":443,"deep":[[{"a":"},{"}]]}"#,
        ];
        format!("[{} ,\n {}]", records[..3].join(","), records[3..].join(" , "))
    }

    /// Each event's span and address, and where the cursor ended.
    type Read = Option<(Vec<(u32, u32, Option<std::net::IpAddr>)>, usize)>;

    fn read(source: &str, starts: Option<&[usize]>) -> Read {
        let spec = ParseSpec::default();
        let filter = KeyFilter::new(&spec);
        let mut c = Cursor::new(source, 1, source.len());
        let limits = Limits { max_records: 100 };
        let events = match starts {
            Some(starts) => records_from(&mut c, &filter, limits, starts)?,
            None => {
                let mut events = Vec::new();
                run(&mut c, &filter, 100, usize::MAX, &mut events)?;
                events
            }
        };
        Some((events.iter().map(|e| (e.raw.start, e.raw.len, e.src_ip.or(e.dst_ip))).collect(), c.at))
    }

    #[test]
    fn any_guess_reads_what_one_thread_reads() {
        let source = array();
        let whole = read(&source, None).expect("the array is valid");
        assert_eq!(whole.0.len(), 5);
        // Every single position as the guess, and pairs of positions.
        for g in 2..source.len() {
            assert_eq!(read(&source, Some(&[g])), Some(whole.clone()), "guess {g}");
        }
        for g in (2..source.len()).step_by(3) {
            for h in (g + 1..source.len()).step_by(5) {
                assert_eq!(read(&source, Some(&[g, h])), Some(whole.clone()), "guesses {g}, {h}");
            }
        }
    }

    #[test]
    fn an_invalid_array_is_refused_whatever_the_guesses() {
        let good = array();
        // A broken record after the second boundary, a missing comma, a
        // non-object record.
        let bad =
            [good.replacen("\"s\":", "\"s\"", 1), good.replacen("} ,\n {", "} \n {", 1), good.replacen("{}", "7", 1)];
        for source in &bad {
            assert_eq!(read(source, None), None);
            for g in 2..source.len() {
                assert_eq!(read(source, Some(&[g])), None, "guess {g} in {source}");
            }
        }
    }

    #[test]
    fn guesses_find_real_boundaries_on_compact_and_spaced_arrays() {
        let source = array();
        let b = source.as_bytes();
        let found = guesses(b, 1, 4);
        assert!(!found.is_empty());
        for g in &found {
            assert!(looks_like_record_start(b, *g), "{g}");
        }
        assert!(found.windows(2).all(|w| w[0] < w[1]));
        // The limit holds across parts.
        let spec = ParseSpec::default();
        let filter = KeyFilter::new(&spec);
        let mut c = Cursor::new(&source, 1, source.len());
        assert!(records_from(&mut c, &filter, Limits { max_records: 4 }, &found).is_none());
    }
}
