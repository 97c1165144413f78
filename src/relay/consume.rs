//! The relay consumer: an ordered consumer from the newest message on, whose messages
//! become the source's bells; it stands down while this replica publishes and
//! whenever NATS cannot serve.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{deadline, Relay, RelayError};
use crate::metrics::Path;
use crate::pg::batch;
use crate::pg::doorbell::{Bell, Doorbell};

/// How often a consumer checks the connection and its role while no message comes.
const CHECK: Duration = Duration::from_millis(250);
/// How long to wait before subscribing again after NATS failed.
const RETRY: Duration = Duration::from_millis(500);

/// Consumes the relay until shutdown.
pub async fn run(relay: Arc<Relay>, doorbell: Arc<Doorbell>, shutdown: CancellationToken) {
    loop {
        if !relay.publishing() && relay.connected() {
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                outcome = consume(&relay, &doorbell) => outcome,
            };
            if relay.consuming() {
                relay.set_consuming(false);
                // Listen and read again: a read bridges to wherever the stream stopped.
                doorbell.ring(Bell::Read);
            }
            if let Err(err) = outcome {
                tracing::warn!(%err, "relay unavailable; reading change_log");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// One subscription: returns when NATS fails or this replica starts publishing.
async fn consume(relay: &Relay, doorbell: &Doorbell) -> Result<(), RelayError> {
    let stream = relay.stream().await?;
    let config = OrderedConfig {
        filter_subject: relay.subject.clone(),
        deliver_policy: DeliverPolicy::New,
        ..Default::default()
    };
    let consumer = deadline("a consumer", stream.create_consumer(config))
        .await?
        .map_err(|err| RelayError::nats("consumer")(err.into()))?;
    let mut messages = deadline("a subscription", consumer.messages())
        .await?
        .map_err(|err| RelayError::nats("subscription")(err.into()))?;
    relay.set_consuming(true);
    // Events published before the subscription began are not in it: one read of
    // change_log covers them (everything published so far was committed before it).
    doorbell.ring(Bell::Read);
    let mut check = tokio::time::interval(CHECK);
    loop {
        tokio::select! {
            next = messages.next() => match next {
                Some(Ok(message)) => {
                    let bell = match batch::decode(&message.payload) {
                        Ok(batch) => {
                            if let Some(newest) = batch.events.last() {
                                relay.metrics.set_relay_lag_micros(now_micros() - newest.committed_at_micros);
                            }
                            Bell::Batch(batch, Path::Relay)
                        }
                        Err(err) => {
                            tracing::debug!(%err, "relay message not used; reading change_log");
                            Bell::Read
                        }
                    };
                    doorbell.ring(bell);
                }
                Some(Err(err)) => return Err(RelayError::nats("messages")(err.into())),
                None => return Err(RelayError::Disconnected),
            },
            _ = check.tick() => {
                if relay.publishing() {
                    return Ok(());
                }
                if !relay.connected() {
                    return Err(RelayError::Disconnected);
                }
            }
        }
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
