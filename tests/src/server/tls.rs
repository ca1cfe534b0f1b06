//! An https front for the test server: it ends TLS with a certificate the test chooses and hands the plain bytes to
//! a [`TestServer`], so every file, fault and request log of the plain server works over https too.
//!
//! The certificates are made when first asked for: one test CA, whose PEM ([`test_ca_pem`]) a test gives to `sdm`
//! as its only root (`SSL_CERT_FILE`), and leaves signed by it or by themselves. Nothing depends on the machine's CA
//! store or on the internet.

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    date_time_ymd,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{HandshakeKind, ServerConfig, SupportedCipherSuite, version};
use tokio_rustls::server::TlsStream;

use super::{ServedFile, TestServer};

/// The certificate a [`TlsFront`] shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cert {
    /// Issued by the test CA for `localhost` and `127.0.0.1`, valid now.
    Good,
    /// For `localhost` and `127.0.0.1`, valid now, but signed by its own key.
    SelfSigned,
    /// Issued by the test CA, valid now, for another host name only.
    WrongHost,
    /// Issued by the test CA for `localhost` and `127.0.0.1`, expired in 2021.
    Expired,
}

/// The test CA: its key, the parameters it signs with, and its certificate in PEM.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    der: CertificateDer<'static>,
}

fn ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, "SDM test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    })
}

/// The test CA's certificate in PEM: the one root that makes [`Cert::Good`] trusted.
pub fn test_ca_pem() -> &'static str {
    &ca().pem
}

/// The test CA's certificate in DER, for a client in the test's own process (`sdm::engine::probe::trust_extra_roots`).
pub fn test_ca_der() -> CertificateDer<'static> {
    ca().der.clone()
}

/// A certificate of kind `cert` and its key.
fn make(cert: Cert) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let names = match cert {
        Cert::WrongHost => vec!["not-this-host.example".to_string()],
        _ => vec!["localhost".to_string(), "127.0.0.1".to_string()],
    };
    let mut params = CertificateParams::new(names).expect("leaf params");
    params
        .distinguished_name
        .push(DnType::CommonName, format!("SDM test {cert:?}"));
    if cert == Cert::Expired {
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().expect("leaf key");
    let signed = match cert {
        Cert::SelfSigned => params.self_signed(&key),
        _ => params.signed_by(&key, &ca().issuer),
    }
    .expect("leaf certificate");
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    (signed.der().clone(), der)
}

/// How a [`TlsFront`] behaves: its certificate, and the unusual things a server may do.
#[derive(Debug, Clone, Copy)]
pub struct FrontSpec {
    pub cert: Cert,
    /// When the backend closes a connection (a cut body, say), close the TLS side without `close_notify`, as a
    /// crashed server or a cut link would.
    pub abrupt: bool,
    /// Agree to this cipher suite only (and so to its protocol version only).
    pub suite: Option<SupportedCipherSuite>,
    /// After every this many bytes sent, refresh the keys: a TLS 1.3 `KeyUpdate` that asks the client for its own.
    pub key_update_every: Option<usize>,
}

impl FrontSpec {
    /// A front showing `cert`, otherwise ordinary.
    pub fn new(cert: Cert) -> FrontSpec {
        FrontSpec {
            cert,
            abrupt: false,
            suite: None,
            key_update_every: None,
        }
    }
}

/// What a [`TlsFront`] saw.
#[derive(Debug, Clone, Default)]
pub struct FrontLog {
    /// Each handshake's kind (full, or resumed from a ticket), in order.
    pub handshakes: Vec<HandshakeKind>,
    /// Key updates sent.
    pub key_updates: usize,
    /// TLS errors on connections past their handshake: records the client sent that did not open, say.
    pub errors: Vec<String>,
}

/// An https listener on `127.0.0.1:0` in front of a [`TestServer`]. A connection that does not open with a TLS
/// handshake is passed on as it is, so the same port serves http too and a test can redirect between the schemes
/// with host and port unchanged. Dropping it closes the listener and every connection.
pub struct TlsFront {
    addr: SocketAddr,
    task: JoinHandle<()>,
    log: Arc<Mutex<FrontLog>>,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsFront {
    /// Listen on `127.0.0.1:0`, show `cert` in each handshake, and pass each connection that completes one on to
    /// `backend`. A client that refuses the certificate never reaches `backend` (its request log stays empty).
    pub async fn start(backend: &TestServer, cert: Cert) -> TlsFront {
        TlsFront::start_spec(backend, FrontSpec::new(cert)).await
    }

    /// A front with a [`Cert::Good`] certificate that closes abruptly ([`FrontSpec::abrupt`]).
    pub async fn start_abrupt(backend: &TestServer) -> TlsFront {
        let spec = FrontSpec {
            abrupt: true,
            ..FrontSpec::new(Cert::Good)
        };
        TlsFront::start_spec(backend, spec).await
    }

    /// A front as `spec` says.
    pub async fn start_spec(backend: &TestServer, spec: FrontSpec) -> TlsFront {
        let (chain, key) = make(spec.cert);
        let mut provider = ring::default_provider();
        let versions = match spec.suite {
            Some(suite) => {
                provider.cipher_suites = vec![suite];
                vec![suite.version()]
            }
            None => vec![&version::TLS13, &version::TLS12],
        };
        let config = ServerConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&versions)
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![chain], key)
            .expect("server certificate");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let log = Arc::new(Mutex::new(FrontLog::default()));
        let front = Front {
            acceptor,
            backend: backend.addr(),
            spec,
            log: log.clone(),
        };
        let task = tokio::spawn(accept_loop(listener, Arc::new(front)));
        TlsFront { addr, task, log }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{}", self.addr, path)
    }

    /// What this front saw so far.
    pub fn log(&self) -> FrontLog {
        self.log.lock().expect("front log").clone()
    }
}

/// What every connection of one front shares.
struct Front {
    acceptor: TlsAcceptor,
    backend: SocketAddr,
    spec: FrontSpec,
    log: Arc<Mutex<FrontLog>>,
}

impl Front {
    fn note(&self, f: impl FnOnce(&mut FrontLog)) {
        f(&mut self.log.lock().expect("front log"));
    }
}

async fn accept_loop(listener: TcpListener, front: Arc<Front>) {
    // Owning the connections here means aborting this task (on drop) aborts them all.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                conns.spawn(relay(front.clone(), stream));
            }
            Some(_) = conns.join_next() => {}
        }
    }
}

/// One connection: the handshake (unless the client speaks plain HTTP), then bytes both ways between the client and
/// the backend until either side closes.
async fn relay(front: Arc<Front>, stream: TcpStream) {
    // A TLS connection opens with a handshake record, content type 22.
    let mut first = [0u8; 1];
    let Ok(1) = stream.peek(&mut first).await else {
        return;
    };
    if first[0] != 22 {
        let mut stream = stream;
        if let Some(mut plain) = connect(front.backend).await {
            let _ = tokio::io::copy_bidirectional(&mut stream, &mut plain).await;
        }
        return;
    }
    let Ok(tls) = front.acceptor.accept(stream).await else {
        return;
    };
    if let Some(kind) = tls.get_ref().1.handshake_kind() {
        front.note(|log| log.handshakes.push(kind));
    }
    let Some(plain) = connect(front.backend).await else {
        return;
    };
    let relayed = match (front.spec.abrupt, front.spec.key_update_every) {
        (true, _) => relay_abrupt(tls, plain).await,
        (false, Some(every)) => relay_updating(&front, tls, plain, every).await,
        (false, None) => {
            let (mut tls, mut plain) = (tls, plain);
            tokio::io::copy_bidirectional(&mut tls, &mut plain)
                .await
                .map(|_| ())
        }
    };
    // A client may drop a connection without `close_notify` (sdm does, once it has what it asked for); what counts
    // is a TLS error: a record that did not open, a message out of place.
    if let Err(e) = relayed
        && e.kind() == ErrorKind::InvalidData
    {
        front.note(|log| log.errors.push(e.to_string()));
    }
}

/// Relay until either side ends; the TLS side is then dropped without `close_notify`.
async fn relay_abrupt(tls: TlsStream<TcpStream>, mut plain: TcpStream) -> io::Result<()> {
    let (mut tls_in, mut tls_out) = tokio::io::split(tls);
    let (mut plain_in, mut plain_out) = plain.split();
    let up = tokio::io::copy(&mut tls_in, &mut plain_out);
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = plain_in.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, io::Error>(());
            }
            tls_out.write_all(&buf[..n]).await?;
            tls_out.flush().await?;
        }
    };
    // Whichever side ends first, both are dropped: no `close_notify` is sent.
    tokio::select! {
        r = up => r.map(|_| ()),
        r = down => r,
    }
}

/// Relay until either side ends, refreshing the keys after every `every` bytes sent to the client.
async fn relay_updating(
    front: &Front,
    mut tls: TlsStream<TcpStream>,
    mut plain: TcpStream,
    every: usize,
) -> io::Result<()> {
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 64 * 1024];
    let mut since = 0;
    loop {
        tokio::select! {
            n = tls.read(&mut up) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                plain.write_all(&up[..n]).await?;
            }
            n = plain.read(&mut down) => {
                let n = n?;
                if n == 0 {
                    return tls.shutdown().await;
                }
                for piece in down[..n].chunks(every) {
                    tls.write_all(piece).await?;
                    since += piece.len();
                    if since >= every {
                        since = 0;
                        tls.get_mut().1.refresh_traffic_keys().map_err(io::Error::other)?;
                        front.note(|log| log.key_updates += 1);
                    }
                }
                tls.flush().await?;
            }
        }
    }
}

impl ServedFile {
    /// The same file, its URL through `front` (https, the front's port).
    pub fn via(mut self, front: &TlsFront) -> ServedFile {
        self.url = front.url(&self.path);
        self
    }
}

async fn connect(backend: SocketAddr) -> Option<TcpStream> {
    let plain = TcpStream::connect(backend).await.ok()?;
    let _ = plain.set_nodelay(true);
    Some(plain)
}
