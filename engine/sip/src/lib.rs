//! kuzet's own SIP message layer: zero-copy and lazy.
//!
//! [`parse`] makes one pass over a message: it splits the start line, finds
//! every header line (folded continuation lines included), classifies the
//! names the engine cares about (full and compact forms, any case) and frames
//! the body by Content-Length. It copies nothing and decodes no header
//! value; the decoders in [`syntax`] run only on the values a caller asks
//! for. `rsip` is not used here: it parses everything eagerly (about 3.7 µs
//! a message), ignores Content-Length and rejects several RFC 4475 messages
//! that must parse (see ARCHITECTURE.md).
//!
//! Problems a server should answer (a bad start line, a bad Content-Length)
//! are kept as a [`Defect`] on an otherwise indexed [`Message`], so the
//! caller can still build the 400 from the message's own headers. Only
//! input that cannot be a SIP message at all is an `Err`.

#![forbid(unsafe_code)]

pub mod syntax;
pub mod write;

pub use write::push_u64;

use std::ops::Range;

/// Largest message kuzet accepts, on any transport.
pub const MAX_MESSAGE: usize = 65_535;
/// Most header lines indexed in one message.
pub const MAX_HEADERS: usize = 64;

/// Header names the engine looks up by kind. Everything else is `Other`
/// and can still be found by name with [`Message::header_named`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Hdr {
    /// `Via` (compact form `v`).
    Via = 0,
    /// `From` (compact form `f`).
    From,
    /// `To` (compact form `t`).
    To,
    /// `Call-ID` (compact form `i`).
    CallId,
    /// `CSeq`.
    CSeq,
    /// `Max-Forwards`.
    MaxForwards,
    /// `Content-Length` (compact form `l`).
    ContentLength,
    /// `Content-Type` (compact form `c`).
    ContentType,
    /// `Contact` (compact form `m`).
    Contact,
    /// `P-Asserted-Identity`, the caller identity a trusted network asserts.
    PAssertedIdentity,
    /// `Require`.
    Require,
    /// `Proxy-Require`.
    ProxyRequire,
    /// `Route`.
    Route,
    /// `Privacy` (RFC 3323): what the caller asks to keep from others.
    Privacy,
    /// `P-Preferred-Identity` (RFC 3325): the identity a caller asks to be
    /// asserted.
    PPreferredIdentity,
    /// Any other header name.
    Other,
}

const KNOWN: usize = Hdr::Other as usize;

impl Hdr {
    /// Classifies a header name, case-insensitively, compact forms included.
    fn classify(name: &[u8]) -> Hdr {
        if name.len() == 1 {
            return match name[0] | 0x20 {
                b'v' => Hdr::Via,
                b'f' => Hdr::From,
                b't' => Hdr::To,
                b'i' => Hdr::CallId,
                b'l' => Hdr::ContentLength,
                b'c' => Hdr::ContentType,
                b'm' => Hdr::Contact,
                _ => Hdr::Other,
            };
        }
        let eq = |s: &[u8]| name.eq_ignore_ascii_case(s);
        // Dispatch on length and first letter first: one comparison at most.
        match (name.len(), name[0] | 0x20) {
            (3, b'v') if eq(b"via") => Hdr::Via,
            (4, b'f') if eq(b"from") => Hdr::From,
            (2, b't') if eq(b"to") => Hdr::To,
            (7, b'c') if eq(b"call-id") => Hdr::CallId,
            (4, b'c') if eq(b"cseq") => Hdr::CSeq,
            (12, b'm') if eq(b"max-forwards") => Hdr::MaxForwards,
            (14, b'c') if eq(b"content-length") => Hdr::ContentLength,
            (12, b'c') if eq(b"content-type") => Hdr::ContentType,
            (7, b'c') if eq(b"contact") => Hdr::Contact,
            (19, b'p') if eq(b"p-asserted-identity") => Hdr::PAssertedIdentity,
            (7, b'r') if eq(b"require") => Hdr::Require,
            (13, b'p') if eq(b"proxy-require") => Hdr::ProxyRequire,
            (5, b'r') if eq(b"route") => Hdr::Route,
            (7, b'p') if eq(b"privacy") => Hdr::Privacy,
            (20, b'p') if eq(b"p-preferred-identity") => Hdr::PPreferredIdentity,
            _ => Hdr::Other,
        }
    }
}

/// How the message arrived: framing differs (RFC 3261 section 18.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// One datagram is one message; a missing Content-Length means the body
    /// runs to the end of the datagram.
    Datagram,
    /// A byte stream; Content-Length is required (absent means 0) and a
    /// message may be incomplete.
    Stream,
}

/// Input that is not a SIP message at all, or not a whole one yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// No bytes at all.
    #[error("empty message")]
    Empty,
    /// Larger than [`MAX_MESSAGE`] bytes (or would be, once complete).
    #[error("message larger than {MAX_MESSAGE} bytes")]
    TooLarge,
    /// The first line cannot begin a SIP message.
    #[error("start line is not SIP")]
    NotSip,
    /// Stream only: more bytes are needed.
    #[error("incomplete message")]
    Incomplete,
}

/// Something wrong in an otherwise indexed message; a request with a defect
/// gets a 400 built from its own headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Defect {
    /// The request or status line is malformed (extra spaces, bad URI
    /// characters, bad version or status code).
    StartLine,
    /// A header line has no colon or an empty or invalid name.
    HeaderLine,
    /// More than [`MAX_HEADERS`] header lines.
    TooManyHeaders,
    /// No empty line ends the headers.
    NoEndOfHeaders,
    /// Content-Length is not a number.
    BadContentLength,
    /// Content-Length appears more than once.
    DuplicateContentLength,
    /// Content-Length is larger than the body that arrived.
    BodyTruncated,
}

impl Defect {
    /// The reason phrase for the 400 this defect earns.
    pub fn reason(self) -> &'static str {
        match self {
            Defect::StartLine => "Bad Request Line",
            Defect::HeaderLine => "Bad Header Line",
            Defect::TooManyHeaders => "Too Many Headers",
            Defect::NoEndOfHeaders => "Incomplete Headers",
            Defect::BadContentLength => "Bad Content-Length",
            Defect::DuplicateContentLength => "Multiple Content-Length",
            Defect::BodyTruncated => "Content-Length Exceeds Body",
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    kind: u8,
    name: (u16, u16),
    value: (u16, u16),
}

/// The start line, as byte ranges into the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartLine {
    /// `METHOD SP Request-URI SP SIP-Version`.
    Request {
        /// Byte range of the method.
        method: (u16, u16),
        /// Byte range of the Request-URI.
        uri: (u16, u16),
        /// Byte range of the SIP version.
        version: (u16, u16),
    },
    /// `SIP-Version SP Status-Code SP Reason-Phrase`.
    Response {
        /// The status code.
        code: u16,
        /// Byte range of the reason phrase.
        reason: (u16, u16),
    },
}

/// An indexed SIP message borrowing the bytes it came in.
#[derive(Clone)]
pub struct Message<'a> {
    buf: &'a [u8],
    start: StartLine,
    slots: [Slot; MAX_HEADERS],
    count: u8,
    first: [u8; KNOWN],
    counts: [u8; KNOWN],
    body: (u16, u16),
    defect: Option<Defect>,
    len: usize,
}

fn r(range: (u16, u16)) -> Range<usize> {
    range.0 as usize..range.1 as usize
}

impl<'a> Message<'a> {
    /// The start line.
    pub fn start(&self) -> StartLine {
        self.start
    }

    /// True for a request, false for a response.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The request method; empty for a response.
    pub fn method(&self) -> &'a [u8] {
        match self.start {
            StartLine::Request { method, .. } => &self.buf[r(method)],
            StartLine::Response { .. } => b"",
        }
    }

    /// The Request-URI; empty for a response.
    pub fn request_uri(&self) -> &'a [u8] {
        match self.start {
            StartLine::Request { uri, .. } => &self.buf[r(uri)],
            StartLine::Response { .. } => b"",
        }
    }

    /// The SIP version of a request (`SIP/2.0`).
    pub fn version(&self) -> &'a [u8] {
        match self.start {
            StartLine::Request { version, .. } => &self.buf[r(version)],
            StartLine::Response { .. } => b"SIP/2.0",
        }
    }

    /// The status code of a response; 0 for a request.
    pub fn status(&self) -> u16 {
        match self.start {
            StartLine::Response { code, .. } => code,
            StartLine::Request { .. } => 0,
        }
    }

    /// The reason phrase of a response.
    pub fn reason_phrase(&self) -> &'a [u8] {
        match self.start {
            StartLine::Response { reason, .. } => &self.buf[r(reason)],
            StartLine::Request { .. } => b"",
        }
    }

    /// The first defect found, if any.
    pub fn defect(&self) -> Option<Defect> {
        self.defect
    }

    /// The body, framed by Content-Length.
    pub fn body(&self) -> &'a [u8] {
        &self.buf[r(self.body)]
    }

    /// Bytes of input this message used (stream framing consumes this many).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true for a parsed message.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The message bytes: start line, headers and body.
    pub fn bytes(&self) -> &'a [u8] {
        &self.buf[..self.len]
    }

    /// The first value of a known header, trimmed (may contain folding).
    pub fn header(&self, h: Hdr) -> Option<&'a [u8]> {
        let i = *self.first.get(h as usize)?;
        if i == u8::MAX {
            return None;
        }
        Some(&self.buf[r(self.slots[i as usize].value)])
    }

    /// How many header lines of a known kind the message has.
    pub fn count(&self, h: Hdr) -> usize {
        self.counts.get(h as usize).map_or(0, |c| *c as usize)
    }

    /// Every header line, in order: `(kind, name, value)`.
    pub fn headers(&self) -> impl Iterator<Item = HeaderLine<'a>> + '_ {
        self.slots[..self.count as usize]
            .iter()
            .map(|s| HeaderLine {
                kind: kind_of(s.kind),
                name: &self.buf[r(s.name)],
                value: &self.buf[r(s.value)],
                line: s.name.0 as usize..s.value.1 as usize,
            })
    }

    /// Every value line of a known header kind, in order.
    pub fn all(&self, h: Hdr) -> impl Iterator<Item = &'a [u8]> + '_ {
        let buf = self.buf;
        let want = h as u8;
        let start = self.first.get(h as usize).copied().unwrap_or(u8::MAX);
        let from = if start == u8::MAX { self.count } else { start } as usize;
        self.slots[from..self.count as usize]
            .iter()
            .filter(move |s| s.kind == want)
            .map(move |s| &buf[r(s.value)])
    }

    /// The first value of a header found by name, case-insensitively.
    pub fn header_named(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.headers()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

fn kind_of(k: u8) -> Hdr {
    const ALL: [Hdr; KNOWN + 1] = [
        Hdr::Via,
        Hdr::From,
        Hdr::To,
        Hdr::CallId,
        Hdr::CSeq,
        Hdr::MaxForwards,
        Hdr::ContentLength,
        Hdr::ContentType,
        Hdr::Contact,
        Hdr::PAssertedIdentity,
        Hdr::Require,
        Hdr::ProxyRequire,
        Hdr::Route,
        Hdr::Privacy,
        Hdr::PPreferredIdentity,
        Hdr::Other,
    ];
    ALL.get(k as usize).copied().unwrap_or(Hdr::Other)
}

/// One header line as found in the message.
#[derive(Clone, Debug)]
pub struct HeaderLine<'a> {
    /// Its kind, or `Other`.
    pub kind: Hdr,
    /// The name as written.
    pub name: &'a [u8],
    /// The value, trimmed; may contain folded line breaks.
    pub value: &'a [u8],
    /// Where the whole line sits in the message (without its CRLF).
    pub line: Range<usize>,
}

/// RFC 3261 `token` characters, as a table: one load per byte.
static TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        i += 1;
    }
    t
};

/// Bytes that may not appear in a Request-URI on the wire.
pub(crate) static URI_BAD: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b <= b' ' || b >= 0x7f || b == b'<' || b == b'>' || b == b'"';
        i += 1;
    }
    t
};

/// RFC 3261 `token` characters.
#[inline(always)]
pub fn is_token(b: u8) -> bool {
    TOKEN[b as usize]
}

/// Finds the end of the line starting at `from`: returns (end of content,
/// start of next line). Accepts CRLF and bare LF.
#[inline(always)]
fn line_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let i = memchr::memchr(b'\n', &buf[from..])? + from;
    let end = if i > from && buf[i - 1] == b'\r' {
        i - 1
    } else {
        i
    };
    Some((end, i + 1))
}

#[inline(always)]
fn trim(buf: &[u8], mut s: usize, mut e: usize) -> (usize, usize) {
    while s < e && matches!(buf[s], b' ' | b'\t' | b'\r' | b'\n') {
        s += 1;
    }
    while e > s && matches!(buf[e - 1], b' ' | b'\t' | b'\r' | b'\n') {
        e -= 1;
    }
    (s, e)
}

/// Parses a status or request line; `None` when malformed.
fn start_line(line: &[u8]) -> Option<StartLine> {
    if line.starts_with(b"SIP/") {
        // SIP/2.0 SP 3DIGIT SP reason
        let sp = line.iter().position(|&b| b == b' ')?;
        let rest = &line[sp + 1..];
        if rest.len() < 3 || !rest[..3].iter().all(u8::is_ascii_digit) {
            return None;
        }
        if rest.len() > 3 && rest[3] != b' ' {
            return None;
        }
        let code = rest[..3]
            .iter()
            .fold(0u16, |v, d| v * 10 + u16::from(d - b'0'));
        if !(100..=699).contains(&code) || !version_ok(&line[..sp]) {
            return None;
        }
        let rs = (sp + 5).min(line.len());
        return Some(StartLine::Response {
            code,
            reason: (rs as u16, line.len() as u16),
        });
    }
    let m = line.iter().position(|&b| b == b' ')?;
    let u = line[m + 1..].iter().position(|&b| b == b' ')? + m + 1;
    let method = &line[..m];
    let uri = &line[m + 1..u];
    let version = &line[u + 1..];
    if method.is_empty() || !method.iter().all(|&b| is_token(b)) {
        return None;
    }
    if uri.is_empty() || uri.iter().any(|&b| URI_BAD[b as usize]) {
        return None;
    }
    if !version_ok(version) {
        return None;
    }
    Some(StartLine::Request {
        method: (0, m as u16),
        uri: ((m + 1) as u16, u as u16),
        version: ((u + 1) as u16, line.len() as u16),
    })
}

/// `SIP/` 1*DIGIT `.` 1*DIGIT, case-insensitively.
fn version_ok(v: &[u8]) -> bool {
    if v.len() < 7 || !v[..4].eq_ignore_ascii_case(b"SIP/") {
        return false;
    }
    let rest = &v[4..];
    match rest.iter().position(|&b| b == b'.') {
        Some(d) => {
            d > 0
                && d + 1 < rest.len()
                && rest[..d].iter().all(u8::is_ascii_digit)
                && rest[d + 1..].iter().all(u8::is_ascii_digit)
        }
        None => false,
    }
}

/// Indexes one message at the start of `buf`.
///
/// With [`Transport::Datagram`], `buf` is the whole datagram; bytes past
/// Content-Length are ignored. With [`Transport::Stream`], `buf` may hold
/// less than a message (`Err(Incomplete)`) or more than one
/// ([`Message::len`] says how much this one used). Leading CRLFs
/// (keep-alives) are skipped only by the stream framer, not here.
pub fn parse(buf: &[u8], transport: Transport) -> Result<Message<'_>, ParseError> {
    if buf.is_empty() {
        return Err(ParseError::Empty);
    }
    let buf = if buf.len() > MAX_MESSAGE {
        if transport == Transport::Datagram {
            return Err(ParseError::TooLarge);
        }
        &buf[..MAX_MESSAGE]
    } else {
        buf
    };
    let incomplete = |full: bool| {
        if transport == Transport::Stream && !full {
            Err(ParseError::Incomplete)
        } else {
            Err(ParseError::TooLarge)
        }
    };
    let truncated_input = buf.len() == MAX_MESSAGE;
    let Some((sl_end, mut pos)) = line_end(buf, 0) else {
        return match transport {
            Transport::Stream => incomplete(truncated_input),
            Transport::Datagram => Err(ParseError::NotSip),
        };
    };
    let first = &buf[..sl_end];
    if first.is_empty() || !(is_token(first[0])) {
        return Err(ParseError::NotSip);
    }
    let mut defect = None;
    let start = match start_line(first) {
        Some(s) => s,
        None => {
            defect = Some(Defect::StartLine);
            // Keep the kind so the caller knows whether to answer.
            if first.starts_with(b"SIP/") {
                StartLine::Response {
                    code: 0,
                    reason: (0, 0),
                }
            } else {
                StartLine::Request {
                    method: (0, 0),
                    uri: (0, 0),
                    version: (0, 0),
                }
            }
        }
    };
    let mut m = Message {
        buf,
        start,
        slots: [Slot::default(); MAX_HEADERS],
        count: 0,
        first: [u8::MAX; KNOWN],
        counts: [0; KNOWN],
        body: (0, 0),
        defect: None,
        len: 0,
    };
    let mut content_length: Option<usize> = None;
    let mut end_of_headers = None;
    while let Some((end, next)) = line_end(buf, pos) {
        if end == pos {
            end_of_headers = Some(next);
            break;
        }
        // Gather folded continuation lines into this header.
        let mut value_end = end;
        let mut after = next;
        while after < buf.len() && matches!(buf[after], b' ' | b'\t') {
            match line_end(buf, after) {
                Some((e, n)) => {
                    value_end = e;
                    after = n;
                }
                None => {
                    after = buf.len() + 1;
                    break;
                }
            }
        }
        if after > buf.len() {
            break; // a folded line ran off the end: headers are incomplete
        }
        if transport == Transport::Stream && after == buf.len() {
            // The next byte decides whether this line is folded further.
            break;
        }
        // name = token, then optional white space, then ':'. One short scan
        // replaces a search for the colon plus a check of the name.
        let (ns, mut i) = (pos, pos);
        while i < value_end && is_token(buf[i]) {
            i += 1;
        }
        let ne = i;
        while i < value_end && matches!(buf[i], b' ' | b'\t') {
            i += 1;
        }
        if ne == ns || i >= value_end || buf[i] != b':' {
            defect.get_or_insert(Defect::HeaderLine);
            pos = after;
            continue;
        }
        let colon = i - pos;
        let name = &buf[ns..ne];
        if m.count as usize == MAX_HEADERS {
            defect.get_or_insert(Defect::TooManyHeaders);
            pos = after;
            continue;
        }
        let kind = Hdr::classify(name);
        let (vs, ve) = trim(buf, pos + colon + 1, value_end);
        let idx = m.count;
        m.slots[idx as usize] = Slot {
            kind: kind as u8,
            name: (ns as u16, ne as u16),
            value: (vs as u16, ve as u16),
        };
        m.count += 1;
        if kind != Hdr::Other {
            let k = kind as usize;
            if m.first[k] == u8::MAX {
                m.first[k] = idx;
            }
            m.counts[k] = m.counts[k].saturating_add(1);
            if kind == Hdr::ContentLength {
                if content_length.is_some() {
                    defect.get_or_insert(Defect::DuplicateContentLength);
                }
                match parse_u32(&buf[vs..ve]) {
                    Some(v) => content_length = Some(v as usize),
                    None => {
                        defect.get_or_insert(Defect::BadContentLength);
                        content_length.get_or_insert(0);
                    }
                }
            }
        }
        pos = after;
    }
    let Some(body_start) = end_of_headers else {
        if transport == Transport::Stream {
            return incomplete(truncated_input);
        }
        defect.get_or_insert(Defect::NoEndOfHeaders);
        m.body = (buf.len() as u16, buf.len() as u16);
        m.len = buf.len();
        m.defect = defect;
        return Ok(m);
    };
    let available = buf.len() - body_start;
    let body_len = match (content_length, transport) {
        (Some(n), _) => n,
        (None, Transport::Datagram) => available,
        (None, Transport::Stream) => 0,
    };
    let body_len = if body_len > available {
        if transport == Transport::Stream {
            return Err(if body_start + body_len > MAX_MESSAGE {
                ParseError::TooLarge
            } else {
                ParseError::Incomplete
            });
        }
        defect.get_or_insert(Defect::BodyTruncated);
        available
    } else {
        body_len
    };
    m.body = (body_start as u16, (body_start + body_len) as u16);
    m.len = body_start + body_len;
    m.defect = defect;
    Ok(m)
}

/// A decimal number of at most 10 digits that fits `u32`, trimmed.
pub fn parse_u32(v: &[u8]) -> Option<u32> {
    let (s, e) = trim(v, 0, v.len());
    let v = &v[s..e];
    if v.is_empty() || v.len() > 10 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    u32::try_from(n).ok()
}

/// A decimal number of at most 20 digits that fits `u64`, trimmed.
pub fn parse_u64(v: &[u8]) -> Option<u64> {
    let (s, e) = trim(v, 0, v.len());
    let v = &v[s..e];
    if v.is_empty() || v.len() > 20 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests;
