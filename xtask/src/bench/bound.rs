//! The link's own bound (issue 18): the least a client can do to fetch a file over N ranged connections. Each of N
//! threads opens one TCP connection, sends one `GET` with a `Range` of an Nth of the file, and reads the response to
//! its end into one buffer it never looks at. No file, no parsing beyond the status line, no re-splitting: the
//! speed of the link and the server, which a real client can approach but not pass by much.
//!
//! The bench runs it as a client of its own (`cargo xtask bench --bound-read URL N SIZE`), timed from outside like
//! the others. It exits non-zero unless every connection got a `206` and exactly its range's bytes.

use std::io::{Read, Write};
use std::net::TcpStream;

use anyhow::{Context, Result, bail, ensure};

/// The arguments after `--bound-read`: `URL N SIZE` (an `http://host:port/path` URL, connections, file size).
pub fn main(args: &[String]) -> Result<()> {
    let [url, n, size] = args else {
        bail!("usage: cargo xtask bench --bound-read URL CONNECTIONS SIZE");
    };
    let n: u64 = n.parse().context("CONNECTIONS: not a number")?;
    let size: u64 = size.parse().context("SIZE: not a number")?;
    ensure!(n >= 1 && size >= n, "need 1 ≤ CONNECTIONS ≤ SIZE");
    let rest = url
        .strip_prefix("http://")
        .context("the bound reads plain http only")?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let part = size.div_ceil(n);
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..n)
            .map(|i| {
                let start = i * part;
                let end = ((i + 1) * part).min(size) - 1;
                s.spawn(move || read_range(host, path, start, end))
            })
            .collect();
        readers
            .into_iter()
            .try_for_each(|r| r.join().map_err(|_| anyhow::anyhow!("a reader panicked"))?)
    })
}

/// One connection: `GET path` for bytes `start..=end`, read to the end, checked for a 206 and the range's length.
fn read_range(host: &str, path: &str, start: u64, end: u64) -> Result<()> {
    let mut sock = TcpStream::connect(host).with_context(|| format!("cannot connect to {host}"))?;
    write!(
        sock,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nRange: bytes={start}-{end}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0usize;
    // The head: read until its blank line; whatever follows it in the same reads is body.
    let head_len = loop {
        let k = sock.read(&mut buf[got..])?;
        ensure!(k > 0, "the server closed before the end of the head");
        got += k;
        if let Some(p) = buf[..got].windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        ensure!(got < buf.len(), "a head larger than 1 MiB");
    };
    let status = String::from_utf8_lossy(&buf[..head_len.min(12)]).into_owned();
    ensure!(
        status.starts_with("HTTP/1.1 206"),
        "bytes={start}-{end}: {status}"
    );
    let mut body = (got - head_len) as u64;
    loop {
        let k = sock.read(&mut buf)?;
        if k == 0 {
            break;
        }
        body += k as u64;
    }
    let want = end - start + 1;
    ensure!(
        body == want,
        "bytes={start}-{end}: {body} bytes, expected {want}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    use super::*;

    /// A one-file server on 127.0.0.1 that answers each of `conns` connections with the requested range (or with
    /// `short` bytes fewer), and the `http://` URL of its file.
    fn serve(data: &'static [u8], conns: usize, short: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for _ in 0..conns {
                let (sock, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(sock.try_clone().unwrap());
                let mut range = None;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if let Some(r) = line.trim().strip_prefix("Range: bytes=") {
                        let (a, b) = r.split_once('-').unwrap();
                        range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()));
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let (a, b) = range.unwrap();
                let body = &data[a..=b - short];
                let mut sock = sock;
                write!(
                    sock,
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .unwrap();
                sock.write_all(body).unwrap();
            }
        });
        format!("http://{addr}/f.bin")
    }

    #[test]
    fn reads_every_range_and_refuses_a_short_one() {
        static DATA: [u8; 1000] = [7; 1000];
        let args = |url: String| [url, "8".into(), "1000".into()];
        main(&args(serve(&DATA, 8, 0))).unwrap();
        let err = main(&args(serve(&DATA, 8, 1))).unwrap_err();
        assert!(format!("{err:#}").contains("expected"), "{err:#}");
    }
}
