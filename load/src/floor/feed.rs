//! Follows `realtime.change_log` as a gateway does: LISTEN on the doorbell, and on each
//! ring (or every [`POLL`] without one) one read of everything after the cursor.

use std::rc::Rc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client, NoTls, Statement};

use crate::fanout::{Batch, Clients};

/// The doorbell rowcast's capture rings.
const CHANNEL: &str = "rowcast";
/// A read even without a doorbell, in case one was missed.
const POLL: Duration = Duration::from_millis(500);
/// Events per read.
const PAGE: i64 = 10_000;
/// Every database call's deadline.
const DEADLINE: Duration = Duration::from_secs(10);

/// The events after `$1`, each as its `change` message's parts.
const READ_AFTER: &str = r#"
    SELECT id, "table", op, row::text,
           to_char(committed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    FROM realtime.change_log WHERE id > $1 ORDER BY id LIMIT $2"#;

/// The database connection and where reading has got to.
pub struct Feed {
    client: Client,
    read: Statement,
    doorbell: Rc<Notify>,
    cursor: u64,
}

impl Feed {
    /// Connects, LISTENs and starts after the newest id.
    pub async fn connect(url: &str) -> Result<Feed, String> {
        let (client, mut connection) = bounded(tokio_postgres::connect(url, NoTls))
            .await?
            .map_err(|e| format!("cannot connect to the database: {e}"))?;
        let doorbell = Rc::new(Notify::new());
        let ring = Rc::clone(&doorbell);
        tokio::task::spawn_local(async move {
            let mut messages = futures_util::stream::poll_fn(|cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(_)) => ring.notify_one(),
                    Ok(_) => {}
                    Err(err) => {
                        eprintln!("rowcast-floor: database connection: {err}");
                        std::process::exit(2);
                    }
                }
            }
        });
        let listen = format!("LISTEN {CHANNEL}");
        bounded(client.batch_execute(&listen))
            .await?
            .map_err(|e| e.to_string())?;
        let head = client.query_one("SELECT coalesce(max(id), 0) FROM realtime.change_log", &[]);
        let head: i64 = bounded(head)
            .await?
            .and_then(|row| row.try_get(0))
            .map_err(|e| format!("reading the head (is rowcast's schema there?): {e}"))?;
        let read = bounded(client.prepare(READ_AFTER))
            .await?
            .map_err(|e| e.to_string())?;
        Ok(Feed {
            client,
            read,
            doorbell,
            cursor: head as u64,
        })
    }

    /// The id new clients start after.
    pub fn head(&self) -> u64 {
        self.cursor
    }

    /// Reads and delivers for ever (returns only on a database error).
    pub async fn run(mut self, clients: &Clients) -> Result<(), String> {
        loop {
            let _ = tokio::time::timeout(POLL, self.doorbell.notified()).await;
            loop {
                let rows = bounded(
                    self.client
                        .query(&self.read, &[&(self.cursor as i64), &PAGE]),
                )
                .await?
                .map_err(|e| format!("reading change_log: {e}"))?;
                if rows.is_empty() {
                    break;
                }
                let mut batch = Batch::default();
                for row in &rows {
                    let id: i64 = row.get(0);
                    let json = change_json(id, row.get(1), row.get(2), row.get(3), row.get(4));
                    batch.push(id as u64, json.as_bytes());
                    self.cursor = id as u64;
                }
                batch.finish();
                clients.deliver(&batch, self.cursor);
                if rows.len() < PAGE as usize {
                    break;
                }
            }
        }
    }
}

/// The `change` message rowcast sends for an INSERT, DELETE or TRUNCATE (enough for
/// rowcast-load, which follows inserts).
fn change_json(id: i64, table: &str, op: &str, row: Option<&str>, committed_at: &str) -> String {
    // jsonb's text has spaces after `:` and `,`; rowcast sends compact JSON.
    let row = row
        .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
        .map(|value| format!(r#","row":{value}"#))
        .unwrap_or_default();
    let table = serde_json::Value::from(table);
    format!(
        r#"{{"type":"change","id":"{id}","table":{table},"op":"{op}"{row},"committed_at":"{committed_at}"}}"#
    )
}

async fn bounded<T>(call: impl std::future::Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(DEADLINE, call)
        .await
        .map_err(|_| format!("the database did not answer within {DEADLINE:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_messages_are_compact_json() {
        let json = change_json(
            42,
            "load_events",
            "INSERT",
            Some(r#"{"id": 7, "pad": "x", "sent_at_us": 1}"#),
            "2026-12-07T15:00:00.000001Z",
        );
        assert_eq!(
            json,
            r#"{"type":"change","id":"42","table":"load_events","op":"INSERT","row":{"id":7,"pad":"x","sent_at_us":1},"committed_at":"2026-12-07T15:00:00.000001Z"}"#
        );
    }
}
