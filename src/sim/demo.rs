//! The demo fleet's content: what each simulated node of the repository's `nodes.csv` serves.
//!
//! Edge nodes (`role=edge`) serve a Caddy-style JSON config at `/config/` and sysctl at `/sysctl`; database nodes
//! (`role=db`) serve sysctl, `postgresql.conf` and an application config inside a ConfigMap-style JSON envelope
//! (YAML in a string). Every document carries node-specific values and a volatile part (counters, boot ids), as
//! real nodes do. A few nodes deviate on purpose; [`DEVIATIONS`] lists them.

use super::{Behavior, NodeSpec};
use crate::inventory::Node;
use serde_json::{Value, json};
use std::collections::HashMap;

/// The nodes that deviate from their baselines, and how.
pub const DEVIATIONS: &[(&str, &str)] = &[
    (
        "edge-ams-3",
        "caddy: the api route proxies to a canary upstream",
    ),
    (
        "edge-fra-2",
        "caddy: an unapproved debug route was inserted first",
    ),
    (
        "edge-fra-4",
        "caddy: minimum TLS version went back to tls1.0",
    ),
    ("edge-ams-5", "sysctl: IP forwarding switched on"),
    ("db-3", "postgres: max_connections raised to 500"),
    ("edge-fra-6", "caddy: serves truncated JSON"),
    ("db-7", "down: connections are refused"),
];

/// The node that is down.
pub const DOWN: &str = "db-7";

fn label<'a>(n: &'a Node, k: &str) -> &'a str {
    n.labels.get(k).map(String::as_str).unwrap_or_default()
}

/// A small deterministic number from the node name, for volatile values.
fn noise(n: &Node, salt: &str) -> u64 {
    let h = blake3::hash(format!("{}/{salt}", n.name).as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or([0; 8])) % 1_000_000
}

/// The Caddy-style config of an edge node in round 1 (the first scan) or 2 (after [`round_two`]).
pub fn caddy(n: &Node, round: u8) -> Value {
    let dc = label(n, "dc");
    let mut routes = vec![
        json!({"@id": "api", "match": [{"host": ["api.example.net"]}],
               "handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": format!("api-{dc}.internal:8080")}]}]}),
        json!({"@id": "static", "match": [{"host": ["www.example.net"]}],
               "handle": [{"handler": "file_server", "root": "/srv/www"}]}),
        json!({"@id": "health", "match": [{"path": ["/healthz"]}],
               "handle": [{"handler": "static_response", "body": format!("{} ok", n.name)}]}),
    ];
    if dc == "fra" {
        routes.push(json!({"@id": "legacy", "match": [{"host": ["v1.example.net"]}],
                           "handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": "legacy-fra.internal:8080"}]}]}));
    }
    let mut min_tls = "tls1.2";
    match n.name.as_str() {
        "edge-ams-3" if round == 1 => {
            routes[0]["handle"][0]["upstreams"][0]["dial"] = json!("api-canary.internal:8080");
        }
        "edge-fra-2" => routes.insert(
            0,
            json!({"@id": "debug", "match": [{"path": ["/debug/*"]}],
                   "handle": [{"handler": "static_response", "body": "debug"}]}),
        ),
        "edge-fra-4" => min_tls = "tls1.0",
        _ => {}
    }
    json!({
        "admin": {"listen": "localhost:2019"},
        "apps": {
            "http": {"servers": {"srv0": {
                "listen": [":443"],
                "metrics": {"requests_total": noise(n, "requests"), "uptime_s": noise(n, "uptime")},
                "routes": routes,
                "tls_connection_policies": [{"protocol_min": min_tls}],
            }}},
        }
    })
}

/// sysctl of any node.
pub fn sysctl(n: &Node, round: u8) -> String {
    let forward = if n.name == "edge-ams-5" { 1 } else { 0 };
    // Round 2: edge-ams-7 goes back to the backlog the fleet had before it was raised to 4096.
    let back = matches!(n.name.as_str(), "edge-ams-7" | "edge-fra-7");
    let somaxconn = if back && round == 2 { 1024 } else { 4096 };
    let swappiness = if label(n, "role") == "db" { 1 } else { 60 };
    let boot = blake3::hash(n.name.as_bytes()).to_hex();
    format!(
        "# sysctl -a (excerpt)\nnet.ipv4.ip_forward = {forward}\nnet.ipv4.tcp_syncookies = 1\nnet.core.somaxconn = {somaxconn}\n\
         kernel.kptr_restrict = 2\nkernel.randomize_va_space = 2\nvm.swappiness = {swappiness}\nkernel.random.boot_id = {}-{}-{}-{}-{}\n",
        &boot[0..8],
        &boot[8..12],
        &boot[12..16],
        &boot[16..20],
        &boot[20..32]
    )
}

/// postgresql.conf of a database node.
pub fn postgres(n: &Node) -> String {
    let max = match n.name.as_str() {
        "db-1" => 400,
        "db-3" => 500,
        _ => 200,
    };
    format!(
        "listen_addresses = '*'\nmax_connections = {max}\nshared_buffers = 4GB\nwal_level = replica\n\
         log_line_prefix = '%m [%p] '\ncluster_name = '{}'\n",
        n.name
    )
}

/// The application config of a database node, as a ConfigMap-style envelope holding YAML.
pub fn app(n: &Node, round: u8) -> Value {
    let replicas = if n.name == "db-5" && round == 2 { 1 } else { 3 };
    let yaml = format!(
        "replicas: {replicas}\npool:\n  size: 20\n  timeout: 5s\nfeatures:\n  - name: audit-log\n    enabled: true\n  - name: \
         fast-path\n    enabled: false\nregion: {}\nmaintenance: off\n",
        label(n, "dc")
    );
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "app", "resourceVersion": noise(n, "rv").to_string()},
           "data": {"app.yaml": yaml}})
}

/// What changes between the demo's two scans.
pub const ROUND_TWO: &[(&str, &str)] = &[
    (
        "edge-ams-3",
        "caddy: the canary upstream is rolled back (the drift resolves)",
    ),
    (
        "edge-ams-7, edge-fra-7",
        "sysctl: net.core.somaxconn back to 1024, the value of the superseded baseline (a regression, fleet-wide)",
    ),
    (
        "db-5",
        "app: scaled down to 1 replica (drift and a rule violation)",
    ),
];

/// Apply [`ROUND_TWO`] to a running demo fleet.
pub fn round_two(fleet: &super::Fleet, nodes: &[Node]) {
    for n in nodes {
        match n.name.as_str() {
            "edge-ams-3" => {
                fleet.set(
                    &n.name,
                    "/config/",
                    Behavior::serve("application/json", caddy(n, 2).to_string()),
                );
            }
            "edge-ams-7" | "edge-fra-7" => {
                fleet.set(
                    &n.name,
                    "/sysctl",
                    Behavior::serve("text/plain", sysctl(n, 2)),
                );
            }
            "db-5" => {
                fleet.set(
                    &n.name,
                    "/app",
                    Behavior::serve("application/json", app(n, 2).to_string()),
                );
            }
            _ => {}
        }
    }
}

/// The baseline the fleet was moved away from before the demo: sysctl's `net.core.somaxconn` was 1024.
pub const SUPERSEDED_SYSCTL: (&str, &str, &str) = (
    "baselines/sysctl/default.conf",
    "net.core.somaxconn",
    "1024",
);

/// The simulator specs for `nodes`: each node binds its `vars.addr` when free.
pub fn specs(nodes: &[Node]) -> Vec<NodeSpec> {
    nodes
        .iter()
        .map(|n| {
            let mut routes = HashMap::new();
            routes.insert(
                "/sysctl".to_string(),
                Behavior::serve("text/plain", sysctl(n, 1)),
            );
            match label(n, "role") {
                "edge" => {
                    let body = caddy(n, 1).to_string();
                    let body = if n.name == "edge-fra-6" {
                        body[..body.len() / 2].to_string()
                    } else {
                        body
                    };
                    routes.insert(
                        "/config/".to_string(),
                        Behavior::serve("application/json", body),
                    );
                }
                "db" => {
                    routes.insert(
                        "/postgresql.conf".to_string(),
                        Behavior::serve("text/plain", postgres(n)),
                    );
                    routes.insert(
                        "/app".to_string(),
                        Behavior::serve("application/json", app(n, 1).to_string()),
                    );
                }
                _ => {}
            }
            NodeSpec {
                name: n.name.clone(),
                bind: n.vars.get("addr").and_then(|a| a.parse().ok()),
                routes,
                down: n.name == DOWN,
            }
        })
        .collect()
}
