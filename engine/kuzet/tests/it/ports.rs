//! Free loopback ports for the servers the tests start (kuzet, Kamailio,
//! SIPp), shared with the overload test through `#[path]`.
//!
//! A port the kernel hands out for `bind(0)` comes from its ephemeral
//! range, the same range every outgoing TCP connection (a gRPC client, a
//! Redis client, an HTTP scrape in a test running beside this one) takes
//! its source port from. Between the moment a test learns such a port and
//! the moment its server binds it, another connection may take it, and
//! kuzet, which binds UDP and TCP on one port, fails with "Address already
//! in use". So ports are picked below the ephemeral range, where only an
//! explicit bind can take one, at random (tests run in parallel, in
//! separate processes) and checked free on both UDP and TCP.

use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};

/// The kernel's ephemeral range, `(low, high)`.
fn ephemeral() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// A loopback port free for both UDP and TCP, outside the ephemeral
/// range when the system leaves room below it.
pub fn free_port() -> u16 {
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    let (low, _) = ephemeral();
    if low >= 12_000 {
        let span = u64::from(low - 10_000);
        let seed = u64::from(std::process::id())
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        for _ in 0..2_000 {
            let n = DRAWS.fetch_add(1, Ordering::Relaxed);
            // splitmix64: well spread whatever the seed.
            let mut z = seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let port = 10_000 + (z % span) as u16;
            if free_both(port) {
                return port;
            }
        }
    }
    // No room below the ephemeral range: the kernel's pick, checked.
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").expect("a UDP socket on loopback");
        let port = u.local_addr().expect("its address").port();
        drop(u);
        if free_both(port) {
            return port;
        }
    }
}

fn free_both(port: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", port)).is_ok() && TcpListener::bind(("127.0.0.1", port)).is_ok()
}
