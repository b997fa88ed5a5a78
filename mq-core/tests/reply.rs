//! Request/reply on the in-memory broker.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

use std::sync::Arc;
use std::time::{Duration, Instant};

use mq_core::reply::{Requester, reply};
use mq_core::worker::{HandlerResult, Job, Worker};
use mq_core::{Broker, Error, Message, Subscription, headers};
use mq_memory::MemoryBroker;
use tokio_util::sync::CancellationToken;

async fn responder(broker: &Arc<dyn Broker>, topic: &str, stop: CancellationToken) {
    let consumer = broker
        .subscribe(Subscription::new(topic, "responders"))
        .await
        .unwrap();
    let producer = Arc::from(broker.producer(Default::default()).await.unwrap());
    let handler = |job: Job| async move {
        let n: u64 = String::from_utf8_lossy(&job.message.payload).parse()?;
        HandlerResult::Ok(vec![reply(&job.message, Message::new((n * n).to_string()))?])
    };
    tokio::spawn(
        Worker::new(consumer)
            .concurrency(4)
            .producer(producer)
            .run(handler, stop),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_reach_their_own_requests() {
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let stop = CancellationToken::new();
    responder(&broker, "square", stop.clone()).await;
    let requester = Arc::new(Requester::new(broker.as_ref()).await.unwrap());
    let mut tasks = Vec::new();
    for n in 0..20u64 {
        let requester = requester.clone();
        tasks.push(tokio::spawn(async move {
            let request = Message::new(n.to_string());
            let id = request.id.clone();
            let answer = requester
                .request("square", request, Duration::from_secs(10))
                .await
                .unwrap();
            assert_eq!(answer.header(headers::CORRELATION_ID), Some(id.as_str()));
            (n, String::from_utf8(answer.payload.to_vec()).unwrap())
        }));
    }
    for t in tasks {
        let (n, answer) = t.await.unwrap();
        assert_eq!(answer, (n * n).to_string(), "each request got its own reply");
    }
    stop.cancel();
}

#[tokio::test]
async fn no_responder_is_a_timeout_naming_the_topic() {
    let broker = MemoryBroker::new();
    let requester = Requester::new(&broker).await.unwrap();
    let started = Instant::now();
    let err = requester
        .request("nobody-listens", Message::new("?"), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("nobody-listens"), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[test]
fn reply_needs_a_request() {
    let err = reply(&Message::new("not a request"), Message::new("x")).unwrap_err();
    assert!(err.to_string().contains("reply-to"), "{err}");
    let request = Message::new("q").with_header(headers::REPLY_TO, "answers");
    let publish = reply(&request, Message::new("a")).unwrap();
    assert_eq!(publish.topic, "answers");
    assert_eq!(
        publish.message.header(headers::CORRELATION_ID),
        Some(request.id.as_str())
    );
}
