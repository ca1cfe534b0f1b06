//! The frame decoder on any byte stream, split at any point: it never panics, never returns a frame over the limit,
//! and the frames it returns, encoded again, reproduce exactly the bytes it consumed.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses where the stream is cut in two, so partial headers and bodies are exercised too.
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).min(stream.len());
    let mut codec = protocol::codec::codec(LIMIT);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut failed = false;
    'feed: for chunk in [&stream[..cut], &stream[cut..]] {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= LIMIT, "a frame over the limit came out");
                    frames.push(frame.to_vec());
                }
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break 'feed;
                }
            }
        }
    }
    let encoded: Vec<u8> = frames
        .iter()
        .flat_map(|f| protocol::codec::encode(f))
        .collect();
    assert_eq!(
        &stream[..encoded.len()],
        &encoded[..],
        "re-encoding differs from the input"
    );
    if !failed {
        // What was not consumed is a partial frame: shorter than its header, or than the length it announces.
        let rest = &stream[encoded.len()..];
        if rest.len() >= 4 {
            let len = u32::from_ne_bytes(rest[..4].try_into().unwrap()) as usize;
            assert!(rest.len() < 4 + len, "a whole frame was left undecoded");
        }
    }
});
