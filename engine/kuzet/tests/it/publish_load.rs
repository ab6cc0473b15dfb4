//! Issue 20's heavy publishing tests: 10M-line pushes over gRPC,
//! generated lazily in chunks of about 256 KiB (never the whole text in
//! memory), against a running engine.
//!
//! - A bad line deep inside a 10M-line push is reported with its number,
//!   and nothing changes (the engine in-process).
//!
//! The access, approval, compare-and-set, restart and lookup tests are in
//! `publishing`.

use std::time::Instant;

use kuzet::config::TokenConfig;
use kuzet_api::lists as pb;
use kuzet_api::lists::list_service_client::ListServiceClient;
use kuzet_control::access::hash_token;
use kuzet_rules::ListId;

use crate::common::{ask, client, invite, start, status, test_config, TempDir};

/// The admin's token (admin implies approver: blocking versions go live).
const TOKEN: &str = "kz_test_publish_load_admin";

/// Lines per list version pushed.
const TEN_MILLION: u64 = 10_000_000;

/// A push's chunks are about this long.
const CHUNK: usize = 256 << 10;

fn tokens() -> Vec<TokenConfig> {
    vec![TokenConfig {
        name: "root".into(),
        role: "admin".into(),
        sha256: hash_token(TOKEN),
    }]
}

fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
}

type Lists = ListServiceClient<tonic::transport::Channel>;

async fn connect(addr: std::net::SocketAddr) -> Lists {
    ListServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Writes `+7780NNNNNNN\n` for `n` < 10M, digit by digit: a padding
/// number (`+7 780`, the range kuzet-sim pads its lists with, is no
/// caller's).
fn padding_line(n: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"+7780");
    let mut digits = [b'0'; 7];
    let mut v = n;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&digits);
    out.push(b'\n');
}

/// A push of `lines` lines to the blocklist, generated lazily in chunks of
/// about [`CHUNK`]: `line(i, out)` writes line `i` (from 1). The first
/// chunk names the list and whether to activate.
fn push_stream(
    activate: bool,
    lines: u64,
    line: impl Fn(u64, &mut Vec<u8>) + Send + 'static,
) -> impl tokio_stream::Stream<Item = pb::PushChunk> + Send + 'static {
    let mut next = 1u64;
    let mut first = true;
    let chunks = std::iter::from_fn(move || {
        if next > lines && !first {
            return None;
        }
        let mut data = Vec::with_capacity(CHUNK + 64);
        while next <= lines && data.len() < CHUNK {
            line(next, &mut data);
            next += 1;
        }
        let c = pb::PushChunk {
            list: if first {
                "blocklist".into()
            } else {
                String::new()
            },
            activate: first && activate,
            data,
            ..Default::default()
        };
        first = false;
        Some(c)
    });
    tokio_stream::iter(chunks)
}

/// A caller the first version blocks.
const FRAUD: &str = "+77770000001";

/// The status kuzet answers a call from `a`.
fn call_from(addr: std::net::SocketAddr, a: &str, call_id: &str) -> u16 {
    let s = client();
    let port = s.local_addr().unwrap().port();
    status(&ask(&s, addr, &invite(a, "+77010000001", call_id, port)))
}

/// Files in `dir` whose name ends in `.incoming` (uploads left behind).
fn incoming(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".incoming"))
        .collect()
}

/// v1 (one number) in force; then a push of 10M lines whose 7,654,321st
/// is not a number, asking to activate. The push fails with
/// InvalidArgument naming the line and why; the list still has v1 alone,
/// the snapshot in force is the same, the blocked caller still blocked,
/// and the upload is gone from the shelf.
#[test]
fn a_bad_line_at_7654321_of_a_10m_push_is_reported_and_nothing_changes() {
    const BAD: u64 = 7_654_321;
    let dir = TempDir::new("publish-bad-line");
    let data = dir.path().join("data");
    let mut c = test_config();
    c.store.enabled = true;
    c.store.dir = Some(data.clone());
    c.publishing.lists = vec![ListId::Block];
    c.control.tokens = tokens();
    let k = start(c);
    let addr = k.control_addr.expect("the control API is on");
    let rt = rt();
    let mut lists = rt.block_on(connect(addr));

    // v1: one number, in force.
    let v1 = rt
        .block_on(lists.push(authed(push_stream(true, 1, |_, out| {
            out.extend_from_slice(format!("{FRAUD},known fraud line\n").as_bytes())
        }))))
        .unwrap()
        .into_inner();
    assert!(v1.activated, "{v1:?}");
    assert_eq!(v1.version.as_ref().unwrap().id, "v1");
    let in_force = k.lists.load().version;
    assert_eq!(v1.snapshot, in_force.to_string());
    assert_eq!(call_from(k.udp_addr, FRAUD, "before"), 603);

    // 10M lines, the 7,654,321st not a number.
    let started = Instant::now();
    let err = rt
        .block_on(lists.push(authed(push_stream(true, TEN_MILLION, |i, out| {
            if i == BAD {
                out.extend_from_slice(b"not-a-number\n");
            } else {
                padding_line(i, out);
            }
        }))))
        .expect_err("a push with a bad line fails");
    let took = started.elapsed();
    eprintln!("the 10M push failed at line {BAD} after {took:?}");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains(&format!("blocklist (pushed):{BAD}: ")),
        "{}",
        err.message()
    );
    assert!(err.message().contains("not-a-number"), "{}", err.message());
    assert!(
        err.message().contains("nothing changed"),
        "{}",
        err.message()
    );

    // Nothing changed: the versions, the snapshot, the verdicts, the shelf.
    let versions = rt
        .block_on(lists.list_versions(authed(pb::ListVersionsRequest {
            list: "blocklist".into(),
        })))
        .unwrap()
        .into_inner()
        .versions;
    let ids: Vec<(&str, bool)> = versions.iter().map(|v| (&*v.id, v.active)).collect();
    assert_eq!(ids, [("v1", true)]);
    assert_eq!(k.lists.load().version, in_force);
    assert_eq!(k.lists.load().lists[ListId::Block].exact_count(), 1);
    assert_eq!(call_from(k.udp_addr, FRAUD, "after"), 603);
    assert_eq!(call_from(k.udp_addr, "+77800000001", "padding"), 302);
    let shelf = data.join("published/lists/blocklist");
    assert_eq!(incoming(&shelf), Vec::<String>::new());
}
