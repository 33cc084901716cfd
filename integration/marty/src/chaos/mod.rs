//! `marty chaos run`: scenarios of traffic and expectations against a live Envoy.

mod local;
mod report;
mod runner;
pub mod scenario;
mod timeline;
mod traffic;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use crate::source::parse_env;

#[derive(Subcommand)]
pub enum ChaosCommand {
    /// Run scenario files (or every *.yaml of a directory); exit 0 only when every
    /// expectation held.
    Run(Box<RunArgs>),
    /// Read scenario files and report what is wrong with them, without running anything.
    Check {
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
    },
}

#[derive(Args)]
pub struct RunArgs {
    /// Scenario files (YAML, config/chaos-scenario.schema.json) or directories of them.
    #[arg(required = true)]
    scenarios: Vec<PathBuf>,
    /// Base URL the traffic goes to: the Envoy listener with the filter, or a port-forwarded
    /// sidecar (`kubectl port-forward`).
    #[arg(long, required_unless_present = "local", conflicts_with = "local")]
    target: Option<String>,
    /// That Envoy's admin (`http://127.0.0.1:15000` for an Istio sidecar).
    #[arg(long, required_unless_present = "local", conflicts_with = "local")]
    admin: Option<String>,
    /// The next hop's Envoy admin, for expectations with `admin: server`.
    #[arg(long, conflicts_with = "local")]
    server_admin: Option<String>,
    /// The filter's health endpoint path on the target.
    #[arg(long, default_value = "/resilience/health")]
    health_path: String,
    /// Start the local topology (envoy/chaos-caller.yaml → envoy/chaos-server.yaml → test
    /// upstream) and run against it.
    #[arg(long)]
    local: bool,
    /// The module for --local (default: $MARTY_WASM, else the release build).
    #[arg(long, requires = "local")]
    wasm: Option<PathBuf>,
    /// A value for ${NAME} in scenario files; repeatable. The environment is used otherwise.
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_env)]
    vars: Vec<(String, String)>,
    /// Write the report as JSON.
    #[arg(long, value_name = "FILE")]
    report_json: Option<PathBuf>,
    /// Write the report as JUnit XML.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Write one SVG timeline per scenario into DIR.
    #[arg(long, value_name = "DIR")]
    timeline_dir: Option<PathBuf>,
    /// Shorthand: DIR/report.json, DIR/junit.xml and the timelines in DIR.
    #[arg(long, value_name = "DIR")]
    report_dir: Option<PathBuf>,
}

pub fn run(command: ChaosCommand) -> Result<ExitCode> {
    match command {
        ChaosCommand::Run(args) => run_scenarios(*args),
        ChaosCommand::Check { scenarios } => {
            let mut bad = 0;
            for f in scenario_files(&scenarios)? {
                match scenario::load(&f, &BTreeMap::new(), true) {
                    Ok(s) => println!("ok    {}: {} step(s)", f.display(), s.steps.len()),
                    Err(e) => {
                        bad += 1;
                        println!("error {e:#}");
                    }
                }
            }
            Ok(if bad == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn run_scenarios(args: RunArgs) -> Result<ExitCode> {
    let mut vars: BTreeMap<String, String> = args.vars.iter().cloned().collect();
    // Started before anything else: it hands the token to Envoy through the environment.
    let local = if args.local {
        let root = repository_root();
        let local = local::Local::start(&root, args.wasm.clone())?;
        eprintln!("local topology: {}", local.describe());
        vars.entry(local::TOKEN_VAR.to_string())
            .or_insert_with(|| local.token.clone());
        Some(local)
    } else {
        None
    };

    let files = scenario_files(&args.scenarios)?;
    let mut scenarios = Vec::new();
    for f in &files {
        scenarios.push((f.display().to_string(), scenario::load(f, &vars, false)?));
    }

    let target = match &local {
        Some(l) => l.target(),
        None => runner::Target {
            url: args.target.clone().unwrap_or_default(),
            admin: args
                .admin
                .clone()
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_string(),
            server_admin: args
                .server_admin
                .as_ref()
                .map(|a| a.trim_end_matches('/').to_string()),
            health_path: args.health_path.clone(),
        },
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let outcome = runtime.block_on(async {
        let run_all = async {
            let clients = traffic::Clients::new();
            let mut results = Vec::new();
            for (file, s) in &scenarios {
                let result = runner::run(s, file, &target, &clients).await;
                eprintln!(
                    "{} {} ({:.1}s)",
                    if result.passed { "PASS" } else { "FAIL" },
                    result.name,
                    result.duration_s
                );
                results.push(result);
            }
            results
        };
        tokio::select! {
            results = run_all => Ok(results),
            signal = interrupted() => Err(signal),
        }
    });
    runtime.shutdown_background();
    // Stops the local Envoys, also when interrupted: a run never leaves them behind.
    drop(local);
    let results = match outcome {
        Ok(r) => r,
        Err(signal) => {
            eprintln!("interrupted ({signal}); stopped");
            return Ok(ExitCode::from(130));
        }
    };

    print!("{}", report::text(&results));

    let timeline_dir = args
        .timeline_dir
        .clone()
        .or_else(|| args.report_dir.clone());
    let mut timelines = Vec::new();
    if let Some(dir) = &timeline_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        for r in &results {
            let path = dir.join(format!("{}.svg", file_name(&r.name)));
            std::fs::write(&path, timeline::svg(r))
                .with_context(|| format!("write {}", path.display()))?;
            timelines.push(Some(path.display().to_string()));
        }
    }
    let json_path = args
        .report_json
        .clone()
        .or_else(|| args.report_dir.as_ref().map(|d| d.join("report.json")));
    if let Some(path) = json_path {
        write(
            &path,
            &serde_json::to_string_pretty(&report::json(&results, &timelines))?,
        )?;
    }
    let junit_path = args
        .junit
        .clone()
        .or_else(|| args.report_dir.as_ref().map(|d| d.join("junit.xml")));
    if let Some(path) = junit_path {
        write(&path, &report::junit(&results))?;
    }
    if let Some(dir) = &args.report_dir {
        eprintln!("report written to {}", dir.display());
    }
    Ok(if results.iter().all(|r| r.passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Resolves on Ctrl-C or SIGTERM, naming which.
async fn interrupted() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

fn scenario_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("read {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            found.sort();
            if found.is_empty() {
                bail!("{}: no *.yaml scenario in it", p.display());
            }
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

/// The repository whose `envoy/chaos-*.yaml` the local topology runs: the current directory
/// when it has them, else the one this binary was built from.
fn repository_root() -> PathBuf {
    let here = PathBuf::from(".");
    if here.join("envoy/chaos-caller.yaml").is_file() {
        here
    } else {
        marty_integration::workspace_root()
    }
}

fn file_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
