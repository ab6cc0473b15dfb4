//! The Kamailio side of the benchmark applies the same list policy as
//! kuzet: `deploy/kamailio/kamailio.cfg` on Debian's Kamailio, loaded with
//! the `db_text` tables kuzet-sim writes, must give every call of the small
//! scenario the verdict kuzet gives it. Otherwise the side-by-side figures
//! in `benches/e2e/compare.sh` would compare different work.
//!
//! Kamailio comes from Debian's `kamailio` package, which
//! `scripts/install-deps.sh` installs; a missing Kamailio fails the test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kuzet_sim::driver::Proto;

use crate::common::{client, status, TempDir};
use crate::sim::{assert_list_detection, run, small};

pub(crate) fn kamailio() -> PathBuf {
    crate::common::tool("kamailio", "kamailio")
}

pub(crate) struct Kamailio(pub(crate) Child);

impl Drop for Kamailio {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(tables: &Path) -> (Kamailio, SocketAddr) {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kamailio/kamailio.cfg");
    let child = Command::new(kamailio())
        .arg("-f")
        .arg(&cfg)
        .args(["-DD", "-E", "-n", "2", "-m", "64", "-M", "8", "-l"])
        .arg(format!("udp:{addr}"))
        .arg("-A")
        .arg(format!("KZ_DBURL=\"text://{}\"", tables.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kamailio starts");
    let k = Kamailio(child);
    let c = client();
    c.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let ping = "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bKping\r\n\
                From: <sip:t@x>;tag=1\r\nTo: <sip:t@x>\r\nCall-ID: ping\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "kamailio did not come up");
        c.send_to(ping.as_bytes(), addr).unwrap();
        let mut buf = [0u8; 2048];
        if let Ok((n, _)) = c.recv_from(&mut buf) {
            if status(&String::from_utf8_lossy(&buf[..n])) == 200 {
                return (k, addr);
            }
        }
    }
}

#[test]
fn kamailio_config_gives_kuzets_list_verdicts() {
    let t = small();
    let dir = TempDir::new("kamailio");
    t.write_engine_files(dir.path()).unwrap();
    let (_k, addr) = start(&dir.path().join("kamailio"));
    let r = run(&t, addr, Proto::Udp);
    assert_list_detection(&t, &r);
}
