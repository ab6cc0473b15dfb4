//! Proxy mode: stateless forwarding that sees whole dialogs. kuzet pushes
//! its own Via (a branch hashed from the incoming one, so a CANCEL matches
//! its INVITE), marks the previous Via with received/rport, lowers
//! Max-Forwards, and routes responses back by popping its Via.
//!
//! A new call's INVITE is scored and, unless `record_route` is off, gets
//! kuzet's `Record-Route: <sip:ADDR;lr>` (RFC 3261 16.6), so both ends
//! send the dialog's later requests (ACK, re-INVITE, BYE) through kuzet.
//! A request inside a dialog (its To has a tag) is never scored: kuzet
//! removes its own entry from the top of the Route set (16.4) and sends
//! it to the next Route, else to the Request-URI when that names an IP
//! address (the other end's Contact), else to the next hop: no name is
//! resolved on the call path. A request in a dialog kuzet did not
//! record-route goes to the next hop, as every request used to.

use super::*;

impl Handler {
    pub(super) fn proxy(
        &self,
        m: &Message<'_>,
        c: &Checked<'_>,
        src: SocketAddr,
        conn: Option<u64>,
        received: Instant,
        out: &mut Vec<u8>,
    ) -> Outcome {
        let Some(next_hop) = self.next_hop else {
            return Outcome::Drop;
        };
        let method = m.method();
        if self.reject_unknown && !self.trunks.is_empty() && self.trunks.lookup(src.ip()).is_none()
        {
            self.metrics.inc(Counter::UnknownSource);
            if method == b"ACK" {
                return Outcome::Drop;
            }
            self.reply(m, Some(c), self.unknown_code, "Unknown Source", out, |_| {});
            return Outcome::Reply;
        }
        if method == b"PUBLISH" && is_outcome(m) {
            return self.outcome(m, c, src, out);
        }
        // An OPTIONS to kuzet itself (no user part) is a keep-alive ping from
        // a dispatcher in front: answer it rather than forward it.
        if method == b"OPTIONS" && c.ruri.user.is_none() {
            self.reply(m, Some(c), 200, "OK", out, |_| {});
            return Outcome::Reply;
        }
        let lists;
        let mut verdict = None;
        let mut event = None;
        // A request inside a dialog (To has a tag: an ACK, a re-INVITE, a
        // BYE) belongs to a call already judged: routed, never scored.
        let in_dialog = param(c.to.params, b"tag").is_some();
        if method == b"INVITE" && !in_dialog {
            lists = self.lists.load();
            let v = self.score(m, c, src, conn, received, &lists, &mut event);
            if v.decision() == Decision::Block {
                self.reply_blocked(m, c, &v, out);
                self.send_event(&mut event, out);
                return Outcome::Reply;
            }
            verdict = Some(v);
        }
        let dest = if in_dialog {
            self.dialog_target(m, c).unwrap_or(next_hop)
        } else {
            next_hop
        };
        let forwarded = self.forward(m, c, src, conn, verdict.as_ref(), out);
        // Forwarded, not answered: no answer of kuzet's to mirror.
        self.send_event(&mut event, &[]);
        if forwarded.is_err() {
            out.clear();
            self.metrics.inc(Counter::BadRequests);
            if method == b"ACK" {
                return Outcome::Drop;
            }
            self.reply(m, Some(c), 400, "Bad Via", out, |_| {});
            return Outcome::Reply;
        }
        self.metrics.inc(Counter::Forwarded);
        if in_dialog {
            self.metrics.inc(Counter::InDialogForwarded);
        }
        // The call table follows every call (a BYE ends it); an INVITE
        // reuses the A-number its scoring decoded.
        match (&verdict, method) {
            (Some(v), _) => {
                // The callee is reached only on a call let through to it
                // (a redirect goes to the desk instead).
                let reached = matches!(v.decision(), Decision::Allow | Decision::Flag);
                self.learn(m, v.a, v.b.filter(|_| reached))
            }
            (_, b"CANCEL" | b"BYE") => self.learn(m, None, None),
            _ => {}
        }
        Outcome::Forward(dest)
    }

    /// Where a request inside a dialog goes: after kuzet's own entries at
    /// the top of its Route set, the next Route; with none left, the
    /// Request-URI. `None` (the next hop) when the Route set does not
    /// start with kuzet (a dialog kuzet did not record-route) or the
    /// target is not an IP address, or is kuzet itself.
    fn dialog_target(&self, m: &Message<'_>, c: &Checked<'_>) -> Option<SocketAddr> {
        let mut ours = false;
        let mut next = None;
        'routes: for hl in m.headers().filter(|h| h.kind == Hdr::Route) {
            for v in split_values(hl.value) {
                let uri = parse_name_addr(v).ok().and_then(|n| parse_uri(n.uri).ok());
                match uri {
                    Some(u) if self.is_self(&u) && next.is_none() => ours = true,
                    other => {
                        next = Some(other);
                        break 'routes;
                    }
                }
            }
        }
        if !ours {
            return None;
        }
        let target = match next {
            Some(Some(u)) => uri_address(&u)?,
            Some(None) => return None,
            None => uri_address(&c.ruri)?,
        };
        (!self.is_self_addr(target)).then_some(target)
    }

    /// Whether a SIP URI names kuzet (its advertised `host:port`).
    fn is_self(&self, u: &kuzet_sip::syntax::Uri<'_>) -> bool {
        let Some(colon) = self.via_sent_by.iter().rposition(|&b| b == b':') else {
            return false;
        };
        u.host.eq_ignore_ascii_case(&self.via_sent_by[..colon])
            && kuzet_sip::parse_u32(&self.via_sent_by[colon + 1..])
                == Some(u32::from(u.port.unwrap_or(5060)))
    }

    fn is_self_addr(&self, a: SocketAddr) -> bool {
        let mut b = [0u8; 64];
        let mut w = &mut b[..];
        let _ = match a.ip() {
            IpAddr::V4(ip) => write!(w, "{ip}:{}", a.port()),
            IpAddr::V6(ip) => write!(w, "[{ip}]:{}", a.port()),
        };
        let n = 64 - w.len();
        b[..n] == self.via_sent_by[..]
    }

    /// Writes the request as forwarded to the next hop: kuzet's Via on top,
    /// the previous top Via marked with received/rport, Max-Forwards one
    /// lower, the verdict header when flagged, everything else as it came.
    pub(super) fn forward(
        &self,
        m: &Message<'_>,
        c: &Checked<'_>,
        src: SocketAddr,
        conn: Option<u64>,
        verdict: Option<&Judged<'_>>,
        out: &mut Vec<u8>,
    ) -> Result<(), SyntaxError> {
        let bytes = m.bytes();
        let line_end = memchr::memchr(b'\n', bytes).unwrap_or(0);
        let start_line = &bytes[..line_end];
        let start_line = start_line.strip_suffix(b"\r").unwrap_or(start_line);
        // A redirect decision in proxy mode rewrites the Request-URI to the
        // configured announcement / anti-fraud desk.
        let redirect_to = verdict.and_then(Judged::redirect_uri);
        match redirect_to {
            Some(uri) => {
                out.extend_from_slice(m.method());
                out.push(b' ');
                out.extend_from_slice(uri.as_bytes());
                out.extend_from_slice(b" SIP/2.0");
            }
            None => out.extend_from_slice(start_line),
        }
        out.extend_from_slice(b"\r\nVia: SIP/2.0/UDP ");
        out.extend_from_slice(&self.via_sent_by);
        out.extend_from_slice(b";branch=");
        out.extend_from_slice(BRANCH_PREFIX);
        let top = m.header(Hdr::Via).unwrap_or_default();
        let mut h = Fnv::default();
        h.write(split_values(top).next().unwrap_or_default());
        write::push_hex(out, h.finish());
        if let Some(id) = conn {
            out.extend_from_slice(b";kzc=");
            push_u64(out, id);
        }
        out.extend_from_slice(b"\r\n");
        // A new call: kuzet stays on its dialog's path.
        let new_call = m.method() == b"INVITE" && param(c.to.params, b"tag").is_none();
        if new_call && self.record_route {
            out.extend_from_slice(b"Record-Route: <sip:");
            out.extend_from_slice(&self.via_sent_by);
            out.extend_from_slice(b";lr>\r\n");
        }
        let mut first_via = true;
        // kuzet's own entries at the top of the Route set are removed
        // (RFC 3261 16.4); the rest stay as they came.
        let mut popping_routes = true;
        for hl in m.headers() {
            match hl.kind {
                Hdr::Route if popping_routes => {
                    let mut rest = None;
                    for v in split_values(hl.value) {
                        let mine = parse_name_addr(v)
                            .ok()
                            .and_then(|n| parse_uri(n.uri).ok())
                            .is_some_and(|u| self.is_self(&u));
                        if !mine {
                            rest = offset_in(hl.value, v);
                            popping_routes = false;
                            break;
                        }
                    }
                    if let Some(at) = rest {
                        out.extend_from_slice(b"Route: ");
                        out.extend_from_slice(&hl.value[at..]);
                        out.extend_from_slice(b"\r\n");
                    } else {
                        self.metrics.inc(Counter::RoutesRemoved);
                    }
                }
                Hdr::Via if first_via => {
                    first_via = false;
                    out.extend_from_slice(b"Via: ");
                    let top_value = split_values(hl.value).next().unwrap_or_default();
                    let via = parse_via(top_value)?;
                    // Copy the value up to the parameters, then each
                    // parameter, filling in rport; then add received.
                    let params_at = offset_in(hl.value, via.params).unwrap_or(top_value.len());
                    out.extend_from_slice(&hl.value[..params_at]);
                    for p in via.params.split(|&b| b == b';').filter(|p| !p.is_empty()) {
                        out.push(b';');
                        let p = kuzet_sip::syntax::trim_lws(p);
                        if p.eq_ignore_ascii_case(b"rport") {
                            out.extend_from_slice(b"rport=");
                            push_u64(out, u64::from(src.port()));
                        } else {
                            out.extend_from_slice(p);
                        }
                    }
                    out.extend_from_slice(b";received=");
                    let _ = write!(out, "{}", src.ip());
                    let rest_at = offset_in(hl.value, top_value)
                        .map_or(hl.value.len(), |o| o + top_value.len());
                    out.extend_from_slice(&hl.value[rest_at..]);
                    out.extend_from_slice(b"\r\n");
                }
                Hdr::MaxForwards => {
                    out.extend_from_slice(b"Max-Forwards: ");
                    push_u64(
                        out,
                        u64::from(c.max_forwards.unwrap_or(70).saturating_sub(1)),
                    );
                    out.extend_from_slice(b"\r\n");
                }
                // kuzet's headers are kuzet's: a caller's own verdict
                // header never reaches the next hop.
                Hdr::Other if is_kuzet_header(hl.name) => {
                    self.metrics.inc(Counter::ForgedHeadersRemoved);
                }
                _ => {
                    out.extend_from_slice(&bytes[hl.line.clone()]);
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        if c.max_forwards.is_none() {
            out.extend_from_slice(b"Max-Forwards: 69\r\n");
        }
        if let Some(v) = verdict {
            if matches!(v.decision(), Decision::Flag | Decision::Redirect) {
                verdict_header(out, v);
            }
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(m.body());
        Ok(())
    }

    /// Proxy mode: pops kuzet's Via off a response and sends it on to the
    /// next Via (its received/rport when present).
    pub(super) fn route_response(&self, m: &Message<'_>, out: &mut Vec<u8>) -> Outcome {
        let drop = |metrics: &Metrics| {
            metrics.inc(Counter::ResponsesDropped);
            Outcome::Drop
        };
        let Some(top_line) = m.header(Hdr::Via) else {
            return drop(&self.metrics);
        };
        let mut values = split_values(top_line);
        let top = values.next().unwrap_or_default();
        let Ok(ours) = parse_via(top) else {
            return drop(&self.metrics);
        };
        let is_ours = ours.branch().is_some_and(|b| b.starts_with(BRANCH_PREFIX))
            && sent_by_matches(&ours, &self.via_sent_by);
        if !is_ours {
            return drop(&self.metrics);
        }
        let conn = param(ours.params, b"kzc").and_then(kuzet_sip::parse_u64);
        let rest_of_line = values.next();
        let bytes = m.bytes();
        let line_end = memchr::memchr(b'\n', bytes).unwrap_or(0);
        out.extend_from_slice(&bytes[..=line_end]);
        let mut next_via: Option<&[u8]> = rest_of_line;
        let mut first = true;
        for hl in m.headers() {
            if hl.kind == Hdr::Via && first {
                first = false;
                if let Some(at) = rest_of_line.and_then(|r| offset_in(hl.value, r)) {
                    out.extend_from_slice(b"Via: ");
                    out.extend_from_slice(&hl.value[at..]);
                    out.extend_from_slice(b"\r\n");
                }
                continue;
            }
            if hl.kind == Hdr::Via && next_via.is_none() {
                next_via = split_values(hl.value).next();
            }
            if hl.kind == Hdr::Other && is_kuzet_header(hl.name) {
                self.metrics.inc(Counter::ForgedHeadersRemoved);
                continue;
            }
            out.extend_from_slice(&bytes[hl.line.clone()]);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(m.body());
        self.metrics.inc(Counter::ResponsesRouted);
        // An answer marks its call answered (a final refusal ends it).
        self.learn(m, None, None);
        if let Some(id) = conn {
            return Outcome::ToConnection(id);
        }
        let Some(dest) = next_via
            .and_then(|v| parse_via(v).ok())
            .and_then(|v| via_destination(&v))
        else {
            out.clear();
            return drop(&self.metrics);
        };
        Outcome::Forward(dest)
    }
}

/// The branch prefix kuzet puts on its own Via (RFC 3261 magic cookie + tag).
pub(super) const BRANCH_PREFIX: &[u8] = b"z9hG4bK-kz";

pub(super) fn sent_by_matches(via: &kuzet_sip::syntax::Via<'_>, sent_by: &[u8]) -> bool {
    let port = via.port.unwrap_or(5060);
    let Some(colon) = sent_by.iter().rposition(|&b| b == b':') else {
        return false;
    };
    via.host.eq_ignore_ascii_case(&sent_by[..colon])
        && kuzet_sip::parse_u32(&sent_by[colon + 1..]) == Some(u32::from(port))
}

/// Where a response goes for this Via: received/rport first (RFC 3581),
/// else the sent-by address. Host names are not resolved on the call path.
pub(super) fn via_destination(v: &kuzet_sip::syntax::Via<'_>) -> Option<SocketAddr> {
    let host = param(v.params, b"received").unwrap_or(v.host);
    let host = host
        .strip_prefix(b"[")
        .and_then(|h| h.strip_suffix(b"]"))
        .unwrap_or(host);
    let ip: IpAddr = std::str::from_utf8(host).ok()?.parse().ok()?;
    let port = param(v.params, b"rport")
        .and_then(kuzet_sip::parse_u32)
        .and_then(|p| u16::try_from(p).ok())
        .or(v.port)
        .unwrap_or(5060);
    Some(SocketAddr::new(ip, port))
}

/// The address a SIP URI names, when its host is an IP address (names
/// are not resolved on the call path).
fn uri_address(u: &kuzet_sip::syntax::Uri<'_>) -> Option<SocketAddr> {
    let host = u
        .host
        .strip_prefix(b"[")
        .and_then(|h| h.strip_suffix(b"]"))
        .unwrap_or(u.host);
    let ip: IpAddr = std::str::from_utf8(host).ok()?.parse().ok()?;
    Some(SocketAddr::new(ip, u.port.unwrap_or(5060)))
}

/// A header in kuzet's own namespace (`X-Kuzet-*`, any case).
pub(super) fn is_kuzet_header(name: &[u8]) -> bool {
    name.len() >= 8 && name[..8].eq_ignore_ascii_case(b"x-kuzet-")
}
