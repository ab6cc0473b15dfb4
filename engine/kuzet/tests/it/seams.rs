//! Issue 19's defects, each a regression test named after it, where the
//! defect shows only across a process or a thread: kuzet starting under
//! traffic, a reload between a call and its record, a reload abandoned and
//! retried, control answering while a full table is swept.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{header, invite, status, wait, TempDir, Watched};

/// Regression: kuzet bound its SIP sockets, then spent ~100 ms setting its
/// tables aside; calls that queued meanwhile were past their 50 ms budget
/// when the workers started and were let through unscored (the first 11
/// of a blocklisted caller at 200 calls/s got 302, every time). A budget
/// now counts from no earlier than the handler being ready.
#[test]
fn a_blocklisted_caller_at_200_calls_a_second_while_kuzet_starts_gets_603_from_the_first_call() {
    let dir = TempDir::new("start-burst");
    dir.write("block.txt", "+77011112233,fraud line\n");
    let listen = SocketAddr::from(([127, 0, 0, 1], crate::ports::free_port()));
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let port = sock.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    // Call number -> status of its first answer.
    let answers: Arc<Mutex<BTreeMap<u32, u16>>> = Arc::default();
    let sender = {
        let (s, stop) = (sock.try_clone().unwrap(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let msg = invite("+77011112233", "+77020000001", &format!("sb-{i}"), port);
                // Nobody listens until kuzet binds: those are lost.
                let _ = s.send_to(msg.as_bytes(), listen);
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            i
        })
    };
    let receiver = {
        let (answers, stop) = (answers.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                let Ok(n) = sock.recv(&mut buf) else { continue };
                let r = String::from_utf8_lossy(&buf[..n]).into_owned();
                let Some(i) = header(&r, "Call-ID")
                    .and_then(|c| c.strip_prefix("sb-"))
                    .and_then(|i| i.parse().ok())
                else {
                    continue;
                };
                answers.lock().unwrap().entry(i).or_insert(status(&r));
            }
        })
    };
    let w = Watched::start_on(listen, &["--blocklist", "block.txt"], dir.path());
    wait("200 calls answered", || {
        (answers.lock().unwrap().len() >= 200).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    receiver.join().unwrap();
    w.stop();
    let answers = answers.lock().unwrap();
    let first = *answers.keys().next().unwrap();
    assert!(first > 0, "some calls were sent before kuzet listened");
    let let_through: Vec<_> = answers.iter().filter(|(_, s)| **s != 603).collect();
    assert!(
        let_through.is_empty(),
        "of {sent} calls sent from call {first} on, these were not blocked \
         (call, status): {let_through:?}"
    );
}
