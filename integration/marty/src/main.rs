//! `marty`: check a marty-resilience configuration before it ships, see what policy each
//! route really gets, and run resilience scenarios against a live Envoy.

mod chaos;
mod explain;
mod source;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use serde_json::Value;

#[derive(Parser)]
#[command(name = "marty", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check configurations with the filter's own parser: exit 0 when the filter would accept
    /// every one, 1 otherwise (each error printed as the filter logs it).
    ///
    /// A FILE is a plugin JSON, an Envoy bootstrap (YAML or JSON) with the Wasm filter, or
    /// Kubernetes YAML with Istio WasmPlugins (pluginConfig). Route metadata found next to the
    /// filter is checked too: the filter ignores bad metadata at run time, so it is a warning.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// A VM variable (MARTY_RESILIENCE_*), as the proxy would pass it; repeatable.
        #[arg(long = "env", value_name = "KEY=VALUE", value_parser = source::parse_env)]
        env: Vec<(String, String)>,
        /// Print only errors and warnings.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Show the policy each bucket resolves to, and where every value came from.
    Explain {
        file: PathBuf,
        /// Also explain this Envoy route name (repeatable); every route of the plugin JSON
        /// and the default bucket are always shown.
        #[arg(long = "route", value_name = "NAME")]
        routes: Vec<String>,
        /// Route metadata (filter_metadata["marty.resilience"]) for ROUTE, as JSON; repeatable.
        #[arg(long = "metadata", value_name = "ROUTE=JSON", value_parser = parse_metadata)]
        metadata: Vec<(String, Value)>,
        #[arg(long = "env", value_name = "KEY=VALUE", value_parser = source::parse_env)]
        env: Vec<(String, String)>,
        /// Which configuration of FILE, when it holds several (1 = the first).
        #[arg(long, default_value_t = 1)]
        document: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run resilience scenarios.
    #[command(subcommand)]
    Chaos(chaos::ChaosCommand),
    /// Print a shell completion script (e.g. `marty completions bash > ~/.local/share/bash-completion/completions/marty`).
    Completions { shell: clap_complete::Shell },
}

fn parse_metadata(arg: &str) -> Result<(String, Value), String> {
    let (route, json) = arg
        .split_once('=')
        .ok_or_else(|| format!("expected ROUTE=JSON, got {arg:?}"))?;
    let value = serde_json::from_str(json).map_err(|e| format!("{route}: not JSON: {e}"))?;
    Ok((route.to_string(), value))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("marty: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { files, env, quiet } => {
            let summary = validate::run(&files, &env, quiet);
            if summary.rejected + summary.unreadable > 0 {
                eprintln!(
                    "{} accepted, {} rejected, {} unreadable",
                    summary.accepted, summary.rejected, summary.unreadable
                );
                Ok(ExitCode::from(1))
            } else {
                Ok(ExitCode::SUCCESS)
            }
        }
        Command::Explain {
            file,
            routes,
            metadata,
            env,
            document,
            json,
        } => {
            let contents = source::read(&file)?;
            let count = contents.sources.len();
            let Some(source) = contents.sources.get(document.saturating_sub(1)) else {
                anyhow::bail!(
                    "{}: configuration {document} asked for, {count} found",
                    file.display()
                );
            };
            let explained = explain::explain(&explain::Request {
                source,
                env: &env,
                routes: &routes,
                metadata: &metadata,
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&explained)?);
            } else {
                print!("{}", explain::table(&explained));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Chaos(command) => chaos::run(command),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "marty", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    }
}
