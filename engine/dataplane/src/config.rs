//! The sections of `kuzet.toml` the call path owns: `[server]`, `[proxy]`,
//! `[verdict]`, `[numbers]`, `[outcomes]` and each `[[trunks]]` entry,
//! with their defaults (the documented ones of `deploy/kuzet.toml`), the
//! checks each makes of its own values, and what a section alone turns
//! into (the trunk table, TCP's settings).
//!
//! The binary composes these sections with the other crates' into its
//! `Config`, and builds the handler's [`Settings`](crate::Settings) from
//! them: that struct spans sections (the Via address is `[proxy]`'s or
//! `[server]`'s, the state's caps are `[rules]`'), so it is assembled
//! there, as is every rule that compares two sections (proxy mode needs a
//! next hop; an outcome reporter must be a trunk). Reading the outcome
//! secret's file is the binary's too: nothing here reads a file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use kuzet_rules::TrunkKind;
use serde::Deserialize;

use crate::handler::{Mode, NumberSource};
use crate::transport::tcp::TcpSettings;
use crate::trunks::TrunkMap;

/// `[server]`: where and how kuzet listens.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address for SIP over UDP and TCP.
    pub listen: SocketAddr,
    /// Redirect (answer 302/603) or proxy (forward).
    pub mode: Mode,
    /// UDP worker threads; 0 = one per core.
    pub udp_workers: usize,
    /// Datagrams moved per recvmmsg/sendmmsg call.
    pub udp_batch: usize,
    /// SO_RCVBUF/SO_SNDBUF asked of the kernel, so bursts queue rather than drop.
    pub socket_buffer_bytes: usize,
    /// Also accept SIP over TCP on the listen address.
    pub tcp: bool,
    /// TCP connections beyond this are refused, bounding memory.
    pub max_tcp_connections: usize,
    /// TCP connections from one source address beyond this are refused.
    pub max_tcp_connections_per_source: usize,
    /// The TCP listen backlog (the kernel caps it at net.core.somaxconn).
    pub tcp_backlog: u32,
    /// A TCP connection with no message in progress this long is closed.
    pub tcp_idle_timeout_secs: u64,
    /// A TCP message not complete this long after its first byte closes
    /// the connection.
    pub tcp_message_timeout_ms: u64,
    /// An answer a TCP peer has not taken this long closes the connection.
    pub tcp_write_timeout_ms: u64,
    /// How often counters are logged and behaviour state is swept.
    pub stats_interval_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 5060)),
            mode: Mode::Redirect,
            udp_workers: 0,
            udp_batch: 32,
            socket_buffer_bytes: 4 << 20,
            tcp: true,
            max_tcp_connections: 4096,
            max_tcp_connections_per_source: 256,
            tcp_backlog: 4096,
            tcp_idle_timeout_secs: 60,
            tcp_message_timeout_ms: 10_000,
            tcp_write_timeout_ms: 10_000,
            stats_interval_secs: 10,
        }
    }
}

impl ServerConfig {
    /// Checks what serde cannot: the batch size and the TCP caps.
    pub fn check(&self) -> Result<(), String> {
        if self.udp_batch == 0 || self.udp_batch > 1024 {
            return Err("server.udp_batch must be 1 to 1024".into());
        }
        if self.max_tcp_connections_per_source == 0 || self.tcp_backlog == 0 {
            return Err(
                "server.max_tcp_connections_per_source and server.tcp_backlog must be at least 1"
                    .into(),
            );
        }
        Ok(())
    }

    /// SIP over TCP's caps and deadlines as configured (the binary may
    /// lower `max_connections` to fit the descriptor limit).
    pub fn tcp_settings(&self) -> TcpSettings {
        TcpSettings {
            max_connections: self.max_tcp_connections,
            max_per_source: self.max_tcp_connections_per_source,
            idle_timeout: Duration::from_secs(self.tcp_idle_timeout_secs.max(1)),
            message_timeout: Duration::from_millis(self.tcp_message_timeout_ms.max(1)),
            write_timeout: Duration::from_millis(self.tcp_write_timeout_ms.max(1)),
        }
    }
}

/// `[proxy]`: proxy mode's next hop and who may use it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Where proxy mode forwards requests.
    pub next_hop: Option<SocketAddr>,
    /// `host:port` written in kuzet's own Via, when the listen address is not reachable as is.
    pub advertised_address: Option<SocketAddr>,
    /// Proxy mode: refuse sources no trunk covers (when trunks exist).
    pub reject_unknown_source: bool,
    /// The code unknown sources are refused with.
    pub unknown_source_code: u16,
    /// Add kuzet's Record-Route to each new call, so the call's later
    /// requests (re-INVITE, BYE) pass through kuzet (see the handler's
    /// `Settings::record_route` for what turning it off costs).
    pub record_route: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            next_hop: None,
            advertised_address: None,
            reject_unknown_source: true,
            unknown_source_code: 403,
            record_route: true,
        }
    }
}

impl ProxyConfig {
    /// Checks what serde cannot: the refusal's status code.
    pub fn check(&self) -> Result<(), String> {
        if !(400..=699).contains(&self.unknown_source_code) {
            return Err("proxy.unknown_source_code must be a 4xx-6xx code".into());
        }
        Ok(())
    }
}

/// `[verdict]`: how a blocked call is answered and what list hits score.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerdictConfig {
    /// 603, 403 or 607 for a blocked call.
    pub block_code: u16,
    /// What a blocklist hit scores (the built-in blocklist rule).
    pub block_score: u32,
    /// What a flaglist hit scores (the built-in flaglist rule).
    pub flag_score: u32,
    /// A request older than this when scoring starts is allowed unscored.
    pub failopen_budget_us: u64,
    /// INVITE transactions whose verdict is kept, so a retransmission gets
    /// the same answer without being scored or counted again.
    pub max_transactions: usize,
    /// How long a transaction's verdict is kept, seconds (RFC 3261 Timer
    /// B: 32).
    pub transaction_window_secs: u64,
    /// Where a wrongly blocked caller can appeal (a phone number or a web
    /// address), written in a block's Reason text beside its verdict id.
    pub appeal_contact: Option<String>,
}

impl Default for VerdictConfig {
    fn default() -> Self {
        VerdictConfig {
            block_code: 603,
            block_score: 100,
            flag_score: 50,
            failopen_budget_us: 50_000,
            max_transactions: 262_144,
            transaction_window_secs: 32,
            appeal_contact: None,
        }
    }
}

impl VerdictConfig {
    /// Checks what serde cannot: the block code, and that the appeal
    /// contact fits inside the Reason header's quoted text.
    pub fn check(&self) -> Result<(), String> {
        if ![603, 403, 607].contains(&self.block_code) {
            return Err(format!(
                "verdict.block_code must be 603, 403 or 607, not {}",
                self.block_code
            ));
        }
        if let Some(c) = &self.appeal_contact {
            if c.len() > 128
                || c.bytes()
                    .any(|b| b == b'"' || b == b'\\' || b.is_ascii_control())
            {
                return Err(
                    "verdict.appeal_contact must be at most 128 characters, without quotes, backslashes or control characters (it is written inside the Reason header's quoted text)".into(),
                );
            }
        }
        Ok(())
    }
}

/// `[numbers]`: where the numbers of a call are read from.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NumbersConfig {
    /// Headers the A-number is read from, first match wins.
    pub a_number_order: Vec<NumberSource>,
}

impl Default for NumbersConfig {
    fn default() -> Self {
        NumbersConfig {
            a_number_order: vec![NumberSource::Pai, NumberSource::From],
        }
    }
}

impl NumbersConfig {
    /// Checks what serde cannot: at least one header to read.
    pub fn check(&self) -> Result<(), String> {
        if self.a_number_order.is_empty() {
            return Err("numbers.a_number_order may not be empty".into());
        }
        Ok(())
    }
}

/// `[outcomes]`: who may report call outcomes (the outcome API).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutcomesConfig {
    /// Trunk names (from `[[trunks]]`) whose sources may report.
    pub reporters: Vec<String>,
    /// A file holding a shared secret; a source that sends it in
    /// `X-Kuzet-Outcome-Key` may report.
    pub secret_file: Option<PathBuf>,
    /// The secret, once read.
    #[serde(skip)]
    pub secret: Option<Vec<u8>>,
}

/// One `[[trunks]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkConfig {
    /// The operator's name for the trunk, in logs and records.
    pub name: String,
    /// international, domestic, mobile or other.
    pub kind: String,
    /// Source networks that belong to it.
    pub cidrs: Vec<IpNet>,
    /// Its P-Asserted-Identity is trusted: the network behind it vouches
    /// for its callers (RFC 3325). Set it for the operator's own core and
    /// for interconnects whose identities an agreement makes trustworthy;
    /// from anywhere else (and from a source on no trunk) PAI and From are
    /// claims, and no record names such a number as a fraud source.
    #[serde(default)]
    pub trust_pai: bool,
}

impl TrunkConfig {
    /// Checks what serde cannot: the trunk's kind.
    pub fn check(&self) -> Result<(), String> {
        TrunkKind::from_name(&self.kind).ok_or_else(|| {
            format!(
                "trunk {:?}: kind must be international, domestic, mobile or other, not {:?}",
                self.name, self.kind
            )
        })?;
        Ok(())
    }

    /// The trunk table of these entries (a kind that does not check is
    /// taken as `other`).
    pub fn trunk_map(trunks: &[TrunkConfig]) -> TrunkMap {
        TrunkMap::new(trunks.iter().map(|t| {
            let kind = TrunkKind::from_name(&t.kind).unwrap_or(TrunkKind::Other);
            (t.name.as_str(), kind, t.cidrs.as_slice(), t.trust_pai)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_section_checks_its_own_values() {
        assert_eq!(ServerConfig::default().check(), Ok(()));
        assert_eq!(ProxyConfig::default().check(), Ok(()));
        assert_eq!(VerdictConfig::default().check(), Ok(()));
        assert_eq!(NumbersConfig::default().check(), Ok(()));
        let server = ServerConfig {
            udp_batch: 0,
            ..ServerConfig::default()
        };
        assert_eq!(
            server.check().unwrap_err(),
            "server.udp_batch must be 1 to 1024"
        );
        let verdict = VerdictConfig {
            block_code: 486,
            ..VerdictConfig::default()
        };
        assert!(verdict
            .check()
            .unwrap_err()
            .contains("603, 403 or 607, not 486"));
        let verdict = VerdictConfig {
            appeal_contact: Some("call \"us\"".into()),
            ..VerdictConfig::default()
        };
        assert!(verdict
            .check()
            .unwrap_err()
            .starts_with("verdict.appeal_contact"));
        let proxy = ProxyConfig {
            unknown_source_code: 200,
            ..ProxyConfig::default()
        };
        assert!(proxy.check().is_err());
        let numbers = NumbersConfig {
            a_number_order: Vec::new(),
        };
        assert!(numbers.check().is_err());
    }

    #[test]
    fn tcp_settings_follow_the_server_section() {
        let s = ServerConfig {
            tcp_idle_timeout_secs: 0,
            ..ServerConfig::default()
        }
        .tcp_settings();
        assert_eq!(s.max_connections, 4096);
        assert_eq!(s.max_per_source, 256);
        assert_eq!(s.idle_timeout, Duration::from_secs(1), "never zero");
        assert_eq!(s.write_timeout, Duration::from_secs(10));
    }

    #[test]
    fn a_trunk_of_no_known_kind_is_refused_by_name() {
        let t = TrunkConfig {
            name: "x".into(),
            kind: "satellite".into(),
            cidrs: Vec::new(),
            trust_pai: false,
        };
        assert_eq!(
            t.check().unwrap_err(),
            "trunk \"x\": kind must be international, domestic, mobile or other, not \"satellite\""
        );
        assert!(TrunkConfig::trunk_map(&[t])
            .lookup("10.0.0.1".parse().unwrap())
            .is_none());
    }
}
