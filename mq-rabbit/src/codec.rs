//! Messages as AMQP properties and body.
//!
//! The id is the `message_id` property; the timestamp the `timestamp`
//! property (seconds) plus header `mq-ts` (milliseconds); the key header
//! `mq-key`; the attempt of a requeued copy header `mq-attempt`; other
//! headers are long strings.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use mq_core::backend::{add_attempts, parse_attempt};
use mq_core::{Message, headers, time_from_millis};

const KEY: &str = "mq-key";
const TIME: &str = "mq-ts";
const DELIVERY_COUNT: &str = "x-delivery-count";

/// The properties of `message`, with the attempt for a requeued copy.
pub(crate) fn properties(message: &Message, attempt: Option<u32>, persistent: bool) -> BasicProperties {
    let mut table = FieldTable::default();
    for (name, value) in &message.headers {
        table.insert(
            ShortString::from(name.as_str()),
            AMQPValue::LongString(LongString::from(value.as_str())),
        );
    }
    if let Some(key) = &message.key {
        table.insert(KEY.into(), AMQPValue::LongString(LongString::from(key.as_str())));
    }
    let millis = message.timestamp_millis();
    table.insert(
        TIME.into(),
        AMQPValue::LongLongInt(i64::try_from(millis).unwrap_or(i64::MAX)),
    );
    if let Some(attempt) = attempt {
        table.insert(
            headers::ATTEMPT.into(),
            AMQPValue::LongString(LongString::from(attempt.to_string())),
        );
    }
    BasicProperties::default()
        .with_message_id(message.id.as_str().into())
        .with_timestamp(millis / 1000)
        .with_delivery_mode(if persistent { 2 } else { 1 })
        .with_headers(table)
}

fn text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(f) => f.to_string(),
        other => format!("{other:?}"),
    }
}

fn number(value: &AMQPValue) -> Option<u64> {
    match value {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::Timestamp(n) => Some(*n),
        other => text(other).parse().ok(),
    }
}

/// A received message and the attempt it is delivered as.
pub(crate) fn decode(props: &BasicProperties, body: Vec<u8>, redelivered: bool) -> (Message, u32) {
    let mut message = Message::new(body);
    if let Some(id) = props.message_id() {
        message.id = id.as_str().to_string();
    }
    if let Some(seconds) = props.timestamp() {
        message.timestamp = time_from_millis(seconds.saturating_mul(1000));
    }
    let mut attempt = 1;
    let mut delivery_count = None;
    if let Some(table) = props.headers() {
        for (name, value) in table.inner() {
            match name.as_str() {
                KEY => message.key = Some(text(value)),
                TIME => {
                    if let Some(ms) = number(value) {
                        message.timestamp = time_from_millis(ms);
                    }
                }
                n if n == headers::ATTEMPT => attempt = parse_attempt(text(value).as_bytes()),
                DELIVERY_COUNT => delivery_count = number(value),
                other => {
                    message.headers.insert(other.to_string(), text(value));
                }
            }
        }
    }
    // Quorum queues count returned deliveries; classic ones only flag them.
    let attempt = match delivery_count {
        Some(n) => add_attempts(attempt, n),
        None if redelivered => add_attempts(attempt, 1),
        None => attempt,
    };
    (message, attempt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_properties() {
        let msg = Message::new(vec![0u8, 255])
            .with_key("k")
            .with_header("trace", "1")
            .with_header("ü", "ß");
        let props = properties(&msg, Some(3), true);
        let (back, attempt) = decode(&props, msg.payload.to_vec(), false);
        assert_eq!(back, msg);
        assert_eq!(attempt, 3);
        let (_, redelivered) = decode(&props, vec![], true);
        assert_eq!(redelivered, 4, "a flagged redelivery counts one more");
    }

    #[test]
    fn quorum_delivery_count_adds_up() {
        let mut table = FieldTable::default();
        table.insert(DELIVERY_COUNT.into(), AMQPValue::LongLongInt(2));
        let props = BasicProperties::default().with_headers(table);
        assert_eq!(decode(&props, vec![], true).1, 3);
    }

    #[test]
    fn bytes_that_are_not_utf8_become_replacement_characters() {
        let mut table = FieldTable::default();
        table.insert(
            "h".into(),
            AMQPValue::LongString(LongString::from(b"v\xff".to_vec())),
        );
        let props = BasicProperties::default().with_headers(table);
        let (message, _) = decode(&props, b"\xfe".to_vec(), false);
        assert_eq!(message.headers.get("h").map(String::as_str), Some("v\u{fffd}"));
        assert_eq!(&message.payload[..], b"\xfe", "the payload keeps its bytes");
    }

    #[test]
    fn foreign_attempt_counts_never_overflow() {
        for (attempt, count, want) in [
            (AMQPValue::LongString("4294967295".into()), 5, u32::MAX),
            (AMQPValue::LongString("-3".into()), 0, 1),
            (AMQPValue::LongString("lots".into()), 1, 2),
            (AMQPValue::LongLongInt(-1), 0, 1),
            (
                AMQPValue::LongString("99999999999999999999999".into()),
                0,
                u32::MAX,
            ),
        ] {
            let mut table = FieldTable::default();
            table.insert(headers::ATTEMPT.into(), attempt.clone());
            table.insert(DELIVERY_COUNT.into(), AMQPValue::LongLongInt(count));
            let props = BasicProperties::default().with_headers(table);
            assert_eq!(decode(&props, vec![], true).1, want, "{attempt:?} + {count}");
        }
    }
}
