//! WebSocket framing (RFC 6455) for the broadcaster, server side.
//!
//! Owns: reading client frames (masked, possibly fragmented, at most
//! MAX_MESSAGE_BYTES per message, UTF-8 checked) and writing server frames
//! (unmasked: a 2–10 byte header, then the payload written straight from
//! the event's shared bytes with vectored writes — no copy per client).
//! Nothing is buffered per connection while idle: a client frame's payload
//! is allocated for that frame and freed once handled; a batch being
//! written holds only headers and shared handles (~48 bytes a frame), freed
//! once written. tungstenite kept both its buffers at their largest size (a
//! 60 KB hello left ~63 KiB on every idle client), and a copy of every
//! pending frame per client.
//!
//! Also owns the one count of bytes on the wire: a frame is its header then
//! its payload ([`OnWire`]), and how far a write has got into a run of
//! frames is a [`Position`], moved on and sliced by the functions here —
//! for the task's [`Writer`] and for the fan-out's direct writes (`socket`,
//! over [`TextFrame`]s borrowing the shared event bytes) alike.
//!
//! Does not own: what a frame means (`protocol`), when to write or close
//! (the client loop in `ws`), or who may write to a client's socket and
//! where the fan-out stopped (`hub::queue`'s write state, which hands that
//! to the task: [`Writer::resume`]).

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A whole message from the client.
#[derive(Debug)]
pub enum Incoming {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    /// The close code it sent, if any: always one that may be echoed
    /// ([`close_code_allowed`]); the reader refuses the others.
    Close(Option<u16>),
}

/// Why reading stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// A message over MAX_MESSAGE_BYTES: close 1009.
    TooLarge,
    /// Text (or a close reason) that is not UTF-8: close 1007.
    InvalidText,
    /// A frame that breaks the protocol (including a close frame with a
    /// 1-byte payload or a code RFC 6455 does not allow): close 1002.
    Protocol,
    /// A fragmented message not completed within its time (the writer's
    /// WRITE_TIMEOUT_SECS), whatever control frames came meanwhile: close
    /// 1008.
    Unfinished,
    /// The socket closed or failed.
    Gone,
}

impl ReadError {
    /// The close frame that answers it (none for a socket that is gone).
    pub fn close(&self) -> Option<(u16, &'static str)> {
        match self {
            ReadError::TooLarge => Some((1009, "frame too large")),
            ReadError::InvalidText => Some((1007, "text is not UTF-8")),
            ReadError::Protocol => Some((1002, "protocol error")),
            ReadError::Unfinished => Some((1008, "message not completed in time")),
            ReadError::Gone => None,
        }
    }
}

impl From<std::io::Error> for ReadError {
    fn from(_: std::io::Error) -> ReadError {
        ReadError::Gone
    }
}

/// Whether a close frame may carry `code` (RFC 6455 §7.4): the codes the
/// RFC and IANA assign (1000–1003, 1007–1014) and the ranges for libraries
/// and applications (3000–4999). Never 1005, 1006 or 1015 (reserved for
/// reporting, never on the wire), nor the unassigned rest.
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The code answering a client's close: its own (already checked), or 1000
/// when it sent none.
pub fn close_reply(code: Option<u16>) -> u16 {
    code.unwrap_or(1000)
}

/// What a frame's payload buffer starts at before its bytes arrive.
const FIRST_READ: usize = 4096;

/// A fragmented message so far.
struct Partial {
    text: bool,
    bytes: Vec<u8>,
    /// How many of `bytes` are known to be valid UTF-8 (text only): each
    /// fragment is checked as it arrives, so bad text fails at once.
    checked: usize,
    /// When it must be complete (with a message timeout).
    deadline: Option<tokio::time::Instant>,
}

/// One frame as read: header fields and the unmasked payload.
struct RawFrame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// Reads client messages from `io`.
pub struct Reader<R> {
    io: R,
    max_message_bytes: usize,
    /// How long a fragmented message may take from its first frame to its
    /// last; `None`: unbounded (the fuzz target, which has no clock).
    message_timeout: Option<Duration>,
    /// A fragmented message so far (boxed: an idle reader holds a null
    /// pointer).
    partial: Option<Box<Partial>>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(io: R, max_message_bytes: usize, message_timeout: Option<Duration>) -> Reader<R> {
        Reader {
            io,
            max_message_bytes,
            message_timeout,
            partial: None,
        }
    }

    /// Whether a fragmented message is in progress (a control frame came
    /// in the middle of it).
    pub fn mid_message(&self) -> bool {
        self.partial.is_some()
    }

    /// What it reads from.
    pub fn io(&self) -> &R {
        &self.io
    }

    /// The next whole message. Not cancel-safe: keep the future alive
    /// (the client loop reads through a pinned stream).
    pub async fn next(&mut self) -> Result<Incoming, ReadError> {
        loop {
            let so_far = self
                .partial
                .as_ref()
                .map_or(0, |partial| partial.bytes.len());
            // Room left for data frames; a control frame never counts
            // against the message in progress.
            let room = self.max_message_bytes.saturating_sub(so_far);
            let deadline = self.partial.as_ref().and_then(|partial| partial.deadline);
            let frame = match deadline {
                // Boxed: the timer exists only while a message is in
                // progress, not in every idle client's task.
                Some(deadline) => Box::pin(tokio::time::timeout_at(
                    deadline,
                    read_frame(&mut self.io, room),
                ))
                .await
                .map_err(|_| ReadError::Unfinished)??,
                None => read_frame(&mut self.io, room).await?,
            };
            let RawFrame {
                fin,
                opcode,
                payload,
            } = frame;
            match opcode {
                0x0 => {
                    let Some(mut partial) = self.partial.take() else {
                        return Err(ReadError::Protocol);
                    };
                    partial.bytes.extend_from_slice(&payload);
                    drop(payload);
                    if fin {
                        return message(partial.text, partial.bytes);
                    }
                    check_text_so_far(&mut partial)?;
                    self.partial = Some(partial);
                }
                0x1 | 0x2 => {
                    if self.partial.is_some() {
                        return Err(ReadError::Protocol);
                    }
                    let text = opcode == 0x1;
                    if fin {
                        return message(text, payload);
                    }
                    let mut partial = Box::new(Partial {
                        text,
                        bytes: payload,
                        checked: 0,
                        deadline: self
                            .message_timeout
                            .map(|timeout| tokio::time::Instant::now() + timeout),
                    });
                    check_text_so_far(&mut partial)?;
                    self.partial = Some(partial);
                }
                0x8 => return close(&payload).map(Incoming::Close),
                0x9 => return Ok(Incoming::Ping(payload)),
                0xA => return Ok(Incoming::Pong),
                _ => return Err(ReadError::Protocol),
            }
        }
    }
}

/// Reads one frame; a data frame's payload may be at most `room` bytes.
async fn read_frame<R: AsyncRead + Unpin>(io: &mut R, room: usize) -> Result<RawFrame, ReadError> {
    let mut head = [0u8; 2];
    io.read_exact(&mut head).await?;
    let fin = head[0] & 0x80 != 0;
    if head[0] & 0x70 != 0 || head[1] & 0x80 == 0 {
        // Reserved bits (no extension is negotiated), or unmasked.
        return Err(ReadError::Protocol);
    }
    let opcode = head[0] & 0x0F;
    let len = match head[1] & 0x7F {
        126 => u64::from(io.read_u16().await?),
        127 => io.read_u64().await?,
        short => u64::from(short),
    };
    let mut mask = [0u8; 4];
    io.read_exact(&mut mask).await?;
    let control = opcode & 0x8 != 0;
    if control && (!fin || len > 125) {
        return Err(ReadError::Protocol);
    }
    if !control && len > room as u64 {
        return Err(ReadError::TooLarge);
    }
    // Grows with the bytes that really arrive: a header announcing
    // MAX_MESSAGE_BYTES that is then trickled in pins only what came.
    let mut payload = Vec::with_capacity((len as usize).min(FIRST_READ));
    io.take(len).read_to_end(&mut payload).await?;
    if payload.len() as u64 != len {
        return Err(ReadError::Gone);
    }
    unmask(&mut payload, mask);
    Ok(RawFrame {
        fin,
        opcode,
        payload,
    })
}

/// XORs `payload` with the client's mask, eight bytes at a time.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // The tail starts at a multiple of 8, so at mask offset 0.
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

/// Fails a fragmented text message as soon as its bytes so far cannot be
/// the start of UTF-8 (a code point cut at a fragment's end is fine).
fn check_text_so_far(partial: &mut Partial) -> Result<(), ReadError> {
    if !partial.text {
        return Ok(());
    }
    match std::str::from_utf8(&partial.bytes[partial.checked..]) {
        Ok(_) => partial.checked = partial.bytes.len(),
        Err(error) if error.error_len().is_some() => return Err(ReadError::InvalidText),
        Err(error) => partial.checked += error.valid_up_to(),
    }
    Ok(())
}

/// A close frame's code: none, or one that may be echoed; its reason must
/// be UTF-8.
fn close(payload: &[u8]) -> Result<Option<u16>, ReadError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ReadError::Protocol),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !close_code_allowed(code) {
                return Err(ReadError::Protocol);
            }
            std::str::from_utf8(reason).map_err(|_| ReadError::InvalidText)?;
            Ok(Some(code))
        }
    }
}

fn message(text: bool, bytes: Vec<u8>) -> Result<Incoming, ReadError> {
    if !text {
        return Ok(Incoming::Binary(bytes));
    }
    String::from_utf8(bytes)
        .map(Incoming::Text)
        .map_err(|_| ReadError::InvalidText)
}

/// One unmasked server frame: its header, and its payload shared with
/// every other client it goes to.
#[derive(Debug, Clone)]
pub struct Frame {
    header: [u8; 10],
    header_len: u8,
    payload: Bytes,
}

impl Frame {
    pub fn new(opcode: u8, payload: impl Into<Bytes>) -> Frame {
        let payload = payload.into();
        let (header, header_len) = header(opcode, payload.len());
        Frame {
            header,
            header_len,
            payload,
        }
    }

    /// One message sent as several payload pieces (the hello: its own
    /// head, then a state shared with other clients): the first frame's
    /// header counts them all, the others go out as they are.
    pub fn pieces<const N: usize>(opcode: u8, pieces: [Bytes; N]) -> [Frame; N] {
        let len = pieces.iter().map(Bytes::len).sum();
        let mut frames = pieces.map(Frame::raw);
        if let Some(first) = frames.first_mut() {
            (first.header, first.header_len) = header(opcode, len);
        }
        frames
    }

    /// Bytes that go out as they are, with no frame header: the held-back
    /// 101 of the handshake, sent in the same write as the hello.
    pub fn raw(bytes: impl Into<Bytes>) -> Frame {
        Frame {
            header: [0; 10],
            header_len: 0,
            payload: bytes.into(),
        }
    }
}

/// A text frame over payload bytes it borrows: what a direct write sends
/// for each delivery (built on the stack, no reference count touched).
#[derive(Clone, Copy)]
pub struct TextFrame<'a> {
    header: [u8; 10],
    header_len: u8,
    payload: &'a [u8],
}

impl<'a> TextFrame<'a> {
    pub fn new(payload: &'a [u8]) -> TextFrame<'a> {
        let (header, header_len) = header(OP_TEXT, payload.len());
        TextFrame {
            header,
            header_len,
            payload,
        }
    }
}

/// A frame as it goes on the wire: its header, then its payload. The only
/// place that says so; [`slices`] and [`Position::advance`] count bytes
/// through it, for the task's writes and the fan-out's direct ones alike.
pub trait OnWire {
    /// The header, then the payload.
    fn parts(&self) -> [&[u8]; 2];

    /// Bytes it takes on the wire.
    fn wire_len(&self) -> usize {
        let [header, payload] = self.parts();
        header.len() + payload.len()
    }
}

impl OnWire for Frame {
    fn parts(&self) -> [&[u8]; 2] {
        [&self.header[..usize::from(self.header_len)], &self.payload]
    }
}

impl OnWire for TextFrame<'_> {
    fn parts(&self) -> [&[u8]; 2] {
        [&self.header[..usize::from(self.header_len)], self.payload]
    }
}

/// The header of an unmasked, final frame of `len` payload bytes, and how
/// many of its 10 bytes it uses.
fn header(opcode: u8, len: usize) -> ([u8; 10], u8) {
    let mut header = [0u8; 10];
    header[0] = 0x80 | opcode;
    let used = if len < 126 {
        header[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        header[1] = 126;
        header[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (header, used)
}

/// A close frame: the code, then the reason.
pub fn close_frame(code: u16, reason: &str) -> Frame {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    Frame::new(OP_CLOSE, payload)
}

/// How far a write has got into a run of frames: `whole` of them are out,
/// and `offset` bytes of the next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    pub whole: usize,
    pub offset: usize,
}

impl Position {
    /// `offset` bytes into the first frame of a run.
    pub fn at(offset: usize) -> Position {
        Position { whole: 0, offset }
    }

    /// Moves on by `written` bytes of `frames` (the run it counts in).
    pub fn advance<F: OnWire>(&mut self, frames: &[F], mut written: usize) {
        while written > 0 {
            let Some(frame) = frames.get(self.whole) else {
                break;
            };
            let left = frame.wire_len() - self.offset;
            if written < left {
                self.offset += written;
                break;
            }
            written -= left;
            self.whole += 1;
            self.offset = 0;
        }
    }
}

/// Bytes of `frames` left to write from `at`.
pub fn left<F: OnWire>(frames: &[F], at: Position) -> usize {
    let all: usize = frames.iter().skip(at.whole).map(OnWire::wire_len).sum();
    all.saturating_sub(at.offset)
}

/// Appends what is left to write of `frames` from `at` to `out` (the
/// fan-out's cork buffer: the same bytes [`slices`] would point at).
pub fn copy_left<F: OnWire>(frames: &[F], at: Position, out: &mut Vec<u8>) {
    each_left(frames, at, |bytes| {
        out.extend_from_slice(bytes);
        true
    });
}

/// What is left to write of `frames` from `at`, as slices for one vectored
/// write: fills `out` (on the caller's stack, no allocation per write) and
/// answers how many it used.
pub fn slices<'a, F: OnWire>(frames: &'a [F], at: Position, out: &mut [IoSlice<'a>]) -> usize {
    let mut used = 0;
    each_left(frames, at, |bytes| {
        let Some(slot) = out.get_mut(used) else {
            return false;
        };
        *slot = IoSlice::new(bytes);
        used += 1;
        true
    });
    used
}

/// Hands `part` each piece (header or payload) left to write of `frames`
/// from `at`, in order, until it answers false.
fn each_left<'a, F: OnWire>(frames: &'a [F], at: Position, mut part: impl FnMut(&'a [u8]) -> bool) {
    let mut skip = at.offset;
    for frame in frames.iter().skip(at.whole) {
        for bytes in frame.parts() {
            if skip >= bytes.len() {
                skip -= bytes.len();
                continue;
            }
            if !part(&bytes[skip..]) {
                return;
            }
            skip = 0;
        }
    }
}

/// Most slices handed to one vectored write.
const MAX_SLICES: usize = 64;

/// Why a write failed.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteError {
    /// The client accepted no bytes for WRITE_TIMEOUT_SECS.
    Stalled,
    /// The socket closed or failed.
    Gone,
}

/// Writes frames, bounding how long the client may accept nothing (the
/// bound is the caller's, at each send: a writer stored in every client's
/// task keeps no copy of it).
pub struct Writer<W> {
    io: W,
    /// The frames being written, and how far into them the socket is. A
    /// write that is interrupted (cut-off, shutdown) leaves its rest here,
    /// so a close frame can still follow at a frame boundary; emptied (and
    /// freed) once written.
    pending: Vec<Frame>,
    at: Position,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    pub fn new(io: W) -> Writer<W> {
        Writer {
            io,
            pending: Vec::new(),
            at: Position::default(),
        }
    }

    /// Writes `frames` (after whatever an interrupted or resumed write
    /// left). Each write must move some bytes within `stall`
    /// (WRITE_TIMEOUT_SECS); any progress restarts the clock. A timer
    /// exists only while the socket is full. Cancel-safe: dropped midway,
    /// the rest stays pending.
    pub async fn send(&mut self, frames: Vec<Frame>, stall: Duration) -> Result<(), WriteError> {
        if self.at.whole >= self.pending.len() {
            self.pending = frames;
            self.at = Position::default();
        } else {
            self.pending.extend(frames);
        }
        while self.at.whole < self.pending.len() {
            let written = match self.write_some().now_or_never() {
                Some(written) => written,
                // Boxed: the timer exists only while the socket is full,
                // and is then no part of every idle client's task.
                None => Box::pin(tokio::time::timeout(stall, self.write_some()))
                    .await
                    .map_err(|_| WriteError::Stalled)?,
            };
            match written {
                Ok(0) | Err(_) => return Err(WriteError::Gone),
                Ok(n) => self.at.advance(&self.pending, n),
            }
        }
        self.pending = Vec::new();
        self.at = Position::default();
        Ok(())
    }

    /// Makes `frame`, `at` bytes of which are out already (someone else
    /// wrote them: a direct write that stopped inside it, see
    /// `hub::queue`), the next thing [`Writer::send`] writes. Only when
    /// nothing is pending: a frame is resumed only when the task takes the
    /// socket over, and the task has always finished its own writes then.
    pub fn resume(&mut self, frame: Frame, at: usize) {
        if self.at.whole >= self.pending.len() {
            self.pending = vec![frame];
            self.at = Position::at(at);
        }
    }

    /// What it writes to.
    pub fn io(&self) -> &W {
        &self.io
    }

    /// One vectored write of what is pending. The slices are built on the
    /// stack at each poll, so they are never part of a suspended future:
    /// every client task is as large as its largest await, idle or not.
    fn write_some(&mut self) -> impl Future<Output = std::io::Result<usize>> + '_ {
        let Writer {
            io, pending, at, ..
        } = self;
        std::future::poll_fn(move |cx| {
            let mut parts = [IoSlice::new(&[]); MAX_SLICES];
            let used = slices(pending, *at, &mut parts);
            Pin::new(&mut *io).poll_write_vectored(cx, &parts[..used])
        })
    }

    /// Writes the rest of an interrupted write and then `frame`, within
    /// `limit`; then shuts the write side (FIN).
    pub async fn finish(&mut self, frame: Option<Frame>, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        if let Some(frame) = frame {
            let _ = tokio::time::timeout_at(deadline, self.send(vec![frame], limit)).await;
        }
        self.pending = Vec::new();
        let _ = tokio::time::timeout_at(deadline, self.io.shutdown()).await;
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn headers_by_length() {
        for (len, header) in [(0, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let frame = Frame::new(OP_TEXT, vec![b'a'; len]);
            let [head, _] = frame.parts();
            assert_eq!(head.len(), header);
            assert_eq!(frame.wire_len(), len + header);
            assert_eq!(head[0], 0x81);
        }
    }

    #[tokio::test]
    async fn a_message_in_pieces_is_one_frame_on_the_wire() {
        for sizes in [[1usize, 0, 1], [100, 20, 5], [120, 70_000, 1]] {
            let pieces = sizes.map(|n| Bytes::from(vec![b'p'; n]));
            let whole = Frame::new(OP_TEXT, pieces.concat());
            let mut expected = Vec::new();
            for part in whole.parts() {
                expected.extend_from_slice(part);
            }
            // Through a 7-byte pipe: partial writes stop inside every piece.
            let (near, mut far) = tokio::io::duplex(7);
            let mut writer = Writer::new(near);
            let reader = tokio::spawn(async move {
                let mut got = Vec::new();
                far.read_to_end(&mut got).await.unwrap();
                got
            });
            let frames = Frame::pieces(OP_TEXT, pieces).to_vec();
            writer.send(frames, Duration::from_secs(5)).await.unwrap();
            drop(writer);
            assert_eq!(reader.await.unwrap(), expected, "pieces of {sizes:?} bytes");
        }
    }

    #[tokio::test]
    async fn partial_vectored_writes_resume_where_they_stopped() {
        // A 7-byte pipe forces many partial writes across frame boundaries.
        let (near, mut far) = tokio::io::duplex(7);
        let mut writer = Writer::new(near);
        let frames: Vec<Frame> = (0..50u8)
            .map(|i| Frame::new(OP_TEXT, vec![i; usize::from(i) * 7]))
            .collect();
        let mut expected = Vec::new();
        for frame in &frames {
            for part in frame.parts() {
                expected.extend_from_slice(part);
            }
        }
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            far.read_to_end(&mut got).await.unwrap();
            got
        });
        writer.send(frames, Duration::from_secs(5)).await.unwrap();
        writer
            .finish(Some(close_frame(1000, "")), Duration::from_secs(5))
            .await;
        drop(writer);
        let got = reader.await.unwrap();
        expected.extend_from_slice(&[0x88, 2, 0x03, 0xE8]);
        assert_eq!(got, expected);
    }

    #[test]
    fn the_cork_copy_is_what_the_slices_point_at_from_any_position() {
        let payloads: Vec<Vec<u8>> = [0usize, 1, 125, 126, 300, 70_000]
            .iter()
            .map(|&len| (0..len).map(|i| (i % 251) as u8).collect())
            .collect();
        let frames: Vec<TextFrame> = payloads.iter().map(|p| TextFrame::new(p)).collect();
        let all = left(&frames, Position::at(0));
        let mut whole = Vec::new();
        copy_left(&frames, Position::at(0), &mut whole);
        assert_eq!(whole.len(), all);
        // Positions a partial write can leave: every byte through the small
        // frames and into the large one's header and payload, then sparser.
        let near_start = (0..=1_000).filter(|&w| w <= all);
        for written in near_start.chain((1_000..=all).step_by(997)).chain([all]) {
            let mut at = Position::at(0);
            at.advance(&frames, written);
            let mut copied = Vec::new();
            copy_left(&frames, at, &mut copied);
            assert_eq!(copied, whole[written..], "after {written} bytes");
            assert_eq!(left(&frames, at), all - written);
            let mut out = [IoSlice::new(&[]); MAX_SLICES];
            let used = slices(&frames, at, &mut out);
            let pointed: Vec<u8> = out[..used].iter().flat_map(|s| s.iter().copied()).collect();
            assert_eq!(pointed, copied);
        }
    }

    /// A masked client frame with a payload under 126 bytes (the tests of
    /// `frames` use it too).
    pub(crate) fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![
            if fin { 0x80 } else { 0 } | opcode,
            0x80 | payload.len() as u8,
        ];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[tokio::test]
    async fn reads_masked_fragmented_text_and_refuses_large_ones() {
        let mut wire = frame(false, 0x1, b"hel");
        wire.extend(frame(true, 0x9, b"p"));
        wire.extend(frame(true, 0x0, b"lo"));
        wire.extend(frame(true, 0x1, &[b'x'; 20]));
        let mut reader = Reader::new(&wire[..], 10, None);
        assert!(matches!(reader.next().await, Ok(Incoming::Ping(p)) if p == b"p"));
        assert!(matches!(reader.next().await, Ok(Incoming::Text(t)) if t == "hello"));
        assert_eq!(reader.next().await.err(), Some(ReadError::TooLarge));
    }
}
