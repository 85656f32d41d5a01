//! The dispatcher: delivers the outbox. Each sink's items go strictly in order (only the oldest pending item of a
//! sink is tried, so a resolution never overtakes its trigger); different sinks go concurrently. Retries back off
//! exponentially with full jitter, `Retry-After` wins when the peer sends it, and an item older than `max_age` or
//! refused for good becomes a dead letter and raises a self-alert. A sink failing for `fail_alert_after` (default
//! one hour) raises a self-alert once. Nothing is lost: every outcome is written back to the store at once.

use super::sinks::{self, DeliveryError, SinkPlan};
use super::{AlertItem, Digest, Message, Trigger};
use crate::finding::{Finding, Kind, Severity};
use crate::store::{OutboxRow, OutboxUpdate, Store, StoreError};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::time::Duration;

/// Delivery settings.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// First retry delay (doubles each attempt, full jitter).
    pub base: Duration,
    /// Longest delay between attempts.
    pub cap: Duration,
    /// An item still undelivered after this long becomes a dead letter.
    pub max_age: Duration,
    /// A sink failing this long raises a self-alert (once).
    pub fail_alert_after: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
            max_age: Duration::from_secs(24 * 3600),
            fail_alert_after: Duration::from_secs(3600),
        }
    }
}

/// What a drain achieved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub delivered: usize,
    pub retried: usize,
    pub dead: usize,
    /// Items still pending at the end.
    pub pending: usize,
    /// The last error per sink still failing.
    pub failing: Vec<(String, String)>,
}

/// Delivers outbox items to the configured sinks.
pub struct Dispatcher {
    sinks: HashMap<String, (SinkPlan, reqwest::Client)>,
    pub policy: Policy,
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn parse(t: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// `rand(0, min(cap, base·2^attempt))`.
pub fn full_jitter(policy: &Policy, attempt: u32) -> Duration {
    let ceiling = policy
        .base
        .saturating_mul(1u32 << attempt.min(20))
        .min(policy.cap);
    let mut b = [0u8; 4];
    let r = if getrandom::fill(&mut b).is_ok() {
        f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX)
    } else {
        0.5
    };
    ceiling.mul_f64(r)
}

impl Dispatcher {
    /// One HTTP client per sink.
    pub fn new(sinks: &[SinkPlan], policy: Policy) -> Result<Dispatcher, String> {
        let mut map = HashMap::new();
        for s in sinks {
            let c = sinks::client(s).map_err(|e| format!("sink {}: {e}", s.name))?;
            map.insert(s.name.clone(), (s.clone(), c));
        }
        Ok(Dispatcher { sinks: map, policy })
    }

    /// Try the oldest due item of every sink once, concurrently; write each outcome back.
    pub async fn tick(
        &self,
        store: &mut dyn Store,
        now: DateTime<Utc>,
    ) -> Result<Stats, StoreError> {
        let mut stats = Stats::default();
        let heads = store.outbox_heads()?;
        let mut set = tokio::task::JoinSet::new();
        let mut due = Vec::new();
        for row in heads {
            let Some((sink, client)) = self.sinks.get(&row.sink).cloned() else {
                // A sink missing from the configuration in force (removed, or a plumb.toml read half-written) keeps
                // its items: they go out if it comes back, and die of old age like any undeliverable item.
                let age = parse(&row.created_at)
                    .map_or(Duration::ZERO, |c| (now - c).to_std().unwrap_or_default());
                let error = format!(
                    "no [[sink]] named `{}` in the configuration in force; kept until it is back",
                    row.sink
                );
                if age >= self.policy.max_age {
                    store.outbox_update(
                        row.id,
                        &OutboxUpdate::Dead {
                            at: ts(now),
                            error: format!("gave up after {age:?}: {error}"),
                        },
                    )?;
                    stats.dead += 1;
                } else {
                    // Not written down: `plumb alerts test` runs a dispatcher that knows one sink only.
                    stats.failing.retain(|(s, _)| s != &row.sink);
                    stats.failing.push((row.sink.clone(), error));
                }
                continue;
            };
            if parse(&row.next_attempt_at).is_some_and(|t| t > now) {
                continue;
            }
            let known = match &row.message {
                Message::Ticket(t) => store.ticket_id(&row.sink, &t.key)?,
                Message::Digest(_) => None,
            };
            due.push((row, sink, client, known));
        }
        // Every attempt is written down before anything is sent: a store that cannot be written (full, read-only)
        // stops delivery here, instead of sending alerts it cannot mark as sent, again on every tick.
        for (row, ..) in &due {
            store.outbox_update(row.id, &OutboxUpdate::Attempt { at: ts(now) })?;
        }
        for (row, sink, client, known) in due {
            set.spawn(async move {
                let res = sinks::deliver(&client, &sink, &row.message, known.as_deref()).await;
                (row, res)
            });
        }
        // Every outcome is recorded, even when recording one of them fails.
        let mut failed = None;
        while let Some(joined) = set.join_next().await {
            let Ok((row, res)) = joined else {
                continue;
            };
            if let Err(e) = self.settle(store, &row, res, now, &mut stats) {
                failed.get_or_insert(e);
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }

    fn settle(
        &self,
        store: &mut dyn Store,
        row: &OutboxRow,
        res: Result<sinks::Delivered, DeliveryError>,
        now: DateTime<Utc>,
        stats: &mut Stats,
    ) -> Result<(), StoreError> {
        let at = ts(now);
        match res {
            Ok(d) => {
                let ticket = match (&row.message, d.external_id) {
                    (Message::Ticket(t), Some(ext)) => Some((row.sink.clone(), t.key.clone(), ext)),
                    _ => None,
                };
                store.outbox_update(row.id, &OutboxUpdate::Sent { at, ticket })?;
                store.set_sink_health(&row.sink, None, false)?;
                stats.delivered += 1;
            }
            Err(DeliveryError::Retry { after, reason }) => {
                let age = parse(&row.created_at)
                    .map_or(Duration::ZERO, |c| (now - c).to_std().unwrap_or_default());
                if age >= self.policy.max_age {
                    let error = format!(
                        "gave up after {} attempts over {age:?}: {reason}",
                        row.attempts + 1
                    );
                    store.outbox_update(
                        row.id,
                        &OutboxUpdate::Dead {
                            at: at.clone(),
                            error: error.clone(),
                        },
                    )?;
                    self.self_alert(
                        store,
                        &row.sink,
                        &format!("an alert to sink `{}` was dead-lettered: {error}", row.sink),
                        now,
                    )?;
                    stats.dead += 1;
                } else {
                    let delay = after.unwrap_or_else(|| full_jitter(&self.policy, row.attempts));
                    let next =
                        now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
                    store.outbox_update(
                        row.id,
                        &OutboxUpdate::Retry {
                            attempts: row.attempts + 1,
                            next_at: ts(next),
                            error: reason.clone(),
                        },
                    )?;
                    stats.retried += 1;
                    let (since, alerted) = store.sink_health(&row.sink)?;
                    let since_t = since.as_deref().and_then(parse).unwrap_or(now);
                    let long = (now - since_t).to_std().unwrap_or_default()
                        >= self.policy.fail_alert_after;
                    if long && !alerted {
                        self.self_alert(
                            store,
                            &row.sink,
                            &format!(
                                "sink `{}` has been failing since {}: {reason}",
                                row.sink,
                                ts(since_t)
                            ),
                            now,
                        )?;
                    }
                    store.set_sink_health(&row.sink, Some(&ts(since_t)), alerted || long)?;
                }
                stats.failing.retain(|(s, _)| s != &row.sink);
                stats.failing.push((row.sink.clone(), reason));
            }
            Err(DeliveryError::Permanent { reason }) => {
                store.outbox_update(
                    row.id,
                    &OutboxUpdate::Dead {
                        at,
                        error: reason.clone(),
                    },
                )?;
                self.self_alert(
                    store,
                    &row.sink,
                    &format!(
                        "an alert to sink `{}` was refused and dead-lettered: {reason}",
                        row.sink
                    ),
                    now,
                )?;
                stats.dead += 1;
            }
        }
        Ok(())
    }

    /// Tell every other chat, webhook and email sink about plumb's own trouble.
    pub fn self_alert(
        &self,
        store: &mut dyn Store,
        failing: &str,
        text: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let at = ts(now);
        let mut msgs = Vec::new();
        let mut names: Vec<&String> = self.sinks.keys().collect();
        names.sort();
        for name in names {
            let (sink, _) = &self.sinks[name];
            if name == failing || sink.kind.is_ticket() {
                continue;
            }
            msgs.push(Message::Digest(self_digest(name, text, &at)));
        }
        store.enqueue(&msgs, &at)
    }

    /// Tick until nothing is pending or `deadline` has passed, sleeping until the next item is due.
    pub async fn drain(
        &self,
        store: &mut dyn Store,
        deadline: Duration,
    ) -> Result<Stats, StoreError> {
        let start = std::time::Instant::now();
        let mut total = Stats::default();
        loop {
            let s = self.tick(store, Utc::now()).await?;
            total.delivered += s.delivered;
            total.retried += s.retried;
            total.dead += s.dead;
            for f in s.failing {
                total.failing.retain(|(x, _)| x != &f.0);
                total.failing.push(f);
            }
            // Items of a sink not in the configuration wait for it without holding the drain up.
            let heads: Vec<OutboxRow> = store
                .outbox_heads()?
                .into_iter()
                .filter(|h| self.sinks.contains_key(&h.sink))
                .collect();
            if heads.is_empty() || start.elapsed() >= deadline {
                total.pending = store
                    .outbox_list()?
                    .iter()
                    .filter(|r| r.status == "pending")
                    .count();
                return Ok(total);
            }
            let next = heads
                .iter()
                .filter_map(|h| parse(&h.next_attempt_at))
                .min()
                .map_or(Duration::from_millis(100), |t| {
                    (t - Utc::now()).to_std().unwrap_or_default()
                });
            let left = deadline.saturating_sub(start.elapsed());
            tokio::time::sleep(next.min(left).max(Duration::from_millis(20))).await;
        }
    }
}

/// A digest announcing plumb's own trouble.
pub fn self_digest(sink: &str, text: &str, at: &str) -> Digest {
    let mut f = Finding::observed(
        Kind::Unreachable,
        Severity::High,
        "plumb",
        "plumb",
        String::new(),
        text,
        text.to_string(),
        at,
    );
    f.alertable = true;
    let id = blake3::hash(format!("{sink}/{at}/{text}").as_bytes()).to_hex()[..20].to_string();
    Digest {
        id,
        route: "plumb".into(),
        sink: sink.to_string(),
        scan_id: String::new(),
        at: at.to_string(),
        title: format!("plumb: {text}"),
        items: vec![AlertItem {
            trigger: Trigger::SelfAlert,
            finding: f,
            nodes: Vec::new(),
        }],
        report_url: None,
        replies_to: Vec::new(),
    }
}

/// A test message for `plumb alerts test SINK`.
pub fn test_message(sink: &SinkPlan, at: &str) -> Message {
    let text = format!("test message from plumb to sink `{}`", sink.name);
    let mut d = self_digest(&sink.name, &text, at);
    d.title = format!("plumb: {text}");
    d.route = "test".into();
    if sink.kind.is_ticket() {
        let f = d.items.remove(0).finding;
        return Message::Ticket(super::TicketEvent {
            id: d.id,
            route: "test".into(),
            sink: sink.name.clone(),
            action: super::TicketAction::Open,
            trigger: Trigger::SelfAlert,
            key: format!("plumb-test-{}", &blake3::hash(at.as_bytes()).to_hex()[..8]),
            finding: f,
            nodes: Vec::new(),
            report_url: None,
        });
    }
    Message::Digest(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_under_the_ceiling() {
        let p = Policy::default();
        for attempt in 0..12 {
            let d = full_jitter(&p, attempt);
            let ceiling = p.base.saturating_mul(1 << attempt).min(p.cap);
            assert!(d <= ceiling, "{attempt}: {d:?} > {ceiling:?}");
        }
        assert!(full_jitter(&p, 30) <= p.cap);
    }
}
