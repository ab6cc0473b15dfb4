//! Who may ask what: bearer tokens with roles, configured as SHA-256
//! hashes (a leaked config leaks no token), checked on the server for
//! every request.
//!
//! A presented token is hashed and compared with every configured hash in
//! constant time, all of them, whatever matched: the time taken says
//! nothing about which token, or how much of one, was right.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Queries calls and incidents, exports.
    Investigator,
    /// Reads rule hit counts (to tune rules), pushes list versions and
    /// stages rule versions, and puts in force those that block no more.
    RuleAuthor,
    /// Puts in force list and rule versions that block more (a second
    /// pair of eyes: see [`crate::publishing`]).
    Approver,
    /// Everything, and the audit log.
    Admin,
}

impl Role {
    /// `investigator`, `rule-author` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Investigator => "investigator",
            Role::RuleAuthor => "rule-author",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }

    /// Parses the config's and the CLI's name.
    pub fn from_name(s: &str) -> Option<Role> {
        match s {
            "investigator" => Some(Role::Investigator),
            "rule-author" => Some(Role::RuleAuthor),
            "approver" => Some(Role::Approver),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// One configured token.
#[derive(Clone, Debug)]
pub struct Token {
    /// Who holds it (written in the audit log).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// SHA-256 of the token.
    pub sha256: [u8; 32],
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or one that matches none configured.
    Unauthenticated,
    /// A valid token whose role may not do this.
    Denied,
}

/// The configured tokens.
#[derive(Clone, Debug, Default)]
pub struct Access {
    tokens: Vec<Token>,
}

/// The SHA-256 of `token`, in hex, as the config stores it.
pub fn hash_token(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(H[usize::from(b >> 4)] as char);
        s.push(H[usize::from(b & 15)] as char);
    }
    s
}

/// Parses 64 hex digits.
pub fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    unhex(s.trim())
}

/// `N` bytes from exactly `2N` hex digits (either case), or `None`.
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Access {
    /// Access with these tokens.
    pub fn new(tokens: Vec<Token>) -> Access {
        Access { tokens }
    }

    /// No tokens configured: every request is refused.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The holder of `presented` (the bearer token), if any token matches.
    pub fn authenticate(&self, presented: Option<&str>) -> Option<&Token> {
        let presented = presented?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for t in &self.tokens {
            // Every hash is compared, whatever matched before.
            if bool::from(t.sha256.ct_eq(&digest)) && found.is_none() {
                found = Some(t);
            }
        }
        found
    }

    /// The holder of `presented` if its role is one of `allowed`.
    pub fn check(&self, presented: Option<&str>, allowed: &[Role]) -> Result<&Token, Refusal> {
        let t = self
            .authenticate(presented)
            .ok_or(Refusal::Unauthenticated)?;
        if allowed.contains(&t.role) {
            Ok(t)
        } else {
            Err(Refusal::Denied)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_known_by_their_hash_and_roles_gate_what_they_do() {
        let a = Access::new(vec![
            Token {
                name: "ana".into(),
                role: Role::Investigator,
                sha256: parse_sha256(&hash_token("ana-secret")).unwrap(),
            },
            Token {
                name: "root".into(),
                role: Role::Admin,
                sha256: parse_sha256(&hash_token("root-secret")).unwrap(),
            },
        ]);
        assert_eq!(a.authenticate(Some("ana-secret")).unwrap().name, "ana");
        assert!(a.authenticate(Some("ana-secre")).is_none());
        assert!(a.authenticate(None).is_none());
        assert_eq!(
            a.check(Some("ana-secret"), &[Role::Admin]).err(),
            Some(Refusal::Denied)
        );
        assert_eq!(
            a.check(Some("x"), &[Role::Admin]).err(),
            Some(Refusal::Unauthenticated)
        );
        assert_eq!(
            a.check(Some("root-secret"), &[Role::Admin]).unwrap().role,
            Role::Admin
        );
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(parse_sha256("zz").is_none());
    }
}
