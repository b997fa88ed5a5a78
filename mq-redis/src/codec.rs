//! Messages as stream entry fields, and parsing of stream replies.
//!
//! Fields: `id` (message id), `k` (key, when set), `t` (timestamp, ms since
//! the epoch), `p` (payload, any bytes), `a` (the attempt a requeued copy is
//! delivered as; absent means 1), and `h:{name}` per header.

use mq_core::{Message, time_from_millis};
use redis::Value;

pub(crate) const ID: &[u8] = b"id";
pub(crate) const KEY: &[u8] = b"k";
pub(crate) const TIME: &[u8] = b"t";
pub(crate) const PAYLOAD: &[u8] = b"p";
pub(crate) const ATTEMPT: &[u8] = b"a";
pub(crate) const HEADER: &[u8] = b"h:";

/// Hands each field of `message` (name, value), plus the attempt for a
/// requeued copy, to `push`, without copying the values first.
pub(crate) fn encode_into(message: &Message, attempt: Option<u32>, mut push: impl FnMut(&[u8], &[u8])) {
    push(ID, message.id.as_bytes());
    if let Some(key) = &message.key {
        push(KEY, key.as_bytes());
    }
    push(TIME, message.timestamp_millis().to_string().as_bytes());
    if let Some(attempt) = attempt {
        push(ATTEMPT, attempt.to_string().as_bytes());
    }
    let mut field = HEADER.to_vec();
    for (name, value) in &message.headers {
        field.truncate(HEADER.len());
        field.extend_from_slice(name.as_bytes());
        push(&field, value.as_bytes());
    }
    push(PAYLOAD, &message.payload);
}

/// The fields of `message`, plus the attempt for a requeued copy.
#[cfg(test)]
pub(crate) fn encode(message: &Message, attempt: Option<u32>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut fields = Vec::new();
    encode_into(message, attempt, |f, v| fields.push((f.to_vec(), v.to_vec())));
    fields
}

/// One stream entry as read.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The stream entry id (`1700000000000-0`).
    pub(crate) id: String,
    pub(crate) message: Message,
    /// The attempt stored with a requeued copy (1 when absent).
    pub(crate) attempt: u32,
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

/// Items of an array-like value (RESP2 arrays, RESP3 sets).
pub(crate) fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        _ => &[],
    }
}

/// Parses `[id, [field, value, ...]]`. A deleted entry (nil fields) yields `None`.
pub(crate) fn entry(v: &Value) -> Option<Entry> {
    let [id, fields] = items(v) else {
        return None;
    };
    let id = text(id)?;
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = match fields {
        Value::Map(map) => map
            .iter()
            .filter_map(|(k, v)| Some((bytes(k)?, bytes(v)?)))
            .collect(),
        other => items(other)
            .chunks(2)
            .filter_map(|kv| match kv {
                [k, v] => Some((bytes(k)?, bytes(v)?)),
                _ => None,
            })
            .collect(),
    };
    if pairs.is_empty() {
        return None;
    }
    Some(decode(id, pairs))
}

fn decode(entry_id: String, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Entry {
    let mut message = Message::new(Vec::<u8>::new()).with_id(entry_id.clone());
    let mut attempt = 1;
    for (field, value) in pairs {
        let as_text = || String::from_utf8_lossy(&value).into_owned();
        match field.as_slice() {
            ID => message.id = as_text(),
            KEY => message.key = Some(as_text()),
            TIME => {
                if let Ok(ms) = as_text().parse::<u64>() {
                    message.timestamp = time_from_millis(ms);
                }
            }
            ATTEMPT => attempt = mq_core::backend::parse_attempt(&value),
            PAYLOAD => message.payload = value.into(),
            f if f.starts_with(HEADER) => {
                let name = String::from_utf8_lossy(&f[HEADER.len()..]).into_owned();
                message.headers.insert(name, as_text());
            }
            // A field mq did not write (an entry added by another program): keep it as a header.
            other => {
                message
                    .headers
                    .insert(String::from_utf8_lossy(other).into_owned(), as_text());
            }
        }
    }
    Entry {
        id: entry_id,
        message,
        attempt: attempt.max(1),
    }
}

/// Parses an XREADGROUP reply into `(stream key, entries)` pairs.
pub(crate) fn read_reply(v: &Value) -> Vec<(String, Vec<Entry>)> {
    let streams: Vec<(&Value, &Value)> = match v {
        Value::Map(map) => map.iter().map(|(k, v)| (k, v)).collect(),
        other => items(other)
            .iter()
            .filter_map(|s| match items(s) {
                [k, v] => Some((k, v)),
                _ => None,
            })
            .collect(),
    };
    streams
        .into_iter()
        .filter_map(|(key, entries)| Some((text(key)?, items(entries).iter().filter_map(entry).collect())))
        .collect()
}

/// Parses an XAUTOCLAIM reply: `[next cursor, [entries], (deleted ids)]`.
pub(crate) fn autoclaim_reply(v: &Value) -> (String, Vec<Entry>) {
    match items(v) {
        [cursor, entries, ..] => (
            text(cursor).unwrap_or_else(|| "0-0".into()),
            items(entries).iter().filter_map(entry).collect(),
        ),
        _ => ("0-0".into(), Vec::new()),
    }
}

/// Parses extended XPENDING rows `[id, consumer, idle ms, deliveries]` into `(id, deliveries)`.
pub(crate) fn pending_reply(v: &Value) -> Vec<(String, u32)> {
    items(v)
        .iter()
        .filter_map(|row| match items(row) {
            [id, _, _, count, ..] => Some((text(id)?, text(count)?.parse().ok()?)),
            _ => None,
        })
        .collect()
}

/// The `lag` and `pending` of `group` in an `XINFO GROUPS` reply (a list
/// of field/value lists, or maps on RESP3); a `lag` Redis cannot tell
/// (nil, after trimming or deletions) counts as 0.
pub(crate) fn group_info(v: &Value, group: &str) -> Option<(u64, u64)> {
    items(v).iter().find_map(|g| {
        let fields: Vec<(String, &Value)> = match g {
            Value::Map(pairs) => pairs.iter().filter_map(|(k, v)| Some((text(k)?, v))).collect(),
            _ => items(g)
                .chunks(2)
                .filter_map(|kv| match kv {
                    [k, v] => Some((text(k)?, v)),
                    _ => None,
                })
                .collect(),
        };
        let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
        if field("name").and_then(text).as_deref() != Some(group) {
            return None;
        }
        let number = |v: Option<&Value>| match v {
            Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
            Some(other) => text(other).and_then(|t| t.parse().ok()).unwrap_or(0),
            None => 0,
        };
        Some((number(field("lag")), number(field("pending"))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_info_reads_lag_and_pending_from_either_protocol() {
        let s = |t: &str| Value::BulkString(t.as_bytes().to_vec());
        let resp2 = Value::Array(vec![
            Value::Array(vec![
                s("name"),
                s("other"),
                s("lag"),
                Value::Int(9),
                s("pending"),
                Value::Int(9),
            ]),
            Value::Array(vec![
                s("name"),
                s("g"),
                s("pending"),
                Value::Int(2),
                s("lag"),
                Value::Int(5),
            ]),
        ]);
        assert_eq!(group_info(&resp2, "g"), Some((5, 2)));
        assert_eq!(group_info(&resp2, "missing"), None);
        let resp3 = Value::Array(vec![Value::Map(vec![
            (s("name"), s("g")),
            (s("lag"), Value::Nil),
            (s("pending"), Value::Int(3)),
        ])]);
        assert_eq!(
            group_info(&resp3, "g"),
            Some((0, 3)),
            "a lag Redis cannot tell counts as 0"
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_become_replacement_characters() {
        let entry = decode(
            "1-0".into(),
            vec![
                (b"id".to_vec(), b"id-\xff".to_vec()),
                (b"h:n\xfe".to_vec(), b"v\xc3".to_vec()),
                (b"p".to_vec(), b"\xff\x00".to_vec()),
            ],
        );
        assert_eq!(entry.message.id, "id-\u{fffd}");
        assert_eq!(
            entry.message.headers.get("n\u{fffd}").map(String::as_str),
            Some("v\u{fffd}")
        );
        assert_eq!(
            &entry.message.payload[..],
            b"\xff\x00",
            "the payload keeps its bytes"
        );
    }

    fn as_value(fields: Vec<(Vec<u8>, Vec<u8>)>) -> Value {
        Value::Array(
            fields
                .into_iter()
                .flat_map(|(k, v)| [Value::BulkString(k), Value::BulkString(v)])
                .collect(),
        )
    }

    #[test]
    fn message_round_trips_through_fields() {
        let msg = Message::new(vec![0u8, 255, 10])
            .with_key("k")
            .with_header("h:odd", "x")
            .with_header("trace", "1");
        let value = Value::Array(vec![
            Value::BulkString(b"1-0".to_vec()),
            as_value(encode(&msg, Some(3))),
        ]);
        let e = entry(&value).unwrap();
        assert_eq!(e.id, "1-0");
        assert_eq!(e.attempt, 3);
        assert_eq!(e.message, msg);
    }

    #[test]
    fn foreign_entries_keep_their_fields() {
        let value = Value::Array(vec![
            Value::BulkString(b"5-1".to_vec()),
            as_value(vec![(b"temperature".to_vec(), b"21".to_vec())]),
        ]);
        let e = entry(&value).unwrap();
        assert_eq!(e.message.id, "5-1");
        assert_eq!(e.message.header("temperature"), Some("21"));
        assert_eq!(e.attempt, 1);
    }

    #[test]
    fn deleted_entries_are_skipped() {
        let value = Value::Array(vec![Value::BulkString(b"5-1".to_vec()), Value::Nil]);
        assert!(entry(&value).is_none());
    }
}
