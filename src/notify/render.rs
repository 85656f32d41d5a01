//! Rendering: one [`Digest`] becomes the exact JSON payload of each chat target (Slack, Microsoft Teams,
//! Mattermost, Discord, Google Chat). Pure: no I/O, no clock.
//!
//! Every target shows the same thing. The digest's title; then its items grouped by severity (highest first) and
//! by rule id (violations) or kind, resolved items last; one line per item naming the trigger, the node (or
//! "N nodes" for a fleet-wide group), the config, the path and `expected → actual` (values shortened to
//! [`VALUE_CHARS`]); a footer with the scan id, the route and the report link.
//!
//! Each target has its own size limits (alerts reference §2). Items are packed in order, so the highest severities
//! survive, until the next line would break a limit with margin; the rest become one final "…and N more" line,
//! with the report link when the digest has one. Every renderer checks its finished payload against the target's
//! limits and packs again with a smaller budget if escaping made it too big, so a payload never exceeds them.
//!
//! Values are already redacted (see [`crate::redact`]): nothing is shown that is not in the digest.

use super::{AlertItem, Digest, Trigger};
use crate::finding::Severity;
use serde_json::{Value, json};
use std::cmp::Reverse;
use std::collections::BTreeMap;

/// Longest rendering of one expected or actual value, in chars (longer ones end in "…").
pub const VALUE_CHARS: usize = 80;
/// Longest rendering of a path.
const PATH_CHARS: usize = 160;
/// Longest rendering of a node or config name.
const NAME_CHARS: usize = 80;
/// Longest rendering of a finding's message (shown when it has no values).
const MESSAGE_CHARS: usize = 160;
/// Longest title (Slack headers take 150 chars).
const TITLE_CHARS: usize = 150;

/// Slack: at most 50 blocks per message.
pub const SLACK_MAX_BLOCKS: usize = 50;
/// Slack: section text is refused over 3,000 chars; kept ≤ 2,900.
pub const SLACK_SECTION_CHARS: usize = 2_900;
/// Slack: about 13.2k chars across blocks were refused (undocumented); kept ≤ 11,500.
pub const SLACK_TOTAL_CHARS: usize = 11_500;
/// Teams (Workflows): about 21–28 KB in practice; the whole JSON kept ≤ 18,000 bytes.
pub const TEAMS_BYTES: usize = 18_000;
/// Mattermost: 16,383 chars per post; the whole JSON kept ≤ 15,000 bytes.
pub const MATTERMOST_BYTES: usize = 15_000;
/// Discord: `content` ≤ 2,000 chars; kept ≤ 1,900.
pub const DISCORD_CONTENT_CHARS: usize = 1_900;
/// Discord: at most 10 embeds.
pub const DISCORD_MAX_EMBEDS: usize = 10;
/// Discord: ≤ 6,000 chars across the embeds' titles and descriptions; kept ≤ 5,600.
pub const DISCORD_EMBED_CHARS: usize = 5_600;
/// Discord: an embed description ≤ 4,096 chars; kept ≤ 4,000 (titles ≤ 256).
pub const DISCORD_DESCRIPTION_CHARS: usize = 4_000;
/// Google Chat: 32,000 bytes per message; the whole JSON kept ≤ 30,000 bytes.
pub const GOOGLE_CHAT_BYTES: usize = 30_000;

/// Items of one severity and one rule (or kind), firing or resolved.
#[derive(Debug, Clone)]
pub struct Group<'a> {
    pub resolved: bool,
    pub severity: Severity,
    /// The rule id, or the kind when the finding has no rule.
    pub key: String,
    pub items: Vec<&'a AlertItem>,
}

impl Group<'_> {
    /// "HIGH · drift (3)", "RESOLVED · MEDIUM · caddy-admin-locked (1)".
    pub fn heading(&self) -> String {
        let sev = self.severity.as_str().to_uppercase();
        let n = self.items.len();
        if self.resolved {
            format!("RESOLVED · {sev} · {} ({n})", self.key)
        } else {
            format!("{sev} · {} ({n})", self.key)
        }
    }
}

/// The digest's items grouped: firing before resolved, then severity (highest first), then rule id or kind; the
/// digest's order is kept within a group.
pub fn groups(d: &Digest) -> Vec<Group<'_>> {
    let mut by: BTreeMap<(bool, Reverse<Severity>, String), Vec<&AlertItem>> = BTreeMap::new();
    for it in &d.items {
        let f = &it.finding;
        let key = f.rule.clone().unwrap_or_else(|| f.kind.to_string());
        by.entry((it.trigger == Trigger::Resolved, Reverse(f.severity), key))
            .or_default()
            .push(it);
    }
    by.into_iter()
        .map(|((resolved, Reverse(severity), key), items)| Group {
            resolved,
            severity,
            key,
            items,
        })
        .collect()
}

/// One item as plain text: "firing · node-1 · caddy · $.a.b: ":443" → ":8443"".
pub fn line(it: &AlertItem) -> String {
    item_line(it, Markup::Plain)
}

/// Every item as plain text, in [`groups`] order.
pub fn lines(d: &Digest) -> Vec<String> {
    groups(d)
        .iter()
        .flat_map(|g| g.items.iter().map(|it| line(it)))
        .collect()
}

/// A value as shown in alerts: compact JSON (strings quoted), at most [`VALUE_CHARS`] chars; `None` for null
/// (absent).
pub fn short_value(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        v => Some(short(&v.to_string(), VALUE_CHARS)),
    }
}

/// `s` cut to `max` chars, ending in "…" when cut.
pub fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The Google Chat thread key of a route: every digest of one route lands in one thread.
pub fn thread_key(route: &str) -> String {
    let safe: String = route
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe == route {
        format!("plumb-{route}")
    } else {
        // Sanitized or cut: a hash keeps distinct routes in distinct threads.
        let h = blake3::hash(route.as_bytes()).to_hex();
        format!("plumb-{safe}-{}", &h[..12])
    }
}

/// The text flavour of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Markup {
    /// No markup (Teams text blocks, Mattermost attachment titles, plain lines).
    Plain,
    /// Slack mrkdwn: `&`, `<`, `>` escaped; `*bold*`, `_italic_`, `<url|text>`.
    Slack,
    /// Discord and Mattermost markdown: punctuation backslash-escaped; `**bold**`, `[text](url)`.
    Markdown,
    /// Google Chat: `*bold*`, `_italic_`, `<url|text>`; no escapes exist.
    GoogleChat,
}

impl Markup {
    /// Ordinary text.
    fn text(self, s: &str) -> String {
        match self {
            Markup::Plain | Markup::GoogleChat => s.to_string(),
            Markup::Slack => slack_escape(s),
            Markup::Markdown => {
                let mut out = String::with_capacity(s.len());
                for c in s.chars() {
                    if matches!(
                        c,
                        '\\' | '*' | '_' | '~' | '`' | '|' | '[' | ']' | '<' | '>'
                    ) {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out
            }
        }
    }

    /// Inline code (values, paths, names); plain text when `s` holds a backtick.
    fn code(self, s: &str) -> String {
        if s.is_empty() || self == Markup::Plain || s.contains('`') {
            return self.text(s);
        }
        match self {
            Markup::Slack => format!("`{}`", slack_escape(s)),
            _ => format!("`{s}`"),
        }
    }

    fn bold(self, s: &str) -> String {
        match self {
            Markup::Plain => s.to_string(),
            Markup::Slack | Markup::GoogleChat => format!("*{}*", self.text(s)),
            Markup::Markdown => format!("**{}**", self.text(s)),
        }
    }

    fn italic(self, s: &str) -> String {
        match self {
            Markup::Plain => s.to_string(),
            _ => format!("_{}_", self.text(s)),
        }
    }

    fn link(self, url: &str, text: &str) -> String {
        match self {
            Markup::Plain => format!("{text}: {url}"),
            Markup::Slack => format!("<{}|{text}>", slack_escape(url).replace('|', "%7C")),
            Markup::GoogleChat => {
                format!("<{}|{text}>", url.replace('|', "%7C").replace('>', "%3E"))
            }
            Markup::Markdown => format!(
                "[{text}]({})",
                url.replace('(', "%28")
                    .replace(')', "%29")
                    .replace(' ', "%20")
            ),
        }
    }
}

fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One item in a target's markup.
fn item_line(it: &AlertItem, m: Markup) -> String {
    let f = &it.finding;
    let who = match it.nodes.len() {
        0 => m.code(&short(&f.node, NAME_CHARS)),
        1 => m.code(&short(&it.nodes[0], NAME_CHARS)),
        n => format!("{n} nodes"),
    };
    let mut s = format!(
        "{} · {who} · {}",
        it.trigger.as_str(),
        m.code(&short(&f.config, NAME_CHARS))
    );
    if !f.path.is_empty() {
        s.push_str(" · ");
        s.push_str(&m.code(&short(&f.path, PATH_CHARS)));
    }
    let (e, a) = (short_value(&f.expected), short_value(&f.actual));
    let what = if e.is_none() && a.is_none() {
        if f.message.is_empty() {
            None
        } else {
            Some(m.text(&short(&f.message, MESSAGE_CHARS)))
        }
    } else {
        let v = |x: Option<String>| match x {
            Some(x) => m.code(&x),
            None => "(absent)".to_string(),
        };
        Some(format!("{} → {}", v(e), v(a)))
    };
    match (what, it.trigger == Trigger::Resolved) {
        (Some(w), false) => format!("{s}: {w}"),
        (Some(w), true) => format!("{s} (was {w})"),
        (None, _) => s,
    }
}

/// "…and N more", with the report link when there is one.
fn more_line(d: &Digest, omitted: usize, m: Markup) -> String {
    let mut s = m.italic(&format!("…and {omitted} more"));
    if let Some(url) = &d.report_url {
        s.push_str(" · ");
        s.push_str(&m.link(url, "full report"));
    }
    s
}

/// "scan `ID` · route `R` · full report".
fn footer(d: &Digest, m: Markup) -> String {
    let mut s = format!(
        "scan {} · route {}",
        m.code(&short(&d.scan_id, NAME_CHARS)),
        m.code(&short(&d.route, NAME_CHARS))
    );
    if let Some(url) = &d.report_url {
        s.push_str(" · ");
        s.push_str(&m.link(url, "full report"));
    }
    s
}

/// One rendered section: a group, or the continuation of one that did not fit a single section.
#[derive(Debug, Clone)]
struct Section {
    heading: String,
    severity: Severity,
    resolved: bool,
    lines: Vec<String>,
    /// Bytes: heading and lines, one separator each.
    size: usize,
}

impl Section {
    /// The lines, one per line.
    fn body(&self) -> String {
        self.lines.join("\n")
    }
}

#[derive(Debug, Clone)]
struct Packed {
    sections: Vec<Section>,
    /// Items left out.
    omitted: usize,
}

/// How much one target takes, in bytes of rendered text (a conservative stand-in for chars).
#[derive(Debug, Clone, Copy)]
struct Budget {
    /// Most sections.
    sections: usize,
    /// Most bytes in one section (heading and lines).
    section: usize,
    /// Most bytes across sections.
    total: usize,
}

/// Pack the digest's items into sections, in [`groups`] order, until the budget is spent.
fn pack(
    d: &Digest,
    b: Budget,
    heading: &dyn Fn(&str) -> String,
    item: &dyn Fn(&AlertItem) -> String,
) -> Packed {
    let mut sections: Vec<Section> = Vec::new();
    let mut used = 0usize;
    let mut shown = 0usize;
    'groups: for g in groups(d) {
        let title = g.heading();
        let mut open = false;
        for it in &g.items {
            let l = item(it);
            let cost = l.len() + 1;
            if open {
                let s = sections.last_mut().expect("an open section");
                if s.size + cost <= b.section && used + cost <= b.total {
                    s.lines.push(l);
                    s.size += cost;
                    used += cost;
                    shown += 1;
                    continue;
                }
            }
            let h = if open {
                heading(&format!("{title} (continued)"))
            } else {
                heading(&title)
            };
            let size = h.len() + 1 + cost;
            if sections.len() >= b.sections || size > b.section || used + size > b.total {
                break 'groups;
            }
            sections.push(Section {
                heading: h,
                severity: g.severity,
                resolved: g.resolved,
                lines: vec![l],
                size,
            });
            used += size;
            shown += 1;
            open = true;
        }
    }
    Packed {
        sections,
        omitted: d.items.len() - shown,
    }
}

/// Pack and render; while the payload breaks the target's limits, pack again with three quarters of the budget.
/// The last resort shows no item at all, only the title and "…and N more".
fn fit(
    d: &Digest,
    start: Budget,
    heading: &dyn Fn(&str) -> String,
    item: &dyn Fn(&AlertItem) -> String,
    render: &dyn Fn(&Packed) -> Value,
    ok: &dyn Fn(&Value) -> bool,
) -> Value {
    let mut b = start;
    for _ in 0..16 {
        let v = render(&pack(d, b, heading, item));
        if ok(&v) {
            return v;
        }
        b.total = b.total * 3 / 4;
        b.section = b.section.min(b.total);
    }
    render(&Packed {
        sections: Vec::new(),
        omitted: d.items.len(),
    })
}

fn json_len(v: &Value) -> usize {
    serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX)
}

fn chars(v: &Value) -> usize {
    v.as_str().map(|s| s.chars().count()).unwrap_or(0)
}

fn hex_color(s: &Section) -> &'static str {
    if s.resolved {
        return "#2eb67d";
    }
    match s.severity {
        Severity::Critical => "#b00020",
        Severity::High => "#e8590c",
        Severity::Medium => "#f2a900",
        Severity::Low => "#2f80ed",
        Severity::Info => "#9e9e9e",
    }
}

fn int_color(s: &Section) -> u32 {
    u32::from_str_radix(&hex_color(s)[1..], 16).unwrap_or(0x9e9e9e)
}

const GREY: &str = "#9e9e9e";

/// Slack incoming webhook: `text` (the notification fallback) and blocks: a header, one mrkdwn section per group,
/// "…and N more" when cut, a context line with the scan id, the route and the report link.
pub fn slack(d: &Digest) -> Value {
    let m = Markup::Slack;
    let title = short(&d.title, TITLE_CHARS);
    let render = |p: &Packed| {
        let mut blocks = vec![json!({
            "type": "header",
            "text": {"type": "plain_text", "text": title, "emoji": true}
        })];
        for s in &p.sections {
            blocks.push(json!({
                "type": "section",
                "text": {"type": "mrkdwn", "text": format!("{}\n{}", s.heading, s.body())}
            }));
        }
        if p.omitted > 0 {
            blocks.push(json!({
                "type": "section",
                "text": {"type": "mrkdwn", "text": more_line(d, p.omitted, m)}
            }));
        }
        blocks.push(json!({
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": footer(d, m)}]
        }));
        json!({"text": slack_escape(&d.title), "blocks": blocks})
    };
    fit(
        d,
        Budget {
            sections: SLACK_MAX_BLOCKS - 3,
            section: SLACK_SECTION_CHARS,
            total: 10_500,
        },
        &|h| m.bold(h),
        &|it| format!("• {}", item_line(it, m)),
        &render,
        &slack_ok,
    )
}

/// Slack's limits: block count, section text, the total across blocks.
fn slack_ok(v: &Value) -> bool {
    let blocks = v["blocks"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let mut total = 0;
    for b in blocks {
        let mut n = chars(&b["text"]["text"]);
        if b["type"] == "section" && n > SLACK_SECTION_CHARS {
            return false;
        }
        for e in b["elements"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            n += chars(&e["text"]);
        }
        total += n;
    }
    blocks.len() <= SLACK_MAX_BLOCKS && total <= SLACK_TOTAL_CHARS
}

/// Microsoft Teams Workflows webhook: a message with one Adaptive Card 1.4 (title, scan line, a bold coloured
/// heading and a bullet list per group, "…and N more"), and an "Open report" action when the digest has a link.
pub fn teams(d: &Digest) -> Value {
    let m = Markup::Plain;
    let render = |p: &Packed| {
        let mut body = vec![
            json!({"type": "TextBlock", "text": short(&d.title, TITLE_CHARS), "size": "Medium",
                   "weight": "Bolder", "wrap": true}),
            json!({"type": "TextBlock", "text": format!("scan {} · route {}", short(&d.scan_id, NAME_CHARS),
                   short(&d.route, NAME_CHARS)), "isSubtle": true, "size": "Small", "spacing": "None",
                   "wrap": true}),
        ];
        for s in &p.sections {
            let color = match (s.resolved, s.severity) {
                (true, _) => "Good",
                (false, Severity::Critical | Severity::High) => "Attention",
                (false, Severity::Medium) => "Warning",
                (false, Severity::Low) => "Accent",
                (false, Severity::Info) => "Default",
            };
            body.push(
                json!({"type": "TextBlock", "text": s.heading, "weight": "Bolder", "color": color,
                             "spacing": "Medium", "wrap": true}),
            );
            body.push(
                json!({"type": "TextBlock", "text": s.body(), "spacing": "Small", "wrap": true}),
            );
        }
        if p.omitted > 0 {
            let text = match &d.report_url {
                Some(url) => format!("…and {} more · [full report]({url})", p.omitted),
                None => format!("…and {} more", p.omitted),
            };
            body.push(json!({"type": "TextBlock", "text": text, "isSubtle": true, "wrap": true}));
        }
        let mut card = json!({
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard",
            "version": "1.4",
            "msteams": {"width": "Full"},
            "body": body,
        });
        if let Some(url) = &d.report_url {
            card["actions"] =
                json!([{"type": "Action.OpenUrl", "title": "Open report", "url": url}]);
        }
        json!({
            "type": "message",
            "attachments": [{
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": null,
                "content": card,
            }]
        })
    };
    fit(
        d,
        Budget {
            sections: 30,
            section: 4_000,
            total: 11_000,
        },
        &|h| h.to_string(),
        &|it| format!("- {}", item_line(it, m)),
        &render,
        &|v| json_len(v) <= TEAMS_BYTES,
    )
}

/// Mattermost incoming webhook: `text` (title and scan line) and one attachment per group, coloured by severity
/// (green when resolved); no Slack blocks, which Mattermost ignores.
pub fn mattermost(d: &Digest) -> Value {
    let m = Markup::Markdown;
    let render = |p: &Packed| {
        let mut attachments = Vec::new();
        for s in &p.sections {
            attachments.push(json!({
                "fallback": s.heading,
                "color": hex_color(s),
                "title": s.heading,
                "text": s.body(),
            }));
        }
        if p.omitted > 0 {
            attachments.push(json!({
                "fallback": format!("…and {} more", p.omitted),
                "color": GREY,
                "text": more_line(d, p.omitted, m),
            }));
        }
        json!({
            "text": format!("#### {}\n{}", m.text(&short(&d.title, TITLE_CHARS)), footer(d, m)),
            "attachments": attachments,
        })
    };
    fit(
        d,
        Budget {
            sections: 30,
            section: 4_000,
            total: 11_000,
        },
        &|h| h.to_string(),
        &|it| format!("- {}", item_line(it, m)),
        &render,
        &|v| json_len(v) <= MATTERMOST_BYTES,
    )
}

/// Discord webhook: `content` (title and scan line), one embed per group (title, list, colour), a last embed with
/// "…and N more" when cut; `allowed_mentions` empty, so nothing in a value can ping anyone.
pub fn discord(d: &Digest) -> Value {
    let m = Markup::Markdown;
    let render = |p: &Packed| {
        let mut embeds = Vec::new();
        for s in &p.sections {
            embeds.push(json!({
                "title": short(&s.heading, 256),
                "description": s.body(),
                "color": int_color(s),
            }));
        }
        if p.omitted > 0 {
            embeds.push(json!({
                "description": more_line(d, p.omitted, m),
                "color": 0x9e9e9e,
            }));
        }
        json!({
            "content": format!("{}\n{}", m.bold(&short(&d.title, TITLE_CHARS)), footer(d, m)),
            "allowed_mentions": {"parse": []},
            "embeds": embeds,
        })
    };
    fit(
        d,
        Budget {
            sections: DISCORD_MAX_EMBEDS - 1,
            section: DISCORD_DESCRIPTION_CHARS,
            total: 5_000,
        },
        &|h| h.to_string(),
        &|it| format!("- {}", item_line(it, m)),
        &render,
        &discord_ok,
    )
}

fn discord_ok(v: &Value) -> bool {
    let embeds = v["embeds"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let mut total = 0;
    for e in embeds {
        if chars(&e["description"]) > DISCORD_DESCRIPTION_CHARS || chars(&e["title"]) > 256 {
            return false;
        }
        total += chars(&e["title"]) + chars(&e["description"]);
    }
    embeds.len() <= DISCORD_MAX_EMBEDS
        && total <= DISCORD_EMBED_CHARS
        && chars(&v["content"]) <= DISCORD_CONTENT_CHARS
}

/// Google Chat webhook: one `text` (bold title, scan line, a bold heading and a bullet list per group, "…and N
/// more"), threaded by route (`thread.threadKey`, see [`thread_key`]).
pub fn google_chat(d: &Digest) -> Value {
    let m = Markup::GoogleChat;
    let render = |p: &Packed| {
        let mut text = format!(
            "{}\n{}",
            m.bold(&short(&d.title, TITLE_CHARS)),
            footer(d, m)
        );
        for s in &p.sections {
            text.push_str("\n\n");
            text.push_str(&s.heading);
            text.push('\n');
            text.push_str(&s.body());
        }
        if p.omitted > 0 {
            text.push_str("\n\n");
            text.push_str(&more_line(d, p.omitted, m));
        }
        json!({"text": text, "thread": {"threadKey": thread_key(&d.route)}})
    };
    fit(
        d,
        Budget {
            sections: 200,
            section: 26_000,
            total: 26_000,
        },
        &|h| m.bold(h),
        &|it| format!("• {}", item_line(it, m)),
        &render,
        &|v| json_len(v) <= GOOGLE_CHAT_BYTES,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::{Change, Finding, Kind, State};

    fn finding(kind: Kind, sev: Severity, node: &str, path: &str) -> Finding {
        let mut f = Finding::observed(
            kind,
            sev,
            node,
            "caddy",
            path.to_string(),
            path,
            format!("{node} {path} changed"),
            "2025-01-02T03:04:05Z",
        );
        f.change = Some(Change::Changed);
        f.expected = json!(":443");
        f.actual = json!(":8443");
        f
    }

    fn item(trigger: Trigger, f: Finding) -> AlertItem {
        AlertItem {
            trigger,
            finding: f,
            nodes: Vec::new(),
        }
    }

    /// Three items: a high regression, a medium violation on 3 nodes, a resolved medium drift.
    fn small() -> Digest {
        let reg = finding(
            Kind::Regression,
            Severity::High,
            "edge-1",
            "$.apps.http.servers.srv0.listen[0]",
        );
        let mut vio = finding(Kind::Violation, Severity::Medium, "edge-1", "$.admin");
        vio.rule = Some("caddy-admin-locked".into());
        vio.expected = Value::Null;
        vio.actual = json!({"listen": "0.0.0.0:2019"});
        let mut res = finding(Kind::Drift, Severity::Medium, "edge-2", "$.logging");
        res.state = State::Resolved;
        res.expected = json!("info");
        res.actual = json!("debug");
        Digest {
            id: "d1".into(),
            route: "prod".into(),
            sink: "chat".into(),
            scan_id: "s-42".into(),
            at: "2025-01-02T03:04:05Z".into(),
            title: "plumb: 1 regression, 1 firing, 1 resolved (prod, scan s-42)".into(),
            items: vec![
                item(Trigger::Regression, reg),
                AlertItem {
                    trigger: Trigger::Firing,
                    finding: vio,
                    nodes: vec!["edge-1".into(), "edge-2".into(), "edge-3".into()],
                },
                item(Trigger::Resolved, res),
            ],
            report_url: Some("https://plumb.example.org/scans/s-42".into()),
            replies_to: Vec::new(),
        }
    }

    /// 500 items over every severity and a few rules, with long paths and values.
    fn big() -> Digest {
        let mut d = small();
        d.items.clear();
        for i in 0..500 {
            let sev = Severity::ALL[i % 5];
            let mut f = finding(
                Kind::Drift,
                sev,
                &format!("node-{i:03}"),
                &format!("$.apps.http.servers.srv{i}.routes[0].handle[0].upstreams[{i}].dial"),
            );
            if i % 3 == 0 {
                f.kind = Kind::Violation;
                f.rule = Some(format!("rule-{}", i % 4));
            }
            f.expected = json!(format!(
                "backend-{i}.internal.example.org:8080 \"quoted\" <&>"
            ));
            f.actual = json!(format!("backend-{i}.other.example.org:9090"));
            let trigger = if i % 7 == 0 {
                Trigger::Resolved
            } else {
                Trigger::Firing
            };
            d.items.push(item(trigger, f));
        }
        d
    }

    #[test]
    fn lines_name_trigger_node_config_path_and_values() {
        let d = small();
        assert_eq!(
            lines(&d),
            vec![
                "regression · edge-1 · caddy · $.apps.http.servers.srv0.listen[0]: \":443\" → \":8443\"",
                "firing · 3 nodes · caddy · $.admin: (absent) → {\"listen\":\"0.0.0.0:2019\"}",
                "resolved · edge-2 · caddy · $.logging (was \"info\" → \"debug\")",
            ]
        );
        let g = groups(&d);
        assert_eq!(
            g.iter().map(Group::heading).collect::<Vec<_>>(),
            vec![
                "HIGH · regression (1)",
                "MEDIUM · caddy-admin-locked (1)",
                "RESOLVED · MEDIUM · drift (1)"
            ]
        );
    }

    #[test]
    fn node_level_findings_show_their_message() {
        let mut f = finding(Kind::Unreachable, Severity::Medium, "edge-9", "");
        f.expected = Value::Null;
        f.actual = Value::Null;
        f.message = "connection refused".into();
        assert_eq!(
            line(&item(Trigger::Firing, f.clone())),
            "firing · edge-9 · caddy: connection refused"
        );
        assert_eq!(
            line(&item(Trigger::Resolved, f)),
            "resolved · edge-9 · caddy (was connection refused)"
        );
    }

    #[test]
    fn slack_exact() {
        assert_eq!(
            slack(&small()),
            json!({
                "text": "plumb: 1 regression, 1 firing, 1 resolved (prod, scan s-42)",
                "blocks": [
                    {"type": "header", "text": {"type": "plain_text", "emoji": true,
                        "text": "plumb: 1 regression, 1 firing, 1 resolved (prod, scan s-42)"}},
                    {"type": "section", "text": {"type": "mrkdwn", "text":
                        "*HIGH · regression (1)*\n• regression · `edge-1` · `caddy` · `$.apps.http.servers.srv0.listen[0]`: `\":443\"` → `\":8443\"`"}},
                    {"type": "section", "text": {"type": "mrkdwn", "text":
                        "*MEDIUM · caddy-admin-locked (1)*\n• firing · 3 nodes · `caddy` · `$.admin`: (absent) → `{\"listen\":\"0.0.0.0:2019\"}`"}},
                    {"type": "section", "text": {"type": "mrkdwn", "text":
                        "*RESOLVED · MEDIUM · drift (1)*\n• resolved · `edge-2` · `caddy` · `$.logging` (was `\"info\"` → `\"debug\"`)"}},
                    {"type": "context", "elements": [{"type": "mrkdwn", "text":
                        "scan `s-42` · route `prod` · <https://plumb.example.org/scans/s-42|full report>"}]}
                ]
            })
        );
    }

    #[test]
    fn teams_exact() {
        assert_eq!(
            teams(&small()),
            json!({
                "type": "message",
                "attachments": [{
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": null,
                    "content": {
                        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                        "type": "AdaptiveCard",
                        "version": "1.4",
                        "msteams": {"width": "Full"},
                        "body": [
                            {"type": "TextBlock", "size": "Medium", "weight": "Bolder", "wrap": true,
                             "text": "plumb: 1 regression, 1 firing, 1 resolved (prod, scan s-42)"},
                            {"type": "TextBlock", "text": "scan s-42 · route prod", "isSubtle": true,
                             "size": "Small", "spacing": "None", "wrap": true},
                            {"type": "TextBlock", "text": "HIGH · regression (1)", "weight": "Bolder",
                             "color": "Attention", "spacing": "Medium", "wrap": true},
                            {"type": "TextBlock", "spacing": "Small", "wrap": true, "text":
                             "- regression · edge-1 · caddy · $.apps.http.servers.srv0.listen[0]: \":443\" → \":8443\""},
                            {"type": "TextBlock", "text": "MEDIUM · caddy-admin-locked (1)", "weight": "Bolder",
                             "color": "Warning", "spacing": "Medium", "wrap": true},
                            {"type": "TextBlock", "spacing": "Small", "wrap": true, "text":
                             "- firing · 3 nodes · caddy · $.admin: (absent) → {\"listen\":\"0.0.0.0:2019\"}"},
                            {"type": "TextBlock", "text": "RESOLVED · MEDIUM · drift (1)", "weight": "Bolder",
                             "color": "Good", "spacing": "Medium", "wrap": true},
                            {"type": "TextBlock", "spacing": "Small", "wrap": true, "text":
                             "- resolved · edge-2 · caddy · $.logging (was \"info\" → \"debug\")"}
                        ],
                        "actions": [{"type": "Action.OpenUrl", "title": "Open report",
                                     "url": "https://plumb.example.org/scans/s-42"}]
                    }
                }]
            })
        );
    }

    #[test]
    fn mattermost_exact() {
        assert_eq!(
            mattermost(&small()),
            json!({
                "text": "#### plumb: 1 regression, 1 firing, 1 resolved (prod, scan s-42)\nscan `s-42` · route `prod` · [full report](https://plumb.example.org/scans/s-42)",
                "attachments": [
                    {"fallback": "HIGH · regression (1)", "color": "#e8590c", "title": "HIGH · regression (1)",
                     "text": "- regression · `edge-1` · `caddy` · `$.apps.http.servers.srv0.listen[0]`: `\":443\"` → `\":8443\"`"},
                    {"fallback": "MEDIUM · caddy-admin-locked (1)", "color": "#f2a900",
                     "title": "MEDIUM · caddy-admin-locked (1)",
                     "text": "- firing · 3 nodes · `caddy` · `$.admin`: (absent) → `{\"listen\":\"0.0.0.0:2019\"}`"},
                    {"fallback": "RESOLVED · MEDIUM · drift (1)", "color": "#2eb67d",
                     "title": "RESOLVED · MEDIUM · drift (1)",
                     "text": "- resolved · `edge-2` · `caddy` · `$.logging` (was `\"info\"` → `\"debug\"`)"}
                ]
            })
        );
    }

    #[test]
    fn discord_exact() {
        assert_eq!(
            discord(&small()),
            json!({
                "content": "**plumb: 1 regression, 1 firing, 1 resolved (prod, scan s-42)**\nscan `s-42` · route `prod` · [full report](https://plumb.example.org/scans/s-42)",
                "allowed_mentions": {"parse": []},
                "embeds": [
                    {"title": "HIGH · regression (1)", "color": 0xe8590c,
                     "description": "- regression · `edge-1` · `caddy` · `$.apps.http.servers.srv0.listen[0]`: `\":443\"` → `\":8443\"`"},
                    {"title": "MEDIUM · caddy-admin-locked (1)", "color": 0xf2a900,
                     "description": "- firing · 3 nodes · `caddy` · `$.admin`: (absent) → `{\"listen\":\"0.0.0.0:2019\"}`"},
                    {"title": "RESOLVED · MEDIUM · drift (1)", "color": 0x2eb67d,
                     "description": "- resolved · `edge-2` · `caddy` · `$.logging` (was `\"info\"` → `\"debug\"`)"}
                ]
            })
        );
    }

    #[test]
    fn google_chat_exact() {
        assert_eq!(
            google_chat(&small()),
            json!({
                "text": "*plumb: 1 regression, 1 firing, 1 resolved (prod, scan s-42)*\nscan `s-42` · route `prod` · <https://plumb.example.org/scans/s-42|full report>\n\n*HIGH · regression (1)*\n• regression · `edge-1` · `caddy` · `$.apps.http.servers.srv0.listen[0]`: `\":443\"` → `\":8443\"`\n\n*MEDIUM · caddy-admin-locked (1)*\n• firing · 3 nodes · `caddy` · `$.admin`: (absent) → `{\"listen\":\"0.0.0.0:2019\"}`\n\n*RESOLVED · MEDIUM · drift (1)*\n• resolved · `edge-2` · `caddy` · `$.logging` (was `\"info\"` → `\"debug\"`)",
                "thread": {"threadKey": "plumb-prod"}
            })
        );
        assert_eq!(thread_key("prod"), "plumb-prod");
        let odd = thread_key("prod edge/eu");
        assert!(odd.starts_with("plumb-prod_edge_eu-"), "{odd}");
        assert_ne!(odd, thread_key("prod edge_eu"));
    }

    /// Text escaping: Slack entities, markdown backslashes; a value holding a backtick leaves code spans.
    #[test]
    fn markup_escapes() {
        let mut f = finding(Kind::Drift, Severity::High, "web_1", "$.a");
        f.expected = json!("<!channel> & `x`");
        f.actual = json!("*b*");
        let it = item(Trigger::Firing, f);
        assert_eq!(
            item_line(&it, Markup::Slack),
            "firing · `web_1` · `caddy` · `$.a`: \"&lt;!channel&gt; &amp; `x`\" → `\"*b*\"`"
        );
        assert_eq!(
            item_line(&it, Markup::Markdown),
            "firing · `web_1` · `caddy` · `$.a`: \"\\<!channel\\> & \\`x\\`\" → `\"*b*\"`"
        );
        assert_eq!(short("abcdef", 4), "abc…");
        assert_eq!(
            short_value(&json!("x".repeat(200)))
                .unwrap()
                .chars()
                .count(),
            VALUE_CHARS
        );
    }

    /// "…and N more": the number it names, plus the item lines shown, is every item.
    fn shown_and_more(text: &str) -> (usize, usize) {
        let shown = text.matches("firing · ").count() + text.matches("resolved · ").count();
        let more = text
            .split("…and ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no …and N more in {text}"));
        (shown, more)
    }

    fn all_text(v: &Value) -> String {
        match v {
            Value::String(s) => format!("{s}\n"),
            Value::Array(a) => a.iter().map(all_text).collect(),
            Value::Object(o) => o.values().map(all_text).collect(),
            _ => String::new(),
        }
    }

    #[test]
    fn slack_cuts_500_items() {
        let d = big();
        let v = slack(&d);
        let blocks = v["blocks"].as_array().unwrap();
        assert!(blocks.len() <= 50, "{} blocks", blocks.len());
        let mut total = 0;
        for b in blocks {
            let n = b["text"]["text"].as_str().map_or(0, |s| s.chars().count());
            assert!(n <= 3000, "section of {n} chars");
            total += n;
            for e in b["elements"].as_array().map_or(&[][..], Vec::as_slice) {
                total += e["text"].as_str().unwrap().chars().count();
            }
        }
        assert!(total <= 12_000, "{total} chars across blocks");
        let (shown, more) = shown_and_more(&all_text(&v["blocks"]));
        assert!(shown > 20, "only {shown} shown");
        assert_eq!(shown + more, 500);
        let last = blocks[blocks.len() - 2]["text"]["text"].as_str().unwrap();
        assert_eq!(
            last,
            format!("_…and {more} more_ · <https://plumb.example.org/scans/s-42|full report>")
        );
        // Highest severity first.
        assert!(
            blocks[1]["text"]["text"]
                .as_str()
                .unwrap()
                .starts_with("*CRITICAL · ")
        );
    }

    #[test]
    fn teams_cuts_500_items() {
        let v = teams(&big());
        let size = serde_json::to_vec(&v).unwrap().len();
        assert!(size <= 20_000, "{size} bytes");
        let body = v["attachments"][0]["content"]["body"].as_array().unwrap();
        let (shown, more) = shown_and_more(&all_text(&json!(body)));
        assert!(shown > 20, "only {shown} shown");
        assert_eq!(shown + more, 500);
        assert_eq!(
            body.last().unwrap()["text"],
            format!("…and {more} more · [full report](https://plumb.example.org/scans/s-42)")
        );
    }

    #[test]
    fn mattermost_cuts_500_items() {
        let v = mattermost(&big());
        let size = serde_json::to_vec(&v).unwrap().len();
        assert!(size <= 16_000, "{size} bytes");
        assert!(v.get("blocks").is_none());
        let atts = v["attachments"].as_array().unwrap();
        let (shown, more) = shown_and_more(&all_text(&v["attachments"]));
        assert!(shown > 20, "only {shown} shown");
        assert_eq!(shown + more, 500);
        assert_eq!(
            atts.last().unwrap()["text"],
            format!("_…and {more} more_ · [full report](https://plumb.example.org/scans/s-42)")
        );
    }

    #[test]
    fn discord_cuts_500_items() {
        let v = discord(&big());
        assert!(v["content"].as_str().unwrap().chars().count() <= 2000);
        let embeds = v["embeds"].as_array().unwrap();
        assert!(embeds.len() <= 10, "{} embeds", embeds.len());
        let mut total = 0;
        for e in embeds {
            let t = e["title"].as_str().map_or(0, |s| s.chars().count());
            let d = e["description"].as_str().unwrap().chars().count();
            assert!(t <= 256 && d <= 4096);
            total += t + d;
        }
        assert!(total <= 6000, "{total} chars across embeds");
        let (shown, more) = shown_and_more(&all_text(&v["embeds"]));
        assert!(shown > 10, "only {shown} shown");
        assert_eq!(shown + more, 500);
        assert_eq!(v["allowed_mentions"], json!({"parse": []}));
    }

    #[test]
    fn google_chat_cuts_500_items() {
        let v = google_chat(&big());
        let size = serde_json::to_vec(&v).unwrap().len();
        assert!(size <= 32_000, "{size} bytes");
        let text = v["text"].as_str().unwrap();
        let (shown, more) = shown_and_more(text);
        assert!(shown > 50, "only {shown} shown");
        assert_eq!(shown + more, 500);
        assert!(text.ends_with(&format!(
            "_…and {more} more_ · <https://plumb.example.org/scans/s-42|full report>"
        )));
    }

    /// Without a report link the "…and N more" line stands alone; a digest that fits is not cut.
    #[test]
    fn more_line_without_link_and_no_cut_when_it_fits() {
        let mut d = big();
        d.report_url = None;
        let v = slack(&d);
        let blocks = v["blocks"].as_array().unwrap();
        let more = blocks[blocks.len() - 2]["text"]["text"].as_str().unwrap();
        assert!(
            more.starts_with("_…and ") && more.ends_with(" more_"),
            "{more}"
        );
        for v in [
            slack(&small()),
            teams(&small()),
            mattermost(&small()),
            discord(&small()),
            google_chat(&small()),
        ] {
            assert!(!all_text(&v).contains("…and "), "{v:#}");
        }
    }

    /// One huge group is split into continued sections rather than one section over the limit.
    #[test]
    fn long_group_continues_in_next_section() {
        let mut d = big();
        for it in &mut d.items {
            it.finding.severity = Severity::High;
            it.finding.rule = None;
            it.finding.kind = Kind::Drift;
            it.trigger = Trigger::Firing;
        }
        let v = slack(&d);
        let blocks = v["blocks"].as_array().unwrap();
        assert!(
            blocks[1]["text"]["text"]
                .as_str()
                .unwrap()
                .starts_with("*HIGH · drift (500)*\n")
        );
        assert!(
            blocks[2]["text"]["text"]
                .as_str()
                .unwrap()
                .starts_with("*HIGH · drift (500) (continued)*\n")
        );
    }
}
