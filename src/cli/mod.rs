//! The `plumb` command line: argument parsing, the commands, and exit codes. The only place anyhow is used.
//!
//! Exit codes: 0 clean; 1 drift, regression or violation at or above `--fail-on`; 3 coverage incomplete
//! (unreachable, invalid, unbaselined); 2 plumb itself could not run (bad arguments, bad config).

use crate::baseline::{self, ApproveTarget};
use crate::config::{self, Plan};
use crate::finding::Severity;
use crate::inventory::Selector;
use crate::normalize::{Decode, Format};
use crate::report::{self, Style};
use crate::scan::ScanOptions;
use crate::sim;
use crate::store::FindingFilter;

mod memory;
use anyhow::{Context, Result, anyhow};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// plumb: configuration drift detector.
#[derive(Debug, Parser)]
#[command(name = "plumb", version, about)]
pub struct Cli {
    /// Path to plumb.toml; baselines/ and rules/ are found beside it.
    #[arg(long, global = true, default_value = "plumb.toml")]
    pub config: PathBuf,
    /// Colors: auto (on a terminal), always, never.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    pub color: ColorChoice,
    /// The store file, instead of `[store] path`.
    #[arg(long, global = true)]
    pub store: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// When to color output.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// Report formats.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One scan now: fetch every selected node, compare with baselines, report.
    Audit {
        #[arg(long, value_enum, default_value = "human")]
        format: OutputFormat,
        /// Only nodes with these labels: key=value[,key=value…].
        #[arg(long)]
        nodes: Option<String>,
        /// Exit 1 on drift, regression or violation at or above this severity.
        #[arg(long, default_value = "low")]
        fail_on: String,
        /// Send alerts: plan them through [[route]]s into the outbox, then deliver until done or --notify-wait.
        #[arg(long)]
        notify: bool,
        /// How long to keep delivering (undelivered alerts stay in the outbox for the next run).
        #[arg(long, default_value = "30s")]
        notify_wait: String,
    },
    /// The daemon: run every [[schedule]], deliver alerts, serve /healthz /readyz /metrics and POST /scan.
    Run {
        /// Run every schedule's scan once, deliver its alerts, and exit (for system cron or a Kubernetes CronJob).
        #[arg(long)]
        once: bool,
        /// Log lines as text or JSON.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Rollout gate: poll the selected nodes until each matches its baseline and passes its rules.
    Converge {
        /// Which nodes: key=value[,key=value…] (default: all).
        #[arg(long)]
        nodes: Option<String>,
        /// Give up after this long (exit 1).
        #[arg(long, default_value = "10m")]
        timeout: String,
        /// Time between polls.
        #[arg(long, default_value = "15s")]
        interval: String,
        /// How many nodes may still be off when the gate opens.
        #[arg(long, default_value_t = 0)]
        max_unready: usize,
    },
    /// Alert tools: test a sink, show the outbox.
    Alerts {
        #[command(subcommand)]
        command: AlertsCommand,
    },
    /// Validate plumb.toml, the inventory and baselines/; contacts no node.
    Check,
    /// Live against baseline for one node.
    Diff {
        node: String,
        /// Only this config (default: every config the node carries).
        #[arg(id = "config_name", value_name = "CONFIG")]
        config: Option<String>,
    },
    /// Write a node's live config into its baseline file, and show the change.
    Approve {
        node: String,
        /// Only this config (default: every config the node carries).
        #[arg(id = "config_name", value_name = "CONFIG")]
        config: Option<String>,
        /// Which baseline to write: node (only this node), default, or LABEL=VALUE.
        #[arg(long, default_value = "node")]
        to: String,
    },
    /// Stored findings, any state.
    Findings {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        node: Option<String>,
        #[arg(long = "for-config", value_name = "CONFIG")]
        for_config: Option<String>,
        #[arg(long, value_enum, default_value = "human")]
        format: OutputFormat,
    },
    /// The snapshot timeline of a node, with the diff between consecutive snapshots.
    History {
        node: String,
        #[arg(id = "config_name", value_name = "CONFIG")]
        config: Option<String>,
        #[arg(long, value_enum, default_value = "human")]
        format: OutputFormat,
    },
    /// Acknowledge a finding until a time: it stays visible and raises no alerts. `--list` shows those in force.
    Ack {
        /// The fingerprint, or a unique prefix of it.
        fingerprint: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        /// RFC 3339 time, a date (2026-12-31) or a duration from now (7d). Every ack ends.
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        owner: Option<String>,
        /// End the acknowledgement as soon as the observed value changes.
        #[arg(long)]
        value_only: bool,
        /// List acknowledgements in force.
        #[arg(long)]
        list: bool,
        #[arg(long, value_enum, default_value = "human")]
        format: OutputFormat,
    },
    /// End an acknowledgement now.
    Unack { fingerprint: String },
    /// Rule tools.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Start the embedded demo fleet on loopback, audit it with ./plumb.toml, show the findings.
    Demo {
        #[arg(long, value_enum, default_value = "human")]
        format: OutputFormat,
    },
    /// Benchmark: a simulated fleet on loopback; the raw fetch sweep against a cold and a warm full scan.
    Bench {
        /// Simulated nodes.
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Document size: bytes, or with a unit (2kB, 50KB, 500KiB).
        #[arg(long, default_value = "50KB")]
        size: String,
        /// Serve and fetch over HTTPS (a new TLS connection per node).
        #[arg(long)]
        tls: bool,
        /// Percent of nodes that drift from the baseline.
        #[arg(long, default_value_t = 1.0)]
        drift: f64,
        /// Rules in the generated plan.
        #[arg(long, default_value_t = 20)]
        rules: usize,
        /// Fetches in flight (`[scan] concurrency`), for the scans and the raw sweep alike.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Warm scans, each followed by a raw sweep; the medians count.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Nodes send ETags and answer 304 to If-None-Match: warm scans use conditional GET (the raw sweep does not).
        #[arg(long)]
        etag: bool,
        /// Internal: serve the simulated fleet alone, for a parent `plumb bench` (its child process).
        #[arg(long, hide = true)]
        serve_fleet: bool,
    },
}

/// Log line formats.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `plumb alerts …`.
#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Send a test message to one sink (through the outbox) and report the outcome.
    Test {
        sink: String,
        #[arg(long, default_value = "30s")]
        wait: String,
    },
    /// Pending items and dead letters.
    Outbox {
        #[arg(long, value_enum, default_value = "human")]
        format: OutputFormat,
    },
    /// Deliver what is pending now.
    Flush {
        #[arg(long, default_value = "30s")]
        wait: String,
    },
}

/// `plumb rules …`.
#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Run every rule's inline `[[rule.test]]` cases and report each; exit 1 when one fails.
    Test,
}

/// Parse arguments, run, and map the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("plumb: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn style(choice: ColorChoice) -> Style {
    Style {
        color: match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
            }
        },
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn load(path: &std::path::Path) -> Result<Plan> {
    config::load(path).map_err(|e| anyhow!("invalid configuration:\n{e}"))
}

/// Write to stdout; a closed pipe (`plumb audit | head`) is not an error.
fn out(s: &str) -> Result<()> {
    let mut o = std::io::stdout().lock();
    match o.write_all(s.as_bytes()).and_then(|_| o.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to stdout"),
    }
}

/// Run one command; `Ok(code)` is the exit code.
pub fn run(cli: Cli) -> Result<u8> {
    let st = style(cli.color);
    match cli.command {
        Command::Check => {
            let plan = load(&cli.config)?;
            let files: usize = plan
                .baselines
                .configs
                .values()
                .map(|c| usize::from(c.default.is_some()) + c.labels.len() + c.nodes.len())
                .sum();
            let names: Vec<String> = plan.configs.iter().map(|c| c.name.clone()).collect();
            let inactive: Vec<&str> = plan.rules.inactive(&names).map(|r| r.id.as_str()).collect();
            let mut text = format!(
                "{}: ok ({} nodes, {} configs, {} baseline files, {} rules, {} schedules)\n",
                cli.config.display(),
                plan.nodes.len(),
                plan.configs.len(),
                files,
                plan.rules.rules.len(),
                plan.schedules.len()
            );
            if !inactive.is_empty() {
                text.push_str(&format!(
                    "{} rules name a config this plumb.toml does not define, and stay inactive: {}\n",
                    inactive.len(),
                    inactive.join(", ")
                ));
            }
            out(&text)?;
            Ok(0)
        }
        Command::Audit {
            format,
            nodes,
            fail_on,
            notify,
            notify_wait,
        } => {
            let wait = crate::units::parse_duration(&notify_wait)
                .map_err(|e| anyhow!("--notify-wait: {e}"))?;
            let fail_on: Severity = fail_on
                .parse()
                .map_err(|e: String| anyhow!("--fail-on: {e}"))?;
            let selector = match &nodes {
                Some(s) => Selector::parse(s).map_err(|e| anyhow!("--nodes: {e}"))?,
                None => Selector::default(),
            };
            let plan = Arc::new(load(&cli.config)?);
            let mut store = memory::open(&plan, cli.store.as_deref())?;
            let rt = runtime()?;
            let mut opts = ScanOptions {
                selector,
                ..Default::default()
            };
            // A progress bar on a terminal only; never in pipes, files or CI logs.
            let bar = std::io::stderr().is_terminal().then(|| {
                let b = indicatif::ProgressBar::new(0);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{spinner} scanning {pos}/{len} targets {elapsed}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                b
            });
            if let Some(b) = bar.clone() {
                opts.progress = Some(crate::scan::Progress(Arc::new(move |done, total| {
                    b.set_length(total as u64);
                    b.set_position(done as u64);
                })));
            }
            let (output, queued) = memory::scan(&rt, plan.clone(), &mut store, opts, true, notify)?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            print_report(&output.report, format, st)?;
            if notify {
                let stats = memory::deliver(&rt, &plan, &mut store, wait)?;
                eprintln!("{}", memory::delivery_summary(queued, &stats));
            }
            Ok(output.report.exit_code(fail_on))
        }
        Command::Diff { node, config } => {
            let plan = Arc::new(load(&cli.config)?);
            let mut store = memory::open(&plan, cli.store.as_deref())?;
            let rt = runtime()?;
            let opts = ScanOptions {
                node: Some(node.clone()),
                config: config.clone(),
                ..Default::default()
            };
            let (output, _) = memory::scan(&rt, plan, &mut store, opts, false, false)?;
            let mut text = String::new();
            for t in &output.targets {
                if !t.read || t.baseline.is_none() {
                    for f in &t.findings {
                        text.push_str(&format!("{}\n", f.message));
                    }
                    continue;
                }
                if t.unified.is_empty() {
                    text.push_str(&format!("{}/{}: matches its baseline\n", t.node, t.config));
                } else {
                    let file = t
                        .baseline
                        .as_ref()
                        .map(|(_, p)| p.display().to_string())
                        .unwrap_or_default();
                    text.push_str(&format!("{}/{} against {file}\n", t.node, t.config));
                    text.push_str(&report::paint_diff(&t.unified, st));
                }
            }
            out(&text)?;
            // The same rule as `plumb audit`: drift decides over incomplete coverage, whatever the order of configs.
            Ok(output.report.exit_code(Severity::Low))
        }
        Command::Approve { node, config, to } => {
            let to = ApproveTarget::parse(&to).map_err(|e| anyhow!("--to: {e}"))?;
            let plan = Arc::new(load(&cli.config)?);
            let mut store = memory::open(&plan, cli.store.as_deref())?;
            approve(plan, &mut store, &node, config, &to, st)
        }
        Command::Findings {
            state,
            kind,
            node,
            for_config,
            format,
        } => {
            let plan = load(&cli.config)?;
            let mut store = memory::open(&plan, cli.store.as_deref())?;
            let filter = FindingFilter {
                state,
                kind,
                node,
                config: for_config,
            };
            out(&memory::findings(
                &mut store,
                &filter,
                format == OutputFormat::Json,
                st,
            )?)?;
            Ok(0)
        }
        Command::History {
            node,
            config,
            format,
        } => {
            let plan = load(&cli.config)?;
            let mut store = memory::open(&plan, cli.store.as_deref())?;
            out(&memory::history(
                &mut store,
                &node,
                config.as_deref(),
                format == OutputFormat::Json,
                st,
            )?)?;
            Ok(0)
        }
        Command::Ack {
            fingerprint,
            reason,
            until,
            owner,
            value_only,
            list,
            format,
        } => {
            let plan = load(&cli.config)?;
            let mut store = memory::open(&plan, cli.store.as_deref())?;
            if list {
                out(&memory::ack_list(&mut store, format == OutputFormat::Json)?)?;
                return Ok(0);
            }
            let fp = fingerprint.ok_or_else(|| anyhow!("ack: give a FINGERPRINT (or --list)"))?;
            let reason = reason.ok_or_else(|| anyhow!("ack: --reason is required"))?;
            let until = until
                .ok_or_else(|| anyhow!("ack: --until is required: every acknowledgement ends"))?;
            out(&memory::ack(
                &mut store,
                &fp,
                &reason,
                &until,
                owner.as_deref(),
                value_only,
            )?)?;
            Ok(0)
        }
        Command::Unack { fingerprint } => {
            let plan = load(&cli.config)?;
            let mut store = memory::open(&plan, cli.store.as_deref())?;
            out(&memory::unack(&mut store, &fingerprint)?)?;
            Ok(0)
        }
        Command::Run { once, log_format } => {
            init_logs(log_format);
            let rt = runtime()?;
            let opts = crate::daemon::Options {
                store: cli.store.clone(),
                once,
                ..Default::default()
            };
            rt.block_on(async {
                // Caught from before start-up on: a SIGTERM while the config loads is a clean stop, not a kill.
                let stop = shutdown_signal();
                crate::daemon::run(&cli.config, opts, stop).await
            })?;
            Ok(0)
        }
        Command::Converge {
            nodes,
            timeout,
            interval,
            max_unready,
        } => {
            let selector = match &nodes {
                Some(s) => Selector::parse(s).map_err(|e| anyhow!("--nodes: {e}"))?,
                None => Selector::default(),
            };
            let timeout =
                crate::units::parse_duration(&timeout).map_err(|e| anyhow!("--timeout: {e}"))?;
            let interval =
                crate::units::parse_duration(&interval).map_err(|e| anyhow!("--interval: {e}"))?;
            let plan = Arc::new(load(&cli.config)?);
            let mut store = memory::open(&plan, cli.store.as_deref())?;
            let rt = runtime()?;
            converge(
                &rt,
                plan,
                &mut store,
                selector,
                timeout,
                interval,
                max_unready,
            )
        }
        Command::Alerts { command } => {
            let plan = load(&cli.config)?;
            let mut store = memory::open(&plan, cli.store.as_deref())?;
            match command {
                AlertsCommand::Test { sink, wait } => {
                    let wait =
                        crate::units::parse_duration(&wait).map_err(|e| anyhow!("--wait: {e}"))?;
                    let rt = runtime()?;
                    let text = memory::test_sink(&rt, &plan, &mut store, &sink, wait)?;
                    out(&text)?;
                    Ok(if text.starts_with("delivered") { 0 } else { 1 })
                }
                AlertsCommand::Outbox { format } => {
                    out(&memory::outbox(&mut store, format == OutputFormat::Json)?)?;
                    Ok(0)
                }
                AlertsCommand::Flush { wait } => {
                    let wait =
                        crate::units::parse_duration(&wait).map_err(|e| anyhow!("--wait: {e}"))?;
                    let rt = runtime()?;
                    let stats = memory::deliver(&rt, &plan, &mut store, wait)?;
                    out(&format!("{}\n", memory::delivery_summary(0, &stats)))?;
                    Ok(if stats.pending == 0 && stats.dead == 0 {
                        0
                    } else {
                        1
                    })
                }
            }
        }
        Command::Rules {
            command: RulesCommand::Test,
        } => {
            let plan = load(&cli.config)?;
            let results = crate::rules::run_tests(&plan.rules);
            let mut text = String::new();
            let mut failed = 0;
            for r in &results {
                let got = match &r.got {
                    crate::rules::Outcome::Pass => "pass".to_string(),
                    crate::rules::Outcome::Fail { message, .. } => format!("fail ({message})"),
                    crate::rules::Outcome::Error(e) => format!("invalid ({e})"),
                };
                if r.ok {
                    text.push_str(&format!("{} {} / {}\n", st_ok(st, true), r.rule, r.test));
                } else {
                    failed += 1;
                    text.push_str(&format!(
                        "{} {} / {}: expected {:?}, got {got} ({}:{})\n",
                        st_ok(st, false),
                        r.rule,
                        r.test,
                        r.expect,
                        r.file.display(),
                        r.line
                    ));
                }
            }
            let rules_with_tests = plan
                .rules
                .rules
                .iter()
                .filter(|r| !r.tests.is_empty())
                .count();
            text.push_str(&format!(
                "rule tests: {} passed, {failed} failed ({} rules, {rules_with_tests} with tests)\n",
                results.len() - failed,
                plan.rules.rules.len()
            ));
            out(&text)?;
            Ok(if failed > 0 { 1 } else { 0 })
        }
        Command::Demo { format } => demo(&cli.config, format, st),
        Command::Bench {
            nodes,
            size,
            tls,
            drift,
            rules,
            concurrency,
            rounds,
            etag,
            serve_fleet,
        } => {
            let size = crate::units::parse_size(&size).map_err(|e| anyhow!("--size: {e}"))?;
            let opts = crate::bench::BenchOptions {
                nodes,
                size: usize::try_from(size).map_err(|_| anyhow!("--size: too large"))?,
                tls,
                drift,
                rules,
                concurrency: concurrency.max(1),
                rounds,
                etag,
                simulator_exe: if serve_fleet {
                    None
                } else {
                    Some(std::env::current_exe().context("cannot find plumb's own executable")?)
                },
            };
            if serve_fleet {
                runtime()?
                    .block_on(crate::bench::serve_fleet(&opts))
                    .map_err(|e| anyhow!("bench: {e}"))?;
                return Ok(0);
            }
            let say = |line: &str| {
                let _ = out(&format!("{line}\n"));
            };
            let result = runtime()?
                .block_on(crate::bench::run(&opts, &say))
                .map_err(|e| anyhow!("bench: {e}"))?;
            out(&(serde_json::to_string(&result)? + "\n"))?;
            Ok(0)
        }
    }
}

fn st_ok(st: Style, ok: bool) -> String {
    let (code, word) = if ok { ("32", "ok  ") } else { ("31", "FAIL") };
    if st.color {
        format!("\x1b[{code}m{word}\x1b[0m")
    } else {
        word.to_string()
    }
}

/// Logs through `tracing` on stderr; `RUST_LOG` filters (default `info`).
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Text => b.try_init(),
    };
}

/// SIGTERM or SIGINT. The handlers are installed when this is called (inside the runtime), not when the future is
/// first polled: until then either signal's default action would end the process with no clean stop.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{Signal, SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async fn recv(s: Option<Signal>) {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        async move {
            tokio::select! {
                _ = recv(term) => {}
                _ = recv(int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `plumb converge`: exit 0 once at most `max_unready` selected nodes are off; 1 with the list on timeout.
fn converge(
    rt: &tokio::runtime::Runtime,
    plan: Arc<Plan>,
    store: &mut dyn crate::store::Store,
    selector: Selector,
    timeout: std::time::Duration,
    interval: std::time::Duration,
    max_unready: usize,
) -> Result<u8> {
    let start = std::time::Instant::now();
    let mut poll = 0;
    loop {
        poll += 1;
        let opts = ScanOptions {
            selector: selector.clone(),
            ..Default::default()
        };
        let (output, _) = memory::scan(rt, plan.clone(), store, opts, false, false)?;
        let mut off: std::collections::BTreeMap<String, Vec<String>> =
            std::collections::BTreeMap::new();
        for f in &output.report.findings {
            let why = match f.kind {
                crate::finding::Kind::Drift | crate::finding::Kind::Regression => {
                    format!("{} {} {}", f.config, f.kind, f.path)
                }
                crate::finding::Kind::Violation => {
                    format!(
                        "{} violates {}",
                        f.config,
                        f.rule.as_deref().unwrap_or_default()
                    )
                }
                k => format!("{} {k}", f.config),
            };
            off.entry(f.node.clone()).or_default().push(why);
        }
        let total = output.report.nodes.total;
        if total == 0 {
            anyhow::bail!("no node matches the selector");
        }
        eprintln!(
            "converge: poll {poll}: {}/{total} nodes match their baselines and rules",
            total - off.len()
        );
        if off.len() <= max_unready {
            out(&format!(
                "converged: {}/{total} nodes ready after {:.1} s\n",
                total - off.len(),
                start.elapsed().as_secs_f64()
            ))?;
            return Ok(0);
        }
        if start.elapsed() + interval > timeout {
            let mut text = format!(
                "not converged after {:.0} s: {} of {total} nodes are off (at most {max_unready} allowed)\n",
                start.elapsed().as_secs_f64(),
                off.len()
            );
            for (node, why) in &off {
                text.push_str(&format!("  {node}: {}\n", why.join("; ")));
            }
            out(&text)?;
            return Ok(1);
        }
        std::thread::sleep(interval);
    }
}

fn print_report(r: &report::Report, format: OutputFormat, st: Style) -> Result<()> {
    match format {
        OutputFormat::Json => out(&(serde_json::to_string_pretty(r)? + "\n")),
        OutputFormat::Human => out(&report::human(r, st)),
    }
}

/// The format a document is written in: the decoded inner format where there is one.
fn document_format(n: &crate::normalize::Normalizer) -> Format {
    match n.decode.last() {
        Some(Decode::Json) => Format::Json,
        Some(Decode::Yaml) => Format::Yaml,
        Some(Decode::Toml) => Format::Toml,
        Some(Decode::Base64) => Format::Text,
        None => n.format,
    }
}

fn approve(
    plan: Arc<Plan>,
    store: &mut dyn crate::store::Store,
    node: &str,
    config: Option<String>,
    to: &ApproveTarget,
    st: Style,
) -> Result<u8> {
    let rt = runtime()?;
    let opts = ScanOptions {
        node: Some(node.to_string()),
        config: config.clone(),
        keep_documents: true,
        ..Default::default()
    };
    // Live content is redacted before it is written: secrets never land in a baseline file.
    let (output, _) = memory::scan(&rt, plan.clone(), store, opts, false, false)?;
    let node_def = plan
        .node(node)
        .ok_or_else(|| anyhow!("no node named `{node}`"))?;
    let mut failed = Vec::new();
    let mut text = String::new();
    for t in &output.targets {
        let Some(doc) = &t.document else {
            let why = t
                .findings
                .first()
                .map(|f| f.message.clone())
                .unwrap_or_default();
            failed.push(format!("cannot approve {}/{}: {why}", t.node, t.config));
            continue;
        };
        let Some(cfg) = plan.config(&t.config) else {
            continue;
        };
        let existing = plan
            .baselines
            .configs
            .get(&t.config)
            .and_then(|c| c.resolve(node_def));
        let format = match (existing, to) {
            (Some((_, f)), _) if f.format != Format::Text || cfg.normalizer.output_is_text() => {
                // Keep the format of the file already in effect when writing that same scope.
                f.format
            }
            _ => document_format(&cfg.normalizer),
        };
        let path = baseline::target_path(
            &plan.root.join("baselines"),
            &t.config,
            node_def,
            to,
            existing,
            format,
        );
        let format = path
            .extension()
            .and_then(|e| e.to_str())
            .and_then(Format::from_extension)
            .map(|f| {
                if cfg.normalizer.output_is_text() {
                    Format::Text
                } else {
                    f
                }
            })
            .unwrap_or(format);
        let new_text = baseline::render(doc, format);
        let old_text = std::fs::read_to_string(&path).unwrap_or_default();
        if old_text == new_text {
            text.push_str(&format!(
                "{}/{}: {} already holds the live config\n",
                t.node,
                t.config,
                path.display()
            ));
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        // Write beside and rename, so a crash never leaves a half-written baseline.
        let tmp = path.with_extension("plumb-tmp");
        std::fs::write(&tmp, &new_text)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        // The approval is a new baseline version: the one it replaces is superseded from now on.
        if let Ok(written) = crate::normalize::parse(format, new_text.as_bytes()) {
            let content = written.canonical_text();
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            store.record_baselines(
                &[crate::store::BaselineVersion {
                    file: path
                        .strip_prefix(&plan.root)
                        .unwrap_or(&path)
                        .display()
                        .to_string(),
                    config: t.config.clone(),
                    hash: blake3::hash(content.as_bytes()).to_hex().to_string(),
                    text: matches!(written, crate::normalize::Document::Text(_)),
                    content,
                    first_seen: now.clone(),
                    superseded_at: None,
                }],
                &now,
            )?;
        }
        let diff = similar::TextDiff::from_lines(&old_text, &new_text)
            .unified_diff()
            .context_radius(3)
            .header(
                &if old_text.is_empty() {
                    "/dev/null".to_string()
                } else {
                    format!("a/{}", path.display())
                },
                &format!("b/{}", path.display()),
            )
            .to_string();
        text.push_str(&report::paint_diff(&diff, st));
        text.push_str(&format!("wrote {}\n", path.display()));
    }
    out(&text)?;
    if !failed.is_empty() {
        for f in &failed {
            eprintln!("plumb: {f}");
        }
        return Ok(2);
    }
    Ok(0)
}

fn demo(config_path: &std::path::Path, format: OutputFormat, st: Style) -> Result<u8> {
    let t0 = std::time::Instant::now();
    let mut plan = load(config_path).with_context(|| {
        format!(
            "the demo uses the repository's own {} (run it from the repository root)",
            config_path.display()
        )
    })?;
    let rt = runtime()?;
    let fleet = rt
        .block_on(sim::start(sim::demo::specs(&plan.nodes), None))
        .context("cannot start the simulated fleet")?;
    for n in &mut plan.nodes {
        if let Some(addr) = fleet.addr(&n.name) {
            n.vars.insert("addr".into(), addr.to_string());
        }
    }
    let plan = Arc::new(plan);
    let human = format == OutputFormat::Human;
    // A fresh store in memory: the demo neither reads nor changes ./.plumb.
    let mut store = crate::store::sqlite::SqliteStore::in_memory()?;
    seed_superseded_baseline(&plan, &mut store)?;
    if human {
        let mut intro = format!(
            "plumb demo: {} simulated nodes on loopback, {} configs, {} rules; planted:\n",
            fleet.nodes.len(),
            plan.configs.len(),
            plan.rules.rules.len()
        );
        for (n, what) in sim::demo::DEVIATIONS {
            intro.push_str(&format!("  - {n}: {what}\n"));
        }
        intro.push_str("\n== scan 1: the first scan of the fleet ==\n");
        out(&intro)?;
    }
    let (first, _) = memory::scan(
        &rt,
        plan.clone(),
        &mut store,
        ScanOptions::default(),
        true,
        false,
    )?;
    if human {
        print_report(&first.report, format, st)?;
        let mut mid = String::from("\n== between the scans ==\n");
        for (n, what) in sim::demo::ROUND_TWO {
            mid.push_str(&format!("  - {n}: {what}\n"));
        }
        mid.push_str("\n== scan 2 ==\n");
        out(&mid)?;
    }
    sim::demo::round_two(&fleet, &plan.nodes);
    let (second, _) = memory::scan(
        &rt,
        plan.clone(),
        &mut store,
        ScanOptions::default(),
        true,
        false,
    )?;
    print_report(&second.report, format, st)?;
    if human {
        out(&format!(
            "demo finished in {:.2} s; `plumb audit` exits {} for this result\n",
            t0.elapsed().as_secs_f64(),
            second.report.exit_code(Severity::Low)
        ))?;
    }
    drop(fleet);
    Ok(0)
}

/// Record, as if seen yesterday, the sysctl baseline the fleet was moved away from, so the demo can show a
/// regression by value.
fn seed_superseded_baseline(plan: &Plan, store: &mut dyn crate::store::Store) -> Result<()> {
    let key = store.secret_key()?;
    let red = crate::redact::Redactor::new(key, &plan.redact)
        .map_err(|_| anyhow!("[redact] is invalid"))?;
    let (file, k, v) = sim::demo::SUPERSEDED_SYSCTL;
    let Some(mut old) = plan
        .baselines
        .versions(&plan.root, Some(&red))
        .into_iter()
        .find(|x| x.file == file)
    else {
        return Ok(());
    };
    let mut tree: serde_json::Value = serde_json::from_str(&old.content)?;
    tree[k] = serde_json::Value::String(v.to_string());
    old.content = crate::normalize::Document::Tree(tree).canonical_text();
    old.hash = blake3::hash(old.content.as_bytes()).to_hex().to_string();
    let yesterday = (chrono::Utc::now() - chrono::Duration::days(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    store.record_baselines(&[old], &yesterday)?;
    Ok(())
}
