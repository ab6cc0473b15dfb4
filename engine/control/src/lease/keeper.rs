//! A lease's keeper: the task that wins, renews and gives up one
//! singleton's lease in Redis for this node, and makes the shared store
//! take the new token before the node leads.
//!
//! Every third of the lease a node that does not hold the key tries to
//! win it with one script that, atomically, finds the key absent, takes
//! the next token (`INCR {prefix}:lease:{name}:token`, raised to Redis's
//! clock in milliseconds when it is below it) and sets the key to
//! `"{node} {token}"` with the lease's expiry (`SET … PX`): so a token is
//! spent only on a win, and each holder's is higher than every earlier
//! one's, even across a Redis that lost its data. The winner holds the token on its fence, has the store
//! claim it ([`super::Claim`]) and only then leads. The holder renews
//! every third of the lease with a script that extends the key only if
//! it still holds this node's value, and on shutdown deletes it the same
//! way, so the next node need not wait for it to expire.
//!
//! Times are read from the monotonic clock *before* each request that
//! sets or renews the key, and the lead lasts from that reading plus the
//! lease less the margin ([`super::Settings::margin`]); a renewal that
//! fails is tried again until then, and when the time is up the lead ends
//! here even if Redis never answered. See the module docs of
//! [`super`] for why that is safe.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kuzet_store::StoreError;
use tokio::sync::watch;

use super::{lease_key, parse_holder, token_key, Lease};
use crate::cluster::link::Link;
use crate::cluster::ClusterCounters;

/// Wins the lease if nobody holds it. KEYS: the lease, its token
/// counter; ARGV: this node, the lease in ms. `{1, token}` on a win,
/// `{0, holder}` when held.
///
/// The token is the counter's next value, but never below Redis's clock
/// in milliseconds: a Redis that restarts without its data (its counter
/// back at 0) still hands out tokens above every earlier holder's, never
/// one equal to a holder's that may still be acting (the store refuses
/// only lower tokens). Lua's numbers hold integers exactly to 2^53.
const ACQUIRE: &str = r"
local held = redis.call('GET', KEYS[1])
if held then return {0, held} end
local t = redis.call('INCR', KEYS[2])
local now = redis.call('TIME')
local floor = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if t < floor then
  t = floor
  redis.call('SET', KEYS[2], string.format('%d', t))
end
local token = string.format('%d', t)
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. token, 'PX', ARGV[2])
return {1, token}
";

/// Extends the lease if it is still this holder's. KEYS: the lease;
/// ARGV: the holder's value, the lease in ms. 1 when extended.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Deletes the lease if it is still this holder's. KEYS: the lease;
/// ARGV: the holder's value. 1 when deleted.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Raises the token counter to at least ARGV[1]. KEYS: the counter.
const RAISE: &str = r"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
";

/// The keeper's link to Redis ([`crate::cluster::link`]: made on first
/// use, every request within the deadline), its failures counted.
struct Conn {
    link: Link,
    errors: Arc<ClusterCounters>,
}

impl Conn {
    /// Runs `script` with `keys` and `args`.
    async fn eval<T: redis::FromRedisValue>(
        &mut self,
        script: &str,
        keys: &[&str],
        args: &[&str],
    ) -> Result<T, String> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script).arg(keys.len()).arg(keys).arg(args);
        let out = self.link.query(&cmd).await;
        if out.is_err() {
            self.errors.errors.inc();
        }
        out
    }
}

/// Keeps `lease` for this node until `shutdown` (see the module docs).
pub(super) async fn run(lease: Arc<Lease>, mut shutdown: watch::Receiver<bool>) {
    let s = lease.shared.settings.clone();
    let name = lease.name();
    let key = lease_key(&s.prefix, name);
    let tokens = token_key(&s.prefix, name);
    let lease_ms = (s.lease.as_millis() as u64).max(1).to_string();
    let renew_every = s.renew_every();
    // After a failed renewal: soon again, as the time left is two thirds
    // of the lease at most.
    let retry = renew_every / 4;
    let mut redis = Conn {
        link: lease
            .shared
            .client
            .link(Some(lease.shared.redis_errors.clone())),
        errors: lease.shared.redis_errors.clone(),
    };
    // The token and value this node holds in Redis, as far as it knows.
    let mut mine: Option<(u64, String)> = None;
    let mut next = Instant::now();
    let mut last_warn: Option<Instant> = None;
    let mut warn = |what: &str, e: &str| {
        if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            last_warn = Some(Instant::now());
            tracing::warn!(lease = name, error = %crate::safe::visible(e), "{what}");
        }
    };
    loop {
        // The lead may have ended outside the keeper (its time ran out, or
        // the store refused its token): give the key up, so another node
        // need not wait for it to expire.
        if let Some((token, value)) = &mine {
            if lease.holding().map(|(t, _)| t) != Some(*token) {
                let _ = redis.eval::<i64>(RELEASE, &[&key], &[value]).await;
                mine = None;
                next = next.max(Instant::now() + renew_every);
                continue;
            }
        }
        let until = lease.holding().map(|(_, u)| u);
        let wake = until.map_or(next, |u| u.min(next));
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = lease.kick.notified() => continue,
            _ = shutdown.changed() => {}
        }
        if shutdown.has_changed().is_err() || *shutdown.borrow() {
            if let Some((token, value)) = mine.take() {
                lease.give_up(token);
                let _ = redis.eval::<i64>(RELEASE, &[&key], &[&value]).await;
            }
            return;
        }
        let now = Instant::now();
        if let (Some((token, _)), Some(u)) = (&mine, until) {
            if now >= u {
                lease.lose(
                    *token,
                    "it could not renew its lease in time (Redis unreachable or slow)",
                );
                continue;
            }
        }
        if now < next {
            continue;
        }
        match &mine {
            Some((token, value)) => {
                let token = *token;
                let started = Instant::now();
                match redis.eval::<i64>(RENEW, &[&key], &[value, &lease_ms]).await {
                    Ok(1) => {
                        lease.renewed(token, started);
                        next = started + renew_every;
                    }
                    Ok(_) => {
                        lease.lose(token, "another node holds the lease now");
                        mine = None;
                        next = Instant::now() + renew_every;
                    }
                    Err(e) => {
                        warn(
                            "renewing the lease failed; trying again until it runs out",
                            &e,
                        );
                        next = Instant::now() + retry;
                    }
                }
            }
            None => {
                let started = Instant::now();
                let got = redis
                    .eval::<(i64, String)>(ACQUIRE, &[&key, &tokens], &[&s.node, &lease_ms])
                    .await;
                next = started + renew_every;
                let token = match got {
                    Ok((1, t)) => match t.parse::<u64>() {
                        Ok(t) if t > 0 => t,
                        _ => {
                            warn("Redis answered the lease with a token that is not one", &t);
                            continue;
                        }
                    },
                    Ok((_, holder)) => {
                        tracing::trace!(lease = name, holder = ?parse_holder(&holder), "held by another node");
                        continue;
                    }
                    Err(e) => {
                        warn("trying to win the lease failed", &e);
                        continue;
                    }
                };
                let until = started + s.lease - s.margin();
                let value = format!("{} {token}", s.node);
                lease.won(token, until);
                mine = Some((token, value.clone()));
                match claim(&lease, until).await {
                    Ok(()) => {
                        lease.lead(token);
                    }
                    Err(StoreError::Fenced { seen, .. }) if seen >= token => {
                        // Redis handed out a token the store has seen
                        // already: it lost its counter (a restart without
                        // persistence). Raised past the store's, the next
                        // try wins with a token the store takes.
                        tracing::warn!(
                            lease = name,
                            token,
                            seen,
                            "Redis's lease token is behind the store's (Redis lost its data?): raising it and trying again"
                        );
                        lease.lose(token, "its token was behind the store's");
                        let _ = redis
                            .eval::<i64>(RAISE, &[&tokens], &[&seen.to_string()])
                            .await;
                        let _ = redis.eval::<i64>(RELEASE, &[&key], &[&value]).await;
                        mine = None;
                        next = Instant::now();
                    }
                    Err(e) => {
                        warn(
                            "the store did not take the lease's token; giving the lease up",
                            &e.to_string(),
                        );
                        lease.lose(token, "the store did not take its token");
                        let _ = redis.eval::<i64>(RELEASE, &[&key], &[&value]).await;
                        mine = None;
                    }
                }
            }
        }
    }
}

/// Has the store claim the fence's token, on a blocking thread, within
/// the time the lease leaves.
async fn claim(lease: &Arc<Lease>, until: Instant) -> Result<(), StoreError> {
    let (claim, fence) = (lease.shared.claim.clone(), lease.fence.clone());
    let left = until.saturating_duration_since(Instant::now());
    let at = || format!("the {} lease's claim", lease.name());
    match tokio::time::timeout(left, tokio::task::spawn_blocking(move || claim(&fence))).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(StoreError::internal(at(), format!("it failed: {e}"))),
        Err(_) => Err(StoreError::internal(
            at(),
            "the store did not answer within the lease",
        )),
    }
}
