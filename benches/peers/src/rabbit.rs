//! RabbitMQ: persistent 100-byte messages published flat out with
//! publisher confirms (a window of 100: 100 published, their confirms
//! awaited together), consumed at the same time with a prefetch of 200 and
//! an ack per message. mq-rabbit, ruststream-lapin (on a plain queue, and
//! through a topic exchange as mq goes), omniqueue's RabbitMQ backend and
//! raw lapin (through a topic exchange, as mq; and on a plain queue, with
//! and without `mandatory` and mq's properties, to tell apart what they
//! cost).

use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, stream::FuturesUnordered};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use mq_core::{Broker, BrokerUrl, Message, Producer, ProducerOptions, Subscription};
use mq_rabbit::{RabbitBroker, RabbitConfig};
use ruststream::{Broker as _, IncomingMessage, OutgoingMessage, Publisher, Subscriber};
use ruststream_lapin::{LapinBroker, LapinPublish, RabbitExchange, RabbitQueue};

use crate::Outcome;

/// The RabbitMQ the benchmark uses.
pub fn url() -> String {
    std::env::var("MQ_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

const WINDOW: usize = 100;
const PREFETCH: u16 = 200;
/// How long a consumer waits for the next message before the round fails.
const STALL: Duration = Duration::from_secs(30);

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn unique(what: &str) -> String {
    format!("peers-{what}-{}", &mq_core::new_id()[24..])
}

async fn raw_conn() -> Result<Connection, String> {
    Connection::connect(&url(), ConnectionProperties::default())
        .await
        .map_err(|e| format!("RabbitMQ does not answer ({e}); start one or set MQ_TEST_AMQP_URL"))
}

/// Deletes a round's queue and, if it has one, its exchange.
pub async fn cleanup(queue: &str, exchange: Option<&str>) -> Result<(), String> {
    let conn = raw_conn().await?;
    let ch = conn.create_channel().await.map_err(err)?;
    ch.queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .map_err(err)?;
    if let Some(x) = exchange {
        ch.exchange_delete(x.into(), ExchangeDeleteOptions::default())
            .await
            .map_err(err)?;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.close(200, "bye".into())).await;
    Ok(())
}

/// mq-rabbit: `send_batch` of 100 (its confirms awaited together), then
/// `recv` and `ack`, or `recv_many(200)` and `ack_all`. Through the topic's
/// exchange (mq's default topology), or with `queue` straight to the
/// topic's queue through the default exchange (`topology=queue`).
pub async fn mq(n: usize, payload: Bytes, many: bool, queue: bool) -> Outcome {
    let mut config = RabbitConfig::from_url(&BrokerUrl::parse(&url()).map_err(err)?).map_err(err)?;
    if queue {
        config.options.topology = "queue".into();
    }
    let broker = RabbitBroker::connect(config).await.map_err(err)?;
    let topic = unique("mq");
    let mut consumer = broker
        .subscribe(Subscription::new(&topic, "g").prefetch(usize::from(PREFETCH)))
        .await
        .map_err(err)?;
    let producer: Box<dyn Producer> = broker.producer(ProducerOptions::default()).await.map_err(err)?;
    let start = Instant::now();
    let sender = {
        let topic = topic.clone();
        tokio::spawn(async move {
            for _ in 0..n / WINDOW {
                let batch = (0..WINDOW).map(|_| Message::new(payload.clone())).collect();
                producer.send_batch(&topic, batch).await.map_err(err)?;
            }
            Ok::<_, String>(())
        })
    };
    let mut seen = 0;
    while seen < n {
        if many {
            let batch = consumer
                .recv_many(usize::from(PREFETCH), STALL)
                .await
                .map_err(err)?
                .ok_or("the consumer ended")?;
            if batch.is_empty() {
                return Err(format!("consumed {seen} of {n}: nothing more within {STALL:?}"));
            }
            seen += batch.len();
            mq_core::ack_all(&batch).await.map_err(err)?;
        } else {
            let d = tokio::time::timeout(STALL, consumer.recv())
                .await
                .map_err(|_| format!("consumed {seen} of {n}: nothing more within {STALL:?}"))?
                .map_err(err)?
                .ok_or("the consumer ended")?;
            d.ack().await.map_err(err)?;
            seen += 1;
        }
    }
    let took = start.elapsed();
    sender.await.map_err(err)??;
    consumer.close().await.map_err(err)?;
    broker.close().await.map_err(err)?;
    if queue {
        cleanup(&topic, None).await?;
    } else {
        cleanup(&format!("{topic}.g"), Some(&topic)).await?;
    }
    Ok(took)
}

/// ruststream-lapin with confirms: 100 concurrent publishes (each awaits
/// its confirm), the subscription's stream with an ack per message. On a
/// plain queue (the default exchange), or through a topic exchange.
pub async fn ruststream(n: usize, payload: Bytes, topic_exchange: bool) -> Outcome {
    let name = unique("rs");
    let broker = LapinBroker::new(url())
        .declare_topology(true)
        .connect()
        .await
        .map_err(err)?;
    let prefetch = NonZeroU16::new(PREFETCH).ok_or("prefetch 0")?;
    let mut queue = RabbitQueue::new(&name).prefetch(prefetch);
    let mut policy = LapinPublish::default().confirms().persistent(true);
    if topic_exchange {
        queue = queue.bind(RabbitExchange::topic(&name), "#");
        policy = policy.exchange(&name);
    }
    let mut subscriber = broker.subscribe(queue).await.map_err(err)?;
    let publisher = broker.publisher(policy);
    let start = Instant::now();
    let sender = {
        let name = name.clone();
        tokio::spawn(async move {
            for _ in 0..n / WINDOW {
                let sends: FuturesUnordered<_> = (0..WINDOW)
                    .map(|_| publisher.publish(OutgoingMessage::new(&name, &payload[..]), None))
                    .collect();
                for r in sends.collect::<Vec<_>>().await {
                    r.map_err(err)?;
                }
            }
            Ok::<_, String>(())
        })
    };
    {
        let mut stream = std::pin::pin!(subscriber.stream());
        let mut seen = 0;
        while seen < n {
            let m = tokio::time::timeout(STALL, stream.next())
                .await
                .map_err(|_| format!("consumed {seen} of {n}: nothing more within {STALL:?}"))?
                .ok_or("the stream ended")?
                .map_err(err)?;
            m.ack().await.map_err(err)?;
            seen += 1;
        }
    }
    let took = start.elapsed();
    sender.await.map_err(err)??;
    drop(subscriber);
    cleanup(&name, topic_exchange.then_some(name.as_str())).await?;
    Ok(took)
}

/// omniqueue's RabbitMQ backend: `send_raw` (it publishes without
/// confirms: it has none), 100 at a time, concurrently; `receive` + `ack`.
/// The queue is declared here (omniqueue leaves that to the application).
pub async fn omniqueue(n: usize, payload: Bytes) -> Outcome {
    use omniqueue::backends::rabbitmq as o;
    let name = unique("omni");
    declare_queue(&name, None).await?;
    let config = omniqueue::backends::RabbitMqConfig {
        uri: url(),
        connection_properties: o::ConnectionProperties::default(),
        publish_exchange: String::new(),
        publish_routing_key: name.clone(),
        publish_options: o::BasicPublishOptions::default(),
        publish_properties: o::BasicProperties::default().with_delivery_mode(2),
        consume_queue: name.clone(),
        consumer_tag: "omni".into(),
        consume_options: o::BasicConsumeOptions::default(),
        consume_arguments: o::FieldTable::default(),
        consume_prefetch_count: Some(PREFETCH),
        requeue_on_nack: true,
    };
    let (producer, mut consumer) = omniqueue::backends::RabbitMqBackend::builder(config)
        .build_pair()
        .await
        .map_err(err)?;
    let start = Instant::now();
    let sender = tokio::spawn(async move {
        for _ in 0..n / WINDOW {
            let sends: FuturesUnordered<_> = (0..WINDOW).map(|_| producer.send_raw(&payload)).collect();
            for r in sends.collect::<Vec<_>>().await {
                r.map_err(err)?;
            }
        }
        Ok::<_, String>(producer)
    });
    let mut seen = 0;
    while seen < n {
        let d = tokio::time::timeout(STALL, consumer.receive())
            .await
            .map_err(|_| format!("consumed {seen} of {n}: nothing more within {STALL:?}"))?
            .map_err(err)?;
        d.ack().await.map_err(|(e, _)| err(e))?;
        seen += 1;
    }
    let took = start.elapsed();
    let producer = sender.await.map_err(err)??;
    drop((producer, consumer));
    cleanup(&name, None).await?;
    Ok(took)
}

/// Declares a durable queue, bound to a durable topic exchange of the same
/// name when `exchange` is given.
pub async fn declare_queue(queue: &str, exchange: Option<&str>) -> Result<(), String> {
    let conn = raw_conn().await?;
    let ch = conn.create_channel().await.map_err(err)?;
    if let Some(x) = exchange {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(x.into(), ExchangeKind::Topic, durable, FieldTable::default())
            .await
            .map_err(err)?;
    }
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), durable, FieldTable::default())
        .await
        .map_err(err)?;
    if let Some(x) = exchange {
        ch.queue_bind(
            queue.into(),
            x.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(err)?;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.close(200, "bye".into())).await;
    Ok(())
}

/// How raw lapin publishes: the route, the `mandatory` flag and the
/// properties, so that what mq-rabbit's wire form costs is measured apart.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Straight to a plain queue through the default exchange (as
    /// ruststream's plain queue and mq's `topology=queue`), not through a
    /// topic exchange (mq's default topology).
    pub queue: bool,
    /// Marked `mandatory` (mq does, so an unroutable send is an error;
    /// ruststream does not).
    pub mandatory: bool,
    /// With the properties mq-rabbit writes: `message_id` (an mq id),
    /// `timestamp` and the `mq-ts` header.
    pub mq_properties: bool,
}

impl Shape {
    /// mq's default topology: a topic exchange, mandatory, no properties.
    pub const TOPIC: Shape = Shape {
        queue: false,
        mandatory: true,
        mq_properties: false,
    };
    /// ruststream's plain queue: straight to the queue, not mandatory, no
    /// properties.
    pub const QUEUE: Shape = Shape {
        queue: true,
        mandatory: false,
        mq_properties: false,
    };
    /// [`Shape::QUEUE`], mandatory.
    pub const QUEUE_MANDATORY: Shape = Shape {
        mandatory: true,
        ..Shape::QUEUE
    };
    /// mq's `topology=queue` on the wire: mandatory, with mq's properties.
    pub const QUEUE_AS_MQ: Shape = Shape {
        mq_properties: true,
        ..Shape::QUEUE_MANDATORY
    };
}

/// Raw lapin: 100 persistent publishes shaped by `shape`, their confirms
/// awaited together; `basic_consume` with a prefetch of 200, an ack per
/// message.
pub async fn lapin(n: usize, payload: Bytes, shape: Shape) -> Outcome {
    let name = unique("raw");
    let queue = if shape.queue {
        name.clone()
    } else {
        format!("{name}.g")
    };
    declare_queue(&queue, (!shape.queue).then_some(name.as_str())).await?;
    let conn = raw_conn().await?;
    let (mut consumer, publish) = raw_channels(&conn, &queue).await?;
    let start = Instant::now();
    let sender = {
        let name = name.clone();
        tokio::spawn(async move {
            for _ in 0..n / WINDOW {
                publish_confirmed(&publish, &name, shape, (0..WINDOW).map(|_| &payload[..])).await?;
            }
            Ok::<_, String>(())
        })
    };
    let mut seen = 0;
    while seen < n {
        let d = tokio::time::timeout(STALL, consumer.next())
            .await
            .map_err(|_| format!("consumed {seen} of {n}: nothing more within {STALL:?}"))?
            .ok_or("the consumer ended")?
            .map_err(err)?;
        d.ack(BasicAckOptions::default()).await.map_err(err)?;
        seen += 1;
    }
    let took = start.elapsed();
    sender.await.map_err(err)??;
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.close(200, "bye".into())).await;
    cleanup(&queue, (!shape.queue).then_some(name.as_str())).await?;
    Ok(took)
}

/// Raw lapin on `conn`: a consumer of `queue` with a prefetch of 200, and a
/// channel in confirm mode to publish on.
pub async fn raw_channels(
    conn: &Connection,
    queue: &str,
) -> Result<(lapin::Consumer, lapin::Channel), String> {
    let consume = conn.create_channel().await.map_err(err)?;
    consume
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .map_err(err)?;
    let consumer = consume
        .basic_consume(
            queue.into(),
            "raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(err)?;
    let publish = conn.create_channel().await.map_err(err)?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(err)?;
    Ok((consumer, publish))
}

/// Publishes each of `bodies`, persistent, to `name` as `shape` says (the
/// topic exchange `name` under routing key `name`, or the queue `name`
/// through the default exchange), then waits for all their confirms (as
/// mq-rabbit's `send_batch` does).
pub async fn publish_confirmed<'a>(
    channel: &lapin::Channel,
    name: &str,
    shape: Shape,
    bodies: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(), String> {
    let exchange = if shape.queue { "" } else { name };
    let mut confirms = Vec::new();
    for body in bodies {
        let mut props = BasicProperties::default().with_delivery_mode(2);
        if shape.mq_properties {
            let millis = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            let mut table = FieldTable::default();
            table.insert(
                "mq-ts".into(),
                AMQPValue::LongLongInt(i64::try_from(millis).unwrap_or(i64::MAX)),
            );
            props = props
                .with_message_id(mq_core::new_id().as_str().into())
                .with_timestamp(millis / 1000)
                .with_headers(table);
        }
        let options = BasicPublishOptions {
            mandatory: shape.mandatory,
            ..Default::default()
        };
        confirms.push(
            channel
                .basic_publish(exchange.into(), name.into(), options, body, props)
                .await
                .map_err(err)?,
        );
    }
    for c in futures::future::join_all(confirms).await {
        if !c.map_err(err)?.is_ack() {
            return Err("a publish was nacked".to_string());
        }
    }
    Ok(())
}
