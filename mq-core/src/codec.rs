//! Codecs: typed values to and from message payloads, with the content type
//! in the `content-type` header and checked on decode.
//!
//! [`Json`] is built in; [`Protobuf`] (through `prost`) comes with the
//! `protobuf` feature. A codec of your own implements [`Codec`].
//!
//! ```
//! use mq_core::codec::{self, Json};
//! #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
//! struct Order { id: u32 }
//! let message = codec::encode(&Json, &Order { id: 7 })?;
//! assert_eq!(message.header("content-type"), Some("application/json"));
//! assert_eq!(codec::decode::<Order, _>(&Json, &message)?, Order { id: 7 });
//! # Ok::<(), mq_core::Error>(())
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{BoxError, Error, Message, Result, headers};

/// Turns values of `T` into payloads and back.
pub trait Codec<T>: Send + Sync + 'static {
    /// The content type it writes and reads (`application/json`, ...).
    fn content_type(&self) -> &'static str;

    /// The payload of `value`.
    ///
    /// # Errors
    ///
    /// Why `value` cannot be encoded.
    fn encode(&self, value: &T) -> std::result::Result<Vec<u8>, BoxError>;

    /// The value of `payload`.
    ///
    /// # Errors
    ///
    /// Why `payload` is not a `T`.
    fn decode(&self, payload: &[u8]) -> std::result::Result<T, BoxError>;
}

/// JSON through `serde_json`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl<T: Serialize + DeserializeOwned> Codec<T> for Json {
    fn content_type(&self) -> &'static str {
        "application/json"
    }

    fn encode(&self, value: &T) -> std::result::Result<Vec<u8>, BoxError> {
        Ok(serde_json::to_vec(value)?)
    }

    fn decode(&self, payload: &[u8]) -> std::result::Result<T, BoxError> {
        Ok(serde_json::from_slice(payload)?)
    }
}

/// Protocol Buffers through `prost` (feature `protobuf`): any
/// `prost::Message`, derived or generated.
#[cfg(feature = "protobuf")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Protobuf;

#[cfg(feature = "protobuf")]
impl<T: prost::Message + Default> Codec<T> for Protobuf {
    fn content_type(&self) -> &'static str {
        "application/x-protobuf"
    }

    fn encode(&self, value: &T) -> std::result::Result<Vec<u8>, BoxError> {
        Ok(value.encode_to_vec())
    }

    fn decode(&self, payload: &[u8]) -> std::result::Result<T, BoxError> {
        Ok(T::decode(payload)?)
    }
}

/// A message whose payload is `value` encoded by `codec`, its content type
/// in the `content-type` header.
///
/// # Errors
///
/// [`Error::Encode`] naming the type.
pub fn encode<T, C: Codec<T> + ?Sized>(codec: &C, value: &T) -> Result<Message> {
    let payload = codec.encode(value).map_err(|source| Error::Encode {
        target: std::any::type_name::<T>(),
        source,
    })?;
    Ok(Message::new(payload).with_header(headers::CONTENT_TYPE, codec.content_type()))
}

/// The payload of `message` decoded by `codec`. A message that names
/// another content type is not decoded; one that names none is tried.
///
/// # Errors
///
/// [`Error::Decode`] naming the message id and the type: another content
/// type, or a payload that is not a `T`.
pub fn decode<T, C: Codec<T> + ?Sized>(codec: &C, message: &Message) -> Result<T> {
    let failed = |source: BoxError| Error::Decode {
        id: message.id.clone(),
        target: std::any::type_name::<T>(),
        source,
    };
    if let Some(content_type) = message.header(headers::CONTENT_TYPE) {
        // Parameters (`; charset=utf-8`) and case do not count.
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        if !essence.eq_ignore_ascii_case(codec.content_type()) {
            return Err(failed(
                format!(
                    "the message's content type is `{content_type}`, this codec reads `{}`",
                    codec.content_type()
                )
                .into(),
            ));
        }
    }
    codec.decode(&message.payload).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Order {
        id: u32,
    }

    #[test]
    fn json_round_trips_and_names_what_does_not_decode() {
        let message = encode(&Json, &Order { id: 3 }).expect("encode");
        assert_eq!(
            decode::<Order, _>(&Json, &message).expect("decode"),
            Order { id: 3 }
        );
        let garbage = Message::new("not json");
        let err = decode::<Order, _>(&Json, &garbage).expect_err("not json");
        assert!(
            matches!(&err, Error::Decode { id, .. } if *id == garbage.id),
            "{err:?}"
        );
        assert!(err.to_string().contains("Order"), "{err}");
        let charset =
            Message::new(r#"{"id":4}"#).with_header(headers::CONTENT_TYPE, "Application/JSON; charset=utf-8");
        assert_eq!(
            decode::<Order, _>(&Json, &charset).expect("parameters ignored"),
            Order { id: 4 }
        );
    }

    #[test]
    fn another_content_type_is_not_decoded() {
        let xml = Message::new(r#"{"id":5}"#).with_header(headers::CONTENT_TYPE, "application/xml");
        let err = decode::<Order, _>(&Json, &xml).expect_err("content type");
        assert!(err.to_string().contains("application/xml"), "{err}");
    }

    #[cfg(feature = "protobuf")]
    #[test]
    fn protobuf_round_trips_and_refuses_garbage() {
        #[derive(Clone, PartialEq, prost::Message)]
        struct Shipped {
            #[prost(uint32, tag = "1")]
            id: u32,
            #[prost(string, tag = "2")]
            carrier: String,
        }
        let value = Shipped {
            id: 9,
            carrier: "post".into(),
        };
        let message = encode(&Protobuf, &value).expect("encode");
        assert_eq!(
            message.header(headers::CONTENT_TYPE),
            Some("application/x-protobuf")
        );
        assert_eq!(decode::<Shipped, _>(&Protobuf, &message).expect("decode"), value);
        let garbage =
            Message::new(vec![0xff_u8; 7]).with_header(headers::CONTENT_TYPE, "application/x-protobuf");
        assert!(matches!(
            decode::<Shipped, _>(&Protobuf, &garbage),
            Err(Error::Decode { .. })
        ));
        let json = encode(&Json, &Order { id: 1 }).expect("json");
        assert!(
            decode::<Shipped, _>(&Protobuf, &json).is_err(),
            "a JSON message is not protobuf"
        );
    }
}
