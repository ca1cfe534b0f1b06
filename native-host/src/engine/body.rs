//! A response body on its way into the part file, over either path: reqwest's chunks, or [`splice`]'s own socket (its
//! pipe over http, its TLS session's decrypted records over https).
//!
//! A body moves in two steps, [`Body::stage`] (take up to N bytes off the network) and [`Body::commit`] (write them at
//! an offset), so the rate limiters are charged in between whichever path carries it.

use std::fs::File;
use std::time::Duration;

use bytes::{Buf, Bytes};

use super::error::TransferError;
use super::part;
use super::splice;

/// Most bytes staged at once.
pub const STAGE_MAX: usize = 1 << 20;

/// A response body on its way into the file.
pub enum Body {
    Reqwest {
        resp: reqwest::Response,
        /// The rest of the last chunk, not written yet.
        pending: Bytes,
    },
    Spliced(splice::Body),
    /// An error answer's body, never read.
    Unread,
}

impl Body {
    pub fn reqwest(resp: reqwest::Response) -> Body {
        Body::Reqwest {
            resp,
            pending: Bytes::new(),
        }
    }

    /// Take up to `max` (> 0) bytes; 0 means the body is over.
    pub async fn stage(&mut self, max: usize) -> Result<usize, TransferError> {
        match self {
            Body::Reqwest { resp, pending } => {
                while pending.is_empty() {
                    match resp.chunk().await.map_err(TransferError::from_reqwest)? {
                        Some(chunk) => *pending = chunk,
                        None => return Ok(0),
                    }
                }
                Ok(pending.len().min(max))
            }
            Body::Spliced(b) => b
                .stage(max)
                .await
                .map_err(|e| TransferError::Network(e.to_string())),
            Body::Unread => Ok(0),
        }
    }

    /// Write the first `n` staged bytes at `at`.
    pub fn commit(&mut self, file: &File, at: u64, n: usize) -> std::io::Result<()> {
        match self {
            Body::Reqwest { pending, .. } => {
                part::write_at(file, &pending[..n], at)?;
                pending.advance(n);
                if pending.is_empty() {
                    // Let go of hyper's read buffer now, not when the next chunk replaces this one: a chunk is a
                    // view into that buffer, and while one is held hyper cannot reuse it for its next read and
                    // allocates another (up to 408 KiB a connection, fresh pages each time).
                    *pending = Bytes::new();
                }
                Ok(())
            }
            Body::Spliced(b) => b.commit(file, at, n),
            Body::Unread => Ok(()),
        }
    }

    /// The body is no longer wanted; `used_up`: the whole range its response holds was written. A spliced body hands
    /// its connection over to `conn` for the next request when it was read to its end. reqwest's message end is read
    /// too (within `stall`): hyper hands a connection back to its pool only once it has seen it, and a next request
    /// sent before that opens another connection.
    pub async fn finish(self, conn: &mut Option<splice::Conn>, used_up: bool, stall: Duration) {
        match self {
            Body::Spliced(b) => *conn = b.into_conn(),
            Body::Reqwest { mut resp, .. } if used_up => {
                let _ = tokio::time::timeout(stall, resp.chunk()).await;
            }
            _ => {}
        }
    }
}
