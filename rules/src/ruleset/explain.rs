//! Explanations: what fired, with its measured value and threshold, as
//! written into the verdict header and the logs.

use super::*;

impl RuleSet {
    /// Writes the explanation of `s`, e.g.
    /// `blocklist: caller listed (bank fraud desk); velocity_1m: 37 calls > 20`.
    /// `lists` resolves list reasons; they must be the lists `s` was
    /// scored against.
    pub fn explain(
        &self,
        s: &Scored,
        lists: &RuleLists<'_>,
        out: &mut impl fmt::Write,
    ) -> fmt::Result {
        for (k, f) in s.fired().iter().enumerate() {
            let Some(r) = self.rules.get(usize::from(f.rule)) else {
                continue;
            };
            if k > 0 {
                out.write_str("; ")?;
            }
            out.write_str(&r.id)?;
            out.write_str(": ")?;
            match r.kind {
                Kind::Velocity { .. }
                | Kind::Concurrent { .. }
                | Kind::DestinationVelocity { .. } => {
                    write!(out, "{} calls > {}", f.value, f.threshold)?
                }
                Kind::FanOut { .. } => write!(out, "{} numbers > {}", f.value, f.threshold)?,
                Kind::Sequential { .. } => write!(out, "{} in a row >= {}", f.value, f.threshold)?,
                Kind::Wangiri { .. } | Kind::ShortCalls { .. } => write!(
                    out,
                    "{:.1}% >= {:.1}%",
                    f64::from(f.value) / 10.0,
                    f64::from(f.threshold) / 10.0
                )?,
                Kind::List { list, .. } => {
                    if let Some(side) = f.side {
                        out.write_str(side.as_str())?;
                        out.write_str(" ")?;
                    }
                    if f.value == 0 {
                        out.write_str("listed")?;
                    } else {
                        write!(out, "in a listed {}-digit range", f.value)?;
                    }
                    let reason = lists.get(list).map_or("", |l| l.reason(f.reason));
                    if !reason.is_empty() {
                        write!(out, " ({reason})")?;
                    }
                }
                _ => out.write_str("matched")?,
            }
            if f.shadow {
                out.write_str(" (shadow)")?;
            }
        }
        Ok(())
    }
}
