//! Rates, durations and counts as people read them on a terminal: `834/s`, `1.2 s`, `3 min 5 s`,
//! `1 user`, `2 days`.

use std::time::Duration;

/// A rate per second, rounded to a whole number: `834/s`.
pub fn rate(per_second: f64) -> String {
    format!("{:.0}/s", per_second.max(0.0))
}

/// A count and its noun, plural unless the count is one: `1 user`, `0 users`, `2 days`,
/// `3 vault entries`, `2 batches`.
pub fn count(count: impl Into<i64>, noun: &str) -> String {
    let count = count.into();
    if count == 1 {
        return format!("1 {noun}");
    }
    let consonant_y = noun
        .strip_suffix('y')
        .filter(|stem| stem.ends_with(|c: char| !"aeiou".contains(c)));
    match consonant_y {
        Some(stem) => format!("{count} {stem}ies"),
        None if ["s", "x", "ch", "sh"].iter().any(|end| noun.ends_with(end)) => {
            format!("{count} {noun}es")
        }
        None => format!("{count} {noun}s"),
    }
}

/// A duration in the largest unit that keeps it readable: `340 ms`, `1.2 s`, `42 s`,
/// `3 min 5 s`, `2 h 10 min`.
pub fn duration(duration: Duration) -> String {
    let seconds = duration.as_secs_f64();
    if seconds < 1.0 {
        format!("{:.0} ms", seconds * 1000.0)
    } else if seconds < 10.0 {
        format!("{seconds:.1} s")
    } else if seconds < 60.0 {
        format!("{seconds:.0} s")
    } else {
        let whole = seconds.round() as u64;
        if whole < 3600 {
            format!("{} min {} s", whole / 60, whole % 60)
        } else {
            format!("{} h {} min", whole / 3600, whole % 3600 / 60)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_are_plural_unless_one() {
        assert_eq!(super::count(1, "user"), "1 user");
        assert_eq!(super::count(0, "user"), "0 users");
        assert_eq!(super::count(30, "day"), "30 days");
        assert_eq!(super::count(3, "vault entry"), "3 vault entries");
        assert_eq!(super::count(2, "batch"), "2 batches");
    }

    use super::*;

    #[test]
    fn rates_are_whole_numbers_per_second() {
        assert_eq!(rate(834.048), "834/s");
        assert_eq!(rate(0.4), "0/s");
    }

    #[test]
    fn durations_take_a_readable_unit() {
        assert_eq!(duration(Duration::from_millis(340)), "340 ms");
        assert_eq!(duration(Duration::from_millis(1_234)), "1.2 s");
        assert_eq!(duration(Duration::from_millis(42_400)), "42 s");
        assert_eq!(duration(Duration::from_secs(185)), "3 min 5 s");
        assert_eq!(duration(Duration::from_secs(7_800)), "2 h 10 min");
    }
}
