//! TLS between the server and its clients and pilots.
//!
//! A facility network is shared: the token, flows and results must not
//! cross it in clear text, and a pilot must not hand its token to whatever
//! answers on the server's port. So the server serves HTTPS and WSS with a
//! certificate it generates on first start (`HOME/tls/cert.pem`, the key
//! beside it with mode 0600) or one the operator supplies, and clients and
//! pilots trust exactly that certificate: its SHA-256 fingerprint is pinned,
//! no certificate authority is involved, and a server presenting any other
//! certificate is refused with both fingerprints named. The pin is the
//! identity, so the name a client dials (an alias, an address, a tunnel)
//! need not be in the certificate.
//!
//! rustls with the `ring` provider, chosen explicitly everywhere: no
//! process-wide default provider is needed or assumed.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};

/// The generated certificate and key, under the home.
pub const CERT_FILE: &str = "tls/cert.pem";
pub const KEY_FILE: &str = "tls/key.pem";

/// A client that opened a connection has this long to finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once; more connections wait in the kernel's
/// backlog, so a flood of silent connections cannot exhaust the server.
const MAX_HANDSHAKES: usize = 256;

/// The generated certificate of the server whose home this is.
pub fn home_cert(home: &Path) -> PathBuf {
    home.join(CERT_FILE)
}

/// How the server does TLS (`beamflow server` flags).
#[derive(Clone, Debug)]
pub enum ServerTls {
    /// The certificate in `HOME/tls/`, generated on first start with these
    /// names besides localhost, 127.0.0.1, ::1 and the host name.
    Generated { names: Vec<String> },
    /// The operator's certificate (PEM, its chain after it) and key.
    Files { cert: PathBuf, key: PathBuf },
    /// Plain HTTP, for a server behind a proxy that terminates TLS.
    Off,
}

impl Default for ServerTls {
    fn default() -> Self {
        ServerTls::Generated { names: vec![] }
    }
}

/// The certificate the server presents, and its key.
pub struct Identity {
    /// Where clients on this machine (or sharing its filesystem) find it.
    pub cert_path: PathBuf,
    pub certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// SHA-256 of the first certificate, the server's own.
    pub fingerprint: String,
}

impl Identity {
    /// What a client of this server trusts.
    pub fn trust(&self) -> Arc<Trust> {
        Arc::new(Trust::new(self.cert_path.clone(), self.certs.clone()))
    }

    /// The rustls configuration serving this certificate (HTTP/1.1: the
    /// API, the web page and the pilots' WebSocket upgrades).
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(self.certs.clone(), self.key.clone_key())
            .with_context(|| {
                format!(
                    "{}: the certificate and its key do not go together",
                    self.cert_path.display()
                )
            })?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of a certificate (DER), as `openssl x509 -fingerprint -sha256`
/// prints it, so an operator can compare the two.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The server's certificate and key: `None` when TLS is off. A generated
/// certificate is made on first start and reused after, so pilots that
/// pinned it keep connecting across restarts.
pub fn identity(
    home: &Path,
    tls: &ServerTls,
    bind: SocketAddr,
) -> anyhow::Result<Option<Identity>> {
    let (cert, key) = match tls {
        ServerTls::Off => {
            tracing::warn!(
                "TLS is off (--no-tls): the token, flows and results cross the network in clear \
                 text; run so only behind a proxy that terminates TLS, or on loopback"
            );
            return Ok(None);
        }
        ServerTls::Files { cert, key } => (absolute(cert)?, absolute(key)?),
        ServerTls::Generated { names } => {
            // Absolute: server.json names it to clients in other directories.
            let cert = absolute(&home.join(CERT_FILE))?;
            let key = absolute(&home.join(KEY_FILE))?;
            match (cert.exists(), key.exists()) {
                (true, true) => {}
                (false, false) => generate(&cert, &key, &san_names(names, bind))?,
                (has_cert, _) => {
                    let (there, missing) = if has_cert {
                        (&cert, &key)
                    } else {
                        (&key, &cert)
                    };
                    return Err(anyhow!(
                        "{} is there but {} is not: remove {} to generate a new certificate \
                         (pilots on other hosts then need the new cert.pem)",
                        there.display(),
                        missing.display(),
                        there.display()
                    ));
                }
            }
            (cert, key)
        }
    };
    let certs = read_certs(&cert)?;
    warn_if_readable(&key);
    let key_der = PrivateKeyDer::from_pem_file(&key)
        .map_err(|e| anyhow!("{}: not a PEM private key: {e}", key.display()))?;
    let id = Identity {
        fingerprint: fingerprint(&certs[0]),
        cert_path: cert,
        certs,
        key: key_der,
    };
    if let ServerTls::Generated { names } = tls {
        let missing: Vec<&String> = names
            .iter()
            .filter(|n| !contains_name(&id.certs[0], n))
            .collect();
        if !missing.is_empty() {
            tracing::warn!(
                "{} was made without {missing:?}: pilots and clients pin the certificate itself \
                 and connect under any name, but browsers check names; remove {} and restart \
                 to make one with them (pilots on other hosts then need the new cert.pem)",
                id.cert_path.display(),
                id.cert_path.parent().unwrap_or(Path::new(".")).display()
            );
        }
    }
    Ok(Some(id))
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("{}: no such path", p.display()))
}

/// Whether `name` (a DNS name or an IP address) is among the certificate's
/// names: the DER holds DNS names as their bytes and addresses as raw octets.
fn contains_name(der: &[u8], name: &str) -> bool {
    let needle = match name.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => a.octets().to_vec(),
        Ok(std::net::IpAddr::V6(a)) => a.octets().to_vec(),
        Err(_) => name.as_bytes().to_vec(),
    };
    der.windows(needle.len()).any(|w| w == needle.as_slice())
}

/// localhost, the loopback addresses, this host's name, a specific bound
/// address, and the operator's names; each once.
fn san_names(extra: &[String], bind: SocketAddr) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
        crate::host::hostname(),
    ];
    let ip = bind.ip();
    if !ip.is_unspecified() && !ip.is_loopback() {
        names.push(ip.to_string());
    }
    names.extend(extra.iter().map(|n| n.trim().to_string()));
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| !n.is_empty() && seen.insert(n.clone()));
    names
}

fn generate(cert_path: &Path, key_path: &Path, names: &[String]) -> anyhow::Result<()> {
    let dir = cert_path.parent().expect("a file under the home");
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| anyhow!("--tls-name: {e} (names are host names or IP addresses)"))?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(
        rcgen::DnType::CommonName,
        format!("beamflow server on {}", crate::host::hostname()),
    );
    params.distinguished_name = dn;
    // Pilots pin the certificate and ignore its dates; the dates are for
    // browsers and audits: valid from yesterday (clocks differ) for ten years.
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    let key = rcgen::KeyPair::generate().context("generating the server's TLS key")?;
    let cert = params
        .self_signed(&key)
        .context("generating the server's TLS certificate")?;
    crate::home::write_private(key_path, &key.serialize_pem())?;
    std::fs::write(cert_path, cert.pem())
        .with_context(|| format!("{}: cannot write", cert_path.display()))?;
    tracing::info!(
        "generated the server's TLS certificate {} (SHA-256 {}) for {}",
        cert_path.display(),
        fingerprint(cert.der()),
        names.join(", ")
    );
    Ok(())
}

fn warn_if_readable(key: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(key) {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "{} is mode {mode:o}: others can read the server's private key (chmod 600 it)",
                key.display()
            );
        }
    }
}

/// The certificates of a PEM file, in order; at least one.
fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let text = std::fs::read(path)
        .with_context(|| format!("{}: cannot read the certificate", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{}: not a PEM certificate: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(anyhow!(
            "{}: no certificate in it (expected PEM, -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

/// What a client trusts: the certificates of one file. The server is
/// accepted when it presents one of them; failing that, when its chain
/// leads to one of them, for a site whose proxy holds a certificate from
/// the site's own authority (`--server-cert` pointing at that authority).
#[derive(Debug)]
pub struct Trust {
    /// The file the certificates came from (named in refusals).
    pub path: PathBuf,
    certs: Vec<CertificateDer<'static>>,
    fingerprints: Vec<String>,
}

impl Trust {
    fn new(path: PathBuf, certs: Vec<CertificateDer<'static>>) -> Trust {
        let fingerprints = certs.iter().map(|c| fingerprint(c)).collect();
        Trust {
            path,
            certs,
            fingerprints,
        }
    }

    /// Trusts the certificates in `path` (PEM).
    pub fn load(path: &Path) -> anyhow::Result<Trust> {
        Ok(Trust::new(path.to_path_buf(), read_certs(path)?))
    }

    /// The fingerprint of the file's first certificate, the server's own.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprints[0]
    }

    /// Whether `fp` is the fingerprint of one of the trusted certificates.
    pub fn pins(&self, fp: &str) -> bool {
        self.fingerprints.iter().any(|f| f.eq_ignore_ascii_case(fp))
    }

    /// A rustls client configuration that accepts only these certificates.
    pub fn client_config(self: &Arc<Self>) -> rustls::ClientConfig {
        let provider = provider();
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(self.certs.iter().cloned());
        let chain = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .ok();
        let verifier = Pinned {
            trust: self.clone(),
            chain,
            provider: provider.clone(),
        };
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        cfg
    }
}

/// A server that presented a certificate the client does not trust.
#[derive(Debug)]
pub struct Refused {
    pub host: String,
    pub seen: String,
    pub expected: String,
    pub file: PathBuf,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refusing the server at {}: it presented the certificate with SHA-256 {}, but the \
             pinned certificate {} has SHA-256 {} (another server is answering there, or the \
             server has a new certificate: then copy its BEAMFLOW_HOME/{CERT_FILE} and pass \
             it with --server-cert)",
            self.host,
            self.seen,
            self.file.display(),
            self.expected
        )
    }
}

impl std::error::Error for Refused {}

/// The [`Refused`] somewhere in an error's chain (through the I/O and
/// rustls errors that carry it).
pub fn refusal<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<Refused>() {
            return Some(r);
        }
        if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o))) =
            e.downcast_ref::<rustls::Error>()
        {
            return o.0.downcast_ref::<Refused>();
        }
        // An I/O error's source() skips the error it wraps: look inside.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(r) = refusal(inner) {
                return Some(r);
            }
        }
        cur = e.source();
    }
    None
}

/// The innermost message of an error chain (what actually went wrong,
/// where reqwest's own message says only that a request failed).
pub fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    loop {
        if let Some(inner) = cur
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            return inner.to_string();
        }
        match cur.source() {
            Some(s) => cur = s,
            None => return cur.to_string(),
        }
    }
}

#[derive(Debug)]
struct Pinned {
    trust: Arc<Trust>,
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = fingerprint(end_entity);
        if self.trust.pins(&seen) {
            return Ok(ServerCertVerified::assertion());
        }
        if let Some(chain) = &self.chain {
            let by_chain = chain.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            );
            if by_chain.is_ok() {
                return by_chain;
            }
        }
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(Refused {
                host: server_name.to_str().into_owned(),
                seen,
                expected: self.trust.fingerprint().to_string(),
                file: self.trust.path.clone(),
            }))),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Opens a TLS connection to `host` over `tcp`, trusting only `trust`.
pub async fn connect(
    tcp: TcpStream,
    host: &str,
    trust: &Arc<Trust>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = ServerName::try_from(host.trim_matches(|c| c == '[' || c == ']').to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(Arc::new(trust.client_config()))
        .connect(name, tcp)
        .await
}

/// The server's listener with TLS in front: connections are accepted and
/// their handshakes run concurrently (a slow or silent client holds up no
/// other), and only finished handshakes reach the HTTP server.
pub struct TlsListener {
    rx: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new<L>(mut inner: L, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self>
    where
        L: axum::serve::Listener<Io = TcpStream, Addr = SocketAddr>,
    {
        let addr = inner.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let pending = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let task = tokio::spawn(async move {
            loop {
                let Ok(permit) = pending.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = inner.accept().await;
                let tx = tx.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::info!("TLS handshake with {peer} failed: {e}"),
                        Err(_) => tracing::info!(
                            "TLS handshake with {peer} unfinished after {HANDSHAKE_TIMEOUT:?}: closed"
                        ),
                    }
                });
            }
        });
        Ok(TlsListener { rx, addr, task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // The accepting task owns the socket: stopping it closes the port.
        self.task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_deduplicated_and_a_specific_address_added() {
        let n = san_names(
            &["login01".into(), "localhost".into(), " ".into()],
            "10.0.0.5:7878".parse().unwrap(),
        );
        assert_eq!(n[..3], ["localhost", "127.0.0.1", "::1"]);
        assert!(n.contains(&"10.0.0.5".to_string()) && n.contains(&"login01".to_string()));
        assert_eq!(n.iter().filter(|x| *x == "localhost").count(), 1);
        assert!(!n.iter().any(|x| x.is_empty()));
    }

    #[test]
    fn a_generated_certificate_is_reused_and_names_what_it_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let tls = ServerTls::Generated {
            names: vec!["beamline-gw".into(), "10.9.8.7".into()],
        };
        let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let a = identity(dir.path(), &tls, bind).unwrap().unwrap();
        assert!(contains_name(&a.certs[0], "beamline-gw"));
        assert!(contains_name(&a.certs[0], "10.9.8.7"));
        assert!(!contains_name(&a.certs[0], "elsewhere"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        a.server_config().unwrap();
        let b = identity(dir.path(), &ServerTls::default(), bind)
            .unwrap()
            .unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.fingerprint.len(), 32 * 3 - 1);
        // Half a pair is an error that names both files.
        std::fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
        let e = identity(dir.path(), &ServerTls::default(), bind)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("cert.pem is there but") && e.contains("key.pem"),
            "{e}"
        );
    }

    #[test]
    fn a_file_without_a_certificate_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.pem");
        std::fs::write(&p, "hello\n").unwrap();
        let e = Trust::load(&p).unwrap_err().to_string();
        assert!(e.contains("c.pem: no certificate"), "{e}");
        let e = Trust::load(&dir.path().join("none.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.pem: cannot read"), "{e}");
    }
}
