//! An https front for the test server: it ends TLS with a certificate the test chooses and hands the plain bytes to
//! a [`TestServer`], so every file, fault and request log of the plain server works over https too.
//!
//! The certificates are made when first asked for: one test CA, whose PEM ([`test_ca_pem`]) a test gives to `sdm`
//! as its only root (`SSL_CERT_FILE`), and leaves signed by it or by themselves. Nothing depends on the machine's CA
//! store or on the internet.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    date_time_ymd,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

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

/// An https listener on `127.0.0.1:0` in front of a [`TestServer`]. A connection that does not open with a TLS
/// handshake is passed on as it is, so the same port serves http too and a test can redirect between the schemes
/// with host and port unchanged. Dropping it closes the listener and every connection.
pub struct TlsFront {
    addr: SocketAddr,
    task: JoinHandle<()>,
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
        TlsFront::start_with(backend, cert, false).await
    }

    /// A front with a [`Cert::Good`] certificate that, when the backend closes a connection (a cut body, say),
    /// closes its own without TLS's `close_notify`: as a crashed server or a cut link would.
    pub async fn start_abrupt(backend: &TestServer) -> TlsFront {
        TlsFront::start_with(backend, Cert::Good, true).await
    }

    async fn start_with(backend: &TestServer, cert: Cert, abrupt: bool) -> TlsFront {
        let (chain, key) = make(cert);
        let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![chain], key)
            .expect("server certificate");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(accept_loop(listener, acceptor, backend.addr(), abrupt));
        TlsFront { addr, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{}", self.addr, path)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    backend: SocketAddr,
    abrupt: bool,
) {
    // Owning the connections here means aborting this task (on drop) aborts them all.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                conns.spawn(relay(acceptor.clone(), stream, backend, abrupt));
            }
            Some(_) = conns.join_next() => {}
        }
    }
}

/// One connection: the handshake (unless the client speaks plain HTTP), then bytes both ways between the client and
/// `backend` until either side closes; `abrupt`: the TLS side is then dropped without `close_notify`.
async fn relay(acceptor: TlsAcceptor, stream: TcpStream, backend: SocketAddr, abrupt: bool) {
    // A TLS connection opens with a handshake record, content type 22.
    let mut first = [0u8; 1];
    let Ok(1) = stream.peek(&mut first).await else {
        return;
    };
    if first[0] != 22 {
        let mut stream = stream;
        if let Some(mut plain) = connect(backend).await {
            let _ = tokio::io::copy_bidirectional(&mut stream, &mut plain).await;
        }
        return;
    }
    let Ok(mut tls) = acceptor.accept(stream).await else {
        return;
    };
    let Some(mut plain) = connect(backend).await else {
        return;
    };
    if !abrupt {
        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
        return;
    }
    let (mut tls_in, mut tls_out) = tokio::io::split(tls);
    let (mut plain_in, mut plain_out) = plain.split();
    let up = tokio::io::copy(&mut tls_in, &mut plain_out);
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = plain_in.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            tls_out.write_all(&buf[..n]).await?;
            tls_out.flush().await?;
        }
    };
    // Whichever side ends first, both are dropped: no `close_notify` is sent.
    tokio::select! {
        _ = up => {}
        _ = down => {}
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
