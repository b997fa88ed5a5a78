//! Names at and past the brokers' limits: accepted, or refused before the
//! network with [`Error::InvalidOption`] naming the field; never a panic.

use std::sync::Arc;

use super::*;
use crate::{Error, Message};

/// The lengths every name is tried at: empty, AMQP's short-string limit,
/// one past it, and far past it.
const LENGTHS: [usize; 4] = [0, 255, 256, 1000];

/// `base` padded with `x` (or cut) to exactly `len` bytes.
fn sized(base: &str, len: usize) -> String {
    let mut name: String = base.chars().take(len).collect();
    while name.len() < len {
        name.push('x');
    }
    name
}

/// Ok, or an `InvalidOption` error naming `field`; anything else panics.
fn accepted<T>(result: crate::Result<T>, what: &str) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(Error::InvalidOption { option, reason, .. }) => {
            assert!(!reason.is_empty(), "{what}: refused without a reason");
            eprintln!("{what}: refused ({option}: {reason})");
            None
        }
        Err(e) => panic!("{what}: expected success or Error::InvalidOption, got {e:?}"),
    }
}

/// Topic names, group names, message ids and header names of 0, 255, 256
/// and 1,000 bytes are each accepted (and then delivered intact) or refused
/// with [`Error::InvalidOption`]; none panics.
pub async fn names_at_the_limits_are_accepted_or_refused(broker: Arc<dyn Broker>) {
    let producer = producer(&broker).await;
    let base = unique("names");
    for len in LENGTHS {
        // A topic name of `len` bytes, subscribed, then sent to.
        let topic = sized(&base, len);
        let what = format!("a topic name of {len} bytes");
        let sub = Subscription::new(&topic, group_for(&base, &format!("t{len}")));
        if let Some(mut consumer) = accepted(broker.subscribe(sub).await, &what) {
            if let Some(receipt) = accepted(producer.send(&topic, Message::new("t")).await, &what) {
                let d = expect_delivery(consumer.as_mut(), &what).await;
                assert_eq!(d.message().id, receipt.id, "{what}");
                ack(&d).await;
            }
            let _ = consumer.close().await;
        } else if len == 0 {
            let sent = producer.send(&topic, Message::new("t")).await;
            assert!(
                matches!(sent, Err(Error::InvalidOption { .. })),
                "an empty topic name is refused: {sent:?}"
            );
        }

        // A group name of `len` bytes on a fresh topic.
        let topic = unique("names-group");
        let what = format!("a group name of {len} bytes");
        let sub = Subscription::new(&topic, sized(&group_for(&topic, "g"), len));
        if let Some(mut consumer) = accepted(broker.subscribe(sub).await, &what) {
            let receipt = send(producer.as_ref(), &topic, Message::new("g")).await;
            let d = expect_delivery(consumer.as_mut(), &what).await;
            assert_eq!(d.message().id, receipt.id, "{what}");
            ack(&d).await;
            let _ = consumer.close().await;
        } else {
            assert!(len == 0 || len >= 255, "{what} is refused only at a limit");
        }
    }

    // Ids and header names on one subscription.
    let topic = unique("names-msg");
    let mut consumer = subscribe(&broker, Subscription::new(&topic, group_for(&topic, "g"))).await;
    for len in LENGTHS {
        let id = sized(&format!("{}-{len}", crate::new_id()), len);
        let header = sized(&format!("h{len}-"), len);
        for (what, message) in [
            (
                format!("a message id of {len} bytes"),
                Message::new("i").with_id(&id),
            ),
            (
                format!("a header name of {len} bytes"),
                Message::new("h").with_header(&header, "v"),
            ),
        ] {
            let want = message.clone();
            let Some(receipt) = accepted(producer.send(&topic, message).await, &what) else {
                continue;
            };
            let d = expect_delivery(consumer.as_mut(), &what).await;
            assert_eq!(d.message().id, receipt.id, "{what}");
            if len > 0 {
                assert_eq!(d.message().id, want.id, "{what}: the id is kept");
                for (name, value) in &want.headers {
                    assert_eq!(
                        d.message().headers.get(name),
                        Some(value),
                        "{what}: the header is kept"
                    );
                }
            }
            ack(&d).await;
        }
    }
    let _ = consumer.close().await;
}
