//! Typed handlers: the payload decoded by a [`Codec`], the message's
//! metadata beside it, and failures that say whether a retry can help.

use std::future::Future;
use std::marker::PhantomData;
use std::time::SystemTime;

use async_trait::async_trait;

use super::{Handler, HandlerResult, Job};
use crate::codec::{self, Codec, Json};
use crate::{BoxError, Headers};

/// What a typed handler gets beside the value: the message's metadata.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Meta {
    /// The message id.
    pub id: String,
    /// The key, if any.
    pub key: Option<String>,
    /// The headers.
    pub headers: Headers,
    /// When it was sent.
    pub timestamp: SystemTime,
    /// Which delivery of the message this is (1 the first time).
    pub attempt: u32,
}

/// A failure no retry can heal: the worker dead-letters the message at
/// once, with this error as the reason, whatever its retry policy says.
/// Any other handler error is transient: retried with the policy.
#[derive(Debug)]
pub struct Permanent(pub BoxError);

impl std::fmt::Display for Permanent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Permanent {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

/// Marks `error` permanent (see [`Permanent`]).
///
/// ```
/// use mq_core::worker::{permanent, HandlerResult};
/// fn check(amount: i64) -> HandlerResult {
///     if amount < 0 {
///         return Err(permanent(format!("a negative amount: {amount}")));
///     }
///     Ok(vec![])
/// }
/// assert!(check(-1).is_err());
/// ```
pub fn permanent(error: impl Into<BoxError>) -> BoxError {
    Box::new(Permanent(error.into()))
}

/// Whether a handler's error is [`Permanent`].
pub(crate) fn is_permanent(error: &BoxError) -> bool {
    error.downcast_ref::<Permanent>().is_some()
}

/// A handler of `T` values decoded by `C` (see [`typed`] and [`json`]).
pub struct Typed<T, C, F> {
    codec: C,
    handler: F,
    _value: PhantomData<fn() -> T>,
}

impl<T, C, F> std::fmt::Debug for Typed<T, C, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Typed")
            .field("value", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

/// A handler that decodes each payload with `codec` and calls `handler`
/// with the value and the message's [`Meta`]. A payload that does not
/// decode (or names another content type) is a [`Permanent`] failure:
/// dead-lettered at once with the decode error as the reason.
pub fn typed<T, C, F, Fut>(codec: C, handler: F) -> Typed<T, C, F>
where
    T: Send + 'static,
    C: Codec<T>,
    F: Fn(T, Meta) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    Typed {
        codec,
        handler,
        _value: PhantomData,
    }
}

/// [`typed`] with the [`Json`] codec.
///
/// ```
/// use mq_core::worker::{json, permanent, Handler, HandlerResult, Meta};
/// #[derive(serde::Deserialize, serde::Serialize)]
/// struct Order { id: u32, amount: i64 }
/// fn _is_handler(_: impl Handler) {}
/// _is_handler(json(|order: Order, meta: Meta| async move {
///     if order.amount < 0 {
///         return Err(permanent("a negative amount")); // dead-lettered now
///     }
///     println!("order {} (attempt {})", order.id, meta.attempt);
///     HandlerResult::Ok(vec![])
/// }));
/// ```
pub fn json<T, F, Fut>(handler: F) -> Typed<T, Json, F>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
    F: Fn(T, Meta) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    typed(Json, handler)
}

#[async_trait]
impl<T, C, F, Fut> Handler for Typed<T, C, F>
where
    T: Send + 'static,
    C: Codec<T>,
    F: Fn(T, Meta) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    async fn handle(&self, job: Job) -> HandlerResult {
        let value = codec::decode(&self.codec, &job.message).map_err(permanent)?;
        let message = job.message;
        let meta = Meta {
            id: message.id,
            key: message.key,
            headers: message.headers,
            timestamp: message.timestamp,
            attempt: job.attempt,
        };
        (self.handler)(value, meta).await
    }
}
