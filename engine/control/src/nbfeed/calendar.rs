//! Working days, for the Centre's deadlines: an operator checks a number
//! "within 2 working days" of the Centre's information. A working day is
//! a weekday that is not a public holiday; a fixed holiday that falls on
//! a Saturday or Sunday moves its day off to the next working day, as
//! Kazakhstan's labour code moves it. Movable holidays (Kurban Ait) and
//! the government's yearly day swaps are added by date in config.
//!
//! Dates are days since 1970-01-01 in the operator's local time; the
//! civil-date conversion is the proleptic Gregorian calendar.

use std::collections::BTreeSet;

/// A calendar day: days since 1970-01-01.
pub type Day = i64;

/// The civil date of `d`: (year, month 1-12, day 1-31).
pub fn civil(d: Day) -> (i64, u32, u32) {
    kuzet_store::days::civil_from_days(d)
}

/// The day of a civil date (month 1-12, day 1-31).
pub fn day_of(year: i64, month: u32, day: u32) -> Day {
    kuzet_store::days::days_from_civil(year, month, day)
}

/// 0 Monday .. 6 Sunday.
pub fn weekday(d: Day) -> u32 {
    // 1970-01-01 was a Thursday.
    (d + 3).rem_euclid(7) as u32
}

/// Kazakhstan's fixed national and state holidays (month, day), as this
/// code understands the law in 2026: New Year (two days), International
/// Women's Day, Nauryz (three days), Unity Day, Defender of the
/// Fatherland Day, Victory Day, Capital Day, Constitution Day, Republic
/// Day, Independence Day (one day since 2022). One on a weekend moves to
/// the next working day. Check it against each year's government decree,
/// and give its swaps as extra days.
pub const KZ_FIXED: [(u32, u32); 13] = [
    (1, 1),
    (1, 2),
    (3, 8),
    (3, 21),
    (3, 22),
    (3, 23),
    (5, 1),
    (5, 7),
    (5, 9),
    (7, 6),
    (8, 30),
    (10, 25),
    (12, 16),
];

/// Religious holidays that are days off but do not move off a weekend:
/// Orthodox Christmas (Kurban Ait, movable, is given by date).
pub const KZ_RELIGIOUS: [(u32, u32); 1] = [(1, 7)];

/// Which days are days off.
#[derive(Clone, Debug, Default)]
pub struct Calendar {
    fixed: Vec<(u32, u32)>,
    religious: Vec<(u32, u32)>,
    /// Extra days off (movable holidays, swapped days).
    extra_off: BTreeSet<Day>,
    /// Weekend days worked (the other half of a swap).
    extra_on: BTreeSet<Day>,
}

impl Calendar {
    /// Kazakhstan's fixed holidays, with `off` and `on` added by date.
    pub fn kazakhstan(
        off: impl IntoIterator<Item = Day>,
        on: impl IntoIterator<Item = Day>,
    ) -> Calendar {
        Calendar {
            fixed: KZ_FIXED.to_vec(),
            religious: KZ_RELIGIOUS.to_vec(),
            extra_off: off.into_iter().collect(),
            extra_on: on.into_iter().collect(),
        }
    }

    /// Weekends only, with `off` and `on` added by date (an operator who
    /// keeps its whole holiday list in the file).
    pub fn weekends(
        off: impl IntoIterator<Item = Day>,
        on: impl IntoIterator<Item = Day>,
    ) -> Calendar {
        Calendar {
            extra_off: off.into_iter().collect(),
            extra_on: on.into_iter().collect(),
            ..Calendar::default()
        }
    }

    /// The fixed holidays of `year`, as days.
    fn holidays(&self, year: i64) -> Vec<Day> {
        let mut h: Vec<Day> = self
            .fixed
            .iter()
            .map(|(m, d)| day_of(year, *m, *d))
            .collect();
        h.sort_unstable();
        h
    }

    /// The weekdays off in `year` because a fixed holiday fell on a
    /// weekend: each moves to the next weekday that is neither a holiday
    /// nor taken by an earlier move.
    fn moved(&self, year: i64) -> Vec<Day> {
        let hol = self.holidays(year);
        let religious: Vec<Day> = self
            .religious
            .iter()
            .map(|(m, d)| day_of(year, *m, *d))
            .collect();
        let mut moved: Vec<Day> = Vec::new();
        for h in hol.iter().filter(|h| weekday(**h) >= 5) {
            let mut c = *h + 1;
            while weekday(c) >= 5
                || hol.contains(&c)
                || religious.contains(&c)
                || moved.contains(&c)
                || self.extra_off.contains(&c)
            {
                c += 1;
            }
            moved.push(c);
        }
        moved
    }

    /// Whether `d` is a working day.
    pub fn working(&self, d: Day) -> bool {
        if self.extra_on.contains(&d) {
            return true;
        }
        if self.extra_off.contains(&d) || weekday(d) >= 5 {
            return false;
        }
        let (year, m, day) = civil(d);
        !self.religious.contains(&(m, day))
            && !self.holidays(year).contains(&d)
            && !self.moved(year).contains(&d)
    }

    /// The `n`th working day after `start` (a day received on counts from
    /// the next working day).
    pub fn add_working_days(&self, start: Day, n: u32) -> Day {
        let mut d = start;
        let mut left = n;
        while left > 0 {
            d += 1;
            if self.working(d) {
                left -= 1;
            }
        }
        d
    }

    /// The deadline for something received at `at` (Unix seconds), due
    /// within `n` working days, in a zone `offset_s` east of UTC: the end
    /// of the `n`th working day after the day it arrived (Unix seconds).
    pub fn deadline(&self, at: i64, offset_s: i64, n: u32) -> i64 {
        let local_day = (at + offset_s).div_euclid(86_400);
        let due = self.add_working_days(local_day, n);
        (due + 1) * 86_400 - offset_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip() {
        for d in [-719_468, -1, 0, 1, 11_016, 20_454, 20_792, 50_000] {
            let (y, m, day) = civil(d);
            assert_eq!(day_of(y, m, day), d, "{y}-{m}-{day}");
        }
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(day_of(2026, 12, 5)), (2026, 12, 5));
        // 2026-12-05 is a Saturday.
        assert_eq!(weekday(day_of(2026, 12, 5)), 5);
        assert_eq!(civil(day_of(2024, 2, 29) + 1), (2024, 3, 1));
    }

    #[test]
    fn two_working_days_skip_weekends_and_holidays() {
        let cal = Calendar::kazakhstan([], []);
        let d = |y, m, day| day_of(y, m, day);
        // Received on Thursday 2026-12-03: Friday, then Monday.
        assert_eq!(cal.add_working_days(d(2026, 12, 3), 2), d(2026, 12, 7));
        // Received on Friday 2026-12-11: Monday 14, Tuesday 15.
        assert_eq!(cal.add_working_days(d(2026, 12, 11), 2), d(2026, 12, 15));
        // Received on Tuesday 2026-12-15: the 16th is Independence Day,
        // then Thursday 17 and Friday 18.
        assert_eq!(cal.add_working_days(d(2026, 12, 15), 2), d(2026, 12, 18));
        // Received on Friday 2027-01-01's eve: 1, 2 off (2 a Saturday,
        // moved to Monday 4), 7 Orthodox Christmas: 5, 6, then 8.
        assert_eq!(cal.add_working_days(d(2026, 12, 31), 3), d(2027, 1, 8));
        // A movable holiday by date (Kurban Ait, say) and a worked Saturday.
        let swapped = Calendar::kazakhstan([d(2026, 12, 7)], [d(2026, 12, 5)]);
        assert_eq!(swapped.add_working_days(d(2026, 12, 4), 1), d(2026, 12, 5));
        assert_eq!(swapped.add_working_days(d(2026, 12, 4), 2), d(2026, 12, 8));
    }

    #[test]
    fn a_holiday_on_a_weekend_moves_to_the_next_working_day() {
        let cal = Calendar::kazakhstan([], []);
        let d = |y, m, day| day_of(y, m, day);
        // 2027-05-09 (Victory Day) is a Sunday: Monday 10 is off.
        assert_eq!(weekday(d(2027, 5, 9)), 6);
        assert!(!cal.working(d(2027, 5, 10)));
        assert!(cal.working(d(2027, 5, 11)));
        // 2026-03-21 and 22 (Nauryz) are Saturday and Sunday, 23 a Monday
        // holiday itself: Tuesday 24 and Wednesday 25 are off.
        assert!(!cal.working(d(2026, 3, 23)));
        assert!(!cal.working(d(2026, 3, 24)));
        assert!(!cal.working(d(2026, 3, 25)));
        assert!(cal.working(d(2026, 3, 26)));
        // Orthodox Christmas on a Sunday (2029-01-07) is not moved.
        assert_eq!(weekday(d(2029, 1, 7)), 6);
        assert!(cal.working(d(2029, 1, 8)));
    }

    #[test]
    fn the_deadline_is_the_end_of_the_local_day() {
        let cal = Calendar::kazakhstan([], []);
        // 2026-12-03 20:30 UTC is 01:30 on Friday the 4th in Almaty
        // (UTC+5): due the end of Tuesday the 8th, 19:00 UTC.
        let at = day_of(2026, 12, 3) * 86_400 + 20 * 3_600 + 1_800;
        let due = cal.deadline(at, 5 * 3_600, 2);
        assert_eq!(due, day_of(2026, 12, 9) * 86_400 - 5 * 3_600);
    }
}
