//! Planning alerts (pure): from one recorded scan's report, the routes and the notification log, which messages
//! go to which sink, and how the log changes. Nothing else triggers an alert.
//!
//! Per (route, sink, fingerprint) the log remembers whether an alert is firing, its severity, a hash of its value,
//! when it was last sent and the message that announced it. Triggers: firing (alertable and not yet announced),
//! regression, flapping (once), escalation, an ack that ended, a reminder after `repeat_interval`, a changed value
//! (tickets only), and a resolution (when `send_resolved`; tickets always close).

use super::sinks::SinkKind;
use super::{AlertItem, Digest, Message, TicketAction, TicketEvent, Trigger};
use crate::finding::{Finding, Kind, Severity, State};
use crate::inventory::{Node, Selector};
use crate::report::Report;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

/// A validated `[[route]]`.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    /// Empty: every kind.
    pub kinds: Vec<Kind>,
    pub min_severity: Severity,
    /// Empty: every config.
    pub configs: Vec<String>,
    pub nodes: Selector,
    pub sinks: Vec<String>,
    /// Split a digest by these finding fields: `config`, `node`, `kind`, `severity`, `rule`.
    pub group_by: Vec<String>,
    pub repeat_interval: Option<std::time::Duration>,
    pub send_resolved: bool,
}

impl Route {
    /// Whether a finding on `node` goes this way.
    pub fn matches(&self, f: &Finding, node: Option<&Node>) -> bool {
        (self.kinds.is_empty()
            || self.kinds.contains(&f.kind)
            || (f.kind == Kind::Regression && self.kinds.contains(&Kind::Drift)))
            && f.severity >= self.min_severity
            && (self.configs.is_empty() || self.configs.contains(&f.config))
            && (self.nodes.0.is_empty() || node.is_some_and(|n| self.nodes.matches(n)))
    }
}

/// What the notification log remembers per (route, sink, fingerprint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub route: String,
    pub sink: String,
    pub fingerprint: String,
    pub firing: bool,
    pub severity: Severity,
    pub value_hash: String,
    /// RFC 3339.
    pub sent_at: String,
    /// The digest that announced it (email threading).
    pub message_id: Option<String>,
}

/// Everything planning needs.
pub struct PlanInput<'a> {
    pub report: &'a Report,
    pub routes: &'a [Route],
    /// Sink name → kind.
    pub sinks: &'a HashMap<String, SinkKind>,
    pub nodes: &'a HashMap<String, Node>,
    pub log: &'a HashMap<(String, String, String), LogEntry>,
    pub now: DateTime<Utc>,
    pub report_url: Option<String>,
}

/// Messages for the outbox and the log entries they change.
#[derive(Debug, Default)]
pub struct Planned {
    pub messages: Vec<Message>,
    pub log: Vec<LogEntry>,
}

/// A stable hash of a value, for "the value changed".
pub fn value_hash(v: &serde_json::Value) -> String {
    blake3::hash(v.to_string().as_bytes()).to_hex()[..16].to_string()
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Decide every alert of one scan.
pub fn plan(input: &PlanInput<'_>) -> Planned {
    let now_s = ts(input.now);
    let r = input.report;
    let flapping: HashSet<&String> = r.flapping_started.iter().collect();
    let ack_ended: HashSet<&String> = r.acks_ended.iter().collect();
    let mut out = Planned::default();
    for route in input.routes {
        for sink in &route.sinks {
            let Some(kind) = input.sinks.get(sink).copied() else {
                continue;
            };
            let mut items: Vec<AlertItem> = Vec::new();
            let mut replies: Vec<String> = Vec::new();
            let mut log_updates: Vec<LogEntry> = Vec::new();
            for f in &r.findings {
                if !route.matches(f, input.nodes.get(&f.node)) || !f.alertable {
                    continue;
                }
                let key = (route.name.clone(), sink.clone(), f.fingerprint.clone());
                let prev = input.log.get(&key);
                let vh = value_hash(&f.actual);
                let trigger = match prev {
                    None => Some(first_trigger(f)),
                    Some(p) if !p.firing => Some(first_trigger(f)),
                    Some(p) => {
                        let due = route.repeat_interval.is_some_and(|ri| {
                            DateTime::parse_from_rfc3339(&p.sent_at).is_ok_and(|t| {
                                input.now - t.with_timezone(&Utc)
                                    >= Duration::from_std(ri).unwrap_or(Duration::MAX)
                            })
                        });
                        if flapping.contains(&f.fingerprint) {
                            Some(Trigger::Flapping)
                        } else if ack_ended.contains(&f.fingerprint) {
                            Some(Trigger::AckExpired)
                        } else if f.severity > p.severity {
                            Some(Trigger::Escalated)
                        } else if due {
                            Some(Trigger::Reminder)
                        } else if kind.is_ticket() && vh != p.value_hash {
                            Some(Trigger::ValueChanged)
                        } else {
                            None
                        }
                    }
                };
                let Some(trigger) = trigger else {
                    continue;
                };
                items.push(AlertItem {
                    trigger,
                    finding: f.clone(),
                    nodes: Vec::new(),
                });
                log_updates.push(LogEntry {
                    route: route.name.clone(),
                    sink: sink.clone(),
                    fingerprint: f.fingerprint.clone(),
                    firing: true,
                    severity: f.severity,
                    value_hash: vh,
                    sent_at: now_s.clone(),
                    message_id: prev.and_then(|p| p.message_id.clone()),
                });
            }
            for f in &r.resolved {
                let key = (route.name.clone(), sink.clone(), f.fingerprint.clone());
                let Some(prev) = input.log.get(&key).filter(|p| p.firing) else {
                    continue;
                };
                let mut entry = prev.clone();
                entry.firing = false;
                entry.sent_at = now_s.clone();
                log_updates.push(entry);
                if route.send_resolved || kind.is_ticket() {
                    if let Some(m) = &prev.message_id
                        && !replies.contains(m)
                    {
                        replies.push(m.clone());
                    }
                    let mut rf = f.clone();
                    rf.state = State::Resolved;
                    items.push(AlertItem {
                        trigger: Trigger::Resolved,
                        finding: rf,
                        nodes: Vec::new(),
                    });
                }
            }
            if items.is_empty() {
                out.log.extend(log_updates);
                continue;
            }
            if kind.is_ticket() {
                for it in items {
                    let action = match it.trigger {
                        Trigger::Firing => TicketAction::Open,
                        Trigger::Regression => TicketAction::Reopen,
                        Trigger::Resolved => TicketAction::Close,
                        _ => TicketAction::Comment,
                    };
                    let id = short_id(&[
                        &r.scan_id,
                        &route.name,
                        sink,
                        &it.finding.fingerprint,
                        it.trigger.as_str(),
                    ]);
                    out.messages.push(Message::Ticket(TicketEvent {
                        id,
                        route: route.name.clone(),
                        sink: sink.clone(),
                        action,
                        trigger: it.trigger,
                        key: it.finding.fingerprint.clone(),
                        finding: it.finding,
                        nodes: it.nodes,
                        report_url: input.report_url.clone(),
                    }));
                }
                out.log.extend(log_updates);
                continue;
            }
            // Chat, webhook and email: one digest per group of `group_by` values.
            let mut groups: BTreeMap<String, Vec<AlertItem>> = BTreeMap::new();
            for it in items {
                groups
                    .entry(group_key(&route.group_by, &it.finding))
                    .or_default()
                    .push(it);
            }
            let mut ids: HashMap<String, String> = HashMap::new();
            for (gk, items) in groups {
                let id = short_id(&[&r.scan_id, &route.name, sink, &gk]);
                for it in &items {
                    if it.trigger != Trigger::Resolved {
                        ids.insert(it.finding.fingerprint.clone(), id.clone());
                    }
                }
                let items = fold_fleet_wide(items);
                let digest_replies: Vec<String> =
                    if items.iter().all(|i| i.trigger == Trigger::Resolved) {
                        replies.clone()
                    } else {
                        Vec::new()
                    };
                out.messages.push(Message::Digest(Digest {
                    title: title(&route.name, &gk, &items, &r.scan_id),
                    id,
                    route: route.name.clone(),
                    sink: sink.clone(),
                    scan_id: r.scan_id.clone(),
                    at: now_s.clone(),
                    items,
                    report_url: input.report_url.clone(),
                    replies_to: digest_replies,
                }));
            }
            for mut e in log_updates {
                if e.firing && e.message_id.is_none() {
                    e.message_id = ids.get(&e.fingerprint).cloned();
                }
                out.log.push(e);
            }
        }
    }
    out
}

fn first_trigger(f: &Finding) -> Trigger {
    if f.kind == Kind::Regression || f.state == State::Reopened {
        Trigger::Regression
    } else {
        Trigger::Firing
    }
}

fn short_id(parts: &[&str]) -> String {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().to_hex()[..20].to_string()
}

fn group_key(fields: &[String], f: &Finding) -> String {
    fields
        .iter()
        .map(|g| match g.as_str() {
            "config" => f.config.clone(),
            "node" => f.node.clone(),
            "kind" => f.kind.to_string(),
            "severity" => f.severity.to_string(),
            "rule" => f.rule.clone().unwrap_or_default(),
            _ => String::new(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Identical items on several nodes become one item listing the nodes; order: severity, rule or kind, node.
pub fn fold_fleet_wide(items: Vec<AlertItem>) -> Vec<AlertItem> {
    let mut by: BTreeMap<(String, String, String, String, String, String), AlertItem> =
        BTreeMap::new();
    for it in items {
        let f = &it.finding;
        let k = (
            format!("{:?}", it.trigger),
            f.kind.to_string(),
            f.config.clone(),
            if f.path.is_empty() {
                f.rule.clone().unwrap_or_default()
            } else {
                f.path.clone()
            },
            f.expected.to_string(),
            f.actual.to_string(),
        );
        match by.get_mut(&k) {
            Some(existing) if !f.path.is_empty() || f.rule.is_some() => {
                if existing.nodes.is_empty() {
                    existing.nodes.push(existing.finding.node.clone());
                }
                existing.nodes.push(f.node.clone());
            }
            Some(_) => {
                by.insert((k.0, k.1, k.2, format!("{}{}", k.3, f.node), k.4, k.5), it);
            }
            None => {
                by.insert(k, it);
            }
        }
    }
    let mut out: Vec<AlertItem> = by.into_values().collect();
    for it in &mut out {
        it.nodes.sort();
    }
    out.sort_by(|a, b| {
        b.finding
            .severity
            .cmp(&a.finding.severity)
            .then_with(|| (a.trigger == Trigger::Resolved).cmp(&(b.trigger == Trigger::Resolved)))
            .then_with(|| {
                let ka = a
                    .finding
                    .rule
                    .clone()
                    .unwrap_or_else(|| a.finding.kind.to_string());
                let kb = b
                    .finding
                    .rule
                    .clone()
                    .unwrap_or_else(|| b.finding.kind.to_string());
                ka.cmp(&kb)
            })
            .then_with(|| a.finding.node.cmp(&b.finding.node))
    });
    out
}

fn title(route: &str, group: &str, items: &[AlertItem], scan_id: &str) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for it in items {
        *counts.entry(it.trigger.as_str()).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(t, n)| format!("{n} {t}")).collect();
    let scope = if group.is_empty() {
        route.to_string()
    } else {
        format!("{route} {group}")
    };
    format!("plumb: {} ({scope}, scan {scan_id})", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::Finding;

    fn finding(node: &str, path: &str, sev: Severity) -> Finding {
        let mut f = Finding::observed(
            Kind::Drift,
            sev,
            node,
            "caddy",
            path.into(),
            path,
            format!("{node} {path}"),
            "",
        );
        f.expected = serde_json::json!(1);
        f.actual = serde_json::json!(2);
        f
    }

    fn report(findings: Vec<Finding>, resolved: Vec<Finding>) -> Report {
        let t = Utc::now();
        let mut r = Report::build(t, t, 0, &[]);
        r.scan_id = "scan-1".into();
        r.set_findings(findings);
        r.resolved = resolved;
        r
    }

    fn route(repeat: Option<u64>) -> Route {
        Route {
            name: "oncall".into(),
            kinds: vec![Kind::Drift],
            min_severity: Severity::Medium,
            configs: vec![],
            nodes: Selector::default(),
            sinks: vec!["chat".into(), "gh".into()],
            group_by: vec![],
            repeat_interval: repeat.map(std::time::Duration::from_secs),
            send_resolved: true,
        }
    }

    struct World {
        log: HashMap<(String, String, String), LogEntry>,
        sinks: HashMap<String, SinkKind>,
        now: DateTime<Utc>,
    }

    impl World {
        fn new() -> World {
            World {
                log: HashMap::new(),
                sinks: [
                    ("chat".to_string(), SinkKind::Slack),
                    ("gh".to_string(), SinkKind::Github),
                ]
                .into(),
                now: Utc::now(),
            }
        }
        fn run(&mut self, r: &Report, route: &Route) -> Planned {
            let nodes = HashMap::new();
            let p = plan(&PlanInput {
                report: r,
                routes: std::slice::from_ref(route),
                sinks: &self.sinks,
                nodes: &nodes,
                log: &self.log,
                now: self.now,
                report_url: None,
            });
            for e in &p.log {
                self.log.insert(
                    (e.route.clone(), e.sink.clone(), e.fingerprint.clone()),
                    e.clone(),
                );
            }
            self.now += Duration::hours(1);
            p
        }
    }

    fn digests(p: &Planned) -> Vec<&Digest> {
        p.messages
            .iter()
            .filter_map(|m| match m {
                Message::Digest(d) => Some(d),
                _ => None,
            })
            .collect()
    }

    fn tickets(p: &Planned) -> Vec<(TicketAction, Trigger)> {
        p.messages
            .iter()
            .filter_map(|m| match m {
                Message::Ticket(t) => Some((t.action, t.trigger)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn one_digest_per_route_and_sink_then_silence_then_resolution() {
        let mut w = World::new();
        let route = route(None);
        let f1 = finding("n1", "$.a", Severity::High);
        let f2 = finding("n2", "$.a", Severity::High);
        let low = finding("n3", "$.b", Severity::Low);
        let p = w.run(&report(vec![f1.clone(), f2.clone(), low], vec![]), &route);
        let d = digests(&p);
        assert_eq!(d.len(), 1, "one digest for the chat sink");
        assert_eq!(
            d[0].items.len(),
            1,
            "the same drift on two nodes is one item"
        );
        assert_eq!(
            d[0].items[0].nodes,
            vec!["n1".to_string(), "n2".to_string()]
        );
        assert_eq!(
            tickets(&p),
            vec![(TicketAction::Open, Trigger::Firing); 2],
            "one ticket per fingerprint"
        );
        // Nothing changed: nothing is sent.
        let p = w.run(&report(vec![f1.clone(), f2.clone()], vec![]), &route);
        assert!(p.messages.is_empty(), "{:?}", p.messages);
        // n1 resolves: one resolution digest threaded under the first, and the ticket closes.
        let first_id = w.log[&(
            "oncall".to_string(),
            "chat".to_string(),
            f1.fingerprint.clone(),
        )]
            .message_id
            .clone();
        let p = w.run(&report(vec![f2.clone()], vec![f1.clone()]), &route);
        let d = digests(&p);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].items[0].trigger, Trigger::Resolved);
        assert_eq!(Some(d[0].replies_to[0].clone()), first_id);
        assert_eq!(tickets(&p), vec![(TicketAction::Close, Trigger::Resolved)]);
    }

    #[test]
    fn escalation_reminder_value_change_and_gates() {
        let mut w = World::new();
        let route = route(Some(3 * 3600));
        let mut f = finding("n1", "$.a", Severity::Medium);
        w.run(&report(vec![f.clone()], vec![]), &route);
        f.severity = Severity::Critical;
        let p = w.run(&report(vec![f.clone()], vec![]), &route);
        assert_eq!(digests(&p)[0].items[0].trigger, Trigger::Escalated);
        f.actual = serde_json::json!(3);
        let p = w.run(&report(vec![f.clone()], vec![]), &route);
        assert!(
            digests(&p).is_empty(),
            "chat is not told about a changed value"
        );
        assert_eq!(
            tickets(&p),
            vec![(TicketAction::Comment, Trigger::ValueChanged)]
        );
        w.run(&report(vec![f.clone()], vec![]), &route);
        let p = w.run(&report(vec![f.clone()], vec![]), &route);
        assert_eq!(
            digests(&p)[0].items[0].trigger,
            Trigger::Reminder,
            "3 hours after the last send"
        );
        // Not alertable (persistence gate, acknowledged): nothing.
        let mut g = finding("n9", "$.z", Severity::High);
        g.alertable = false;
        let p = w.run(&report(vec![g], vec![]), &route);
        assert!(p.messages.is_empty());
    }

    #[test]
    fn regressions_and_routes_filter() {
        let mut w = World::new();
        let mut route = route(None);
        route.configs = vec!["caddy".into()];
        let mut f = finding("n1", "$.a", Severity::Medium);
        f.kind = Kind::Regression;
        f.state = State::Reopened;
        let p = w.run(&report(vec![f.clone()], vec![]), &route);
        assert_eq!(digests(&p)[0].items[0].trigger, Trigger::Regression);
        assert_eq!(
            tickets(&p),
            vec![(TicketAction::Reopen, Trigger::Regression)]
        );
        let mut other = finding("n2", "$.a", Severity::High);
        other.config = "sysctl".into();
        let p = w.run(&report(vec![f, other], vec![]), &route);
        assert!(
            p.messages.is_empty(),
            "another config does not match the route"
        );
    }
}
