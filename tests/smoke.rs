//! The harness itself: a database, a gateway, one change on both transports.

mod support;

use support::*;

#[tokio::test]
async fn a_sql_insert_reaches_websocket_and_sse_clients() {
    let db = TestDb::new();
    let server = TestServer::start(db.config()).await;
    let mut ws = WsClient::connect(server.addr, "").await;
    let (_, ready) = ws.until_ready().await;
    assert_eq!(ready["replayed"], 0);
    let mut sse = SseClient::connect(server.addr, "", &[]).await;
    assert_eq!(sse.status, 200);
    sse.until_ready().await;
    let client = db.client().await;
    let id = insert_order(&client, "Ann", "Book").await;
    let change = ws.changes(1).await.remove(0);
    assert_eq!(change["op"], "INSERT");
    assert_eq!(change["row"]["id"], id);
    let event = sse.changes(1).await.remove(0);
    assert_eq!(event.json(), change);
    assert_eq!(event.id.as_deref(), change["id"].as_str());
    let list = http(server.addr, "GET", "/api/orders", &[], None).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.header("x-event-id"), change["id"].as_str());
}
