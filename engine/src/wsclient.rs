//! The client end of the server's WebSockets (pilots' `/api/pilot`, agents'
//! `/api/agent`): TCP, then TLS trusting only the pinned certificate, then
//! the upgrade with the bearer token — so a token never reaches a server
//! that is not the one pinned.

use std::sync::Arc;

use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The WebSocket URL of `path` on the server at `url` (http → ws, https → wss).
pub fn ws_url(url: &str, path: &str) -> String {
    let base = url.trim_end_matches('/');
    let base = base
        .strip_prefix("https://")
        .map(|r| format!("wss://{r}"))
        .or_else(|| base.strip_prefix("http://").map(|r| format!("ws://{r}")))
        .unwrap_or_else(|| base.to_string());
    format!("{base}{path}")
}

/// Why a connection did not open: worth another try, or not.
pub enum ConnectError {
    Retry(String),
    Fatal(String),
}

/// The pilot's end of the connection: plain TCP or TLS over it.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Opens the WebSocket. For wss:// the TLS handshake comes first and
/// trusts only the pinned certificate, so the token is sent to nobody else;
/// a server presenting another certificate is fatal, not retried.
pub async fn connect(
    url: &str,
    trust: Option<&Arc<crate::tls::Trust>>,
    token: &str,
) -> Result<tokio_tungstenite::WebSocketStream<Box<dyn Io>>, ConnectError> {
    let mut req = url
        .into_client_request()
        .map_err(|e| ConnectError::Fatal(format!("bad server url {url}: {e}")))?;
    let auth = format!("Bearer {token}")
        .parse()
        .map_err(|_| ConnectError::Fatal("the token is not a valid header value".into()))?;
    req.headers_mut().insert("authorization", auth);
    let secure = url.starts_with("wss://");
    let host = req
        .uri()
        .host()
        .ok_or_else(|| ConnectError::Fatal(format!("bad server url {url}: no host")))?
        .to_string();
    let port = req
        .uri()
        .port_u16()
        .unwrap_or(if secure { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| ConnectError::Retry(format!("{host}:{port}: {e}")))?;
    // Small frames (one result, one task) must leave at once.
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = if secure {
        let trust = trust.ok_or_else(|| {
            ConnectError::Fatal(format!(
                "{url} serves TLS and no certificate is pinned: pass --server-cert (the \
                 server's BEAMFLOW_HOME/{})",
                crate::tls::CERT_FILE
            ))
        })?;
        match crate::tls::connect(tcp, &host, trust).await {
            Ok(tls) => Box::new(tls),
            Err(e) => {
                return Err(match crate::tls::refusal(&e) {
                    Some(r) => ConnectError::Fatal(r.to_string()),
                    None => ConnectError::Retry(format!("TLS with {host}:{port}: {e}")),
                })
            }
        }
    } else {
        Box::new(tcp)
    };
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(256 << 20));
    match tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) if resp.status() == 401 => Err(
            ConnectError::Fatal(format!("the server at {url} rejected the token (401)")),
        ),
        Err(e) => Err(ConnectError::Retry(e.to_string())),
    }
}
