//! One pilot's WebSocket: the first frame must start with `hello`; after that,
//! frames in either direction carry JSON arrays of messages.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::api::Recheck;
use super::core::CoreMsg;
use super::App;
use crate::api::{AttemptId, PilotId};
use crate::protocol::{FromPilot, ToPilot, PROTOCOL_VERSION};

pub(crate) async fn upgrade(
    State(app): State<App>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let check = Recheck::new(Method::GET, "/api/pilot", &headers);
    ws.max_message_size(256 << 20)
        .on_upgrade(move |socket| serve(socket, app, check))
}

async fn refuse(socket: &mut WebSocket, reason: String) {
    tracing::warn!("refusing pilot: {reason}");
    let msg = serde_json::to_string(&vec![ToPilot::Refused { reason }]).unwrap_or_default();
    let _ = socket.send(Message::Text(msg.into())).await;
    let _ = socket.send(Message::Close(None)).await;
}

async fn serve(mut socket: WebSocket, app: App, check: Recheck) {
    let first = match tokio::time::timeout(Duration::from_secs(30), socket.recv()).await {
        Ok(Some(Ok(Message::Text(t)))) => t,
        _ => return refuse(&mut socket, "expected a hello frame".into()).await,
    };
    let mut msgs: Vec<FromPilot> = match crate::protocol::decode_from_pilot(&first) {
        Ok(m) => m,
        Err(e) => return refuse(&mut socket, format!("bad hello frame: {e}")).await,
    };
    if msgs.is_empty() {
        return refuse(&mut socket, "empty hello frame".into()).await;
    }
    let FromPilot::Hello {
        protocol,
        pilot_id,
        info,
        held,
    } = msgs.remove(0)
    else {
        return refuse(&mut socket, "the first message must be hello".into()).await;
    };
    if protocol != PROTOCOL_VERSION {
        return refuse(&mut socket, format!("protocol {protocol} is not supported (server speaks {PROTOCOL_VERSION}); use the same beamflow version on both sides")).await;
    }
    let conn = app.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<ToPilot>>();
    let (id_tx, id_rx) = oneshot::channel();
    if app
        .core
        .send(CoreMsg::PilotHello {
            conn,
            pilot_id: pilot_id.map(PilotId),
            info,
            held: held.into_iter().map(AttemptId).collect(),
            tx,
            reply: id_tx,
        })
        .is_err()
    {
        return;
    }
    let (mut sink, mut stream) = socket.split();
    let writer = tokio::spawn(async move {
        while let Some(mut batch) = rx.recv().await {
            while let Ok(more) = rx.try_recv() {
                batch.extend(more);
            }
            let refused = batch.iter().any(|m| matches!(m, ToPilot::Refused { .. }));
            let Ok(text) = serde_json::to_string(&batch) else {
                break;
            };
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
            if refused {
                let _ = sink.send(Message::Close(None)).await;
                break;
            }
        }
    });
    let Ok(pilot) = id_rx.await else {
        writer.abort();
        return;
    };
    if !msgs.is_empty() {
        let _ = app.core.send(CoreMsg::PilotMsgs { pilot, conn, msgs });
    }
    let mut recheck = tokio::time::interval(Recheck::EVERY);
    loop {
        let frame = tokio::select! {
            frame = stream.next() => frame,
            _ = recheck.tick() => {
                if check.still_admitted(&app) {
                    continue;
                }
                // A revoked token (or the old home token after its grace):
                // the pilot reconnects with what its token file holds now.
                tracing::warn!("pilot {pilot}: its token is no longer accepted; closing the connection");
                break;
            }
        };
        let Some(frame) = frame else {
            break;
        };
        let text = match frame {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        match crate::protocol::decode_from_pilot(&text) {
            Ok(msgs) => {
                if app
                    .core
                    .send(CoreMsg::PilotMsgs { pilot, conn, msgs })
                    .is_err()
                {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!("pilot {pilot}: dropping malformed frame: {e}");
            }
        }
    }
    let _ = app.core.send(CoreMsg::PilotGone { pilot, conn });
    writer.abort();
}
