//! Explanations: what fired, with its measured value and threshold, as
//! written into the verdict header and the logs.

use super::*;

impl RuleSet {
    /// Writes the explanation of `s`, e.g.
    /// `velocity_1m: 37 calls > 20; fan_out_1h: 31 numbers > 30`.
    pub fn explain(&self, s: &Scored, out: &mut impl fmt::Write) -> fmt::Result {
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
                _ => out.write_str("matched")?,
            }
            if f.shadow {
                out.write_str(" (shadow)")?;
            }
        }
        Ok(())
    }
}
