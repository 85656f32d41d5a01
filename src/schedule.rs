//! Schedules: `[[schedule]]` cron expressions (5 or 6 fields, `@hourly`-style aliases) in a time zone, with an
//! optional jitter, and when each fires next.
//!
//! Pure: time is passed in. Daylight-saving changes follow Vixie cron: a time skipped by spring-forward fires once
//! just after the jump; a time repeated at fall-back fires once. The `croner` crate does this natively (the brief's
//! `cron` crate needs a seconds field and fires twice at fall-back, skipping spring-forward entirely; see the
//! README's dependency notes).

use crate::inventory::Selector;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use std::time::Duration;

/// A validated schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    pub expr: String,
    cron: Cron,
    pub tz: Tz,
    pub nodes: Selector,
    /// Fires are delayed by a stable amount in `0..jitter`, derived from the schedule name.
    pub jitter: Duration,
}

impl Schedule {
    /// Parse a cron expression in a time zone (`None`: UTC).
    pub fn new(
        name: &str,
        expr: &str,
        timezone: Option<&str>,
        nodes: Selector,
        jitter: Option<Duration>,
    ) -> Result<Schedule, String> {
        let tz: Tz = match timezone {
            None => chrono_tz::UTC,
            Some(t) => t.parse().map_err(|_| {
                format!("timezone `{t}` is not an IANA time zone name (e.g. Europe/Amsterdam)")
            })?,
        };
        let expanded = match expr.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields = expanded.split_whitespace().count();
        if !(fields == 5 || fields == 6) {
            return Err(format!(
                "cron `{expr}` has {fields} fields; use 5 (minute hour day month weekday), 6 (with seconds first) or @hourly/@daily/@weekly/@monthly/@yearly"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expanded)
            .map_err(|e| format!("cron `{expr}`: {e}"))?;
        Ok(Schedule {
            name: name.to_string(),
            expr: expr.to_string(),
            cron,
            tz,
            nodes,
            jitter: jitter.unwrap_or(Duration::ZERO),
        })
    }

    /// The first fire strictly after `after` (jitter not included).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The first fire strictly after `after`, jitter included: the fire of a cron time at or before `after` whose
    /// jittered moment is still ahead counts, so a jittered run is never lost to another schedule firing first.
    pub fn next_fire(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let j = chrono::Duration::from_std(self.jitter_offset()).unwrap_or_default();
        self.next_after(after - j).map(|t| t + j)
    }

    /// This schedule's fixed jitter offset.
    pub fn jitter_offset(&self) -> Duration {
        if self.jitter.is_zero() {
            return Duration::ZERO;
        }
        let h = blake3::hash(self.name.as_bytes());
        let r = u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or([0; 8]));
        Duration::from_millis(r % self.jitter.as_millis().max(1) as u64)
    }

    /// A readable description ("At 5 minutes past every hour…").
    pub fn describe(&self) -> String {
        self.cron.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(tz: Tz, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        tz.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .unwrap()
    }

    fn fires(s: &Schedule, from: DateTime<Utc>, until: DateTime<Utc>) -> Vec<String> {
        let mut out = Vec::new();
        let mut t = from;
        while let Some(n) = s.next_after(t) {
            if n > until {
                break;
            }
            out.push(n.with_timezone(&s.tz).to_rfc3339());
            t = n;
        }
        out
    }

    #[test]
    fn five_and_six_fields_and_aliases() {
        let s = Schedule::new("s", "*/5 * * * *", None, Selector::default(), None).unwrap();
        let t0 = at(chrono_tz::UTC, 2026, 1, 1, 10, 2);
        assert_eq!(
            s.next_after(t0),
            Some(at(chrono_tz::UTC, 2026, 1, 1, 10, 5))
        );
        let s = Schedule::new("s", "30 */5 * * * *", None, Selector::default(), None).unwrap();
        assert_eq!(
            s.next_after(t0).map(|t| t.to_rfc3339()),
            Some("2026-01-01T10:05:30+00:00".into())
        );
        let s = Schedule::new("s", "@hourly", None, Selector::default(), None).unwrap();
        assert_eq!(
            s.next_after(t0),
            Some(at(chrono_tz::UTC, 2026, 1, 1, 11, 0))
        );
        assert!(Schedule::new("s", "* * *", None, Selector::default(), None).is_err());
        assert!(Schedule::new("s", "61 * * * *", None, Selector::default(), None).is_err());
        assert!(
            Schedule::new(
                "s",
                "* * * * *",
                Some("Mars/Olympus"),
                Selector::default(),
                None
            )
            .is_err()
        );
    }

    #[test]
    fn spring_forward_runs_once_just_after_the_jump() {
        // Europe/Amsterdam, 2026-03-29: 02:00 → 03:00. A job at 02:30 runs once, at 03:00 local.
        let tz: Tz = "Europe/Amsterdam".parse().unwrap();
        let s = Schedule::new(
            "s",
            "30 2 * * *",
            Some("Europe/Amsterdam"),
            Selector::default(),
            None,
        )
        .unwrap();
        let got = fires(&s, at(tz, 2026, 3, 28, 12, 0), at(tz, 2026, 3, 30, 12, 0));
        assert_eq!(
            got,
            vec![
                "2026-03-29T03:00:00+02:00".to_string(),
                "2026-03-30T02:30:00+02:00".to_string()
            ]
        );
    }

    #[test]
    fn fall_back_runs_once() {
        // Europe/Amsterdam, 2026-10-25: 03:00 → 02:00, so 02:30 happens twice. The job runs once.
        let tz: Tz = "Europe/Amsterdam".parse().unwrap();
        let s = Schedule::new(
            "s",
            "30 2 * * *",
            Some("Europe/Amsterdam"),
            Selector::default(),
            None,
        )
        .unwrap();
        let got = fires(&s, at(tz, 2026, 10, 24, 12, 0), at(tz, 2026, 10, 26, 12, 0));
        assert_eq!(
            got,
            vec![
                "2026-10-25T02:30:00+02:00".to_string(),
                "2026-10-26T02:30:00+01:00".to_string()
            ]
        );
        // An every-15-minutes job keeps its rhythm through the repeated hour without double fires.
        let s = Schedule::new(
            "s",
            "*/15 * * * *",
            Some("Europe/Amsterdam"),
            Selector::default(),
            None,
        )
        .unwrap();
        let got = fires(&s, at(tz, 2026, 10, 25, 1, 50), at(tz, 2026, 10, 25, 4, 0));
        let mut dedup = got.clone();
        dedup.dedup();
        assert_eq!(got, dedup);
    }

    #[test]
    fn a_jittered_fire_is_not_lost_when_another_schedule_fires_first() {
        let s = Schedule::new(
            "edge",
            "*/5 * * * *",
            None,
            Selector::default(),
            Some(Duration::from_secs(60)),
        )
        .unwrap();
        let j = chrono::Duration::from_std(s.jitter_offset()).unwrap();
        assert!(j > chrono::Duration::zero(), "this name has a jitter");
        // Another schedule fired at 10:05:00 exactly; this one's 10:05 run is still ahead, at 10:05 + jitter.
        let t = at(chrono_tz::UTC, 2026, 1, 1, 10, 5);
        assert_eq!(s.next_fire(t), Some(t + j));
        assert_eq!(
            s.next_fire(t + j),
            Some(t + chrono::Duration::minutes(5) + j)
        );
        let plain = Schedule::new("p", "*/5 * * * *", None, Selector::default(), None).unwrap();
        assert_eq!(plain.next_fire(t), plain.next_after(t));
    }

    #[test]
    fn jitter_is_stable_and_bounded() {
        let s = Schedule::new(
            "edge",
            "* * * * *",
            None,
            Selector::default(),
            Some(Duration::from_secs(30)),
        )
        .unwrap();
        assert_eq!(s.jitter_offset(), s.jitter_offset());
        assert!(s.jitter_offset() < Duration::from_secs(30));
    }
}
