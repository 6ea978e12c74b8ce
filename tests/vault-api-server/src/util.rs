//! Small helpers: durations, times, ids, percent-decoding, request-body fields.

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::http::Reply;

/// Default and maximum lease TTL of the system and every mount (768h).
pub(crate) const DEFAULT_TTL: u64 = 2_764_800;

/// RFC3339 with nanoseconds, UTC, e.g. `2018-03-22T02:24:06.945319214Z`.
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

pub(crate) fn now_rfc3339() -> String {
    rfc3339(OffsetDateTime::now_utc())
}

pub(crate) fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

pub(crate) fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Random alphanumeric-ish id of `n` hex characters.
pub(crate) fn hex_id(n: usize) -> String {
    let mut s = String::new();
    while s.len() < n {
        s.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    s.truncate(n);
    s
}

/// Parse a Vault duration: a JSON number of seconds, or a string such as
/// `"90"`, `"60s"`, `"10m"`, `"1h30m"`, `"768h"`.
pub(crate) fn parse_duration(v: &Value) -> Result<u64, String> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .ok_or_else(|| format!("invalid duration {n}")),
        Value::String(s) => parse_duration_str(s),
        Value::Null => Ok(0),
        other => Err(format!("invalid duration {other}")),
    }
}

pub(crate) fn parse_duration_str(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(0);
    }
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    let bad = || format!("invalid duration \"{s}\"");
    let mut total: f64 = 0.0;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        if c == 'm' && chars.peek() == Some(&'s') {
            unit.push('s');
            chars.next();
        }
        let n: f64 = num.parse().map_err(|_| bad())?;
        num.clear();
        total += match unit.as_str() {
            "h" => n * 3600.0,
            "m" => n * 60.0,
            "s" => n,
            "ms" => n / 1000.0,
            "d" => n * 86400.0,
            _ => return Err(bad()),
        };
    }
    if !num.is_empty() {
        return Err(bad());
    }
    Ok(total as u64)
}

/// Read `body[key]`, if present, as a duration into `into`; a bad value is
/// the 400 Vault gives.
pub(crate) fn dur(body: &Map<String, Value>, key: &str, into: &mut u64) -> Result<(), Reply> {
    if let Some(v) = body.get(key) {
        *into = parse_duration(v).map_err(|e| Reply::error(400, &e))?;
    }
    Ok(())
}

/// Read `body[key]`, if present, as a count (a number or a numeric string)
/// into `into`.
pub(crate) fn num(body: &Map<String, Value>, key: &str, into: &mut u64) -> Result<(), Reply> {
    if let Some(v) = body.get(key) {
        *into = v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| Reply::error(400, &format!("invalid {key}")))?;
    }
    Ok(())
}

/// A list field: a JSON array of strings or a comma-separated string, as
/// Vault accepts both; anything else is empty.
pub(crate) fn str_list(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Value::String(s) => s
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

/// Go's `time.Duration.String()` for whole seconds: `1h0m0s`, `10m0s`, `5s`.
pub(crate) fn go_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// Percent-decode a path or query component (`+` is kept as is).
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse a query string into decoded (key, value) pairs.
pub(crate) fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(&v.replace('+', " "))),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_str("90").unwrap(), 90);
        assert_eq!(parse_duration_str("10m").unwrap(), 600);
        assert_eq!(parse_duration_str("1h30m").unwrap(), 5400);
        assert_eq!(parse_duration(&serde_json::json!(5)).unwrap(), 5);
        assert!(parse_duration_str("abc").is_err());
        assert!(parse_duration_str("-5s").is_err());
        assert_eq!(go_duration(3600), "1h0m0s");
        assert_eq!(go_duration(600), "10m0s");
        assert_eq!(go_duration(5), "5s");
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("app%201/db"), "app 1/db");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("a%2"), "a%2");
    }
}
