#![no_main]
//! The broadcaster's own WebSocket reader on client bytes: it never panics,
//! never hands out a message over its limit or a close code RFC 6455
//! forbids on the wire, and stops at the first error (a slice never blocks,
//! so each read completes at once).
//!
//! The first byte picks the input's shape. Even: the rest is the raw wire.
//! Odd: the rest describes frames (fragments, control frames interleaved
//! with them, close payloads with a code and a reason, sizes around the
//! limit), which are masked and put on the wire; the reader's answers must
//! then match what RFC 6455 says of those frames, message by message.

use futures_util::FutureExt;
use libfuzzer_sys::fuzz_target;
use switchyard::ws::codec::{close_code_allowed, Incoming, ReadError, Reader};

/// Small, so that fragmented messages hit the limit often.
const MAX_MESSAGE_BYTES: usize = 300;

fuzz_target!(|data: &[u8]| {
    let Some((shape, rest)) = data.split_first() else {
        return;
    };
    if shape % 2 == 0 {
        read_all(rest);
    } else {
        let frames = frames(rest);
        let mut wire = Vec::new();
        for frame in &frames {
            frame.encode(&mut wire);
        }
        assert_eq!(read_all(&wire), expected(&frames));
    }
});

/// What one read answered, comparable.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
    Failed(ReadError),
}

/// Reads until the first error or close, checking each message's bounds.
fn read_all(wire: &[u8]) -> Vec<Read> {
    let mut reader = Reader::new(wire, MAX_MESSAGE_BYTES, None);
    let mut reads = Vec::new();
    loop {
        let Some(next) = reader.next().now_or_never() else {
            panic!("reading a slice never waits");
        };
        let read = match next {
            Ok(Incoming::Text(text)) => {
                assert!(text.len() <= MAX_MESSAGE_BYTES);
                Read::Text(text)
            }
            Ok(Incoming::Binary(bytes)) => {
                assert!(bytes.len() <= MAX_MESSAGE_BYTES);
                Read::Binary(bytes)
            }
            Ok(Incoming::Ping(payload)) => {
                assert!(payload.len() <= 125);
                Read::Ping(payload)
            }
            Ok(Incoming::Pong) => Read::Pong,
            Ok(Incoming::Close(code)) => {
                assert!(code.is_none_or(close_code_allowed), "{code:?} on the wire");
                Read::Close(code)
            }
            Err(error) => Read::Failed(error),
        };
        let last = matches!(read, Read::Close(_) | Read::Failed(_));
        reads.push(read);
        if last {
            return reads;
        }
    }
}

/// One client frame, before masking.
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

impl Frame {
    fn encode(&self, wire: &mut Vec<u8>) {
        let mask = [0xa5, 0x0f, 0x3c, 0x81];
        wire.push(if self.fin { 0x80 } else { 0 } | self.opcode);
        let len = self.payload.len();
        if len < 126 {
            wire.push(0x80 | len as u8);
        } else {
            wire.push(0x80 | 126);
            wire.extend_from_slice(&(len as u16).to_be_bytes());
        }
        wire.extend_from_slice(&mask);
        wire.extend(
            self.payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4]),
        );
    }
}

/// Close codes worth trying: allowed, reserved, unassigned, edges.
const CODES: [u16; 16] = [
    1000, 1001, 1002, 1004, 1005, 1006, 1007, 1011, 1014, 1015, 1016, 2999, 3000, 4999, 5000, 0,
];

/// Opcodes RFC 6455 reserves: 0x3–0x7 (data), 0xB–0xF (control).
const RESERVED_OPCODES: [u8; 6] = [0x3, 0x5, 0x7, 0xB, 0xD, 0xF];

/// Frames described by `data`: each takes a kind byte, a length byte and
/// that many payload bytes (fewer at the end of the input).
fn frames(mut data: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let [kind, len_byte, rest @ ..] = data {
        let fin = kind & 0x80 != 0;
        // Lengths reach past the limit (300) and past a control frame's 125.
        let len = usize::from(*len_byte) * 2;
        let take = len.min(rest.len());
        let bytes = &rest[..take];
        data = &rest[take..];
        // Repeat the bytes the input has to the length wanted.
        let payload: Vec<u8> = if bytes.is_empty() {
            vec![b'a'; len]
        } else {
            bytes.iter().copied().cycle().take(len).collect()
        };
        let frame = match kind & 0x0F {
            0 | 1 => Frame {
                fin,
                opcode: 0x0,
                payload,
            },
            2 => Frame {
                fin,
                opcode: 0x1,
                payload,
            },
            3 => Frame {
                fin,
                opcode: 0x2,
                payload,
            },
            4 => Frame {
                fin,
                opcode: 0x9,
                payload: short(payload),
            },
            5 => Frame {
                fin,
                opcode: 0xA,
                payload: short(payload),
            },
            6 => {
                // A close: a code from the list, then a reason that may or
                // may not be UTF-8.
                let code = CODES[usize::from(*len_byte) % CODES.len()];
                let mut close = code.to_be_bytes().to_vec();
                close.extend(short(payload).into_iter().take(40));
                Frame {
                    fin,
                    opcode: 0x8,
                    payload: close,
                }
            }
            // A close whose code (any) and reason are the input's bytes.
            7 => Frame {
                fin,
                opcode: 0x8,
                payload: short(payload),
            },
            8 => Frame {
                fin,
                opcode: 0x8,
                payload: payload.into_iter().take(1).collect(),
            },
            9 => Frame {
                fin,
                opcode: 0x8,
                payload: Vec::new(),
            },
            // Opcodes nobody defined, data and control.
            other => {
                let opcode = RESERVED_OPCODES[usize::from(other - 10)];
                Frame {
                    fin,
                    opcode,
                    payload: short(payload),
                }
            }
        };
        frames.push(frame);
    }
    frames
}

/// Most of a control frame's payloads fit (≤ 125 bytes); some do not.
fn short(mut payload: Vec<u8>) -> Vec<u8> {
    if payload.len() > 125 && payload.len() % 3 != 0 {
        payload.truncate(125);
    }
    payload
}

/// What RFC 6455 makes of `frames`, read one by one: each read's answer.
fn expected(frames: &[Frame]) -> Vec<Read> {
    let mut reads = Vec::new();
    // A data message in progress: whether text, its bytes so far.
    let mut message: Option<(bool, Vec<u8>)> = None;
    for frame in frames {
        let control = frame.opcode >= 0x8;
        let so_far = message.as_ref().map_or(0, |(_, bytes)| bytes.len());
        let failure = if control && (!frame.fin || frame.payload.len() > 125) {
            Some(ReadError::Protocol)
        } else if !control && so_far + frame.payload.len() > MAX_MESSAGE_BYTES {
            Some(ReadError::TooLarge)
        } else {
            None
        };
        if let Some(error) = failure {
            reads.push(Read::Failed(error));
            return reads;
        }
        let read = match (frame.opcode, message.take()) {
            (0x0, None) | (0x1 | 0x2, Some(_)) => Read::Failed(ReadError::Protocol),
            (0x0, Some((text, mut bytes))) => {
                bytes.extend_from_slice(&frame.payload);
                match finish(text, bytes, frame.fin) {
                    Ok(read) => read,
                    Err(pending) => {
                        message = Some(pending);
                        continue;
                    }
                }
            }
            (0x1 | 0x2, None) => {
                match finish(frame.opcode == 0x1, frame.payload.clone(), frame.fin) {
                    Ok(read) => read,
                    Err(pending) => {
                        message = Some(pending);
                        continue;
                    }
                }
            }
            (opcode, in_progress) => {
                message = in_progress;
                match opcode {
                    0x8 => close(&frame.payload),
                    0x9 => Read::Ping(frame.payload.clone()),
                    0xA => Read::Pong,
                    _ => Read::Failed(ReadError::Protocol),
                }
            }
        };
        let last = matches!(read, Read::Close(_) | Read::Failed(_));
        reads.push(read);
        if last {
            return reads;
        }
    }
    // The wire ran out.
    reads.push(Read::Failed(ReadError::Gone));
    reads
}

/// A data message after one more frame: the read it makes when final (or
/// when its text can no longer be UTF-8), else what is in progress.
fn finish(text: bool, bytes: Vec<u8>, fin: bool) -> Result<Read, (bool, Vec<u8>)> {
    if !text {
        return if fin {
            Ok(Read::Binary(bytes))
        } else {
            Err((text, bytes))
        };
    }
    match String::from_utf8(bytes) {
        Ok(text) if fin => Ok(Read::Text(text)),
        Ok(text) => Err((true, text.into_bytes())),
        Err(error) if fin || error.utf8_error().error_len().is_some() => {
            Ok(Read::Failed(ReadError::InvalidText))
        }
        Err(error) => Err((true, error.into_bytes())),
    }
}

/// A close frame's payload, read.
fn close(payload: &[u8]) -> Read {
    if payload.is_empty() {
        return Read::Close(None);
    }
    if payload.len() == 1 {
        return Read::Failed(ReadError::Protocol);
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    let allowed = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
    if !allowed {
        Read::Failed(ReadError::Protocol)
    } else if std::str::from_utf8(&payload[2..]).is_err() {
        Read::Failed(ReadError::InvalidText)
    } else {
        Read::Close(Some(code))
    }
}
