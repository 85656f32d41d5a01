//! Scan benchmark: N simulated demo nodes on loopback (each its own port, a new connection per fetch), measured
//! in one run as (a) a raw fetch sweep with the same HTTP client, discarding bodies, and (b) a full `plumb audit`
//! scan (fetch, normalize, compare, classify). Prints both and their ratio.
//!
//! `cargo bench --bench scan -- [NODES] [ROUNDS]` (defaults 1000 and 5).

use plumb::collect::Collector;
use plumb::config;
use plumb::inventory::Node;
use plumb::scan::{self, ScanOptions};
use plumb::sim;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir()?;

    // The demo's plumb.toml and baselines, with a generated inventory of n nodes.
    let mut csv = String::from("name,role,dc,env,vars.addr\n");
    for i in 0..n {
        let (role, dc) = if i % 3 == 2 {
            ("db", "fra")
        } else {
            ("edge", if i % 2 == 0 { "ams" } else { "fra" })
        };
        csv.push_str(&format!("{role}-{dc}-b{i},{role},{dc},prod,127.0.0.1:0\n"));
    }
    std::fs::write(dir.path().join("nodes.csv"), csv)?;
    std::fs::copy(repo.join("plumb.toml"), dir.path().join("plumb.toml"))?;
    copy_dir(&repo.join("baselines"), &dir.path().join("baselines"))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut plan = config::load(&dir.path().join("plumb.toml")).map_err(|e| e.to_string())?;
        plan.scan.concurrency = 256;
        let fleet = sim::start(sim::demo::specs(&plan.nodes), None).await?;
        for node in &mut plan.nodes {
            if let Some(a) = fleet.addr(&node.name) {
                node.vars.insert("addr".into(), a.to_string());
            }
        }
        let urls: Vec<String> = plan
            .nodes
            .iter()
            .flat_map(|node: &Node| {
                let addr = node.vars.get("addr").cloned().unwrap_or_default();
                let role = node.labels.get("role").cloned().unwrap_or_default();
                let paths: &[&str] = if role == "edge" { &["/config/", "/sysctl"] } else { &["/sysctl", "/postgresql.conf", "/app"] };
                paths.iter().map(move |p| format!("http://{addr}{p}")).collect::<Vec<_>>()
            })
            .collect();
        let plan = Arc::new(plan);
        let client = reqwest::Client::builder().build()?;
        let mut raw = Vec::new();
        let mut full = Vec::new();
        for _ in 0..rounds {
            raw.push(raw_sweep(&client, &urls, 256).await?);
            let collector = Arc::new(Collector::new(&plan)?);
            let t = Instant::now();
            let out = scan::run(plan.clone(), collector, ScanOptions::default()).await?;
            full.push(t.elapsed());
            assert_eq!(out.report.nodes.total, n);
        }
        let med = |v: &mut Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        // (c) The same scan recorded in the SQLite store on disk: prepare (key, baseline versions, memory), scan,
        // lifecycle + one write transaction. One cold round fills the store; warm rounds change nothing, measured
        // against unrecorded scans in alternation.
        let db = dir.path().join("bench-state.db");
        let mut store = plumb::store::sqlite::SqliteStore::open(&db)?;
        let cold = recorded(&plan, &mut store).await?;
        let mut warm = Vec::new();
        let mut bare = Vec::new();
        for _ in 0..rounds {
            let collector = Arc::new(Collector::new(&plan)?);
            let t = Instant::now();
            scan::run(plan.clone(), collector, ScanOptions::default()).await?;
            bare.push(t.elapsed());
            warm.push(recorded(&plan, &mut store).await?);
        }
        let (b, w) = (med(&mut bare), med(&mut warm));
        let db_bytes: u64 = std::fs::read_dir(dir.path())?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("bench-state.db"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        println!(
            "store: cold_recorded={:.1}ms warm_unrecorded_median={:.1}ms warm_recorded_median={:.1}ms store_overhead={:+.1}% db_bytes={db_bytes}",
            cold.as_secs_f64() * 1e3,
            b.as_secs_f64() * 1e3,
            w.as_secs_f64() * 1e3,
            (w.as_secs_f64() / b.as_secs_f64() - 1.0) * 100.0
        );
        let (r, f) = (med(&mut raw), med(&mut full));
        println!(
            "nodes={n} targets={} rounds={rounds} raw_fetch_median={:.1}ms scan_median={:.1}ms scan/raw={:.2} nodes_per_s={:.0}",
            urls.len(),
            r.as_secs_f64() * 1e3,
            f.as_secs_f64() * 1e3,
            f.as_secs_f64() / r.as_secs_f64(),
            n as f64 / f.as_secs_f64()
        );
        drop(fleet);
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

/// One scan recorded in the store, timed from `prepare` to the end of the write.
async fn recorded(
    plan: &Arc<plumb::config::Plan>,
    store: &mut plumb::store::sqlite::SqliteStore,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let mut opts = ScanOptions::default();
    let t = Instant::now();
    let now = chrono::Utc::now().to_rfc3339();
    let memory = scan::prepare(plan, store, &mut opts, &now)?;
    let collector = Arc::new(Collector::new(plan)?);
    let mut out = scan::run(plan.clone(), collector, opts).await?;
    scan::record(plan, store, &memory, &mut out, false)?;
    Ok(t.elapsed())
}

async fn raw_sweep(
    client: &reqwest::Client,
    urls: &[String],
    concurrency: usize,
) -> Result<Duration, reqwest::Error> {
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for u in urls {
        let (c, u, sem) = (client.clone(), u.clone(), sem.clone());
        set.spawn(async move {
            let _p = sem.acquire_owned().await;
            c.get(&u).send().await?.bytes().await.map(|b| b.len())
        });
    }
    while let Some(r) = set.join_next().await {
        if let Ok(r) = r {
            r?;
        }
    }
    Ok(t.elapsed())
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dest)?;
        } else {
            std::fs::copy(e.path(), dest)?;
        }
    }
    Ok(())
}
