//! The `kafka` source's consumer context: what librdkafka reports from
//! its own threads (logs, client errors, statistics) and the commit before
//! a rebalance takes partitions away.

use std::sync::Arc;

use enrichd_engine::source::Ingest;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::statistics::GroupStatistics;
use crate::kafka::LogContext;

/// The consumer's context: librdkafka's logs and errors (see
/// [`LogContext`]), and a commit of the settled offsets before a
/// rebalance takes partitions away, so their next owner does not process
/// those messages again.
pub(super) struct GroupContext {
    log: LogContext,
    /// Whose backlog and connection the context reports.
    ingest: Arc<dyn Ingest>,
}

impl GroupContext {
    pub(super) fn new(name: &str, ingest: &Arc<dyn Ingest>) -> GroupContext {
        let (source, errors) = (name.to_string(), ingest.clone());
        GroupContext {
            ingest: ingest.clone(),
            log: LogContext {
                name: name.to_string(),
                // librdkafka's client errors (it retries on its own) and a
                // failed commit before a rebalance.
                on_error: Box::new(move |e| errors.stats().set_error(&source, e)),
            },
        }
    }
}

impl rdkafka::ClientContext for GroupContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.log.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // One broker out of reach (`_TRANSPORT`, `_RESOLVE` for its
        // address) leaves the others, and the partitions they lead, to
        // read: the error is reported, but only losing every broker, being
        // refused by them, or a fatal error makes the source disconnected.
        // A partial outage is not counted against the healthy partitions.
        let lost = matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::AllBrokersDown
                    | RDKafkaErrorCode::Authentication
                    | RDKafkaErrorCode::SaslAuthenticationFailed
                    | RDKafkaErrorCode::Fatal
            )
        );
        if lost {
            self.ingest.stats().set_connected(false);
        }
        self.log.error(error, reason);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        let backlog = serde_json::from_slice::<GroupStatistics>(statistics).ok().and_then(|s| s.backlog());
        self.ingest.stats().set_backlog(backlog);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(_) = rebalance {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => (self.log.on_error)(format!("committing offsets before a rebalance: {e}")),
            }
        }
    }
}
