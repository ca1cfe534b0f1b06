//! The framing: a 4-byte native-endian length, then that many bytes of UTF-8 JSON.
//!
//! This is tokio-util's `LengthDelimitedCodec`, configured once here so that the relay, the service and the tests
//! frame alike. A partial frame is a normal state (the decoder waits for more bytes); a length prefix over the limit
//! is an error raised before any buffer for the body is reserved.

use tokio_util::codec::LengthDelimitedCodec;

/// A codec for frames of at most `max_frame` bytes, both ways.
pub fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .native_endian()
        .max_frame_length(max_frame)
        .new_codec()
}

/// Prefix `body` with its length, for writers that do not use the codec (tests, small tools).
pub fn encode(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_ne_bytes());
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use proptest::prelude::*;
    use tokio_util::codec::Decoder;

    fn decode_all(chunks: &[&[u8]], max: usize) -> Result<Vec<Vec<u8>>, std::io::Error> {
        let mut c = codec(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(frame) = c.decode(&mut buf)? {
                out.push(frame.to_vec());
            }
        }
        Ok(out)
    }

    #[test]
    fn half_a_header_is_not_an_error() {
        let wire = encode(br#"{"id":1}"#);
        let frames = decode_all(&[&wire[..2], &wire[2..5], &wire[5..]], 1024).unwrap();
        assert_eq!(frames, vec![br#"{"id":1}"#.to_vec()]);
    }

    #[test]
    fn oversize_length_is_refused_before_the_body_arrives() {
        let mut c = codec(1024);
        let mut buf = BytesMut::from(&(u32::MAX).to_ne_bytes()[..]);
        let err = c.decode(&mut buf).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(
            buf.capacity() < 1024,
            "the decoder must not reserve room for an oversize body"
        );
    }

    #[test]
    fn a_frame_at_the_limit_is_accepted() {
        let body = vec![b'x'; 1024];
        assert_eq!(decode_all(&[&encode(&body)], 1024).unwrap(), vec![body]);
        let body = vec![b'x'; 1025];
        assert!(decode_all(&[&encode(&body)], 1024).is_err());
    }

    proptest! {
        #[test]
        fn splitting_the_stream_anywhere_gives_the_same_frames(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let wire: Vec<u8> = bodies.iter().flat_map(|b| encode(b)).collect();
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for p in points {
                chunks.push(&wire[last..p]);
                last = p;
            }
            chunks.push(&wire[last..]);
            prop_assert_eq!(decode_all(&chunks, 4096).unwrap(), bodies);
        }

        #[test]
        fn any_bytes_never_panic_the_decoder(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_all(&[&data], 256);
        }
    }
}
