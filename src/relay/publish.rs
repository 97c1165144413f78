//! The relay publisher: sends the events its replica read, one message per event,
//! each naming the id before it, with the event id as `Nats-Msg-Id`.

use std::future::IntoFuture;
use std::sync::Arc;

use async_nats::jetstream::message::PublishMessage;
use tokio::sync::mpsc::Receiver;
use tokio_util::sync::CancellationToken;

use super::{deadline, Relay, RelayError};
use crate::event::Event;
use crate::pg::batch;

/// Batches queued for the publisher at most.
pub const OUTBOX: usize = 1024;

/// Events to publish: those after `after`, in id order, with nothing between.
#[derive(Debug)]
pub struct Outgoing {
    /// The id before the first event.
    pub after: u64,
    /// The events.
    pub events: Vec<Arc<Event>>,
}

/// Publishes what the source offers until shutdown.
pub async fn run(relay: Arc<Relay>, mut outgoing: Receiver<Outgoing>, shutdown: CancellationToken) {
    let mut stream_ready = false;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = outgoing.recv() => next,
        };
        let Some(batch) = next else { return };
        let result = async {
            if !relay.connected() {
                return Err(RelayError::Disconnected);
            }
            if !stream_ready {
                relay.stream().await?;
                stream_ready = true;
            }
            publish(&relay, &batch).await
        }
        .await;
        if let Err(err) = result {
            // The consumers see a gap at the next message and read change_log.
            relay.metrics.relay_publish_errors.inc();
            stream_ready = false;
            tracing::debug!(%err, "relay publish failed");
        }
    }
}

/// Sends every event of `batch`, then waits for the acknowledgements.
async fn publish(relay: &Relay, batch: &Outgoing) -> Result<(), RelayError> {
    let mut acks = Vec::with_capacity(batch.events.len());
    let mut after = batch.after;
    for (k, event) in batch.events.iter().enumerate() {
        let payload = batch::encode_events(after, &batch.events[k..=k]);
        let message = PublishMessage::build()
            .payload(payload.into())
            .message_id(event.id.to_string());
        let ack = deadline(
            "a publish",
            relay.jetstream.send_publish(relay.subject.clone(), message),
        )
        .await?
        .map_err(|err| RelayError::nats("publish")(err.into()))?;
        acks.push(ack);
        after = event.id;
    }
    for ack in acks {
        deadline("an acknowledgement", ack.into_future())
            .await?
            .map_err(|err| RelayError::nats("acknowledgement")(err.into()))?;
    }
    relay.metrics.relay_published.inc();
    Ok(())
}
