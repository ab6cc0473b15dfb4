//! Explanations: what fired, with its measured value and threshold, as
//! written into the verdict header and the logs.

use super::*;
use crate::plan::Invalidity;

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
        let mut first = true;
        for f in s.fired() {
            let Some(r) = self.rules.get(usize::from(f.rule)) else {
                continue;
            };
            if !first {
                out.write_str("; ")?;
            }
            first = false;
            out.write_str(&r.id)?;
            out.write_str(": ")?;
            self.explain_fired(f, lists, out)?;
        }
        Ok(())
    }

    /// Writes what one fired rule measured, without its id: e.g.
    /// `37 calls > 20`, or `caller listed (bank fraud desk) (shadow)`.
    pub fn explain_fired(
        &self,
        f: &Fired,
        lists: &RuleLists<'_>,
        out: &mut impl fmt::Write,
    ) -> fmt::Result {
        {
            let Some(r) = self.rules.get(usize::from(f.rule)) else {
                return Ok(());
            };
            match r.kind {
                Kind::Velocity { .. }
                | Kind::Concurrent { .. }
                | Kind::DestinationVelocity { .. } => {
                    write!(out, "{} calls > {}", f.value, f.threshold)?
                }
                Kind::FanOut { .. } => {
                    write!(out, "{} numbers > {}", f.value, f.threshold)?;
                    if f.reason > 0 {
                        write!(out, ", {:.1}% called back", f64::from(f.reason - 1) / 10.0)?;
                    }
                }
                Kind::Sequential { .. } => write!(out, "{} in a row >= {}", f.value, f.threshold)?,
                Kind::Wangiri { .. } | Kind::ShortCalls { .. } => write!(
                    out,
                    "{:.1}% >= {:.1}%",
                    f64::from(f.value) / 10.0,
                    f64::from(f.threshold) / 10.0
                )?,
                Kind::DomesticOnInternational => {
                    let who = f.who.map_or("caller", Who::as_str);
                    if f.note == Note::Roamer {
                        write!(out, "{who} is a known outbound roamer, not counted")?;
                    } else {
                        write!(out, "{who} is domestic on an international trunk")?;
                    }
                }
                Kind::ProtectedCaller => write!(
                    out,
                    "{} is a protected number",
                    f.who.map_or("caller", Who::as_str)
                )?,
                Kind::CliMismatch => out.write_str("From and PAI differ")?,
                Kind::InvalidCaller => match f.value {
                    0 => out.write_str("caller number claimed but not a number")?,
                    v => write!(
                        out,
                        "caller number invalid ({})",
                        [
                            Invalidity::Length,
                            Invalidity::Unallocated,
                            Invalidity::Unassigned
                        ]
                        .get(v as usize - 1)
                        .map_or("?", |i| i.as_str())
                    )?,
                },
                Kind::List { list, .. } => {
                    if let Some(who) = f.who {
                        out.write_str(who.as_str())?;
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
            }
            if let (Note::Escalated, Some(e)) = (f.note, r.escalate) {
                write!(
                    out,
                    ", escalated: fired {}+ times in {} s",
                    e.after, e.within_s
                )?;
            }
            if f.shadow {
                out.write_str(" (shadow)")?;
            }
        }
        Ok(())
    }
}
