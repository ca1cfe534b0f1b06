//! TLS for the own-socket path ([`super::splice`]) over https: rustls for the handshake and the keys, records decrypted
//! in place in our own read buffer.
//!
//! Through reqwest every plaintext byte is copied twice in user space (rustls's queue, then hyper's buffer) and rustls
//! reads the socket one 16 KiB record at a time. rustls's unbuffered API reads as much as we like, but still copies
//! each record's plaintext into a `Vec` of its own (0.23). So rustls does the handshake here, on our `TcpStream`, and
//! then hands over the traffic keys through its kernel-TLS interface ([`rustls::kernel`]): from there each record is
//! decrypted where it arrived, by rustls's own record decrypter for the negotiated suite, and the body is written to
//! the part file straight from those places ([`Tls::plain`], one `pwritev` per stage). No byte of the body is copied
//! in user space. What rustls's kernel interface leaves to its user is done here: record framing, the sequence
//! numbers, alerts, and the post-handshake messages of TLS 1.3 (session tickets go to rustls's store; a key update
//! gets new keys from rustls, and is answered before our next record when the server asks for one).
//!
//! The configuration is reqwest's ([`super::probe::tls_config`]): the same verifier, whose CA store is read once per
//! process, so a bad certificate is refused here with the same error; ALPN offers `http/1.1` only. What rustls
//! refuses is an error of kind `Other` wrapping the `rustls::Error` (a certificate's problem is told apart by the
//! caller), and so is what the record layer here refuses (an alert, a record out of place). A connection that ends without `close_notify` ends its plaintext there: a body cut short that way is
//! short, never filled with unauthenticated bytes, and the caller retries it.

use std::io::{self, ErrorKind};
use std::ops::Range;
use std::sync::Arc;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::crypto::cipher::{
    InboundOpaqueMessage, MessageDecrypter, MessageEncrypter, OutboundChunks, OutboundPlainMessage,
};
use rustls::kernel::KernelConnection;
use rustls::pki_types::ServerName;
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{
    ClientConfig, ConnectionTrafficSecrets, ContentType, HandshakeType, ProtocolVersion,
    SupportedCipherSuite,
};
use tokio::net::TcpStream;

/// How much one socket read may take: four records. This buffer is most of a connection's memory (peak RSS is a
/// target); 32 KiB cost about 15 % more CPU, 128 KiB saved nothing measurable.
const READ_SIZE: usize = 64 * 1024;
/// The most received bytes held while a record is incomplete (a handshake message may span records).
const INCOMING_MAX: usize = 256 * 1024;
/// A record's header: type, version, length.
const HEADER: usize = 5;
/// The longest record a peer may send, past its header (RFC 5246 §6.2.3, the larger of TLS 1.2's and 1.3's).
const MAX_RECORD: usize = 16 * 1024 + 2048;
/// The most plaintext one record carries (RFC 8446 §5.1).
const MAX_FRAGMENT: usize = 16 * 1024;
/// The most records whose plaintext is held at once: what one `pwritev` takes (a server sending tiny records makes
/// stages shorter, not slower to gather).
pub const MAX_PIECES: usize = 64;
/// The most bytes of post-handshake messages held while one is incomplete.
const MAX_MESSAGE: usize = 64 * 1024;

/// One TLS session on a connection, past its handshake.
pub struct Tls {
    wire: Wire,
    keys: Keys,
    /// Plaintext not yet taken, record by record: ranges of `wire.buf`, in order, each before `wire.start`.
    plain: Vec<Range<usize>>,
    /// Bytes of plaintext held: the ranges' total.
    held: usize,
    /// The peer closed (`close_notify`, or the socket's end): no more plaintext will come.
    ended: bool,
    /// A post-handshake message being gathered across records.
    message: Vec<u8>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("held", &self.held)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// The socket's bytes: received ones (`buf[start..filled]` not processed yet) and ones to send.
struct Wire {
    buf: Vec<u8>,
    start: usize,
    filled: usize,
    out: Vec<u8>,
}

/// The session's record protection, from rustls's keys.
struct Keys {
    kernel: KernelConnection<ClientConnectionData>,
    tls13: bool,
    rx: Box<dyn MessageDecrypter>,
    rx_seq: u64,
    tx: Box<dyn MessageEncrypter>,
    tx_seq: u64,
    /// The peer asked for a key update: ours is sent, and our keys changed, before our next record.
    update_tx: bool,
}

/// What one turn of rustls's handshake asks for next.
enum Step {
    /// Something was done: turn again.
    Again,
    /// `out` holds records to send.
    Send,
    /// More bytes from the peer are needed.
    Read,
    /// The handshake is over.
    Done,
}

impl Tls {
    /// A session with `name` (the URL's host) on `stream`, once its handshake is done. `config` must allow secret
    /// extraction.
    pub async fn connect(
        stream: &TcpStream,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<Tls> {
        let mut conn = UnbufferedClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut wire = Wire {
            buf: vec![0; READ_SIZE],
            start: 0,
            filled: 0,
            out: Vec::new(),
        };
        loop {
            match wire.handshake_step(&mut conn)? {
                Step::Again => {}
                Step::Send => wire.flush(stream).await?,
                Step::Read => {
                    wire.make_room()?;
                    if !wire.read_more(stream).await? {
                        return Err(closed(
                            "the server closed the connection during the TLS handshake",
                        ));
                    }
                }
                Step::Done => break,
            }
        }
        // Records that came after the handshake are still in `wire`, to be opened with the keys handed over here.
        let (secrets, kernel) = conn
            .dangerous_into_kernel_connection()
            .map_err(io::Error::other)?;
        let suite = kernel.negotiated_cipher_suite();
        let (rx_seq, rx) = secrets.rx;
        let (tx_seq, tx) = secrets.tx;
        let keys = Keys {
            tls13: kernel.protocol_version() == ProtocolVersion::TLSv1_3,
            rx: decrypter(suite, rx)?,
            rx_seq,
            tx: encrypter(suite, tx)?,
            tx_seq,
            kernel,
            update_tx: false,
        };
        Ok(Tls {
            wire,
            keys,
            plain: Vec::new(),
            held: 0,
            ended: false,
            message: Vec::new(),
        })
    }

    /// Encrypt `data` and send it.
    pub async fn send(&mut self, stream: &TcpStream, data: &[u8]) -> io::Result<()> {
        if self.keys.update_tx {
            // RFC 8446 §4.6.3: our key update goes out under the old keys, everything after it under the new.
            let update = [u8::from(HandshakeType::KeyUpdate), 0, 0, 1, 0];
            self.seal(ContentType::Handshake, &update)?;
            let (seq, secrets) = self
                .keys
                .kernel
                .update_tx_secret()
                .map_err(io::Error::other)?;
            self.keys.tx = encrypter(self.keys.kernel.negotiated_cipher_suite(), secrets)?;
            self.keys.tx_seq = seq;
            self.keys.update_tx = false;
        }
        for chunk in data.chunks(MAX_FRAGMENT) {
            self.seal(ContentType::ApplicationData, chunk)?;
        }
        self.wire.flush(stream).await
    }

    /// Bytes of the peer's already here: plaintext held and received bytes not decrypted yet (at least as many as
    /// the plaintext they hold).
    pub fn here(&self) -> usize {
        self.held + (self.wire.filled - self.wire.start)
    }

    /// Whether anything came after what was taken: plaintext, or received bytes not decrypted yet.
    pub fn has_more(&self) -> bool {
        self.here() > 0 || !self.message.is_empty()
    }

    /// The plaintext held, in order, a piece per record (at most [`MAX_PIECES`]).
    pub fn plain(&self) -> impl Iterator<Item = &[u8]> {
        self.plain.iter().map(|r| &self.wire.buf[r.clone()])
    }

    /// Take `n` bytes of the plaintext held.
    pub fn consume(&mut self, mut n: usize) {
        n = n.min(self.held);
        self.held -= n;
        let mut done = 0;
        for range in &mut self.plain {
            let take = n.min(range.len());
            range.start += take;
            n -= take;
            if range.start < range.end {
                break;
            }
            done += 1;
        }
        self.plain.drain(..done);
    }

    /// Decrypt until at least `want` bytes of plaintext are held, or as many as have arrived once at least one has,
    /// or the session has ended; returns how many are held (0: the session ended, cleanly or not).
    pub async fn fill(&mut self, stream: &TcpStream, want: usize) -> io::Result<usize> {
        let want = want.max(1);
        while self.held < want && !self.ended && self.plain.len() < MAX_PIECES {
            if self.open_record()? {
                continue;
            }
            let more = if self.held > 0 {
                // Some is here: take what else has arrived, without waiting for it, in the room after it (moving
                // what is held would be a copy of it).
                if self.wire.filled == self.wire.buf.len() {
                    break;
                }
                match self.wire.try_read_more(stream)? {
                    Some(more) => more,
                    None => break,
                }
            } else {
                self.plain.clear();
                self.wire.make_room()?;
                self.wire.read_more(stream).await?
            };
            self.ended |= !more;
        }
        Ok(self.held)
    }

    /// Decrypt the next record if the whole of it has arrived; false if it has not.
    fn open_record(&mut self) -> io::Result<bool> {
        let wire = &mut self.wire;
        let at = wire.start;
        let Some(header) = wire.buf[at..wire.filled].first_chunk::<HEADER>() else {
            return Ok(false);
        };
        let typ = ContentType::from(header[0]);
        let version = ProtocolVersion::from(u16::from_be_bytes([header[1], header[2]]));
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len > MAX_RECORD {
            return Err(broken(
                "the server sent a TLS record over its maximum length",
            ));
        }
        let end = at + HEADER + len;
        if end > wire.filled {
            return Ok(false);
        }
        let base = wire.buf.as_ptr() as usize;
        let keys = &mut self.keys;
        if typ != ContentType::ApplicationData
            && (keys.tls13 || typ == ContentType::ChangeCipherSpec)
        {
            return Err(broken(
                "the server sent an unprotected TLS record after the handshake",
            ));
        }
        let record = InboundOpaqueMessage::new(typ, version, &mut wire.buf[at + HEADER..end]);
        let plain = keys
            .rx
            .decrypt(record, keys.rx_seq)
            .map_err(io::Error::other)?;
        keys.rx_seq += 1;
        wire.start = end;
        match plain.typ {
            ContentType::ApplicationData => {
                if !plain.payload.is_empty() {
                    // Decrypted in place: the plaintext lies inside the record, where rustls left it.
                    let from = plain.payload.as_ptr() as usize - base;
                    let range = from..from + plain.payload.len();
                    self.held += range.len();
                    self.plain.push(range);
                }
            }
            ContentType::Alert => match plain.payload {
                // close_notify
                [_, 0] => self.ended = true,
                // user_canceled: a close_notify follows.
                [_, 90] => {}
                // Another warning, which TLS 1.2 allows (TLS 1.3 has none).
                [1, _] if !keys.tls13 => {}
                [_, what] => {
                    return Err(broken(&format!("the server sent TLS alert {what}")));
                }
                _ => return Err(broken("the server sent a malformed TLS alert")),
            },
            ContentType::Handshake => {
                if self.message.len() + plain.payload.len() > MAX_MESSAGE {
                    return Err(broken("a TLS message over 64 KiB"));
                }
                self.message.extend_from_slice(plain.payload);
                self.messages()?;
            }
            _ => return Err(broken("the server sent an unexpected TLS record")),
        }
        Ok(true)
    }

    /// Act on the post-handshake messages gathered whole.
    fn messages(&mut self) -> io::Result<()> {
        let keys = &mut self.keys;
        let mut at = 0;
        while let Some(&[typ, a, b, c]) = self.message[at..].first_chunk::<4>() {
            let len = u32::from_be_bytes([0, a, b, c]) as usize;
            let Some(body) = self.message.get(at + 4..at + 4 + len) else {
                break;
            };
            match (HandshakeType::from(typ), body) {
                (HandshakeType::NewSessionTicket, _) if keys.tls13 => keys
                    .kernel
                    .handle_new_session_ticket(body)
                    .map_err(io::Error::other)?,
                (HandshakeType::KeyUpdate, [request @ (0 | 1)]) if keys.tls13 => {
                    let (seq, secrets) =
                        keys.kernel.update_rx_secret().map_err(io::Error::other)?;
                    keys.rx = decrypter(keys.kernel.negotiated_cipher_suite(), secrets)?;
                    keys.rx_seq = seq;
                    keys.update_tx |= *request == 1;
                }
                // TLS 1.2's renegotiation request, which a client may ignore (RFC 5246 §7.4.1.1).
                (HandshakeType::HelloRequest, []) if !keys.tls13 => {}
                (other, _) => {
                    return Err(broken(&format!(
                        "the server sent a TLS {other:?} message after the handshake"
                    )));
                }
            }
            at += 4 + len;
        }
        self.message.drain(..at);
        Ok(())
    }

    /// Encrypt one record of `data` into the bytes to send.
    fn seal(&mut self, typ: ContentType, data: &[u8]) -> io::Result<()> {
        let keys = &mut self.keys;
        let message = OutboundPlainMessage {
            typ,
            version: ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::Single(data),
        };
        let record = keys
            .tx
            .encrypt(message, keys.tx_seq)
            .map_err(io::Error::other)?;
        keys.tx_seq += 1;
        self.wire.out.extend_from_slice(&record.encode());
        Ok(())
    }
}

impl Wire {
    /// One turn of rustls's handshake over the bytes received.
    fn handshake_step(&mut self, conn: &mut UnbufferedClientConnection) -> io::Result<Step> {
        let UnbufferedStatus { discard, state } =
            conn.process_tls_records(&mut self.buf[self.start..self.filled]);
        let step = match state.map_err(io::Error::other)? {
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
            ConnectionState::WriteTraffic(_) => Step::Done,
            ConnectionState::PeerClosed | ConnectionState::Closed => {
                return Err(closed(
                    "the server closed the TLS session during its handshake",
                ));
            }
            // Application data before our request (no HTTP/1.1 server sends any), or early data, which we never offer.
            _ => return Err(broken("unexpected TLS state during the handshake")),
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

    /// Room at the end of `buf` for the next read: unprocessed bytes moved to the front (nothing else in `buf` may be
    /// held then), the buffer grown when a long handshake message fills it.
    fn make_room(&mut self) -> io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        if self.filled == self.buf.len() {
            if self.buf.len() >= INCOMING_MAX {
                return Err(io::Error::new(
                    ErrorKind::InvalidData,
                    "a TLS message over 256 KiB",
                ));
            }
            self.buf.resize(self.buf.len() * 2, 0);
        }
        Ok(())
    }

    /// Wait for bytes from the peer; false at the socket's end.
    async fn read_more(&mut self, stream: &TcpStream) -> io::Result<bool> {
        loop {
            stream.readable().await?;
            match stream.try_read(&mut self.buf[self.filled..]) {
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
        match stream.try_read(&mut self.buf[self.filled..]) {
            Ok(n) => {
                self.filled += n;
                Ok(Some(n > 0))
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// rustls's record decrypter for `suite` with one direction's keys from its kernel interface.
fn decrypter(
    suite: SupportedCipherSuite,
    secrets: ConnectionTrafficSecrets,
) -> io::Result<Box<dyn MessageDecrypter>> {
    let (key, iv) = key_and_iv(secrets)?;
    Ok(match suite {
        SupportedCipherSuite::Tls13(s) => s.aead_alg.decrypter(key, iv),
        SupportedCipherSuite::Tls12(s) => {
            // TLS 1.2's "iv" is the fixed part (AES-GCM's 4-byte salt, ChaCha20's whole nonce mask).
            let fixed = s.aead_alg.key_block_shape().fixed_iv_len;
            s.aead_alg.decrypter(key, &iv.as_ref()[..fixed])
        }
    })
}

/// rustls's record encrypter for `suite` with one direction's keys from its kernel interface.
fn encrypter(
    suite: SupportedCipherSuite,
    secrets: ConnectionTrafficSecrets,
) -> io::Result<Box<dyn MessageEncrypter>> {
    let (key, iv) = key_and_iv(secrets)?;
    Ok(match suite {
        SupportedCipherSuite::Tls13(s) => s.aead_alg.encrypter(key, iv),
        SupportedCipherSuite::Tls12(s) => {
            // The handed-over nonce is the fixed part followed by the explicit nonce's start (AES-GCM).
            let shape = s.aead_alg.key_block_shape();
            let (fixed, rest) = iv.as_ref().split_at(shape.fixed_iv_len);
            s.aead_alg
                .encrypter(key, fixed, &rest[..shape.explicit_nonce_len])
        }
    })
}

fn key_and_iv(
    secrets: ConnectionTrafficSecrets,
) -> io::Result<(rustls::crypto::cipher::AeadKey, rustls::crypto::cipher::Iv)> {
    match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => Ok((key, iv)),
        _ => Err(io::Error::other(
            "a TLS cipher suite this path does not carry",
        )),
    }
}

/// The peer broke the TLS protocol: an error of kind `Other`, as rustls's own errors are, so the transfer treats it as
/// it treats them (a network error, tried again), not as a malformed HTTP answer.
fn broken(what: &str) -> io::Error {
    io::Error::other(what.to_string())
}

fn closed(what: &str) -> io::Error {
    io::Error::new(ErrorKind::UnexpectedEof, what.to_string())
}
