//! The two text formats `/metrics` speaks, and which one a scrape gets.
//!
//! kuzet's exposition is written once, in OpenMetrics 1.0.0, by
//! `prometheus-client`. A client that asks for the classic Prometheus text
//! format (0.0.4) gets the same families rewritten by the rules that
//! separate the two: a counter's `# HELP` and `# TYPE` name the series
//! (`x_total`) rather than the family (`x`), `_created` series, `# UNIT`
//! lines, exemplars and the closing `# EOF` go, timestamps turn from
//! seconds into milliseconds, `unknown` becomes `untyped`, and help text
//! keeps only the escapes 0.0.4 knows (`\\` and `\n`).
//!
//! The choice follows the `Accept` header as HTTP defines it (RFC 9110
//! section 12.5.1): each offered format gets the weight (`q`) of the most
//! specific media range that matches it, `q=0` refuses, the higher weight
//! wins. On a tie, and with no `Accept` or nothing acceptable, the classic
//! format is served, as Prometheus' own Go client does (`expfmt`), so a
//! plain `curl` or `*/*` gets what `promtool check metrics` reads.
//! Prometheus lists OpenMetrics first with the higher weight, so its
//! scrapes get OpenMetrics. A range's `version` must be the one served
//! (`0.0.4`, `1.0.0`) and its `charset` UTF-8; `escaping` (Prometheus 3)
//! is met whatever it asks, since kuzet's names are plain
//! `[a-zA-Z_][a-zA-Z0-9_]*` and need none.

use std::collections::HashMap;
use std::fmt::Write as _;

/// A text format `/metrics` can serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The classic Prometheus text format, version 0.0.4.
    Classic,
    /// OpenMetrics text, version 1.0.0.
    OpenMetrics,
}

impl Format {
    /// The formats in the order kuzet prefers them when a client's weights
    /// tie: the classic one first, as Prometheus' Go client does.
    const OFFERED: [Format; 2] = [Format::Classic, Format::OpenMetrics];

    /// The `Content-Type` a response in this format carries.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Classic => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    fn media_type(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Format::Classic => ("text", "plain", "0.0.4"),
            Format::OpenMetrics => ("application", "openmetrics-text", "1.0.0"),
        }
    }
}

/// One media range of an `Accept` header.
#[derive(Debug, PartialEq)]
struct Range {
    kind: String,
    subtype: String,
    /// Parameters other than the weight, names in lower case.
    params: Vec<(String, String)>,
    /// Thousandths: 0 (refused) to 1000.
    q: u16,
}

/// Splits `s` at each `sep` outside a quoted string.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            out.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    out.push(&s[start..]);
    out
}

/// A weight as RFC 9110 writes it (`0`, `0.5`, `0.125`, `1`, `1.000`), in
/// thousandths; anything else is no weight.
fn parse_q(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_value: u16 = format!("{frac:0<3}").parse().ok()?;
    match int {
        "0" => Some(frac_value),
        "1" if frac_value == 0 => Some(1000),
        _ => None,
    }
}

/// A parameter's value, unquoted.
fn unquote(v: &str) -> String {
    let v = v.trim();
    match v.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                out.push(if c == '\\' {
                    chars.next().unwrap_or(c)
                } else {
                    c
                });
            }
            out
        }
        None => v.to_string(),
    }
}

/// The media ranges of `Accept` field values. A range that cannot be read
/// (no `/`, a weight out of grammar) is left out, so it accepts nothing.
fn parse_accept(values: &[&str]) -> Vec<Range> {
    let mut out = Vec::new();
    for value in values {
        for element in split_outside_quotes(value, ',') {
            let mut parts = split_outside_quotes(element, ';').into_iter();
            let media = parts.next().unwrap_or("").trim();
            if media.is_empty() {
                continue;
            }
            let (kind, subtype) = match media.split_once('/') {
                Some((k, s)) => (k.trim(), s.trim()),
                // Some clients write a bare `*` for `*/*`.
                None if media == "*" => ("*", "*"),
                None => continue,
            };
            if kind.is_empty() || subtype.is_empty() || (kind == "*" && subtype != "*") {
                continue;
            }
            let mut range = Range {
                kind: kind.to_ascii_lowercase(),
                subtype: subtype.to_ascii_lowercase(),
                params: Vec::new(),
                q: 1000,
            };
            let mut readable = true;
            for p in parts {
                let Some((name, v)) = p.split_once('=') else {
                    continue;
                };
                let name = name.trim().to_ascii_lowercase();
                if name == "q" {
                    match parse_q(v.trim()) {
                        Some(q) => range.q = q,
                        None => readable = false,
                    }
                } else {
                    range.params.push((name, unquote(v)));
                }
            }
            if readable {
                out.push(range);
            }
        }
    }
    out
}

impl Range {
    /// How specifically this range names `f`: `None` if it does not match
    /// it, else higher for a more specific range (RFC 9110: `*/*` <
    /// `type/*` < `type/subtype` < the same with parameters).
    fn specificity(&self, f: Format) -> Option<usize> {
        let (kind, subtype, version) = f.media_type();
        let level = match (self.kind.as_str(), self.subtype.as_str()) {
            ("*", "*") => 0,
            (k, "*") if k == kind => 1,
            (k, s) if k == kind && s == subtype => 2,
            _ => return None,
        };
        for (name, v) in &self.params {
            let met = match name.as_str() {
                "version" => v == version,
                "charset" => v.eq_ignore_ascii_case("utf-8"),
                // Names need no escaping, under any scheme.
                "escaping" => true,
                // Parameters these formats do not have.
                _ => false,
            };
            if !met {
                return None;
            }
        }
        Some(level * 100 + self.params.len())
    }
}

/// The format to serve to a request whose `Accept` field values are
/// `accept` (none: the header is absent).
pub fn negotiate(accept: &[&str]) -> Format {
    if accept.is_empty() {
        return Format::OFFERED[0];
    }
    let ranges = parse_accept(accept);
    let weight = |f: Format| {
        ranges
            .iter()
            .filter_map(|r| Some((r.specificity(f)?, r.q)))
            .max_by_key(|(specificity, _)| *specificity)
            .map_or(0, |(_, q)| q)
    };
    let mut best = (0, Format::OFFERED[0]);
    for f in Format::OFFERED {
        let q = weight(f);
        if q > best.0 {
            best = (q, f);
        }
    }
    best.1
}

/// The classic family type for an OpenMetrics one.
fn classic_type(om: &str) -> &str {
    match om {
        "counter" | "gauge" | "histogram" | "summary" => om,
        "info" | "stateset" => "gauge",
        _ => "untyped",
    }
}

/// The name a family's `# HELP` and `# TYPE` carry in the classic format.
fn classic_name(family: &str, om_type: &str) -> String {
    match om_type {
        "counter" => format!("{family}_total"),
        "info" => format!("{family}_info"),
        _ => family.to_string(),
    }
}

/// OpenMetrics help text (escapes `\\`, `\n`, `\"`) as 0.0.4 help text
/// (escapes `\\` and `\n` only).
fn classic_help(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut chars = om.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('n') => out.push_str("\\n"),
                Some('"') => out.push('"'),
                // `\\`, or a backslash that escapes nothing: a backslash.
                Some('\\') | None => out.push_str("\\\\"),
                Some(other) => {
                    out.push_str("\\\\");
                    out.push(other);
                }
            },
            c => out.push(c),
        }
    }
    out
}

/// Where a sample line's label set ends (the byte after `}`), or where its
/// name ends when it has none.
fn after_labels(line: &str) -> usize {
    let Some(open) = line.find(['{', ' ']) else {
        return line.len();
    };
    if line.as_bytes()[open] == b' ' {
        return open;
    }
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in line[open..].char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == '}' && !quoted {
            return open + i + 1;
        }
    }
    line.len()
}

/// An OpenMetrics exposition rewritten in the classic text format 0.0.4.
pub fn to_classic(om: &str) -> String {
    let types: HashMap<&str, &str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' '))
        .collect();
    // The family a series belongs to: the longest family name it starts with.
    let family_of = |series: &str| {
        types
            .iter()
            .filter(|(f, _)| series.starts_with(**f))
            .max_by_key(|(f, _)| f.len())
            .map(|(f, t)| (*f, *t))
    };
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (family, text) = rest.split_once(' ').unwrap_or((rest, ""));
            let t = types.get(family).copied().unwrap_or("unknown");
            let _ = writeln!(
                out,
                "# HELP {} {}",
                classic_name(family, t),
                classic_help(text)
            );
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, t) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let _ = writeln!(
                out,
                "# TYPE {} {}",
                classic_name(family, t),
                classic_type(t)
            );
        } else if line.starts_with('#') || line.is_empty() {
            // `# UNIT`, `# EOF`: OpenMetrics only.
        } else {
            let end = after_labels(line);
            let series = &line[..end];
            let name = &series[..series.find('{').unwrap_or(series.len())];
            if let Some((family, "counter")) = family_of(name) {
                if name.strip_prefix(family) == Some("_created") {
                    continue;
                }
            }
            // Value, then an optional timestamp; an exemplar after `#`.
            let rest = line[end..].split(" # ").next().unwrap_or("");
            let mut fields = rest.split_whitespace();
            let value = fields.next().unwrap_or("");
            out.push_str(series);
            out.push(' ');
            out.push_str(value);
            if let Some(ts) = fields.next().and_then(|t| t.parse::<f64>().ok()) {
                let _ = write!(out, " {}", (ts * 1000.0).round() as i64);
            }
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Prometheus 2.x sends when it scrapes.
    const PROMETHEUS_2: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    /// What Prometheus 3.x sends by default.
    const PROMETHEUS_3: &str = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";

    #[test]
    fn the_classic_format_by_default_and_when_asked() {
        for accept in [
            &[][..],
            &["*/*"],
            &["*"],
            &["text/plain"],
            &["text/*"],
            &["text/plain; version=0.0.4; charset=utf-8"],
            &["TEXT/Plain;Version=0.0.4"],
            // Nothing offered is acceptable: served anyway, like expfmt.
            &["application/json"],
            &[""],
            // Both equally welcome: kuzet's preference.
            &["application/openmetrics-text, text/plain"],
            &["application/openmetrics-text;q=0.5, */*;q=0.5"],
        ] {
            assert_eq!(negotiate(accept), Format::Classic, "{accept:?}");
        }
    }

    #[test]
    fn openmetrics_when_asked_and_when_prometheus_scrapes() {
        for accept in [
            &[PROMETHEUS_2][..],
            &[PROMETHEUS_3],
            &["application/openmetrics-text"],
            &["application/openmetrics-text; version=1.0.0; charset=utf-8"],
            &["application/openmetrics-text; version=\"1.0.0\""],
            &["application/*"],
            // q-values decide, not order.
            &["text/plain;q=0.3, application/openmetrics-text;q=0.9"],
            &["text/plain;q=0.999, application/openmetrics-text"],
            // Header fields given twice are one list.
            &["text/plain;q=0.1", "application/openmetrics-text"],
            // A more specific range overrides a wider one.
            &["*/*, text/plain;q=0"],
            &["text/*;q=0.2, application/openmetrics-text;q=0.4, text/plain;version=0.0.4;q=0.3"],
        ] {
            assert_eq!(negotiate(accept), Format::OpenMetrics, "{accept:?}");
        }
    }

    #[test]
    fn a_refused_or_unreadable_range_accepts_nothing() {
        // q=0 refuses: OpenMetrics alone at q=0 is not asked for.
        assert_eq!(
            negotiate(&["application/openmetrics-text;q=0, text/plain;q=0.1"]),
            Format::Classic
        );
        assert_eq!(
            negotiate(&["text/plain;q=0, application/openmetrics-text;q=0.001"]),
            Format::OpenMetrics
        );
        // A version kuzet does not serve does not match.
        assert_eq!(
            negotiate(&["application/openmetrics-text;version=0.0.1, text/plain;q=0.2"]),
            Format::Classic
        );
        assert_eq!(
            negotiate(&["text/plain;version=1.0.0, application/openmetrics-text;q=0.2"]),
            Format::OpenMetrics
        );
        // Weights out of grammar are no weights.
        for q in ["1.5", "2", "-1", "0.1234", "abc", ".5", ""] {
            let h = format!("text/plain;q={q}, application/openmetrics-text;q=0.01");
            assert_eq!(negotiate(&[&h]), Format::OpenMetrics, "q={q}");
        }
        assert_eq!(parse_q("0.125"), Some(125));
        assert_eq!(parse_q("1.000"), Some(1000));
        assert_eq!(parse_q("1.001"), None);
        assert_eq!(parse_q("0."), Some(0));
        // A comma inside a quoted parameter does not split the list.
        let ranges = parse_accept(&["text/plain;x=\"a,b\";q=0.5, application/json"]);
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[0].params, vec![("x".to_string(), "a,b".to_string())]);
        assert_eq!(ranges[0].q, 500);
    }

    #[test]
    fn classic_text_follows_the_0_0_4_rules() {
        let om = "# HELP k_calls Calls \\\"judged\\\" \\\\ here\n\
                  # TYPE k_calls counter\n\
                  k_calls_total 5\n\
                  k_calls_created 1.7e9\n\
                  # HELP k_wait_seconds Wait.\n\
                  # TYPE k_wait_seconds histogram\n\
                  # UNIT k_wait_seconds seconds\n\
                  k_wait_seconds_bucket{le=\"0.1\"} 1\n\
                  k_wait_seconds_bucket{le=\"+Inf\"} 2 # {trace=\"a b\"} 0.05 1.5\n\
                  k_wait_seconds_sum 0.3\n\
                  k_wait_seconds_count 2\n\
                  # HELP k_up Up.\n\
                  # TYPE k_up gauge\n\
                  k_up{why=\"a } # b\"} 1 1700000000.5\n\
                  # HELP k_build Build.\n\
                  # TYPE k_build info\n\
                  k_build_info{version=\"1\"} 1\n\
                  # HELP k_odd Odd.\n\
                  # TYPE k_odd unknown\n\
                  k_odd 3\n\
                  # EOF\n";
        let want = "# HELP k_calls_total Calls \"judged\" \\\\ here\n\
                    # TYPE k_calls_total counter\n\
                    k_calls_total 5\n\
                    # HELP k_wait_seconds Wait.\n\
                    # TYPE k_wait_seconds histogram\n\
                    k_wait_seconds_bucket{le=\"0.1\"} 1\n\
                    k_wait_seconds_bucket{le=\"+Inf\"} 2\n\
                    k_wait_seconds_sum 0.3\n\
                    k_wait_seconds_count 2\n\
                    # HELP k_up Up.\n\
                    # TYPE k_up gauge\n\
                    k_up{why=\"a } # b\"} 1 1700000000500\n\
                    # HELP k_build_info Build.\n\
                    # TYPE k_build_info gauge\n\
                    k_build_info{version=\"1\"} 1\n\
                    # HELP k_odd Odd.\n\
                    # TYPE k_odd untyped\n\
                    k_odd 3\n";
        assert_eq!(to_classic(om), want);
    }

    #[test]
    fn content_types_name_format_version_and_charset() {
        assert_eq!(
            Format::Classic.content_type(),
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert_eq!(
            Format::OpenMetrics.content_type(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
    }
}
