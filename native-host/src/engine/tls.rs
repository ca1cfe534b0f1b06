//! TLS for the own-socket path ([`super::splice`]) over https: rustls's unbuffered API on our own `TcpStream`.
//!
//! Through reqwest every plaintext byte is copied twice in user space (rustls's queue, then hyper's buffer) and rustls
//! reads the socket one 16 KiB record at a time. Here one socket read takes many records into a buffer we own, rustls
//! decrypts them in place there, and their plaintext is gathered into one buffer from which the body is written to
//! the part file with one `pwrite` per stage (BENCHMARKS.md, "HTTPS (issue 18)", has the numbers). rustls 0.23 still
//! copies each record's plaintext into a `Vec` of its own, so two copies remain (its, then ours into the gathering
//! buffer), both of a 16 KiB record still in the cache.
//!
//! The configuration is reqwest's ([`super::probe::tls_config`]): the same verifier, whose CA store is read once per
//! process, so a bad certificate is refused here with the same error; ALPN offers `http/1.1` only. What rustls
//! refuses is an error of kind `Other` wrapping the `rustls::Error` (a certificate's problem is told apart by the
//! caller). A connection that ends without `close_notify` ends its plaintext there: a body cut short that way is
//! short, never filled with unauthenticated bytes, and the caller retries it.

use std::io::{self, ErrorKind};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use tokio::net::TcpStream;

/// How much one socket read may take: four records. Together with [`PLAIN_MAX`] this is most of a connection's memory
/// (peak RSS is a target); halving both cost about 15 % more CPU, doubling both saved nothing measurable.
const READ_SIZE: usize = 64 * 1024;
/// The most received bytes held while a record is incomplete (a handshake message may span records).
const INCOMING_MAX: usize = 256 * 1024;
/// The most plaintext gathered for one stage.
const PLAIN_MAX: usize = 64 * 1024;
/// The most plaintext one record carries (RFC 8446 §5.1).
const MAX_RECORD: usize = 16 * 1024;

/// One TLS session on a connection, past its handshake.
pub struct Tls {
    conn: UnbufferedClientConnection,
    /// Received bytes: `incoming[start..filled]` are not processed yet.
    incoming: Vec<u8>,
    start: usize,
    filled: usize,
    /// Decrypted bytes not yet taken: `plain[plain_at..]`.
    plain: Vec<u8>,
    plain_at: usize,
    /// The peer closed (`close_notify`, or the socket's end): no more plaintext will come.
    ended: bool,
    /// Records to send, encoded or encrypted.
    out: Vec<u8>,
    /// `out` holds the application data of a [`Tls::send`].
    out_has_app_data: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("held", &self.held())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// What one turn of rustls's state machine asks for next.
enum Step {
    /// Something was done (a record decrypted, a handshake message encoded): turn again.
    Again,
    /// `out` holds records to send.
    Send,
    /// More bytes from the peer are needed.
    Read,
    /// The handshake is over and nothing received is left to decrypt.
    Idle,
    /// The peer closed the session.
    Closed,
}

impl Tls {
    /// A session with `name` (the URL's host) on `stream`, once its handshake is done.
    pub async fn connect(
        stream: &TcpStream,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<Tls> {
        let conn = UnbufferedClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut tls = Tls {
            conn,
            incoming: vec![0; READ_SIZE],
            start: 0,
            filled: 0,
            // A turn stops once `PLAIN_MAX` is held, so one record more is all the buffer ever holds.
            plain: Vec::with_capacity(PLAIN_MAX + MAX_RECORD),
            plain_at: 0,
            ended: false,
            out: Vec::new(),
            out_has_app_data: false,
        };
        loop {
            match tls.step(None)? {
                Step::Again => {}
                Step::Send => tls.flush(stream).await?,
                Step::Read => {
                    if !tls.read_more(stream).await? {
                        return Err(closed(
                            "the server closed the connection during the TLS handshake",
                        ));
                    }
                }
                Step::Idle => return Ok(tls),
                Step::Closed => {
                    return Err(closed(
                        "the server closed the TLS session during its handshake",
                    ));
                }
            }
        }
    }

    /// Encrypt `data` and send it.
    pub async fn send(&mut self, stream: &TcpStream, data: &[u8]) -> io::Result<()> {
        loop {
            match self.step(Some(data))? {
                Step::Again => {}
                // The data goes out with anything rustls queued before it (a key update's answer, say).
                Step::Send => {
                    let sent = self.out_has_app_data;
                    self.flush(stream).await?;
                    if sent {
                        self.out_has_app_data = false;
                        return Ok(());
                    }
                }
                Step::Read => {
                    if !self.read_more(stream).await? {
                        return Err(closed("the server closed the connection"));
                    }
                }
                Step::Idle | Step::Closed => {
                    return Err(closed("the server closed the TLS session"));
                }
            }
        }
    }

    /// Plaintext held, not yet taken.
    pub fn held(&self) -> usize {
        self.plain.len() - self.plain_at
    }

    /// Whether anything came after what was taken: plaintext, or received bytes not decrypted yet.
    pub fn has_more(&self) -> bool {
        self.held() > 0 || self.start < self.filled
    }

    /// The plaintext held.
    pub fn plain(&self) -> &[u8] {
        &self.plain[self.plain_at..]
    }

    /// Take `n` bytes of the plaintext held.
    pub fn consume(&mut self, n: usize) {
        self.plain_at += n;
        if self.plain_at >= self.plain.len() {
            self.plain.clear();
            self.plain_at = 0;
        }
    }

    /// Decrypt until at least `want` bytes of plaintext are held, or as many as have arrived once at least one has,
    /// or the session has ended; returns how many are held (0: the session ended, cleanly or not).
    pub async fn fill(&mut self, stream: &TcpStream, want: usize) -> io::Result<usize> {
        let want = want.clamp(1, PLAIN_MAX);
        if self.plain_at > 0 && self.held() < want {
            // Only a short take leaves a remainder; keep the buffer from growing past a stage.
            self.plain.drain(..self.plain_at);
            self.plain_at = 0;
        }
        while self.held() < want && !self.ended {
            match self.step(None)? {
                Step::Again => {}
                Step::Send => self.flush(stream).await?,
                Step::Read | Step::Idle => {
                    let more = if self.held() > 0 {
                        // Some is here: take what else has arrived, without waiting for it.
                        match self.try_read_more(stream)? {
                            Some(more) => more,
                            None => break,
                        }
                    } else {
                        self.read_more(stream).await?
                    };
                    self.ended |= !more;
                }
                Step::Closed => self.ended = true,
            }
        }
        Ok(self.held())
    }

    /// One turn of rustls's state machine over the bytes received; `data`: application data to encrypt once the
    /// session may send it.
    fn step(&mut self, data: Option<&[u8]>) -> io::Result<Step> {
        let UnbufferedStatus { mut discard, state } = self
            .conn
            .process_tls_records(&mut self.incoming[self.start..self.filled]);
        let step = match state.map_err(io::Error::other)? {
            ConnectionState::ReadTraffic(mut records) => {
                while let Some(record) = records.next_record() {
                    let record = record.map_err(io::Error::other)?;
                    discard += record.discard;
                    self.plain.extend_from_slice(record.payload);
                }
                Step::Again
            }
            ConnectionState::EncodeTlsData(mut encode) => {
                let at = self.out.len();
                loop {
                    match encode.encode(&mut self.out[at..]) {
                        Ok(n) => {
                            self.out.truncate(at + n);
                            break;
                        }
                        Err(EncodeError::InsufficientSize(e)) => {
                            self.out.resize(at + e.required_size, 0)
                        }
                        Err(e) => return Err(io::Error::other(e.to_string())),
                    }
                }
                Step::Again
            }
            ConnectionState::TransmitTlsData(transmit) => {
                // The bytes are sent before rustls is turned again, or the connection is dropped.
                transmit.done();
                Step::Send
            }
            ConnectionState::BlockedHandshake => Step::Read,
            ConnectionState::WriteTraffic(mut write) => match data {
                Some(data) if !self.out_has_app_data => {
                    let at = self.out.len();
                    loop {
                        match write.encrypt(data, &mut self.out[at..]) {
                            Ok(n) => {
                                self.out.truncate(at + n);
                                break;
                            }
                            Err(EncryptError::InsufficientSize(e)) => {
                                self.out.resize(at + e.required_size, 0);
                            }
                            Err(e) => return Err(io::Error::other(e.to_string())),
                        }
                    }
                    self.out_has_app_data = true;
                    Step::Send
                }
                _ => Step::Idle,
            },
            ConnectionState::PeerClosed | ConnectionState::Closed => Step::Closed,
            _ => return Err(io::Error::other("unexpected TLS state")),
        };
        self.start += discard;
        Ok(step)
    }

    /// Send what `out` holds.
    async fn flush(&mut self, stream: &TcpStream) -> io::Result<()> {
        let mut sent = 0;
        while sent < self.out.len() {
            stream.writable().await?;
            match stream.try_write(&self.out[sent..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        Ok(())
    }

    /// Room at the end of `incoming` for the next read: unprocessed bytes moved to the front, the buffer grown when a
    /// long handshake message fills it.
    fn make_room(&mut self) -> io::Result<()> {
        if self.start > 0 {
            self.incoming.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        if self.filled == self.incoming.len() {
            if self.incoming.len() >= INCOMING_MAX {
                return Err(io::Error::new(
                    ErrorKind::InvalidData,
                    "a TLS message over 256 KiB",
                ));
            }
            self.incoming.resize(self.incoming.len() * 2, 0);
        }
        Ok(())
    }

    /// Wait for bytes from the peer; false at the socket's end.
    async fn read_more(&mut self, stream: &TcpStream) -> io::Result<bool> {
        self.make_room()?;
        loop {
            stream.readable().await?;
            match stream.try_read(&mut self.incoming[self.filled..]) {
                Ok(n) => {
                    self.filled += n;
                    return Ok(n > 0);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Bytes from the peer that have arrived already: `None` when none has, false at the socket's end.
    fn try_read_more(&mut self, stream: &TcpStream) -> io::Result<Option<bool>> {
        self.make_room()?;
        match stream.try_read(&mut self.incoming[self.filled..]) {
            Ok(n) => {
                self.filled += n;
                Ok(Some(n > 0))
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn closed(what: &str) -> io::Error {
    io::Error::new(ErrorKind::UnexpectedEof, what.to_string())
}
