//! Reading what a stream keeps, in order, from a start time to the last
//! message stored when reading began: how the operators' commands (`dlq`,
//! `replay`) read. An ordered consumer pulls one batch at a time, so memory
//! stays bounded however much the stream keeps, and what arrives meanwhile is
//! not chased.

use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::{
    self,
    consumer::{self, pull::Ordered},
    stream::Stream,
};
use futures::StreamExt as _;
use time::OffsetDateTime;

/// How long to wait for the next message the server said was pending.
const PATIENCE: Duration = Duration::from_secs(10);

/// One stored message, with where and when its stream stored it.
pub(crate) struct Stored {
    pub seq: u64,
    /// When the stream stored it.
    pub time: OffsetDateTime,
    pub message: jetstream::Message,
}

/// The messages of one stream on one subject filter, in order.
pub(crate) struct Scan {
    stream: String,
    messages: Option<Ordered>,
    /// The last sequence when reading began: what arrives later is not read.
    last: u64,
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
    /// How many messages the range held when reading began.
    total: u64,
    /// How many have been read so far.
    read: u64,
}

impl Scan {
    /// Reads `stream`'s messages on `filter` stored at or after `since` (all
    /// when `None`) and at or before `until`.
    pub(crate) async fn open(
        stream: &Stream,
        filter: String,
        since: Option<OffsetDateTime>,
        until: Option<OffsetDateTime>,
    ) -> anyhow::Result<Self> {
        let name = stream.cached_info().config.name.clone();
        let mut scan = Scan {
            stream: name.clone(),
            messages: None,
            last: 0,
            since,
            until,
            total: 0,
            read: 0,
        };
        let info = stream
            .get_info()
            .await
            .with_context(|| format!("cannot read {name}"))?;
        if info.state.messages == 0 {
            return Ok(scan);
        }
        scan.last = info.state.last_sequence;
        let deliver_policy = match since {
            Some(start_time) => consumer::DeliverPolicy::ByStartTime { start_time },
            None => consumer::DeliverPolicy::All,
        };
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy,
                filter_subject: filter,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot read {name}"))?;
        scan.total = consumer.cached_info().num_pending;
        if scan.total == 0 {
            return Ok(scan);
        }
        scan.messages = Some(
            consumer
                .messages()
                .await
                .with_context(|| format!("cannot read {name}"))?,
        );
        Ok(scan)
    }

    /// Reads nothing stored after sequence `last` either: a second pass over
    /// what a first one showed (and an operator confirmed).
    pub(crate) fn up_to(mut self, last: u64) -> Self {
        self.last = self.last.min(last);
        self
    }

    /// The last sequence this scan may read.
    pub(crate) fn last(&self) -> u64 {
        self.last
    }

    /// How many messages the range held when reading began (a progress bar's length).
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// How many messages have been read so far.
    pub(crate) fn read(&self) -> u64 {
        self.read
    }

    /// The next message, `None` once past the range.
    pub(crate) async fn next(&mut self) -> anyhow::Result<Option<Stored>> {
        while let Some(messages) = &mut self.messages {
            let stream = &self.stream;
            let message = match tokio::time::timeout(PATIENCE, messages.next()).await {
                Err(_) => bail!("timed out reading {stream}"),
                Ok(None) => bail!("{stream} reader closed"),
                Ok(Some(message)) => message.with_context(|| format!("cannot read {stream}"))?,
            };
            let (seq, time, pending) = {
                let info = message
                    .info()
                    .map_err(|e| anyhow::anyhow!("a message of {stream} without metadata: {e}"))?;
                (info.stream_sequence, info.published, info.pending)
            };
            if pending == 0 || seq >= self.last {
                self.messages = None;
            }
            // In order: nothing later is in the range either.
            if seq > self.last || self.until.is_some_and(|until| time > until) {
                self.messages = None;
                break;
            }
            self.read += 1;
            // The server may start before `since` (it does, from the first
            // message, for a time past the last one with no subject filter).
            if self.since.is_some_and(|since| time < since) {
                continue;
            }
            return Ok(Some(Stored { seq, time, message }));
        }
        Ok(None)
    }
}
