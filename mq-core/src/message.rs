//! The message model: id, key, headers, payload, timestamp.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Message headers: string keys to string values, kept in key order.
pub type Headers = BTreeMap<String, String>;

/// One message: what a producer sends and a consumer receives.
///
/// * `id` is unique and sortable by creation time (a UUIDv7); it is generated
///   by [`Message::new`] and kept end to end, so consumers can deduplicate.
/// * `key`, when set, is what the broker orders and partitions by: messages
///   with the same key reach a consumer in the order they were sent.
/// * `headers` travel with the message; names starting with `mq-` are
///   reserved for mq itself (see [`headers`](crate::headers)).
/// * `payload` is any bytes, UTF-8 or not.
/// * `timestamp` is the creation time, kept to the millisecond.
///
/// Text from strangers: the id, key and header names and values are text.
/// A message another program wrote onto a broker's wire with bytes there
/// that are not UTF-8 is still delivered, every backend replacing each
/// invalid sequence with U+FFFD (`String::from_utf8_lossy`); only the
/// payload keeps its bytes exactly. A producer that needs binary metadata
/// encodes it (base64, hex) or puts it in the payload.
///
/// # Examples
///
/// ```
/// use mq_core::Message;
///
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct Order { id: u32, item: String }
///
/// let msg = Message::json(&Order { id: 7, item: "tea".into() })?
///     .with_key("customer-42")
///     .with_header("source", "web");
/// let back: Order = msg.decode_json()?;
/// assert_eq!(back, Order { id: 7, item: "tea".into() });
/// # Ok::<(), mq_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// Unique id, generated when the message is created.
    pub id: String,
    /// Ordering and partitioning key.
    pub key: Option<String>,
    /// Application headers.
    pub headers: Headers,
    /// The body, any bytes.
    pub payload: Bytes,
    /// When the message was created, to the millisecond.
    pub timestamp: SystemTime,
}

impl Message {
    /// A message with this payload, a fresh id and the current time.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        let now = SystemTime::now();
        Message {
            id: id_at(now),
            key: None,
            headers: Headers::new(),
            payload: payload.into(),
            timestamp: truncate_millis(now),
        }
    }

    /// A message as a backend received it: its id and timestamp come from
    /// the wire, so no id is generated and no clock is read (for backends;
    /// applications use [`Message::new`]).
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use mq_core::Message;
    ///
    /// let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    /// let m = Message::received("0192-abc".into(), "tea", at);
    /// assert_eq!((m.id.as_str(), m.timestamp_millis()), ("0192-abc", 1_700_000_000_123));
    /// ```
    pub fn received(id: String, payload: impl Into<Bytes>, timestamp: SystemTime) -> Self {
        Message {
            id,
            key: None,
            headers: Headers::new(),
            payload: payload.into(),
            timestamp: truncate_millis(timestamp),
        }
    }

    /// A message whose payload is `value` encoded as JSON.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] when `value` cannot be serialized (a map with
    /// non-string keys, a failing `Serialize` impl).
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        let payload = serde_json::to_vec(value).map_err(|e| Error::Encode {
            target: std::any::type_name::<T>(),
            source: Box::new(e),
        })?;
        Ok(Message::new(payload).with_header(crate::headers::CONTENT_TYPE, "application/json"))
    }

    /// Decodes the payload as JSON into a `T`.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] naming the message id and the target type when the
    /// payload is not valid JSON for `T`.
    pub fn decode_json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.payload).map_err(|e| Error::Decode {
            id: self.id.clone(),
            target: std::any::type_name::<T>(),
            source: Box::new(e),
        })
    }

    /// Sets the id (for instance to keep an upstream id for deduplication).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Sets the ordering key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Sets the timestamp (kept to the millisecond).
    pub fn with_timestamp(mut self, timestamp: SystemTime) -> Self {
        self.timestamp = truncate_millis(timestamp);
        self
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The timestamp as milliseconds since the Unix epoch (0 for earlier times).
    pub fn timestamp_millis(&self) -> u64 {
        self.timestamp
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    /// A rough size of the message on the wire: payload, key, id and headers.
    pub fn encoded_len(&self) -> usize {
        self.payload.len()
            + self.id.len()
            + self.key.as_ref().map_or(0, String::len)
            + self.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }
}

/// A new unique, time-sortable message id (UUIDv7, hyphenated).
pub fn new_id() -> String {
    id_at(SystemTime::now())
}

/// A UUIDv7 (RFC 9562) for time `now`: 48 bits of Unix milliseconds, a
/// 16-bit counter (so ids made in one process sort in the order they were
/// made, even within one millisecond), and 58 random bits from a per-thread
/// generator seeded once from the OS. Asking the OS for randomness on every
/// id (as `Uuid::now_v7` does) costs more than the rest of a send.
fn id_at(now: SystemTime) -> String {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// On a cache line of its own: every id writes it, and a static read
    /// on every receive next to it (there was one: `observe`'s metrics
    /// switch) would miss the cache on the consumer's core once per
    /// message (BENCHMARKS.md, "Instrumented").
    #[repr(align(128))]
    struct Last(AtomicU64);
    // `#[used]`: the whole line is kept (see `observe`'s metrics switch).
    #[used]
    static LAST: Last = Last(AtomicU64::new(0));
    thread_local! {
        static RNG: Cell<u64> = Cell::new(uuid::Uuid::new_v4().as_u64_pair().0 | 1);
    }

    let millis = now
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
        & 0xffff_ffff_ffff;
    // (millis, counter) as one strictly increasing number; a burst of more
    // than 65536 ids in one millisecond borrows from the next millisecond.
    let candidate = millis << 16;
    let mut prev = LAST.0.load(Ordering::Relaxed);
    let stamp = loop {
        let next = candidate.max(prev.wrapping_add(1));
        match LAST
            .0
            .compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => break next,
            Err(actual) => prev = actual,
        }
    };
    // xorshift64*: fast, and only needs to make collisions across processes unlikely.
    let random = RNG.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    });
    let ts = (stamp >> 16).to_be_bytes();
    let seq = (stamp & 0xffff) as u16;
    let rnd = random.to_be_bytes();
    let bytes = [
        ts[2],
        ts[3],
        ts[4],
        ts[5],
        ts[6],
        ts[7],
        0x70 | ((seq >> 12) as u8 & 0x0f),
        (seq >> 4) as u8,
        0x80 | (((seq & 0x0f) as u8) << 2) | (rnd[0] & 0x03),
        rnd[1],
        rnd[2],
        rnd[3],
        rnd[4],
        rnd[5],
        rnd[6],
        rnd[7],
    ];
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::from_bytes(bytes)
        .hyphenated()
        .encode_lower(&mut text)
        .to_owned()
}

/// `SystemTime` from milliseconds since the Unix epoch, for adapters that
/// store timestamps as numbers.
pub fn time_from_millis(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

fn truncate_millis(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        Err(_) => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_and_sortable() {
        let ids: Vec<String> = (0..10_000).map(|_| Message::new("x").id).collect();
        let unique: HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, ids, "ids generated in sequence sort in that sequence");
        for id in &ids[..10] {
            let parsed = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(parsed.get_version_num(), 7, "{id}");
            assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122, "{id}");
        }
    }

    #[test]
    fn ids_carry_their_millisecond_and_stay_sorted_across_threads() {
        let id = Message::new("x").id;
        let (millis, _) = uuid::Uuid::parse_str(&id)
            .unwrap()
            .get_timestamp()
            .unwrap()
            .to_unix();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(
            now.abs_diff(millis) <= 2,
            "timestamp in the id is the creation time"
        );

        let handles: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..5_000).map(|_| new_id()).collect::<Vec<_>>()))
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            let ids = h.join().unwrap();
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "each thread's ids increase");
            all.extend(ids);
        }
        assert_eq!(all.len(), 20_000, "no duplicates across threads");
    }

    #[test]
    fn binary_payload_is_kept() {
        let bytes: Vec<u8> = (0..=255).collect();
        let msg = Message::new(bytes.clone());
        assert_eq!(&msg.payload[..], &bytes[..]);
    }

    #[test]
    fn undecodable_payload_is_a_typed_error() {
        let msg = Message::new(vec![0xff, 0xfe, 0x00]);
        let err = msg.decode_json::<Vec<u32>>().unwrap_err();
        match &err {
            Error::Decode { id, target, .. } => {
                assert_eq!(id, &msg.id);
                assert!(target.contains("Vec<u32>"), "{target}");
            }
            other => panic!("expected Decode, got {other:?}"),
        }
        assert!(err.to_string().contains(&msg.id));
    }

    #[test]
    fn json_round_trip_sets_content_type() {
        let msg = Message::json(&serde_json::json!({"a": 1})).unwrap();
        assert_eq!(msg.header(crate::headers::CONTENT_TYPE), Some("application/json"));
        let v: serde_json::Value = msg.decode_json().unwrap();
        assert_eq!(v["a"], 1);
    }

    #[test]
    fn unencodable_value_is_a_typed_error() {
        let mut map = std::collections::HashMap::new();
        map.insert((1, 2), "non-string key");
        let err = Message::json(&map).unwrap_err();
        assert!(matches!(err, Error::Encode { .. }), "{err:?}");
    }

    #[test]
    fn timestamp_is_whole_millis() {
        let msg = Message::new("");
        let millis = msg.timestamp_millis();
        assert_eq!(time_from_millis(millis), msg.timestamp);
    }
}
