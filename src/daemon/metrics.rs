//! The daemon's metrics, rendered in the Prometheus text exposition format (version 0.0.4) by hand: a handful of
//! counters, gauges and two histograms need no registry.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A histogram with fixed buckets.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: [u64; 12],
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn observe(&mut self, v: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}",
                self.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// Everything `/metrics` shows.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    scans: BTreeMap<(String, &'static str), u64>,
    scan_seconds: BTreeMap<String, Histogram>,
    last_success: BTreeMap<String, f64>,
    nodes_read: BTreeMap<String, usize>,
    nodes_unreadable: BTreeMap<String, usize>,
    fetch_seconds: Histogram,
    findings: BTreeMap<(String, String, String), u64>,
    outbox_pending: usize,
    outbox_dead: usize,
    reloads: BTreeMap<&'static str, u64>,
    reload_ok: bool,
    last_good_reload: f64,
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// A scan finished.
    pub fn scan_done(
        &mut self,
        schedule: &str,
        took: Duration,
        read: usize,
        unreadable: usize,
        fetches: &[f64],
        findings: BTreeMap<(String, String, String), u64>,
    ) {
        *self.scans.entry((schedule.to_string(), "ok")).or_default() += 1;
        self.scan_seconds
            .entry(schedule.to_string())
            .or_default()
            .observe(took.as_secs_f64());
        self.last_success
            .insert(schedule.to_string(), unix(SystemTime::now()));
        self.nodes_read.insert(schedule.to_string(), read);
        self.nodes_unreadable
            .insert(schedule.to_string(), unreadable);
        for f in fetches {
            self.fetch_seconds.observe(*f);
        }
        self.findings = findings;
    }

    /// A scan could not run.
    pub fn scan_failed(&mut self, schedule: &str) {
        *self
            .scans
            .entry((schedule.to_string(), "error"))
            .or_default() += 1;
    }

    /// A run was skipped because the previous one was still going.
    pub fn scan_skipped(&mut self, schedule: &str) {
        *self
            .scans
            .entry((schedule.to_string(), "skipped"))
            .or_default() += 1;
    }

    /// The outbox's size.
    pub fn outbox(&mut self, pending: usize, dead: usize) {
        self.outbox_pending = pending;
        self.outbox_dead = dead;
    }

    /// A reload attempt (the start-up load counts as a good one).
    pub fn reload(&mut self, ok: bool, at: SystemTime) {
        *self
            .reloads
            .entry(if ok { "ok" } else { "rejected" })
            .or_default() += 1;
        self.reload_ok = ok;
        if ok {
            self.last_good_reload = unix(at);
        }
    }

    /// Completed scans of a schedule (for tests and `/healthz`).
    pub fn scans(&self, schedule: &str, result: &str) -> u64 {
        self.scans
            .iter()
            .filter(|((s, r), _)| s == schedule && *r == result)
            .map(|(_, n)| *n)
            .sum()
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let head = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} {kind}");
        };
        head(
            &mut o,
            "plumb_scans_total",
            "counter",
            "Scans by schedule and result (ok, error, skipped).",
        );
        for ((s, r), n) in &self.scans {
            let _ = writeln!(
                o,
                "plumb_scans_total{{schedule=\"{}\",result=\"{r}\"}} {n}",
                esc(s)
            );
        }
        head(
            &mut o,
            "plumb_scan_duration_seconds",
            "histogram",
            "Wall time of a scan, fetch to recorded.",
        );
        for (s, h) in &self.scan_seconds {
            h.render(
                &mut o,
                "plumb_scan_duration_seconds",
                &format!("schedule=\"{}\"", esc(s)),
            );
        }
        head(
            &mut o,
            "plumb_last_successful_scan_timestamp_seconds",
            "gauge",
            "When each schedule last completed a scan.",
        );
        for (s, t) in &self.last_success {
            let _ = writeln!(
                o,
                "plumb_last_successful_scan_timestamp_seconds{{schedule=\"{}\"}} {t}",
                esc(s)
            );
        }
        head(
            &mut o,
            "plumb_nodes_read",
            "gauge",
            "Nodes read by the schedule's last scan.",
        );
        for (s, n) in &self.nodes_read {
            let _ = writeln!(o, "plumb_nodes_read{{schedule=\"{}\"}} {n}", esc(s));
        }
        head(
            &mut o,
            "plumb_nodes_unreadable",
            "gauge",
            "Nodes the schedule's last scan could not read.",
        );
        for (s, n) in &self.nodes_unreadable {
            let _ = writeln!(o, "plumb_nodes_unreadable{{schedule=\"{}\"}} {n}", esc(s));
        }
        head(
            &mut o,
            "plumb_fetch_duration_seconds",
            "histogram",
            "Time to fetch one config of one node, retries included.",
        );
        self.fetch_seconds
            .render(&mut o, "plumb_fetch_duration_seconds", "");
        head(
            &mut o,
            "plumb_findings",
            "gauge",
            "Stored findings by kind, severity and state.",
        );
        for ((k, s, st), n) in &self.findings {
            let _ = writeln!(
                o,
                "plumb_findings{{kind=\"{k}\",severity=\"{s}\",state=\"{st}\"}} {n}"
            );
        }
        head(
            &mut o,
            "plumb_outbox_pending",
            "gauge",
            "Alerts waiting for delivery.",
        );
        let _ = writeln!(o, "plumb_outbox_pending {}", self.outbox_pending);
        head(
            &mut o,
            "plumb_outbox_dead_letters",
            "gauge",
            "Alerts given up on (see `plumb alerts outbox`).",
        );
        let _ = writeln!(o, "plumb_outbox_dead_letters {}", self.outbox_dead);
        head(
            &mut o,
            "plumb_config_reloads_total",
            "counter",
            "Configuration loads by result (ok, rejected).",
        );
        for (r, n) in &self.reloads {
            let _ = writeln!(o, "plumb_config_reloads_total{{result=\"{r}\"}} {n}");
        }
        head(
            &mut o,
            "plumb_config_last_reload_successful",
            "gauge",
            "1 if the last reload was accepted, 0 if it was rejected.",
        );
        let _ = writeln!(
            o,
            "plumb_config_last_reload_successful {}",
            u8::from(self.reload_ok)
        );
        head(
            &mut o,
            "plumb_config_last_good_timestamp_seconds",
            "gauge",
            "When the configuration in force was loaded.",
        );
        let _ = writeln!(
            o,
            "plumb_config_last_good_timestamp_seconds {}",
            self.last_good_reload
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let mut m = Metrics::default();
        m.scan_done(
            "edge",
            Duration::from_millis(300),
            9,
            1,
            &[0.02, 0.2],
            BTreeMap::from([(("drift".into(), "medium".into(), "new".into()), 3)]),
        );
        m.scan_skipped("edge");
        m.reload(false, SystemTime::now());
        let t = m.render();
        assert!(
            t.contains("plumb_scans_total{schedule=\"edge\",result=\"ok\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("plumb_scans_total{schedule=\"edge\",result=\"skipped\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("plumb_fetch_duration_seconds_bucket{le=\"0.025\"} 1"),
            "{t}"
        );
        assert!(t.contains("plumb_fetch_duration_seconds_count 2"), "{t}");
        assert!(
            t.contains("plumb_findings{kind=\"drift\",severity=\"medium\",state=\"new\"} 3"),
            "{t}"
        );
        assert!(t.contains("plumb_config_last_reload_successful 0"), "{t}");
        assert_eq!(m.scans("edge", "ok"), 1);
    }
}
