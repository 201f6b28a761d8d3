//! Zeek's default TSV log format, converted to Zeek-style JSON records.
//!
//! Zeek writes logs as TSV unless told otherwise, so replaying real logs
//! means reading this: `#separator`, `#set_separator`, `#empty_field`,
//! `#unset_field`, `#fields` and `#types` headers, then one row per record.
//! Values become what Zeek's own JSON writer emits: numbers for
//! count/int/port/double/time/interval, booleans for `T`/`F`, arrays for sets
//! and vectors, unset fields omitted.

use std::io::BufRead;

use anyhow::{bail, Context};
use serde_json::{Map, Value};

pub(super) struct ZeekTsvReader {
    input: Box<dyn BufRead>,
    separator: String,
    set_separator: String,
    empty_field: String,
    unset_field: String,
    fields: Vec<String>,
    types: Vec<String>,
    line_no: usize,
}

impl ZeekTsvReader {
    pub(super) fn new(input: Box<dyn BufRead>) -> Self {
        ZeekTsvReader {
            input,
            separator: "\t".into(),
            set_separator: ",".into(),
            empty_field: "(empty)".into(),
            unset_field: "-".into(),
            fields: Vec::new(),
            types: Vec::new(),
            line_no: 0,
        }
    }

    fn header(&mut self, line: &str) -> anyhow::Result<()> {
        if let Some(sep) = line.strip_prefix("#separator ") {
            self.separator = unescape(sep.trim());
            return Ok(());
        }
        let mut parts = line[1..].split(self.separator.as_str());
        let key = parts.next().unwrap_or_default();
        let values: Vec<String> = parts.map(str::to_owned).collect();
        match key {
            "set_separator" => self.set_separator = values.into_iter().next().unwrap_or_default(),
            "empty_field" => self.empty_field = values.into_iter().next().unwrap_or_default(),
            "unset_field" => self.unset_field = values.into_iter().next().unwrap_or_default(),
            "fields" => self.fields = values,
            "types" => self.types = values,
            _ => {}
        }
        Ok(())
    }

    fn record(&self, line: &str) -> anyhow::Result<String> {
        if self.fields.is_empty() {
            bail!("data before a #fields header");
        }
        let values: Vec<&str> = line.split(self.separator.as_str()).collect();
        if values.len() != self.fields.len() {
            bail!("{} columns, the #fields header names {}", values.len(), self.fields.len());
        }
        let mut record = Map::with_capacity(values.len());
        for (i, raw) in values.into_iter().enumerate() {
            if raw == self.unset_field {
                continue;
            }
            let ty = self.types.get(i).map(String::as_str).unwrap_or("string");
            let value = if ty.starts_with("set[") || ty.starts_with("vector[") || ty.starts_with("table[") {
                // `set[addr]` -> `addr`; a header cut short (`set[`, or no
                // closing bracket) is taken as far as it goes.
                let inner = ty.split_once('[').map_or("", |(_, rest)| rest.strip_suffix(']').unwrap_or(rest));
                if raw == self.empty_field {
                    Value::Array(Vec::new())
                } else {
                    Value::Array(raw.split(self.set_separator.as_str()).map(|v| scalar(inner, v)).collect())
                }
            } else if raw == self.empty_field {
                Value::String(String::new())
            } else {
                scalar(ty, raw)
            };
            record.insert(self.fields[i].clone(), value);
        }
        Ok(serde_json::to_string(&record)?)
    }
}

fn scalar(ty: &str, raw: &str) -> Value {
    let number = match ty {
        "count" | "port" => raw.parse::<u64>().ok().map(Value::from),
        "int" => raw.parse::<i64>().ok().map(Value::from),
        "double" | "time" | "interval" => raw.parse::<f64>().ok().map(Value::from),
        "bool" => return Value::Bool(raw == "T"),
        _ => None,
    };
    number.unwrap_or_else(|| Value::String(unescape(raw)))
}

/// Zeek escapes separators and non-printables as `\xNN`.
fn unescape(s: &str) -> String {
    if !s.contains("\\x") {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() + 1 && bytes.get(i + 1) == Some(&b'x') {
            if let Some(b) = s.get(i + 2..i + 4).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Iterator for ZeekTsvReader {
    type Item = anyhow::Result<String>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut line = String::new();
        loop {
            line.clear();
            match self.input.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(e.into())),
            }
            self.line_no += 1;
            let text = line.trim_end_matches(['\n', '\r']);
            if text.is_empty() {
                continue;
            }
            if text.starts_with('#') {
                if let Err(e) = self.header(text) {
                    return Some(Err(e));
                }
                continue;
            }
            return Some(self.record(text).with_context(|| format!("Zeek TSV line {}", self.line_no)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_rows_like_zeeks_json_writer() {
        let log = "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n\
#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tduration\torig_bytes\tlocal_orig\ttunnel_parents\n\
#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tinterval\tcount\tbool\tset[string]\n\
1300475167.096535\tCXWv6p3arKYeMETxOg\t141.142.220.202\t5353\t224.0.0.251\t5353\tudp\t-\t0\tT\t(empty)\n\
1300475168.5\tC2\t2001:db8::1\t443\t10.0.0.1\t80\ttcp\t0.25\t12\tF\ta,b\n";
        let reader = ZeekTsvReader::new(Box::new(std::io::Cursor::new(log)));
        let rows: Vec<Value> = reader.map(|r| serde_json::from_str(&r.unwrap()).unwrap()).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["id.orig_h"], "141.142.220.202");
        assert_eq!(rows[0]["id.orig_p"], 5353);
        assert_eq!(rows[0]["ts"], 1300475167.096535);
        assert!(rows[0].get("duration").is_none(), "unset fields are omitted");
        assert_eq!(rows[0]["local_orig"], true);
        assert_eq!(rows[0]["tunnel_parents"], serde_json::json!([]));
        assert_eq!(rows[1]["id.orig_h"], "2001:db8::1");
        assert_eq!(rows[1]["duration"], 0.25);
        assert_eq!(rows[1]["tunnel_parents"], serde_json::json!(["a", "b"]));
    }

    /// Found while writing the fuzz target (`fuzz/fuzz_targets/zeek_tsv.rs`): a container
    /// type without its element type (`set[`) or ending in a multi-byte
    /// character sliced the type name out of bounds.
    #[test]
    fn truncated_container_types_do_not_panic() {
        for ty in ["set[", "vector[", "table[é", "set[count"] {
            let log = format!("#fields\ta\n#types\t{ty}\n1,2\n");
            let rows: Vec<Value> = ZeekTsvReader::new(Box::new(std::io::Cursor::new(log)))
                .map(|r| serde_json::from_str(&r.unwrap()).unwrap())
                .collect();
            assert_eq!(rows.len(), 1, "{ty}");
            assert!(rows[0]["a"].is_array(), "{ty}: {}", rows[0]);
        }
    }

    #[test]
    fn reports_column_mismatch_with_line_number() {
        let log = "#fields\ta\tb\n#types\tcount\tcount\n1\t2\n3\n";
        let mut reader = ZeekTsvReader::new(Box::new(std::io::Cursor::new(log)));
        assert!(reader.next().unwrap().is_ok());
        let err = reader.next().unwrap().unwrap_err();
        assert!(format!("{err:#}").contains("line 4"), "{err:#}");
    }
}
