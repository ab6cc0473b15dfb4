//! The first-run tour: eleven calls against a kuzet on its embedded
//! defaults (the sample lists in `deploy/lists` and the default rules),
//! each printed with what kuzet answered and why.
//!
//! The calls show each kind of verdict a newcomer should see: a plain
//! call allowed, a listed fraud number and a satellite IRSF range
//! blocked, a watched range flagged, a bank's number exempt, and a
//! sequential dialler blocked by a behaviour rule once its run is long
//! enough. One UDP socket, one call at
//! a time, nothing else: it is a demonstration, not a load.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// One call of the tour and what it shows.
struct Step {
    a: &'static str,
    b: String,
    what: &'static str,
}

/// What kuzet answered one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Caller as sent.
    pub a: String,
    /// Callee as sent.
    pub b: String,
    /// The status code (0: no answer).
    pub code: u16,
    /// The verdict: `X-Kuzet-Verdict` of a 302, the `Reason` text of a 603.
    pub why: String,
}

fn steps() -> Vec<Step> {
    let mut s = vec![
        Step {
            a: "87015550100",
            b: "87015550200".into(),
            what: "an ordinary call",
        },
        Step {
            a: "+77000000001",
            b: "87015550201".into(),
            what: "a caller on the blocklist (a bank's fraud desk reported it)",
        },
        Step {
            a: "87015550101",
            b: "+882161234567".into(),
            what: "a call to a satellite IRSF range on the blocklist",
        },
        Step {
            a: "+77009990042",
            b: "87015550202".into(),
            what: "a caller in a range under watch: flagged, not stopped",
        },
        Step {
            a: "+77272500000",
            b: "+882161234567".into(),
            what: "the bank's call centre: allowlisted, exempt from the lists",
        },
    ];
    // A dialler walking a number range: the sixth consecutive number
    // trips the sequential rule.
    for i in 1..=6 {
        s.push(Step {
            a: "87017770077",
            b: format!("870120000{i:02}"),
            what: if i < 6 {
                "a dialler walking a range..."
            } else {
                "...its sixth consecutive number"
            },
        });
    }
    s
}

/// Sends the tour's calls to `target` one by one and returns the answers;
/// prints each as it comes when `print` is set.
pub fn run(target: SocketAddr, print: bool) -> anyhow::Result<Vec<Answer>> {
    let sock = UdpSocket::bind(if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let local = sock.local_addr()?;
    let run_id = std::process::id();
    let mut out = Vec::new();
    for (i, st) in steps().into_iter().enumerate() {
        let call_id = format!("tour-{run_id}-{i}@kuzet-sim");
        let req = format!(
            "INVITE sip:{b}@{target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};rport;branch=z9hG4bK-tour-{run_id}-{i}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{a}@kuzet-sim>;tag=t{i}\r\nTo: <sip:{b}@{target}>\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:{a}@{local}>\r\n\
             Content-Length: 0\r\n\r\n",
            a = st.a,
            b = st.b,
        );
        let (code, why) = ask(&sock, target, &req, &call_id)?;
        if print {
            let verdict = match code {
                0 => "no answer".to_string(),
                302 => "302 continue".to_string(),
                c => format!("{c} blocked"),
            };
            println!("{:>13} -> {:<14} {verdict:<12} {}", st.a, st.b, st.what);
            if !why.is_empty() {
                println!("{:>30}{why}", "");
            }
        }
        out.push(Answer {
            a: st.a.into(),
            b: st.b,
            code,
            why,
        });
    }
    Ok(out)
}

/// Sends `req` (again after 500 ms, up to four times, as a UAC would) and
/// returns the final answer's code and verdict text.
fn ask(
    sock: &UdpSocket,
    to: SocketAddr,
    req: &str,
    call_id: &str,
) -> anyhow::Result<(u16, String)> {
    let mut buf = vec![0u8; 65536];
    for _ in 0..4 {
        sock.send_to(req.as_bytes(), to)?;
        loop {
            let n = match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => return Err(e.into()),
            };
            let text = String::from_utf8_lossy(&buf[..n]);
            if !text.contains(call_id) {
                continue;
            }
            let code: u16 = text.get(8..11).and_then(|c| c.parse().ok()).unwrap_or(0);
            if code < 200 {
                continue;
            }
            let header = |name: &str| {
                text.lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim()
                            .eq_ignore_ascii_case(name)
                            .then(|| v.trim().to_string())
                    })
                    .unwrap_or_default()
            };
            let why = if code == 302 {
                header("X-Kuzet-Verdict")
            } else {
                header("Reason")
            };
            if code >= 300 {
                // ACK the final answer, as the transaction requires, with
                // the answer's To (and its tag).
                let mut ack = req.replacen("INVITE sip:", "ACK sip:", 1).replacen(
                    "CSeq: 1 INVITE",
                    "CSeq: 1 ACK",
                    1,
                );
                let to_line = |t: &str| {
                    t.lines()
                        .find(|l| l.to_ascii_lowercase().starts_with("to:"))
                        .map(str::to_string)
                };
                if let (Some(ours), Some(theirs)) = (to_line(&ack), to_line(&text)) {
                    ack = ack.replacen(&ours, &theirs, 1);
                }
                let _ = sock.send_to(ack.as_bytes(), to);
            }
            return Ok((code, why));
        }
    }
    Ok((0, String::new()))
}
