//! Decoders for the header values and URIs that scoring and routing need.
//!
//! Each decoder takes a value slice from [`super::Message`] and returns
//! borrowed pieces of it, or a [`SyntaxError`] small enough to return on the
//! hot path. Line folding inside values is linear white space here (RFC 3261
//! section 7.3.1), so folded values decode like unfolded ones.

use super::{is_token, URI_BAD};

/// Position of `c` in a short slice. Header values are tens of bytes, where
/// a plain loop beats setting up a SIMD search.
#[inline(always)]
fn find(c: u8, b: &[u8]) -> Option<usize> {
    b.iter().position(|&x| x == c)
}

/// Why a value did not decode. Kept as a small enum: no strings, no boxes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    /// A URI is malformed: bad characters, empty user, bad host or port.
    #[error("bad URI")]
    Uri,
    /// The URI has no scheme, or an invalid one.
    #[error("bad URI scheme")]
    Scheme,
    /// A quoted string is never closed.
    #[error("unbalanced quotes")]
    Quote,
    /// The display name before `<` is neither quoted nor plain tokens.
    #[error("bad display name")]
    DisplayName,
    /// A `<...>` address is missing, unclosed or empty, or an address
    /// without brackets holds characters that need them.
    #[error("bad angle-bracketed address")]
    Angle,
    /// A `;name[=value]` parameter is empty or malformed.
    #[error("bad parameter")]
    Param,
    /// A Via value is malformed (protocol, transport, sent-by or port).
    #[error("bad Via")]
    Via,
    /// A CSeq value is not a number below 2^31 followed by a method.
    #[error("bad CSeq")]
    CSeq,
    /// Unexpected bytes after an otherwise complete value.
    #[error("trailing garbage")]
    Trailing,
}

#[inline]
fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Index of the first non-LWS byte at or after `i`.
#[inline]
pub fn skip_lws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_lws(b[i]) {
        i += 1;
    }
    i
}

/// Trims linear white space from both ends.
pub fn trim_lws(b: &[u8]) -> &[u8] {
    let s = skip_lws(b, 0);
    let mut e = b.len();
    while e > s && is_lws(b[e - 1]) {
        e -= 1;
    }
    &b[s..e]
}

/// End (exclusive) of a quoted string whose opening quote is at `i`.
fn quoted_end(b: &[u8], i: usize) -> Result<usize, SyntaxError> {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' => return Ok(j + 1),
            _ => j += 1,
        }
    }
    Err(SyntaxError::Quote)
}

/// Splits a header value at the commas that separate values, skipping
/// commas inside quotes and angle brackets.
pub fn split_values(v: &[u8]) -> SplitValues<'_> {
    SplitValues { b: v, pos: 0 }
}

/// Iterator returned by [`split_values`].
pub struct SplitValues<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for SplitValues<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.pos > self.b.len() {
            return None;
        }
        let start = self.pos;
        let mut i = start;
        let mut angle = false;
        while i < self.b.len() {
            match self.b[i] {
                b'"' => match quoted_end(self.b, i) {
                    Ok(e) => {
                        i = e;
                        continue;
                    }
                    Err(_) => {
                        i = self.b.len();
                        break;
                    }
                },
                b'<' => angle = true,
                b'>' => angle = false,
                b',' if !angle => break,
                _ => {}
            }
            i += 1;
        }
        self.pos = i + 1;
        Some(trim_lws(&self.b[start..i.min(self.b.len())]))
    }
}

/// URI schemes kuzet tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `sip:`.
    Sip,
    /// `sips:` (SIP over TLS).
    Sips,
    /// `tel:`, a telephone number (RFC 3966).
    Tel,
    /// Any other well-formed scheme (`http:`, `isbn:`...): opaque.
    Other,
}

/// A decoded URI, borrowing its pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uri<'a> {
    /// The URI scheme; only sip, sips and tel are decoded further.
    pub scheme: Scheme,
    /// sip/sips: the userinfo before `@` (user parameters included, password
    /// excluded); tel: the number.
    pub user: Option<&'a [u8]>,
    /// sip/sips: host name, IPv4 address or bracketed IPv6 reference.
    pub host: &'a [u8],
    /// sip/sips: the port after the host, if given.
    pub port: Option<u16>,
    /// URI parameters, starting with `;` (empty if none).
    pub params: &'a [u8],
    /// URI headers after `?` (empty if none).
    pub headers: &'a [u8],
}

impl<'a> Uri<'a> {
    /// The user part without user parameters (`+7701...;npdi` -> `+7701...`).
    pub fn user_number(&self) -> Option<&'a [u8]> {
        let u = self.user?;
        Some(match find(b';', u) {
            Some(i) => &u[..i],
            None => u,
        })
    }
}

fn host_ok(h: &[u8]) -> bool {
    if h.is_empty() {
        return false;
    }
    if h[0] == b'[' {
        return h.len() > 2
            && h[h.len() - 1] == b']'
            && h[1..h.len() - 1]
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
    }
    h.iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// Decodes a URI. Accepts any well-formed scheme; decodes sip, sips and tel.
pub fn parse_uri(u: &[u8]) -> Result<Uri<'_>, SyntaxError> {
    let colon = find(b':', u).ok_or(SyntaxError::Scheme)?;
    let scheme = &u[..colon];
    if scheme.is_empty()
        || !scheme[0].is_ascii_alphabetic()
        || !scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        return Err(SyntaxError::Scheme);
    }
    let rest = &u[colon + 1..];
    if rest.is_empty() || rest.iter().any(|&b| URI_BAD[b as usize]) {
        return Err(SyntaxError::Uri);
    }
    let kind = if scheme.eq_ignore_ascii_case(b"sip") {
        Scheme::Sip
    } else if scheme.eq_ignore_ascii_case(b"sips") {
        Scheme::Sips
    } else if scheme.eq_ignore_ascii_case(b"tel") {
        Scheme::Tel
    } else {
        Scheme::Other
    };
    let none = Uri {
        scheme: kind,
        user: None,
        host: b"",
        port: None,
        params: b"",
        headers: b"",
    };
    match kind {
        Scheme::Other => Ok(none),
        Scheme::Tel => {
            let (num, params) = match find(b';', rest) {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, &b""[..]),
            };
            if num.is_empty() {
                return Err(SyntaxError::Uri);
            }
            Ok(Uri {
                user: Some(num),
                params,
                ..none
            })
        }
        Scheme::Sip | Scheme::Sips => {
            // The userinfo may hold '?' and ';' but never a bare '@'
            // (header values must escape it), so the first '@' ends it.
            let (user, after_user) = match find(b'@', rest) {
                Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
                None => (None, rest),
            };
            let (main, headers) = match find(b'?', after_user) {
                Some(i) => (&after_user[..i], &after_user[i + 1..]),
                None => (after_user, &b""[..]),
            };
            let (user, hostpart) = match user {
                Some(ui) => {
                    // Drop a password (`user:pass`), keep user parameters.
                    let user = match find(b':', ui) {
                        Some(c) => &ui[..c],
                        None => ui,
                    };
                    if user.is_empty() {
                        return Err(SyntaxError::Uri);
                    }
                    (Some(user), main)
                }
                None => (None, main),
            };
            let (hostport, params) = match find(b';', hostpart) {
                Some(i) => (&hostpart[..i], &hostpart[i..]),
                None => (hostpart, &b""[..]),
            };
            let (host, port) = if hostport.first() == Some(&b'[') {
                let close = find(b']', hostport).ok_or(SyntaxError::Uri)?;
                let tail = &hostport[close + 1..];
                let port = match tail {
                    [] => None,
                    [b':', p @ ..] => Some(parse_port(p)?),
                    _ => return Err(SyntaxError::Uri),
                };
                (&hostport[..=close], port)
            } else {
                match find(b':', hostport) {
                    Some(c) => (&hostport[..c], Some(parse_port(&hostport[c + 1..])?)),
                    None => (hostport, None),
                }
            };
            if !host_ok(host) {
                return Err(SyntaxError::Uri);
            }
            Ok(Uri {
                scheme: kind,
                user,
                host,
                port,
                params,
                headers,
            })
        }
    }
}

fn parse_port(p: &[u8]) -> Result<u16, SyntaxError> {
    if p.is_empty() || p.len() > 5 || !p.iter().all(u8::is_ascii_digit) {
        return Err(SyntaxError::Uri);
    }
    let v = p.iter().fold(0u32, |v, d| v * 10 + u32::from(d - b'0'));
    u16::try_from(v).map_err(|_| SyntaxError::Uri)
}

/// Scans `;name[=value]` parameters from `i`; returns where they stop (at
/// a comma or the end). An empty or malformed parameter is an error.
fn scan_params(b: &[u8], mut i: usize) -> Result<usize, SyntaxError> {
    loop {
        i = skip_lws(b, i);
        if i >= b.len() || b[i] == b',' {
            return Ok(i);
        }
        if b[i] != b';' {
            return Err(SyntaxError::Trailing);
        }
        i = skip_lws(b, i + 1);
        let ns = i;
        while i < b.len() && is_token(b[i]) {
            i += 1;
        }
        if i == ns {
            return Err(SyntaxError::Param);
        }
        let j = skip_lws(b, i);
        if j < b.len() && b[j] == b'=' {
            i = skip_lws(b, j + 1);
            if i >= b.len() {
                return Err(SyntaxError::Param);
            }
            if b[i] == b'"' {
                i = quoted_end(b, i)?;
            } else if b[i] == b'[' {
                i = find(b']', &b[i..]).ok_or(SyntaxError::Param)? + i + 1;
            } else {
                let vs = i;
                while i < b.len() && (is_token(b[i]) || b[i] == b':') {
                    i += 1;
                }
                if i == vs {
                    return Err(SyntaxError::Param);
                }
            }
        }
    }
}

/// Finds a parameter's value in a `;a=b;c` list (`Some(b"")` for a flag).
pub fn param<'a>(params: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    for p in params.split(|&b| b == b';') {
        let p = trim_lws(p);
        let (n, v) = match find(b'=', p) {
            Some(i) => (trim_lws(&p[..i]), trim_lws(&p[i + 1..])),
            None => (p, &b""[..]),
        };
        if n.eq_ignore_ascii_case(name) {
            return Some(v);
        }
    }
    None
}

/// A decoded `name-addr` or `addr-spec` (From, To, Contact, P-Asserted-Identity).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// Display name as written (quotes kept), possibly empty.
    pub display: &'a [u8],
    /// The URI, undecoded.
    pub uri: &'a [u8],
    /// Header parameters after the address, starting with `;`.
    pub params: &'a [u8],
}

/// Decodes one name-addr / addr-spec value (no commas: split first).
pub fn parse_name_addr(v: &[u8]) -> Result<NameAddr<'_>, SyntaxError> {
    let v = trim_lws(v);
    let mut i;
    let display_end;
    let uri;
    if v.first() == Some(&b'"') {
        i = quoted_end(v, 0)?;
        display_end = i;
        i = skip_lws(v, i);
        if v.get(i) != Some(&b'<') {
            return Err(SyntaxError::Angle);
        }
    } else {
        // A display name of tokens and LWS before '<', or an addr-spec.
        if let Some(j) = find(b'<', v) {
            display_end = j;
            i = j;
        } else {
            // addr-spec: the URI runs to the first ';' or LWS; it may not
            // hold '?' or ',' without brackets (RFC 3261 section 20.10).
            let mut e = 0;
            while e < v.len() && v[e] != b';' && !is_lws(v[e]) {
                if matches!(v[e], b'?' | b',' | b'<' | b'>' | b'"') {
                    return Err(SyntaxError::Angle);
                }
                e += 1;
            }
            uri = &v[..e];
            if uri.is_empty() || find(b':', uri).is_none() {
                return Err(SyntaxError::Uri);
            }
            let end = scan_params(v, e)?;
            if end != v.len() {
                return Err(SyntaxError::Trailing);
            }
            return Ok(NameAddr {
                display: b"",
                uri,
                params: trim_lws(&v[e..]),
            });
        }
    }
    // v[i] == '<'
    let close = find(b'>', &v[i..]).ok_or(SyntaxError::Angle)? + i;
    uri = &v[i + 1..close];
    if uri.is_empty() || is_lws(uri[0]) || is_lws(uri[uri.len() - 1]) {
        return Err(SyntaxError::Angle);
    }
    let display = trim_lws(&v[..display_end]);
    if display.first() != Some(&b'"') && display.iter().any(|&b| !(is_token(b) || is_lws(b))) {
        return Err(SyntaxError::DisplayName);
    }
    let end = scan_params(v, close + 1)?;
    if end != v.len() {
        return Err(SyntaxError::Trailing);
    }
    Ok(NameAddr {
        display,
        uri,
        params: trim_lws(&v[close + 1..]),
    })
}

/// One decoded Via value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Via<'a> {
    /// `UDP`, `TCP`, `TLS`, `SCTP`...
    pub transport: &'a [u8],
    /// sent-by host.
    pub host: &'a [u8],
    /// sent-by port, if given.
    pub port: Option<u16>,
    /// Parameters, starting with `;`.
    pub params: &'a [u8],
}

impl<'a> Via<'a> {
    /// The branch parameter.
    pub fn branch(&self) -> Option<&'a [u8]> {
        param(self.params, b"branch")
    }
}

fn token_at(b: &[u8], i: usize) -> usize {
    let mut j = i;
    while j < b.len() && is_token(b[j]) {
        j += 1;
    }
    j
}

/// Decodes the first value of a Via header (`SIP/2.0/UDP host:port;params`).
/// White space around the slashes and folding are allowed (RFC 4475 wsinv).
pub fn parse_via(v: &[u8]) -> Result<Via<'_>, SyntaxError> {
    let mut i = skip_lws(v, 0);
    // protocol-name / version / transport
    for part in 0..3 {
        let e = token_at(v, i);
        if e == i {
            return Err(SyntaxError::Via);
        }
        if part == 2 {
            let transport = &v[i..e];
            i = skip_lws(v, e);
            if i == e {
                return Err(SyntaxError::Via);
            }
            let hs = i;
            let he = if v.get(i) == Some(&b'[') {
                find(b']', &v[i..]).ok_or(SyntaxError::Via)? + i + 1
            } else {
                let mut j = i;
                while j < v.len()
                    && (v[j].is_ascii_alphanumeric() || matches!(v[j], b'-' | b'.' | b'_'))
                {
                    j += 1;
                }
                j
            };
            let host = &v[hs..he];
            if !host_ok(host) {
                return Err(SyntaxError::Via);
            }
            i = skip_lws(v, he);
            let mut port = None;
            if v.get(i) == Some(&b':') {
                i = skip_lws(v, i + 1);
                let ps = i;
                while i < v.len() && v[i].is_ascii_digit() {
                    i += 1;
                }
                port = Some(parse_port(&v[ps..i]).map_err(|_| SyntaxError::Via)?);
            }
            let end = scan_params(v, i)?;
            return Ok(Via {
                transport,
                host,
                port,
                params: trim_lws(&v[i..end]),
            });
        }
        i = skip_lws(v, e);
        if v.get(i) != Some(&b'/') {
            return Err(SyntaxError::Via);
        }
        i = skip_lws(v, i + 1);
    }
    Err(SyntaxError::Via)
}

/// Decodes CSeq: a sequence number below 2^31 and a method token.
pub fn parse_cseq(v: &[u8]) -> Result<(u32, &[u8]), SyntaxError> {
    let v = trim_lws(v);
    let mut i = 0;
    while i < v.len() && v[i].is_ascii_digit() {
        i += 1;
    }
    if i == 0 || i > 10 {
        return Err(SyntaxError::CSeq);
    }
    let n = v[..i]
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    if n >= 1 << 31 {
        return Err(SyntaxError::CSeq);
    }
    let ms = skip_lws(v, i);
    if ms == i {
        return Err(SyntaxError::CSeq);
    }
    let method = &v[ms..];
    if method.is_empty() || !method.iter().all(|&b| is_token(b)) {
        return Err(SyntaxError::CSeq);
    }
    Ok((n as u32, method))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let u = parse_uri(b"sip:+77011234567@gw;user=phone").unwrap();
        assert_eq!(u.scheme, Scheme::Sip);
        assert_eq!(u.user, Some(&b"+77011234567"[..]));
        assert_eq!(u.host, b"gw");
        assert_eq!(u.params, b";user=phone");
        let u = parse_uri(b"tel:+77011234567;npdi").unwrap();
        assert_eq!(
            (u.scheme, u.user),
            (Scheme::Tel, Some(&b"+77011234567"[..]))
        );
        let u = parse_uri(b"sip:t.watson@example.org").unwrap();
        assert_eq!(u.user, Some(&b"t.watson"[..]));
        let u = parse_uri(b"sips:alice:secret@[2001:db8::1]:5061;transport=tcp").unwrap();
        assert_eq!(u.scheme, Scheme::Sips);
        assert_eq!(u.user, Some(&b"alice"[..]));
        assert_eq!(u.host, b"[2001:db8::1]");
        assert_eq!(u.port, Some(5061));
        let u = parse_uri(b"sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(u.user_number(), Some(&b"user"[..]));
        assert_eq!(u.host, b"example.com");
        let u = parse_uri(b"sip:user@example.com?Route=%3Csip:example.com%3E").unwrap();
        assert_eq!(u.headers, b"Route=%3Csip:example.com%3E");
        assert_eq!(parse_uri(b"isbn:2983792873").unwrap().scheme, Scheme::Other);
        assert!(parse_uri(b"sip:user@exa mple.com").is_err());
        assert!(parse_uri(b"sip:@example.com").is_err());
        assert!(parse_uri(b"sip:u@h:99999").is_err());
        assert!(parse_uri(b"9sip:x").is_err());
        assert!(parse_uri(b"sip:").is_err());
    }

    #[test]
    fn name_addrs() {
        let n = parse_name_addr(
            b"\"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8",
        )
        .unwrap();
        assert_eq!(n.uri, b"sip:jdrosen@example.com");
        assert_eq!(param(n.params, b"tag"), Some(&b"98asjd8"[..]));
        let n =
            parse_name_addr(b"sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n").unwrap();
        assert_eq!(n.uri, b"sip:vivekg@chair-dnrc.example.com");
        assert_eq!(param(n.params, b"tag"), Some(&b"1918181833n"[..]));
        let n = parse_name_addr(b"caller<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(n.display, b"caller");
        let n = parse_name_addr(b"Anonymous <sip:+77011234567@10.0.0.1;user=phone>").unwrap();
        assert_eq!(n.uri, b"sip:+77011234567@10.0.0.1;user=phone");
        assert_eq!(
            parse_name_addr(b"\"Mr. J. User <sip:j.user@example.com>"),
            Err(SyntaxError::Quote)
        );
        assert_eq!(
            parse_name_addr(b"Bell, Alexander <sip:a.g.bell@example.com>;tag=43"),
            Err(SyntaxError::DisplayName)
        );
        assert_eq!(
            parse_name_addr(b"\"Watson, Thomas\" < sip:t.watson@example.org >"),
            Err(SyntaxError::Angle)
        );
        assert!(parse_name_addr(b"sip:user@example.com?Route=%3Csip:sip.example.com%3E").is_err());
        assert!(parse_name_addr(b"\"Joe\" <sip:joe@example.org>;;;;").is_err());
    }

    #[test]
    fn vias() {
        let v = parse_via(b"SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!(v.transport, b"UDP");
        assert_eq!(v.host, b"192.0.2.2");
        assert_eq!(v.branch(), Some(&b"390skdjuw"[..]));
        let v = parse_via(b"SIP/2.0/TCP [2001:db8::9]:5070;branch=z9hG4bK1;rport, SIP/2.0/UDP x")
            .unwrap();
        assert_eq!((v.host, v.port), (&b"[2001:db8::9]"[..], Some(5070)));
        assert_eq!(param(v.params, b"rport"), Some(&b""[..]));
        assert!(parse_via(b"SIP/2.0/UDP 192.0.2.15;;,;,,").is_err());
        assert!(parse_via(b"SIP/2.0/UDP").is_err());
        assert!(parse_via(b"SIP/2.0 192.0.2.1").is_err());
    }

    #[test]
    fn cseq_and_splitting() {
        assert_eq!(
            parse_cseq(b"0009\r\n  INVITE").unwrap(),
            (9, &b"INVITE"[..])
        );
        assert!(parse_cseq(b"36893488147419103232 REGISTER").is_err());
        assert!(parse_cseq(b"2147483648 INVITE").is_err());
        assert!(parse_cseq(b"8INVITE").is_err());
        let vals: Vec<_> = split_values(b"\"a, b\" <sip:x@y>, <sip:z@w;p=1,2>, sip:q@r").collect();
        assert_eq!(vals.len(), 3);
        assert_eq!(vals[2], b"sip:q@r");
    }
}
