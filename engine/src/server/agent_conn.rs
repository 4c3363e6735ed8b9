//! One site agent's WebSocket: the first frame is its hello (which site it
//! runs); after that the core sends it scheduler commands and it answers,
//! one JSON message per frame.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::api::Recheck;
use super::core::{AgentMsg, CoreMsg};
use super::App;
use crate::agent::wire::{self, FromAgent, ToAgent, AGENT_PROTOCOL};

pub(crate) async fn upgrade(
    State(app): State<App>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let check = Recheck::new(Method::GET, "/api/agent", &headers);
    ws.max_message_size(16 << 20)
        .on_upgrade(move |socket| serve(socket, app, check))
}

async fn refuse(socket: &mut WebSocket, reason: String) {
    tracing::warn!("refusing agent: {reason}");
    let msg = serde_json::to_string(&ToAgent::Refused { reason }).unwrap_or_default();
    let _ = socket.send(Message::Text(msg.into())).await;
    let _ = socket.send(Message::Close(None)).await;
}

async fn serve(mut socket: WebSocket, app: App, check: Recheck) {
    let first = match tokio::time::timeout(Duration::from_secs(30), socket.recv()).await {
        Ok(Some(Ok(Message::Text(t)))) => t,
        _ => return refuse(&mut socket, "expected a hello frame".into()).await,
    };
    let (host, version, site) = match wire::decode_from_agent(&first) {
        Ok(FromAgent::Hello {
            protocol,
            version,
            host,
            site,
        }) => {
            if protocol != AGENT_PROTOCOL {
                return refuse(
                    &mut socket,
                    format!(
                        "agent protocol {protocol} is not supported (server speaks \
                         {AGENT_PROTOCOL}); use the same beamflow version on both sides"
                    ),
                )
                .await;
            }
            (host, version, site)
        }
        Ok(_) => return refuse(&mut socket, "the first message must be hello".into()).await,
        Err(e) => return refuse(&mut socket, format!("bad hello frame: {e}")).await,
    };
    let name = site.name.clone();
    let conn = app.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel::<ToAgent>();
    let (ok_tx, ok_rx) = oneshot::channel();
    let hello = AgentMsg::Hello {
        conn,
        host,
        version,
        site,
        tx,
        reply: ok_tx,
    };
    if app.core.send(CoreMsg::Agent(hello)).is_err() {
        return;
    }
    match ok_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => return refuse(&mut socket, reason).await,
        Err(_) => return,
    }
    let (mut sink, mut stream) = socket.split();
    let welcome = serde_json::to_string(&ToAgent::Welcome).unwrap_or_default();
    if sink.send(Message::Text(welcome.into())).await.is_err() {
        let _ = app.core.send(CoreMsg::Agent(AgentMsg::Gone { conn }));
        return;
    }
    // Ends when the core drops the sender: another agent took the site over.
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let Ok(text) = serde_json::to_string(&m) else {
                continue;
            };
            if sink.send(Message::Text(text.into())).await.is_err() {
                return;
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    });
    let mut recheck = tokio::time::interval(Recheck::EVERY);
    loop {
        let frame = tokio::select! {
            frame = stream.next() => frame,
            _ = recheck.tick() => {
                if check.still_admitted(&app) {
                    continue;
                }
                tracing::warn!("agent of site `{name}`: its token is no longer accepted; closing the connection");
                break;
            }
        };
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            Some(Ok(_)) => continue,
        };
        match wire::decode_from_agent(&text) {
            Ok(msg) => {
                if app
                    .core
                    .send(CoreMsg::Agent(AgentMsg::From { conn, msg }))
                    .is_err()
                {
                    break;
                }
            }
            Err(e) => tracing::warn!("agent of site `{name}`: dropping a malformed frame: {e}"),
        }
    }
    let _ = app.core.send(CoreMsg::Agent(AgentMsg::Gone { conn }));
    writer.abort();
}
