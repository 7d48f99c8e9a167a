//! The wire protocol shared by every transport (WebSocket, SSE, polling):
//! the subscription query string, the frames the server sends, and the
//! frames and publish bodies a client sends.
//!
//! Owns: parsing untrusted input into typed values with an error that names
//! the field, and encoding server frames. Does not own: sockets, HTTP, or
//! what the hub does with a parsed value.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use percent_encoding::percent_decode_str;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::hub::{
    Catchup, Epoch, Event, HubError, Pattern, Publication, ResumePoint, Seq, Snapshot, Topic,
};

/// A bad field in client input; the message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

fn bad(field: &str, problem: impl std::fmt::Display) -> BadInput {
    BadInput(format!("{field}: {problem}"))
}

/// Deserialises JSON, naming the field that failed (`retain: invalid type…`)
/// under `context` (`body`, `[2]`, `frame`) when no field is to blame.
fn from_json<'a, T: Deserialize<'a>>(text: &'a str, context: &str) -> Result<T, BadInput> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        if error.inner().is_syntax() || error.inner().is_eof() {
            // Say where the text stops being JSON, not which field the
            // parser was in (`?` for a broken key).
            return bad(context, format!("not valid JSON ({})", error.into_inner()));
        }
        let path = error.path().to_string();
        let field = if path == "." || path.contains('?') {
            context.to_owned()
        } else if context.starts_with('[') {
            format!("{context}.{path}")
        } else {
            path
        };
        bad(&field, error.into_inner())
    })?;
    deserializer
        .end()
        .map_err(|error| bad(context, format!("not valid JSON ({error})")))?;
    Ok(value)
}

/// What a client asks for when it connects (`?topics=&epoch=&since=&token=`).
#[derive(Debug, Default)]
pub struct SubscriptionQuery {
    /// The patterns asked for; `[#]` when the query names none.
    pub patterns: Vec<Pattern>,
    /// False when the query names no topics: `patterns` is then the
    /// default `[#]`, which a scoped access token replaces with its own
    /// patterns (an explicit `topics=#` must be covered instead).
    pub topics_named: bool,
    pub resume: Option<ResumePoint>,
    pub token: Option<String>,
}

impl SubscriptionQuery {
    /// Parses a raw query string. Values are percent-decoded (`%23` is `#`);
    /// a literal `+` stays `+`. No `topics` means everything (see
    /// `topics_named`).
    pub fn parse(query: Option<&str>) -> Result<SubscriptionQuery, BadInput> {
        SubscriptionQuery::parse_limited(query, usize::MAX)
    }

    /// Like `parse`, refusing more than `max_patterns` distinct patterns
    /// (MAX_PATTERNS_PER_CLIENT) as soon as it meets one too many; duplicates
    /// are dropped through a set, so a long query costs linear time.
    pub fn parse_limited(
        query: Option<&str>,
        max_patterns: usize,
    ) -> Result<SubscriptionQuery, BadInput> {
        let mut patterns = Vec::new();
        let mut seen = HashSet::new();
        let mut epoch = None;
        let mut since = None;
        let mut token = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode_str(raw_value)
                .decode_utf8()
                .map_err(|_| bad(key, "not valid UTF-8"))?;
            match key {
                "topics" => {
                    for text in value.split(',').filter(|t| !t.is_empty()) {
                        let pattern = Pattern::parse(text)
                            .map_err(|e| bad("topics", format!("{text:?} {e}")))?;
                        if seen.insert(pattern.clone()) {
                            if patterns.len() == max_patterns {
                                return Err(bad(
                                    "topics",
                                    format!(
                                        "more than MAX_PATTERNS_PER_CLIENT ({max_patterns}) patterns"
                                    ),
                                ));
                            }
                            patterns.push(pattern);
                        }
                    }
                }
                "epoch" if !value.is_empty() => epoch = Some(Epoch::from_string(&value)),
                "since" => {
                    let seq: Seq = value
                        .parse()
                        .map_err(|_| bad("since", "must be a whole number"))?;
                    since = Some(seq);
                }
                "token" => token = Some(value.into_owned()),
                _ => {}
            }
        }
        let topics_named = !patterns.is_empty();
        if !topics_named {
            patterns.push(Pattern::everything());
        }
        let resume = since.map(|seq| ResumePoint { epoch, seq });
        Ok(SubscriptionQuery {
            patterns,
            topics_named,
            resume,
            token,
        })
    }
}

/// Parses `EPOCH:SEQ` (an SSE `Last-Event-ID`).
pub fn parse_event_id(id: &str) -> Option<ResumePoint> {
    let (epoch, seq) = id.rsplit_once(':')?;
    Some(ResumePoint {
        epoch: Some(Epoch::from_string(epoch)),
        seq: seq.parse().ok()?,
    })
}

/// One event as a publisher sends it, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishFields {
    topic: String,
    data: Box<RawValue>,
    #[serde(default)]
    retain: bool,
    /// Idempotency id: a repeat within the dedup window is not published.
    #[serde(default)]
    id: Option<String>,
}

/// Longest publish id, in characters.
pub const MAX_ID_CHARS: usize = 128;

/// A publish id (the `id` field or the `Idempotency-Key` header): 1 to
/// MAX_ID_CHARS characters.
pub fn validate_publish_id(id: &str, field: &str) -> Result<(), BadInput> {
    let chars = id.chars().count();
    if chars == 0 || chars > MAX_ID_CHARS {
        return Err(bad(
            field,
            format!("must be 1 to {MAX_ID_CHARS} characters, got {chars}"),
        ));
    }
    Ok(())
}

impl PublishFields {
    fn validate(self, prefix: &str) -> Result<Publication, BadInput> {
        let topic = Topic::parse(&self.topic).map_err(|e| bad(&format!("{prefix}topic"), e))?;
        if let Some(id) = &self.id {
            validate_publish_id(id, &format!("{prefix}id"))?;
        }
        Ok(Publication {
            topic,
            data: self.data,
            retain: self.retain,
            id: self.id.map(String::into_boxed_str),
        })
    }
}

/// An event must be a JSON object; anything else (a number, a string,
/// `null`) is named in the publisher's terms rather than serde's
/// (`expected struct PublishFields`).
fn expect_object(text: &str, context: &str) -> Result<(), BadInput> {
    let kind = match text.trim_start().bytes().next() {
        Some(b'{') | None => return Ok(()),
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        Some(b'-' | b'0'..=b'9') => "a number",
        Some(_) => return Ok(()), // not JSON at all: from_json says where
    };
    Err(bad(
        context,
        format!(r#"expected an event object {{"topic": …, "data": …}}, got {kind}"#),
    ))
}

/// A publish body: one event object, or a non-empty array of them. The
/// whole body is validated before anything is applied.
pub fn parse_publish_body(body: &[u8]) -> Result<(Vec<Publication>, bool), BadInput> {
    let text = std::str::from_utf8(body).map_err(|_| BadInput("body: not valid UTF-8".into()))?;
    let is_array = text.trim_start().starts_with('[');
    if !is_array {
        expect_object(text, "body")?;
        let fields: PublishFields = from_json(text, "body")?;
        return Ok((vec![fields.validate("")?], false));
    }
    let items: Vec<&RawValue> = from_json(text, "body")?;
    if items.is_empty() {
        return Err(BadInput("body: an empty array publishes nothing".into()));
    }
    let mut batch: Vec<Publication> = Vec::with_capacity(items.len());
    let mut ids = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let prefix = format!("[{i}].");
        expect_object(item.get(), &format!("[{i}]"))?;
        let fields: PublishFields = from_json(item.get(), &format!("[{i}]"))?;
        let publication = fields.validate(&prefix)?;
        if let Some(id) = publication.id.as_deref() {
            if !ids.insert(id.to_owned()) {
                return Err(bad(&format!("[{i}].id"), "repeats an id of this batch"));
            }
        }
        batch.push(publication);
    }
    Ok((batch, true))
}

/// A frame a WebSocket client sends.
#[derive(Debug)]
pub enum ClientFrame {
    Subscribe(Vec<Pattern>),
    Unsubscribe(Vec<Pattern>),
    Publish(Publication),
    /// `{"type":"auth","token":"..."}`: the access token (first frame, or
    /// a fresh one before the current one expires). Never logged.
    Auth(String),
}

/// All fields any client frame may carry; `type` picks which are required.
/// (serde's tagged enums cannot hold a `RawValue`, so the dispatch is ours.)
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientFrame {
    #[serde(rename = "type")]
    kind: String,
    topics: Option<Vec<String>>,
    topic: Option<String>,
    data: Option<Box<RawValue>>,
    retain: Option<bool>,
    token: Option<String>,
}

pub fn parse_client_frame(text: &str) -> Result<ClientFrame, BadInput> {
    let raw: RawClientFrame = from_json(text, "frame")?;
    let patterns = |topics: Option<Vec<String>>| -> Result<Vec<Pattern>, BadInput> {
        let topics = topics.ok_or_else(|| bad("topics", "required"))?;
        if topics.is_empty() {
            return Err(bad("topics", "must name at least one topic"));
        }
        topics
            .iter()
            .map(|t| Pattern::parse(t).map_err(|e| bad("topics", format!("{t:?} {e}"))))
            .collect()
    };
    match raw.kind.as_str() {
        "subscribe" => Ok(ClientFrame::Subscribe(patterns(raw.topics)?)),
        "unsubscribe" => Ok(ClientFrame::Unsubscribe(patterns(raw.topics)?)),
        "publish" => {
            let fields = PublishFields {
                topic: raw.topic.ok_or_else(|| bad("topic", "required"))?,
                data: raw.data.ok_or_else(|| bad("data", "required"))?,
                retain: raw.retain.unwrap_or(false),
                id: None,
            };
            Ok(ClientFrame::Publish(fields.validate("")?))
        }
        "auth" => match raw.token {
            Some(token) if !token.is_empty() => Ok(ClientFrame::Auth(token)),
            _ => Err(bad("token", "required")),
        },
        other => Err(bad(
            "type",
            format!("{other:?} is not subscribe, unsubscribe, publish or auth"),
        )),
    }
}

/// Retained state as `{topic: {"seq": S, "data": D}, ...}`.
pub struct StateMap<'a>(pub &'a [Arc<Event>]);

impl Serialize for StateMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Entry<'a> {
            seq: Seq,
            data: &'a RawValue,
        }
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for event in self.0 {
            map.serialize_entry(
                event.topic.as_str(),
                &Entry {
                    seq: event.seq,
                    data: &event.data,
                },
            )?;
        }
        map.end()
    }
}

const EMPTY: &[Arc<Event>] = &[];

/// `{"type":"hello",...}`, the first frame of every stream. The missed
/// events of a resumed snapshot are not in it: they follow as event frames.
pub fn hello_frame(snapshot: &Snapshot) -> String {
    let (mut hello, state) = hello_head(snapshot);
    hello.push_str(&encode(&StateMap(state)));
    hello.push('}');
    hello
}

/// [`hello_frame`] as three pieces, `head + state + "}"`: `state` comes
/// from `states`, shared with every client given the same events, so only
/// the head (~100 bytes) is this client's own.
pub fn hello_pieces(snapshot: &Snapshot, states: &StateEncodings) -> [Bytes; 3] {
    let (head, state) = hello_head(snapshot);
    [
        Bytes::from(head),
        states.get(state),
        Bytes::from_static(b"}"),
    ]
}

/// The hello up to its `state` object (`{"type":"hello",...,"state":`),
/// and the events that object holds (none for a resumed snapshot).
fn hello_head(snapshot: &Snapshot) -> (String, &[Arc<Event>]) {
    let (resumed, state) = match &snapshot.catchup {
        Catchup::Resumed(_) => (true, EMPTY),
        Catchup::Fresh(state) => (false, state.as_slice()),
    };
    // An epoch is a string: encoding it cannot fail.
    let epoch = serde_json::to_string(&snapshot.epoch).unwrap_or_default();
    let head = format!(
        r#"{{"type":"hello","epoch":{epoch},"seq":{},"resumed":{resumed},"state":"#,
        snapshot.seq
    );
    (head, state)
}

/// How many state encodings [`StateEncodings`] keeps: one per set of
/// patterns the clients of a reconnect storm use (a page or two of an app).
const STATE_ENCODINGS: usize = 4;

/// The largest state encoding [`StateEncodings`] keeps. A larger state is
/// encoded for each client, as before: keeping it would pin up to
/// STATE_ENCODINGS copies of a big retained state (and its replaced events)
/// in memory, and its encoding dwarfs the cost of a lookup anyway.
const STATE_ENCODING_MAX_BYTES: usize = 256 * 1024;

/// The encoded `state` of recent hellos, each kept with the events it
/// encodes (the same `Arc`s, in order): clients that connect while the
/// retained state stands still (a reconnect storm after a deploy: every
/// dashboard at once) share one encoding instead of each building its own
/// (20 topics of 3 KB: a 60 KB string per client, encoded, written and
/// freed, whose freed heap the allocator keeps).
///
/// Keyed by identity, not content: an event is immutable and the kept
/// `Arc`s keep it alive, so the same pointers in the same order are the
/// same state. A hub that builds new events for every snapshot (Redis)
/// never hits: it pays a lookup and a copy of the event handles per hello,
/// and its last states stay alive until replaced. Bounded: STATE_ENCODINGS
/// entries of at most STATE_ENCODING_MAX_BYTES, replaced oldest first.
#[derive(Default)]
pub struct StateEncodings {
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    entries: [Option<StateEncoding>; STATE_ENCODINGS],
    /// The entry replaced next.
    next: usize,
}

struct StateEncoding {
    events: Box<[Arc<Event>]>,
    json: Bytes,
    /// Larger than STATE_ENCODING_MAX_BYTES, encoded ahead for one client
    /// ([`StateEncodings::prepare`]): handed out once, then dropped.
    once: bool,
}

impl StateEncodings {
    /// `events` as the `state` object of a frame (`{topic: {"seq": S,
    /// "data": D}, ...}`), shared with earlier callers for the same events.
    pub fn get(&self, events: &[Arc<Event>]) -> Bytes {
        if events.is_empty() {
            return Bytes::from_static(b"{}");
        }
        let same = |kept: &StateEncoding| {
            kept.events.len() == events.len()
                && kept
                    .events
                    .iter()
                    .zip(events)
                    .all(|(a, b)| Arc::ptr_eq(a, b))
        };
        let prepared = {
            let mut kept = self.lock();
            let found = kept
                .entries
                .iter_mut()
                .find(|entry| entry.as_ref().is_some_and(same));
            match found {
                // Shared with every client given these events.
                Some(Some(shared)) if !shared.once => return shared.json.clone(),
                // Encoded ahead for one client: taken.
                Some(entry) => entry.take(),
                None => None,
            }
        };
        match prepared {
            // Its events are freed here, with no lock held.
            Some(prepared) => prepared.json,
            None => self.encode_and_keep(events, false),
        }
    }

    /// Encodes `events` ahead, off the event loop, for the one client
    /// whose hello [`get`](Self::get) will ask for them: a large state
    /// (past STATE_ENCODING_MAX_BYTES, which `get` encodes each time) is
    /// then kept until that `get`. At most STATE_ENCODINGS such entries:
    /// one whose client went away first is replaced like any other.
    pub fn prepare(&self, events: &[Arc<Event>]) {
        if !events.is_empty() {
            self.encode_and_keep(events, true);
        }
    }

    /// Encodes `events` and keeps the encoding when it is small (or
    /// `large_once`, for one taker); answers it.
    fn encode_and_keep(&self, events: &[Arc<Event>], large_once: bool) -> Bytes {
        // Encoded with no lock held: a big state takes milliseconds.
        let json = Bytes::from(encode(&StateMap(events)));
        let once = json.len() > STATE_ENCODING_MAX_BYTES;
        if !once || large_once {
            let entry = StateEncoding {
                events: events.into(),
                json: json.clone(),
                once,
            };
            let replaced = {
                let mut kept = self.lock();
                let at = kept.next;
                kept.next = (at + 1) % STATE_ENCODINGS;
                kept.entries[at].replace(entry)
            };
            // Its events are freed here, with no lock held.
            drop(replaced);
        }
        json
    }

    fn lock(&self) -> MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `{"type":"subscribed","topics":[...],"state":{...}}`.
pub fn subscribed_frame(patterns: &[Pattern], state: &[Arc<Event>]) -> String {
    #[derive(Serialize)]
    struct Subscribed<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        topics: Vec<&'a str>,
        state: StateMap<'a>,
    }
    encode(&Subscribed {
        kind: "subscribed",
        topics: patterns.iter().map(Pattern::as_str).collect(),
        state: StateMap(state),
    })
}

/// `{"type":"reset","epoch":E,"seq":N,"state":{...}}`.
pub fn reset_frame(epoch: &Epoch, seq: Seq, state: &[Arc<Event>]) -> String {
    #[derive(Serialize)]
    struct ResetFrame<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        epoch: &'a Epoch,
        seq: Seq,
        state: StateMap<'a>,
    }
    encode(&ResetFrame {
        kind: "reset",
        epoch,
        seq,
        state: StateMap(state),
    })
}

/// `error` frame codes (the `code` field) that are not an access refusal
/// (those are `auth::Denied::code`: `token_missing`, `token_invalid`,
/// `token_expired`, `not_publisher`, `forbidden`).
pub mod code {
    /// A frame that does not parse, or a binary frame.
    pub const BAD_REQUEST: &str = "bad_request";
    /// MAX_PATTERNS_PER_CLIENT would be passed.
    pub const TOO_MANY_PATTERNS: &str = "too_many_patterns";
    /// MAX_RETAINED_BYTES would be passed.
    pub const RETAINED_FULL: &str = "retained_full";
    /// The backplane (Redis) does not answer.
    pub const UNAVAILABLE: &str = "unavailable";
    /// A fault of ours.
    pub const INTERNAL: &str = "internal";
    /// The connection's token expired: a fresh `auth` frame is due.
    pub const TOKEN_EXPIRED: &str = "token_expired";
    /// A publish id already used, in a batch that is not only repeats.
    pub const REPEATED_ID: &str = "repeated_id";
}

/// The `code` of an `error` frame answering a hub error.
pub fn hub_error_code(error: &HubError) -> &'static str {
    match error {
        HubError::Unavailable => code::UNAVAILABLE,
        HubError::TooManyPatterns { .. } => code::TOO_MANY_PATTERNS,
        HubError::RetainedFull { .. } => code::RETAINED_FULL,
        HubError::UnknownSubscriber => code::INTERNAL,
        HubError::RepeatedId { .. } => code::REPEATED_ID,
    }
}

/// `{"type":"error","code":...,"message":...}`.
pub fn error_frame(code: &str, message: &str) -> String {
    #[derive(Serialize)]
    struct Error<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        code: &'a str,
        message: &'a str,
    }
    // `type` first, like every other frame (a `json!` map would sort it last).
    encode(&Error {
        kind: "error",
        code,
        message,
    })
}

/// The `error` frame a live connection gets when its token's `exp`
/// passes; it is closed LEEWAY later unless a fresh `auth` frame arrives.
pub fn token_expired_frame() -> String {
    error_frame(
        code::TOKEN_EXPIRED,
        "token expired: send a fresh auth frame",
    )
}

/// Our frames hold only strings, numbers and already-valid raw JSON.
fn encode(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| {
        r#"{"type":"error","code":"internal","message":"encoding failed"}"#.to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(pieces: &[Bytes]) -> String {
        String::from_utf8(pieces.concat()).unwrap()
    }

    #[test]
    fn hello_pieces_join_into_the_hello_frame() {
        let states = StateEncodings::default();
        let epoch = Epoch::from_string("e\"1");
        let events = vec![
            Event::retained(3, "prices/a", r#"{"bid":1.5}"#),
            Event::retained(7, "prices/b", "[1,2]"),
        ];
        let mut hellos = Vec::new();
        for catchup in [
            Catchup::Fresh(Vec::new()),
            Catchup::Fresh(events.clone()),
            Catchup::Resumed(events),
        ] {
            let snapshot = Snapshot {
                epoch: epoch.clone(),
                seq: 9,
                catchup,
            };
            let pieces = hello_pieces(&snapshot, &states);
            assert_eq!(joined(&pieces), hello_frame(&snapshot));
            hellos.push(hello_frame(&snapshot));
        }
        let head = r#"{"type":"hello","epoch":"e\"1","seq":9"#;
        assert_eq!(
            hellos,
            [
                format!(r#"{head},"resumed":false,"state":{{}}}}"#),
                format!(
                    r#"{head},"resumed":false,"state":{{"prices/a":{{"seq":3,"data":{{"bid":1.5}}}},"prices/b":{{"seq":7,"data":[1,2]}}}}}}"#
                ),
                format!(r#"{head},"resumed":true,"state":{{}}}}"#),
            ]
        );
    }

    #[test]
    fn clients_given_the_same_events_share_one_state_encoding() {
        let states = StateEncodings::default();
        let a = Event::retained(1, "a", "1");
        let b = Event::retained(2, "b", "2");
        let first = states.get(&[a.clone(), b.clone()]);
        let again = states.get(&[a.clone(), b.clone()]);
        assert_eq!(first.as_ptr(), again.as_ptr(), "not shared");
        assert_eq!(
            &first[..],
            br#"{"a":{"seq":1,"data":1},"b":{"seq":2,"data":2}}"#
        );
        // Another event with the same content is another state (identity,
        // not content): encoded anew, equal bytes.
        let b_again = Event::retained(2, "b", "2");
        let other = states.get(&[a.clone(), b_again]);
        assert_ne!(other.as_ptr(), first.as_ptr());
        assert_eq!(other, first);
        // A subset, and the order, matter.
        assert_eq!(
            &states.get(std::slice::from_ref(&a))[..],
            br#"{"a":{"seq":1,"data":1}}"#
        );
        assert_eq!(
            &states.get(&[b.clone(), a.clone()])[..],
            br#"{"b":{"seq":2,"data":2},"a":{"seq":1,"data":1}}"#
        );
    }

    #[test]
    fn state_encodings_are_bounded() {
        let states = StateEncodings::default();
        let events: Vec<_> = (0..STATE_ENCODINGS as u64 + 2)
            .map(|i| Event::retained(i, "t", "0"))
            .collect();
        let first = states.get(&events[..1]);
        for i in 1..events.len() {
            states.get(&events[i..=i]);
        }
        // The oldest was replaced: its events let go, and encoded anew.
        assert_eq!(
            Arc::strong_count(&events[0]),
            1,
            "a replaced entry's events were kept"
        );
        assert_ne!(states.get(&events[..1]).as_ptr(), first.as_ptr());
        let kept = states.lock().entries.iter().flatten().count();
        assert_eq!(kept, STATE_ENCODINGS);
        // A state past STATE_ENCODING_MAX_BYTES is not kept.
        let big = vec![Event::retained(
            1,
            "big",
            &format!("\"{}\"", "x".repeat(STATE_ENCODING_MAX_BYTES)),
        )];
        let once = states.get(&big);
        assert_ne!(states.get(&big).as_ptr(), once.as_ptr());
        assert_eq!(
            Arc::strong_count(&big[0]),
            1,
            "a big state's events were kept"
        );
    }

    #[test]
    fn a_large_state_prepared_ahead_is_handed_out_once() {
        let states = StateEncodings::default();
        let big = vec![Event::retained(
            1,
            "big",
            &format!("\"{}\"", "x".repeat(STATE_ENCODING_MAX_BYTES)),
        )];
        states.prepare(&big);
        let prepared = states.lock().entries.iter().flatten().count();
        assert_eq!(prepared, 1, "not kept for its client");
        let taken = states.get(&big);
        // Taken, not copied: the same bytes, and the entry (with its
        // events) is gone.
        assert_eq!(Arc::strong_count(&big[0]), 1, "still kept after its get");
        assert!(taken.starts_with(br#"{"big":{"seq":1,"data":"xxx"#));
        // The next client's get encodes anew.
        let again = states.get(&big);
        assert_ne!(again.as_ptr(), taken.as_ptr());
        assert_eq!(again, taken);
        // A small state prepared ahead is an ordinary entry, shared.
        let small = vec![Event::retained(2, "small", "2")];
        states.prepare(&small);
        assert_eq!(states.get(&small).as_ptr(), states.get(&small).as_ptr());
    }

    #[test]
    fn error_frames_name_their_type_first() {
        assert_eq!(
            error_frame("too_many_patterns", "too many patterns"),
            r#"{"type":"error","code":"too_many_patterns","message":"too many patterns"}"#
        );
        assert_eq!(
            token_expired_frame(),
            r#"{"type":"error","code":"token_expired","message":"token expired: send a fresh auth frame"}"#
        );
    }

    #[test]
    fn query_patterns_are_deduplicated_and_capped() {
        let query = SubscriptionQuery::parse_limited(Some("topics=a,b,a,b,a"), 2).unwrap();
        assert_eq!(query.patterns.len(), 2);
        let error = SubscriptionQuery::parse_limited(Some("topics=a,b,c"), 2).unwrap_err();
        assert_eq!(
            error.0,
            "topics: more than MAX_PATTERNS_PER_CLIENT (2) patterns"
        );
    }

    #[test]
    fn query_decodes_percent_but_keeps_plus() {
        let query = SubscriptionQuery::parse(Some("topics=positions/%23,a/+/c&since=7")).unwrap();
        let texts: Vec<_> = query
            .patterns
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect();
        assert_eq!(texts, ["positions/#", "a/+/c"]);
        let resume = query.resume.unwrap();
        assert_eq!((resume.epoch, resume.seq), (None, 7));
    }

    #[test]
    fn query_errors_name_the_field() {
        assert!(SubscriptionQuery::parse(Some("since=abc"))
            .unwrap_err()
            .0
            .starts_with("since"));
        assert!(SubscriptionQuery::parse(Some("topics=a%20b"))
            .unwrap_err()
            .0
            .starts_with("topics"));
        let none = SubscriptionQuery::parse(None).unwrap();
        assert_eq!(none.patterns, [Pattern::everything()]);
        assert!(!none.topics_named);
        let empty = SubscriptionQuery::parse(Some("topics=&token=x")).unwrap();
        assert!(!empty.topics_named);
        let all = SubscriptionQuery::parse(Some("topics=%23")).unwrap();
        assert_eq!(all.patterns, [Pattern::everything()]);
        assert!(all.topics_named);
    }

    #[test]
    fn publish_body_errors_name_the_field() {
        let err = |body: &str| parse_publish_body(body.as_bytes()).unwrap_err().0;
        assert!(err(r#"{"data":1}"#).contains("topic"));
        assert!(err(r#"{"topic":"a b","data":1}"#).starts_with("topic"));
        assert!(err(r#"[{"topic":"a","data":1},{"topic":"","data":1}]"#).starts_with("[1].topic"));
        assert!(err(r#"{"topic":"a","data":1,"extra":2}"#).contains("extra"));
        assert!(err(r#"{"topic":"a","data":1,"retain":"yes"}"#).starts_with("retain"));
        assert!(
            err(r#"[{"topic":"a","data":1},{"topic":"b","data":1,"retain":1}]"#)
                .starts_with("[1].retain")
        );
        assert!(err("[]").contains("empty"));
        // In the publisher's terms, not serde's.
        assert_eq!(
            err(r#"{"topic":"a", 1:2}"#),
            "body: not valid JSON (key must be a string at line 1 column 15)"
        );
        assert_eq!(
            err("42"),
            r#"body: expected an event object {"topic": …, "data": …}, got a number"#
        );
        assert!(
            err(r#"[{"topic":"a","data":1}, "x"]"#).starts_with("[1]: expected an event object")
        );
        assert!(err(r#"{"topic":"a","data":1"#).starts_with("body: not valid JSON (EOF"));
        assert_eq!(
            err(r#"{"topic":"prices/#","data":1}"#),
            "topic: publish to a concrete topic, not a pattern (`#` and `+` are for subscribing)"
        );
        assert!(err(r#"{"topic":"a b","data":1}"#).contains("[A-Za-z0-9_.:/-]"));
        assert!(err(r#"{"topic":"a","data":1,"id":""}"#).starts_with("id: must be 1 to 128"));
        let long = format!(r#"{{"topic":"a","data":1,"id":"{}"}}"#, "é".repeat(129));
        assert!(err(&long).starts_with("id: must be 1 to 128 characters, got 129"));
        assert!(err(r#"{"topic":"a","data":1,"id":7}"#).starts_with("id"));
        assert!(
            err(r#"[{"topic":"a","data":1,"id":"x"},{"topic":"b","data":2,"id":"x"}]"#)
                .starts_with("[1].id: repeats")
        );
        let (batch, _) = parse_publish_body(
            format!(r#"{{"topic":"a","data":1,"id":"{}"}}"#, "é".repeat(128)).as_bytes(),
        )
        .unwrap();
        assert_eq!(
            batch[0].id.as_deref().map(|id| id.chars().count()),
            Some(128)
        );
        let (batch, is_array) =
            parse_publish_body(br#"{"topic":"a/b","data":{"x":[1,2]},"retain":true}"#).unwrap();
        assert!(!is_array);
        assert_eq!(batch[0].data.get(), r#"{"x":[1,2]}"#);
    }

    #[test]
    fn client_frames() {
        assert!(matches!(
            parse_client_frame(r#"{"type":"subscribe","topics":["a/#"]}"#),
            Ok(ClientFrame::Subscribe(p)) if p.len() == 1
        ));
        assert!(parse_client_frame(r#"{"type":"shout"}"#)
            .unwrap_err()
            .0
            .starts_with("type"));
        assert!(parse_client_frame(r#"{"type":"publish","data":1}"#)
            .unwrap_err()
            .0
            .starts_with("topic"));
        assert!(parse_client_frame("not json")
            .unwrap_err()
            .0
            .starts_with("frame"));
        assert!(matches!(
            parse_client_frame(r#"{"type":"auth","token":"a.b.c"}"#),
            Ok(ClientFrame::Auth(t)) if t == "a.b.c"
        ));
        assert!(parse_client_frame(r#"{"type":"auth"}"#)
            .unwrap_err()
            .0
            .starts_with("token"));
    }

    #[test]
    fn event_ids_round_trip() {
        let point = parse_event_id("abc123:42").unwrap();
        assert_eq!(point.epoch.unwrap().as_str(), "abc123");
        assert_eq!(point.seq, 42);
        assert!(parse_event_id("nocolon").is_none());
    }
}
