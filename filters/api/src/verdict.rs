//! The owned vocabulary of a filter's answers, shared by the daemon and the Rust glue:
//! one [`Decision`] type for what a filter decides about an event, one [`Edit`] type
//! for what it changes at the end of a message. The wire form is [`Frame`]; these are
//! its owned counterparts, converted both ways here and nowhere else.

use crate::codec::{self, Frame};

/// A filter's decision about an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go on.
    Proceed,
    /// Refuse with a 4xx or 5xx code and text (the text may start with an enhanced
    /// status code, e.g. `"5.7.1 not wanted"`).
    Reject(u16, String),
    /// Refuse for now (451, or 421 before the greeting).
    Tempfail(String),
    /// Reply with a 4xx or 5xx code and text, then close the connection.
    Disconnect(u16, String),
    /// Go on and mark the message as spam.
    Junk,
    /// Go on with this value instead (HELO name or address).
    Rewrite(String),
    /// At end of message only: accept the message and drop it.
    Discard,
}

/// An end-of-message change a filter asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Append a header at the end of the header section.
    AddHeader(String, String),
    /// Insert a header before the `index`-th (0 = first).
    InsertHeader(u32, String, String),
    /// Change the `index`-th (1-based) header called `name`; an empty value deletes it.
    ChangeHeader(u32, String, String),
    /// The new body, or (as received) a chunk of it: chunks add up.
    ReplaceBody(Vec<u8>),
    /// Add a recipient.
    AddRcpt(String),
    /// Remove a recipient.
    DelRcpt(String),
    /// Change the sender.
    ChangeFrom(String),
    /// Hold the message in the queue, with a reason.
    Quarantine(String),
}

/// Largest chunk of a replaced body in one frame (a string holds at most 65535 bytes).
const BODY_CHUNK: usize = 60_000;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Decision {
    /// The decision a frame carries, or `None` for any other frame.
    pub fn from_frame(f: &Frame) -> Option<Decision> {
        Some(match *f {
            Frame::Proceed => Decision::Proceed,
            Frame::Reject { code, text: t } => Decision::Reject(code, text(t)),
            Frame::Tempfail(t) => Decision::Tempfail(text(t)),
            Frame::DisconnectAnswer { code, text: t } => Decision::Disconnect(code, text(t)),
            Frame::Junk => Decision::Junk,
            Frame::Rewrite(v) => Decision::Rewrite(text(v)),
            Frame::Discard => Decision::Discard,
            _ => return None,
        })
    }

    /// The frame that carries the decision.
    pub fn frame(&self) -> Frame<'_> {
        match self {
            Decision::Proceed => Frame::Proceed,
            Decision::Reject(code, t) => Frame::Reject {
                code: *code,
                text: t.as_bytes(),
            },
            Decision::Tempfail(t) => Frame::Tempfail(t.as_bytes()),
            Decision::Disconnect(code, t) => Frame::DisconnectAnswer {
                code: *code,
                text: t.as_bytes(),
            },
            Decision::Junk => Frame::Junk,
            Decision::Rewrite(v) => Frame::Rewrite(v.as_bytes()),
            Decision::Discard => Frame::Discard,
        }
    }
}

impl Edit {
    /// The edit a frame carries (a body chunk for REPLACE_BODY), or `None` for any
    /// other frame.
    pub fn from_frame(f: &Frame) -> Option<Edit> {
        Some(match *f {
            Frame::AddHeader { name, value } => Edit::AddHeader(text(name), text(value)),
            Frame::InsertHeader { index, name, value } => {
                Edit::InsertHeader(index, text(name), text(value))
            }
            Frame::ChangeHeader { index, name, value } => {
                Edit::ChangeHeader(index, text(name), text(value))
            }
            Frame::ReplaceBody(b) => Edit::ReplaceBody(b.to_vec()),
            Frame::AddRcpt(a) => Edit::AddRcpt(text(a)),
            Frame::DelRcpt(a) => Edit::DelRcpt(text(a)),
            Frame::ChangeFrom(a) => Edit::ChangeFrom(text(a)),
            Frame::Quarantine(r) => Edit::Quarantine(text(r)),
            _ => return None,
        })
    }

    /// Encodes the edit for session `sid` onto `out`: one frame, or for a long body
    /// as many REPLACE_BODY frames as it needs.
    pub fn encode(&self, sid: u64, out: &mut Vec<u8>) {
        let f = match self {
            Edit::AddHeader(n, v) => Frame::AddHeader {
                name: n.as_bytes(),
                value: v.as_bytes(),
            },
            Edit::InsertHeader(i, n, v) => Frame::InsertHeader {
                index: *i,
                name: n.as_bytes(),
                value: v.as_bytes(),
            },
            Edit::ChangeHeader(i, n, v) => Frame::ChangeHeader {
                index: *i,
                name: n.as_bytes(),
                value: v.as_bytes(),
            },
            Edit::ReplaceBody(b) => {
                let mut chunks = b.chunks(BODY_CHUNK).peekable();
                if chunks.peek().is_none() {
                    return codec::encode(sid, &Frame::ReplaceBody(b""), out);
                }
                for c in chunks {
                    codec::encode(sid, &Frame::ReplaceBody(c), out);
                }
                return;
            }
            Edit::AddRcpt(a) => Frame::AddRcpt(a.as_bytes()),
            Edit::DelRcpt(a) => Frame::DelRcpt(a.as_bytes()),
            Edit::ChangeFrom(a) => Frame::ChangeFrom(a.as_bytes()),
            Edit::Quarantine(r) => Frame::Quarantine(r.as_bytes()),
        };
        codec::encode(sid, &f, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Decoder;

    #[test]
    fn decisions_round_trip_through_their_frames() {
        for d in [
            Decision::Proceed,
            Decision::Reject(550, "5.7.1 no".into()),
            Decision::Tempfail("later".into()),
            Decision::Disconnect(421, "bye".into()),
            Decision::Junk,
            Decision::Rewrite("a@b.example".into()),
            Decision::Discard,
        ] {
            assert_eq!(Decision::from_frame(&d.frame()), Some(d.clone()));
        }
        assert_eq!(Decision::from_frame(&Frame::Data), None);
    }

    #[test]
    fn edits_round_trip_and_long_bodies_go_in_chunks() {
        for e in [
            Edit::AddHeader("X-A".into(), "1".into()),
            Edit::InsertHeader(2, "X-B".into(), "2".into()),
            Edit::ChangeHeader(1, "Subject".into(), String::new()),
            Edit::AddRcpt("a@b.example".into()),
            Edit::DelRcpt("c@d.example".into()),
            Edit::ChangeFrom("e@f.example".into()),
            Edit::Quarantine("why".into()),
            Edit::ReplaceBody(b"short\n".to_vec()),
        ] {
            let mut out = Vec::new();
            e.encode(7, &mut out);
            let mut d = Decoder::default();
            d.feed(&out);
            let got = match d.next_frame() {
                Ok(Some((7, f))) => Edit::from_frame(&f),
                _ => None,
            };
            assert_eq!(got, Some(e));
        }
        let body = vec![b'x'; BODY_CHUNK * 2 + 5];
        let mut out = Vec::new();
        Edit::ReplaceBody(body.clone()).encode(9, &mut out);
        let mut d = Decoder::default();
        d.feed(&out);
        let (mut frames, mut joined) = (0, Vec::new());
        while let Ok(Some((9, Frame::ReplaceBody(b)))) = d.next_frame() {
            frames += 1;
            joined.extend_from_slice(b);
        }
        assert_eq!((frames, joined), (3, body));
        assert_eq!(Edit::from_frame(&Frame::Proceed), None);
    }
}
