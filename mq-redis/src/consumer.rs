//! Receiving: a reader task per consumer (XREADGROUP BLOCK on its own
//! connection, XAUTOCLAIM of idle entries, moving due delayed requeues), an
//! acker task that sends acks in batches, and the settle logic.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use mq_core::backend::{AckHandle, add_attempts, dead_letter_message};
use mq_core::{Consumer, Delivery, Error, Message, Nack, Result, Subscription};
use redis::Value;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::broker::Inner;
use crate::codec::{self, Entry};
use crate::conn::Slot;
use crate::scripts;

/// Which stream of the group an entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Main,
    Retry,
}

/// What a consumer's tasks and its deliveries share.
#[derive(Debug)]
struct Shared {
    inner: Arc<Inner>,
    sub: Subscription,
    topic: Arc<str>,
    group: Arc<str>,
    /// This consumer's name in the group (unique per consumer).
    name: String,
    main: String,
    retry: String,
    delayed: String,
    /// Prefix of the hashes holding delayed copies.
    delayed_hash: String,
    dead_letter_topic: String,
    permits: Arc<Semaphore>,
    acks: Mutex<Vec<(Source, String)>>,
    ack_wake: Notify,
    stop: watch::Sender<bool>,
    /// Set once the consumer closed: its deliveries can no longer be settled.
    closed: AtomicBool,
    /// The server's id of the reader's blocking connection (`CLIENT ID`),
    /// so closing can cut its blocking read short; -1 while unknown.
    reader_id: AtomicI64,
    /// With `wait_replicas`: the connection of requeues and dead letters,
    /// opened on first use (a `WAIT` holds up its connection on the server).
    writes: tokio::sync::OnceCell<Slot>,
}

impl Shared {
    fn key(&self, source: Source) -> &str {
        match source {
            Source::Main => &self.main,
            Source::Retry => &self.retry,
        }
    }

    /// Completes when the consumer is closed or the broker is.
    async fn stopped(&self) {
        let mut own = self.stop.subscribe();
        let mut broker = self.inner.close_tx.subscribe();
        loop {
            if *own.borrow_and_update() || *broker.borrow_and_update() {
                return;
            }
            tokio::select! {
                r = own.changed() => if r.is_err() { return },
                r = broker.changed() => if r.is_err() { return },
            }
        }
    }

    fn is_stopped(&self) -> bool {
        *self.stop.borrow() || self.inner.is_closed()
    }

    /// Atomically adds `copy` to `target` (a stream key) and settles the
    /// entry: XACK, and XDEL for a retry-stream entry (it is the group's own).
    /// On a cluster a target in another slot (a dead-letter topic) cannot
    /// share a transaction: the copy is added first and the entry settled
    /// only once that is confirmed (a failure in between leaves a
    /// duplicate, never a loss).
    async fn move_entry(
        &self,
        source: Source,
        entry_id: &str,
        target: &str,
        copy: &Message,
        attempt: Option<u32>,
    ) -> Result<()> {
        let what = format!("move entry {entry_id} of `{}` to `{target}`", self.key(source));
        let together = !self.inner.config.cluster
            || crate::conn::slot(target.as_bytes()) == crate::conn::slot(self.key(source).as_bytes());
        let conn = self.inner.write_slot(&self.writes).await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        if together {
            pipe.add_command(self.inner.xadd(target, copy, attempt)).ignore();
        } else {
            self.inner
                .query_on::<String>(conn, &what, &self.inner.xadd(target, copy, attempt))
                .await?;
            self.inner.wait_for_replicas(conn, &what, target).await?;
        }
        pipe.cmd("XACK")
            .arg(self.key(source))
            .arg(&*self.group)
            .arg(entry_id)
            .ignore();
        if source == Source::Retry {
            pipe.cmd("XDEL").arg(&self.retry).arg(entry_id).ignore();
        }
        self.inner.query_pipe_on::<()>(conn, &what, &pipe).await?;
        self.inner.wait_for_replicas(conn, &what, self.key(source)).await
    }

    async fn dead_letter(
        &self,
        source: Source,
        entry_id: &str,
        message: &Message,
        attempts: u32,
        reason: &str,
    ) -> Result<()> {
        let dead = dead_letter_message(message, &self.topic, &self.group, attempts, reason);
        let target = self.inner.stream_key(&self.dead_letter_topic);
        self.move_entry(source, entry_id, &target, &dead, None).await
    }

    /// Requeues for delivery `attempt + 1`, after `delay`, or dead-letters
    /// when the attempts are used up.
    async fn requeue(
        &self,
        source: Source,
        entry_id: &str,
        message: &Message,
        attempt: u32,
        delay: Duration,
    ) -> Result<()> {
        if let Some(reason) = self.sub.exhausted_reason(attempt) {
            return self
                .dead_letter(source, entry_id, message, attempt, &reason)
                .await;
        }
        let next = attempt.saturating_add(1);
        if delay.is_zero() {
            return self
                .move_entry(source, entry_id, &self.retry, message, Some(next))
                .await;
        }
        let token = mq_core::new_id();
        let script = redis::Script::new(scripts::DELAY);
        let mut inv = script.prepare_invoke();
        inv.key(&self.delayed)
            .key(format!("{}{token}", self.delayed_hash))
            .key(self.key(source))
            .arg(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
            .arg(&*self.group)
            .arg(entry_id)
            .arg(&token)
            .arg(if source == Source::Retry { "1" } else { "0" });
        codec::encode_into(message, Some(next), |field, value| {
            inv.arg(field).arg(value);
        });
        let what = format!("delay a requeue on `{}`", self.delayed);
        let conn = self.inner.write_slot(&self.writes).await?;
        self.inner.run_script_on::<()>(conn, &what, &inv).await?;
        self.inner.wait_for_replicas(conn, &what, &self.delayed).await
    }
}

/// A consumer of a [`RedisBroker`](crate::RedisBroker) subscription.
///
/// Closing it (or dropping it, which closes it in the background) hands its
/// unsettled entries back to the group at once; a consumer that died without
/// closing has its entries reclaimed by the group's other consumers once
/// they have been idle longer than the ack timeout.
#[derive(Debug)]
pub struct RedisConsumer {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Result<Delivery>>,
    tasks: Vec<JoinHandle<()>>,
    closed: bool,
    /// Why the reader stopped, once it stopped without being asked to.
    failed: Option<String>,
}

/// What became of the reader task (the first of `tasks`), which has ended.
async fn reader_failure(tasks: &mut Vec<JoinHandle<()>>) -> String {
    if tasks.is_empty() {
        return "the consumer's reader stopped".into();
    }
    let reader = tasks.remove(0);
    match reader.await {
        Err(e) if e.is_panic() => format!(
            "the consumer's reader failed ({}); subscribe again",
            mq_core::backend::panic_message(e.into_panic().as_ref())
        ),
        Err(_) => "the consumer's reader was cancelled; subscribe again".into(),
        Ok(()) => "the consumer's reader stopped; subscribe again".into(),
    }
}

impl RedisConsumer {
    pub(crate) fn start(inner: Arc<Inner>, sub: Subscription) -> Self {
        let prefetch = sub.prefetch.max(1);
        let shared = Arc::new(Shared {
            main: inner.stream_key(&sub.topic),
            retry: inner.retry_key(&sub.topic, &sub.group),
            delayed: inner.delayed_key(&sub.topic, &sub.group),
            delayed_hash: format!("{}:", inner.delayed_key(&sub.topic, &sub.group)),
            dead_letter_topic: sub.dead_letter_topic(),
            topic: sub.topic.as_str().into(),
            group: sub.group.as_str().into(),
            name: format!("mq-{}", mq_core::new_id()),
            permits: Arc::new(Semaphore::new(prefetch)),
            acks: Mutex::new(Vec::new()),
            ack_wake: Notify::new(),
            stop: watch::channel(false).0,
            closed: AtomicBool::new(false),
            reader_id: AtomicI64::new(-1),
            writes: tokio::sync::OnceCell::new(),
            inner,
            sub,
        });
        let (tx, rx) = mpsc::channel(prefetch * 2 + 1);
        let tasks = vec![
            tokio::spawn(read_loop(shared.clone(), tx)),
            tokio::spawn(ack_loop(shared.clone())),
        ];
        RedisConsumer {
            shared,
            rx,
            tasks,
            closed: false,
            failed: None,
        }
    }

    /// The consumer's name in its Redis consumer group.
    pub fn name(&self) -> &str {
        &self.shared.name
    }
}

#[async_trait]
impl Consumer for RedisConsumer {
    async fn recv(&mut self) -> Result<Option<Delivery>> {
        if self.closed {
            return Ok(None);
        }
        if self.failed.is_none() {
            match self.rx.recv().await {
                Some(result) => return result.map(Some),
                // The reader ended without being asked to (a panic, say): an
                // error, not a clean end, so nothing looks delivered that
                // was not.
                None => self.failed = Some(reader_failure(&mut self.tasks).await),
            }
        }
        Err(Error::backend(
            "redis",
            "consume",
            self.failed.clone().unwrap_or_default(),
        ))
    }

    /// One XREADGROUP's worth at once: waits (at most `wait`) for the first
    /// delivery, then takes what the reader has already fetched, without a
    /// future per delivery.
    async fn recv_many(&mut self, max: usize, wait: Duration) -> Result<Option<Vec<Delivery>>> {
        // Empty, or the reader ended: the next `recv` says which.
        mq_core::backend::recv_many_with(self, max, wait, |consumer| consumer.rx.try_recv().ok()).await
    }

    async fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.rx.close();
        shutdown(self.shared.clone(), std::mem::take(&mut self.tasks)).await
    }
}

impl Drop for RedisConsumer {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let shared = self.shared.clone();
        let tasks = std::mem::take(&mut self.tasks);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Err(e) = shutdown(shared, tasks).await {
                        tracing::warn!(error = %e, "closing a dropped redis consumer failed; its entries return after the ack timeout");
                    }
                });
            }
            Err(_) => {
                shared.stop.send_replace(true);
                shared.closed.store(true, Ordering::Release);
            }
        }
    }
}

/// Stops the tasks, flushes acks, and hands the consumer's unsettled entries
/// back to the group.
async fn shutdown(shared: Arc<Shared>, tasks: Vec<JoinHandle<()>>) -> Result<()> {
    shared.stop.send_replace(true);
    for mut task in tasks {
        // A blocking read in flight is cut short with CLIENT UNBLOCK (from
        // another connection), again until the reader ends: it may only be
        // about to block. Unblocked, the read returns as if timed out, with
        // no entry given to this consumer (abandoning it instead would have
        // the server give entries to a consumer already closed).
        loop {
            unblock_reader(&shared).await;
            tokio::select! {
                // A task that panicked has nothing left to flush.
                _ = &mut task => break,
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }
    shared.closed.store(true, Ordering::Release);
    let mut result = Ok(());
    for source in [Source::Main, Source::Retry] {
        if let Err(e) = hand_back(&shared, source).await {
            result = Err(e);
        }
    }
    if result.is_ok() {
        // DELCONSUMER drops the consumer's pending entries for good: only
        // when it has none, checked atomically.
        for key in [&shared.main, &shared.retry] {
            let script = redis::Script::new(scripts::DELETE_IDLE_CONSUMER);
            let mut inv = script.prepare_invoke();
            inv.key(key).arg(&*shared.group).arg(&shared.name);
            if let Err(e) = shared
                .inner
                .run_script::<i64>("remove consumer from its group", &inv)
                .await
            {
                result = Err(e);
            }
        }
    }
    result
}

/// Cuts the reader's blocking read short, if it has a connection.
async fn unblock_reader(shared: &Shared) {
    let id = shared.reader_id.load(Ordering::Acquire);
    if id < 0 {
        return;
    }
    let mut cmd = redis::cmd("CLIENT");
    cmd.arg("UNBLOCK").arg(id);
    if let Err(e) = shared
        .inner
        .query_at::<i64>("CLIENT UNBLOCK the reader", &shared.main, &cmd)
        .await
    {
        tracing::debug!(error = %e, "unblocking the reader; it ends after its blocking read");
    }
}

/// Requeues (or dead-letters) every entry pending for this consumer.
async fn hand_back(shared: &Shared, source: Source) -> Result<()> {
    let key = shared.key(source);
    loop {
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(key)
            .arg(&*shared.group)
            .arg("-")
            .arg("+")
            .arg(100)
            .arg(&shared.name);
        let pending = codec::pending_reply(
            &shared
                .inner
                .query::<Value>(&format!("XPENDING `{key}`"), &cmd)
                .await?,
        );
        if pending.is_empty() {
            return Ok(());
        }
        for (entry_id, deliveries) in pending {
            let mut cmd = redis::cmd("XRANGE");
            cmd.arg(key).arg(&entry_id).arg(&entry_id);
            let found = shared
                .inner
                .query::<Value>(&format!("XRANGE `{key}`"), &cmd)
                .await?;
            match codec::items(&found).first().and_then(codec::entry) {
                Some(entry) => {
                    let attempt = add_attempts(entry.attempt, u64::from(deliveries.saturating_sub(1)));
                    shared
                        .requeue(source, &entry_id, &entry.message, attempt, Duration::ZERO)
                        .await?;
                }
                // Trimmed or deleted: nothing to hand back, just settle it.
                None => {
                    let mut ack = redis::cmd("XACK");
                    ack.arg(key).arg(&*shared.group).arg(&entry_id);
                    shared.inner.query::<()>("XACK a vanished entry", &ack).await?;
                }
            }
        }
    }
}

/// Sends acks in batches: one round trip for all acks queued meanwhile.
async fn ack_loop(shared: Arc<Shared>) {
    loop {
        let stopping = tokio::select! {
            () = shared.ack_wake.notified() => false,
            () = shared.stopped() => true,
        };
        let batch = std::mem::take(&mut *shared.acks.lock().unwrap_or_else(PoisonError::into_inner));
        if !batch.is_empty() {
            let mut pipe = redis::pipe();
            for source in [Source::Main, Source::Retry] {
                let ids: Vec<&str> = batch
                    .iter()
                    .filter(|(s, _)| *s == source)
                    .map(|(_, id)| id.as_str())
                    .collect();
                if ids.is_empty() {
                    continue;
                }
                pipe.cmd("XACK")
                    .arg(shared.key(source))
                    .arg(&*shared.group)
                    .arg(&ids)
                    .ignore();
                if source == Source::Retry {
                    pipe.cmd("XDEL").arg(&shared.retry).arg(&ids).ignore();
                }
            }
            if let Err(e) = shared.inner.query_pipe::<()>("XACK", &pipe).await {
                tracing::warn!(topic = %shared.topic, group = %shared.group, error = %e, count = batch.len(),
                    "acks were lost; those messages will be delivered again");
            }
        }
        if stopping {
            return;
        }
    }
}

/// Reads new entries, reclaims idle ones and moves due delayed ones, handing
/// out deliveries as the prefetch allows.
async fn read_loop(shared: Arc<Shared>, tx: mpsc::Sender<Result<Delivery>>) {
    let opts = &shared.inner.config.options;
    let interval = opts.claim_interval();
    let mut conn = None;
    let mut next_housekeeping = Instant::now();
    let mut claim_from = ["0-0".to_string(), "0-0".to_string()];
    let mut failures = 0u32;
    while !shared.is_stopped() {
        if Instant::now() >= next_housekeeping {
            if let Err(e) = housekeeping(&shared, &tx, &mut claim_from).await
                && report(&shared, &tx, e, &mut failures).await.is_err()
            {
                return;
            }
            next_housekeeping = Instant::now() + interval;
        }
        // Only read what the prefetch allows.
        let first = tokio::select! {
            p = shared.permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            () = tokio::time::sleep_until(next_housekeeping) => continue,
            () = shared.stopped() => return,
        };
        let mut permits = vec![first];
        while permits.len() < opts.batch {
            match shared.permits.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match shared.inner.blocking_connection().await {
                Ok(mut c) => {
                    let id = c
                        .query_at::<i64>(&shared.main, &redis::cmd("CLIENT").arg("ID").clone())
                        .await;
                    shared.reader_id.store(id.unwrap_or(-1), Ordering::Release);
                    conn.insert(c)
                }
                Err(e) => {
                    if report(&shared, &tx, e, &mut failures).await.is_err() {
                        return;
                    }
                    continue;
                }
            },
        };
        let block = opts
            .block()
            .min(next_housekeeping.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(1));
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&*shared.group)
            .arg(&shared.name)
            .arg("COUNT")
            .arg(permits.len())
            .arg("BLOCK")
            .arg(u64::try_from(block.as_millis()).unwrap_or(1))
            .arg("STREAMS")
            .arg(&shared.main)
            .arg(&shared.retry)
            .arg(">")
            .arg(">");
        // Not abandoned on close: the server would still complete an
        // abandoned blocking read and give entries to this consumer after
        // closing handed its entries back. Closing unblocks it instead.
        if shared.is_stopped() {
            return;
        }
        let reply = cmd.query_async::<Value>(c).await;
        if shared.is_stopped() {
            // What it read stays pending for this consumer: closing hands it back.
            return;
        }
        match reply {
            Ok(value) => {
                failures = 0;
                for (key, entries) in codec::read_reply(&value) {
                    let source = if key == shared.retry {
                        Source::Retry
                    } else {
                        Source::Main
                    };
                    for entry in entries {
                        let permit = match permits.pop() {
                            Some(p) => p,
                            // Two streams may return more than one COUNT: wait for room.
                            None => tokio::select! {
                                p = shared.permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                                () = shared.stopped() => return,
                            },
                        };
                        let attempt = entry.attempt;
                        if deliver(&shared, &tx, source, entry, attempt, permit)
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
            Err(e) => {
                if crate::error::is_transient(&e) {
                    conn = None;
                }
                let e = crate::error::map(
                    e,
                    &format!("XREADGROUP on `{}`", shared.main),
                    &shared.inner.endpoint,
                );
                if report(&shared, &tx, e, &mut failures).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Logs a failure, backs off, and after repeated failures tells the
/// application through `recv`. `Err` when the consumer is gone.
async fn report(
    shared: &Shared,
    tx: &mpsc::Sender<Result<Delivery>>,
    error: Error,
    failures: &mut u32,
) -> std::result::Result<(), ()> {
    *failures += 1;
    tracing::warn!(topic = %shared.topic, group = %shared.group, error = %error, failures = *failures, "redis consumer failure; retrying");
    if (*failures).is_multiple_of(5) {
        tx.send(Err(error)).await.map_err(|_| ())?;
    }
    let backoff = Duration::from_millis(100 * u64::from((*failures).min(10)));
    tokio::select! {
        () = tokio::time::sleep(backoff) => Ok(()),
        () = shared.stopped() => Err(()),
    }
}

async fn deliver(
    shared: &Arc<Shared>,
    tx: &mpsc::Sender<Result<Delivery>>,
    source: Source,
    entry: Entry,
    attempt: u32,
    permit: OwnedSemaphorePermit,
) -> std::result::Result<(), ()> {
    let handle = RedisAck {
        shared: shared.clone(),
        source,
        entry_id: entry.id,
        permit: Mutex::new(Some(permit)),
    };
    let delivery = Delivery::new(
        entry.message,
        attempt,
        shared.topic.clone(),
        shared.group.clone(),
        Box::new(handle),
    );
    tx.send(Ok(delivery)).await.map_err(|_| ())
}

/// Moves due delayed requeues into the retry stream and reclaims entries
/// idle longer than the ack timeout (from consumers that died or were slow).
async fn housekeeping(
    shared: &Arc<Shared>,
    tx: &mpsc::Sender<Result<Delivery>>,
    claim_from: &mut [String; 2],
) -> Result<()> {
    let script = redis::Script::new(scripts::MOVE_DUE);
    let mut inv = script.prepare_invoke();
    inv.key(&shared.delayed)
        .key(&shared.retry)
        .arg(100)
        .arg(&shared.delayed_hash);
    shared
        .inner
        .run_script::<i64>("move due delayed requeues", &inv)
        .await?;

    let min_idle = u64::try_from(shared.sub.ack_timeout.as_millis()).unwrap_or(u64::MAX);
    for (i, source) in [Source::Main, Source::Retry].into_iter().enumerate() {
        let available = shared
            .permits
            .available_permits()
            .min(shared.inner.config.options.batch);
        if available == 0 {
            return Ok(());
        }
        let key = shared.key(source);
        let mut cmd = redis::cmd("XAUTOCLAIM");
        cmd.arg(key)
            .arg(&*shared.group)
            .arg(&shared.name)
            .arg(min_idle)
            .arg(&claim_from[i])
            .arg("COUNT")
            .arg(available);
        let (next, entries) = codec::autoclaim_reply(
            &shared
                .inner
                .query::<Value>(&format!("XAUTOCLAIM `{key}`"), &cmd)
                .await?,
        );
        claim_from[i] = next;
        if entries.is_empty() {
            continue;
        }
        // How often each was delivered, counting this claim.
        let mut pipe = redis::pipe();
        for e in &entries {
            pipe.cmd("XPENDING")
                .arg(key)
                .arg(&*shared.group)
                .arg(&e.id)
                .arg(&e.id)
                .arg(1);
        }
        let counts: Vec<Value> = shared
            .inner
            .query_pipe(&format!("XPENDING `{key}`"), &pipe)
            .await?;
        for (entry, count) in entries.into_iter().zip(counts) {
            let deliveries = codec::pending_reply(&count).first().map_or(2, |(_, n)| *n);
            let attempt = add_attempts(entry.attempt, u64::from(deliveries.saturating_sub(1)));
            tracing::debug!(topic = %shared.topic, group = %shared.group, id = %entry.message.id, attempt, "reclaimed an idle entry");
            // The attempts made so far: the reclaim itself is the next one.
            let made = attempt.saturating_sub(1);
            if let Some(reason) = shared.sub.exhausted_reason(made) {
                shared
                    .dead_letter(source, &entry.id, &entry.message, made, &reason)
                    .await?;
                continue;
            }
            let Ok(permit) = shared.permits.clone().try_acquire_owned() else {
                // No room after all: it stays pending and is claimed again later.
                continue;
            };
            if deliver(shared, tx, source, entry, attempt, permit).await.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Settles one delivery.
#[derive(Debug)]
struct RedisAck {
    shared: Arc<Shared>,
    source: Source,
    entry_id: String,
    /// The prefetch slot, given back when the delivery is settled or dropped.
    permit: Mutex<Option<OwnedSemaphorePermit>>,
}

impl RedisAck {
    fn check(&self, delivery: &Delivery) -> Result<()> {
        self.shared.inner.check_open()?;
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::DeliveryExpired {
                id: delivery.message().id.clone(),
                reason: format!(
                    "its consumer in group `{}` of topic `{}` closed and handed it back",
                    self.shared.group, self.shared.topic
                ),
            });
        }
        Ok(())
    }

    fn release(&self) {
        self.permit.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

#[async_trait]
impl AckHandle for RedisAck {
    async fn ack(&self, delivery: &Delivery) -> Result<()> {
        self.check(delivery)?;
        self.shared
            .acks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((self.source, self.entry_id.clone()));
        self.shared.ack_wake.notify_one();
        self.release();
        Ok(())
    }

    async fn nack(&self, delivery: &Delivery, nack: Nack) -> Result<()> {
        self.check(delivery)?;
        let message = delivery.message();
        let result = match nack {
            Nack::DeadLetter { reason } => {
                self.shared
                    .dead_letter(self.source, &self.entry_id, message, delivery.attempt(), &reason)
                    .await
            }
            Nack::Requeue { delay } => {
                self.shared
                    .requeue(self.source, &self.entry_id, message, delivery.attempt(), delay)
                    .await
            }
            _ => {
                self.shared
                    .requeue(
                        self.source,
                        &self.entry_id,
                        message,
                        delivery.attempt(),
                        Duration::ZERO,
                    )
                    .await
            }
        };
        if result.is_ok() {
            self.release();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reader_that_panicked_is_an_error_naming_the_panic() {
        let reader = tokio::spawn(async { panic!("attempt to add with overflow") });
        let idle = tokio::spawn(async {});
        let mut tasks = vec![reader, idle];
        let why = reader_failure(&mut tasks).await;
        assert!(why.contains("attempt to add with overflow"), "{why}");
        assert_eq!(tasks.len(), 1, "the reader is taken, the ack task kept");
        let why = reader_failure(&mut tasks).await;
        assert!(why.contains("stopped"), "{why}");
    }
}
