//! Relayed pilot connections: where compute nodes cannot reach the server
//! (no route out of the facility), they reach the agent on the login node,
//! which copies bytes both ways. TLS stays end to end — the pilot pins the
//! server's certificate and the agent sees only ciphertext.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

/// Accepts on `listener` and forwards each connection to `server`
/// (host:port) until the process ends.
pub async fn serve(listener: TcpListener, server: String) {
    loop {
        let (mut inbound, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("relay: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let server = server.clone();
        tokio::spawn(async move {
            let _ = inbound.set_nodelay(true);
            match TcpStream::connect(&server).await {
                Ok(mut out) => {
                    let _ = out.set_nodelay(true);
                    if let Err(e) = tokio::io::copy_bidirectional(&mut inbound, &mut out).await {
                        tracing::debug!("relay {from} → {server}: {e}");
                    }
                }
                Err(e) => tracing::warn!("relay: pilot at {from}: cannot reach {server}: {e}"),
            }
        });
    }
}

/// The server's `host:port` from its URL (`https://h:p/...`).
pub fn server_addr(url: &str) -> Result<String, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url}: not an http:// or https:// URL"))?;
    let hostport = rest.split('/').next().unwrap_or_default();
    if hostport.is_empty() {
        return Err(format!("{url}: no host"));
    }
    let has_port = hostport
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.ends_with('[') && !p.contains(']') && p.parse::<u16>().is_ok());
    Ok(if has_port {
        hostport.to_string()
    } else {
        format!("{hostport}:{}", if scheme == "https" { 443 } else { 80 })
    })
}

/// The URL pilots use to reach the server through a relay on `addr`.
pub fn relayed_url(server_url: &str, addr: SocketAddr) -> String {
    let scheme = if server_url.starts_with("https://") {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{addr}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_from_urls() {
        assert_eq!(
            server_addr("https://h.example:8443").unwrap(),
            "h.example:8443"
        );
        assert_eq!(server_addr("https://h.example/x").unwrap(), "h.example:443");
        assert_eq!(server_addr("http://10.0.0.1").unwrap(), "10.0.0.1:80");
        assert_eq!(server_addr("https://[::1]:9000").unwrap(), "[::1]:9000");
        assert!(server_addr("h.example:1").is_err());
    }

    #[tokio::test]
    async fn bytes_cross_the_relay_both_ways() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let far = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let far_addr = far.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = far.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            buf.reverse();
            s.write_all(&buf).await.unwrap();
        });
        let near = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near_addr = near.local_addr().unwrap();
        tokio::spawn(serve(near, far_addr.to_string()));
        let mut c = TcpStream::connect(near_addr).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"olleh");
    }
}
