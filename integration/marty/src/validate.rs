//! `marty validate`: runs the filter's own parser over every configuration found and prints
//! the verdict as the filter would log it.

use std::path::PathBuf;

use marty_resilience_core::config::Settings;
use marty_resilience_core::routes;

use crate::source::{self, merged_env, PluginSource};

/// What the filter logs when it refuses a configuration (filter/wasm/src/lib.rs), so a line
/// of `marty validate` can be searched for in Envoy's log as it is.
pub const REJECT_PREFIX: &str = "invalid marty-resilience configuration: ";

/// `println!` that ignores a closed pipe (`marty validate ... | head`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Default)]
pub struct Summary {
    pub accepted: usize,
    pub rejected: usize,
    pub unreadable: usize,
}

/// Validates `files`; prints one line per configuration and returns the counts.
pub fn run(files: &[PathBuf], env: &[(String, String)], quiet: bool) -> Summary {
    let mut summary = Summary::default();
    for file in files {
        let contents = match source::read(file) {
            Ok(c) => c,
            Err(e) => {
                out!("error {}: {e:#}", file.display());
                summary.unreadable += 1;
                continue;
            }
        };
        if contents.sources.is_empty() && !quiet {
            out!(
                "skip  {}: no marty-resilience configuration (no WasmPlugin of the filter, no Wasm \
                 filter with root_id \"marty_resilience\")",
                file.display()
            );
        }
        for source in &contents.sources {
            match check(source, env) {
                Verdict::Accepted {
                    summary: text,
                    warnings,
                } => {
                    summary.accepted += 1;
                    if source.documented_error.is_some() {
                        out!(
                            "warn  {}: accepted, but the case documents a rejection",
                            source.location
                        );
                    }
                    if !quiet {
                        out!("ok    {}: {text}", source.location);
                    }
                    for w in warnings {
                        out!("warn  {}: {w}", source.location);
                    }
                }
                Verdict::Rejected(message) => {
                    summary.rejected += 1;
                    out!("{}: {REJECT_PREFIX}{message}", source.location);
                    if let Some(documented) =
                        source.documented_error.as_ref().filter(|d| **d != message)
                    {
                        out!(
                            "warn  {}: the case documents a different error: {documented}",
                            source.location
                        );
                    }
                }
                Verdict::Unreadable(message) => {
                    summary.unreadable += 1;
                    out!("error {}: {message}", source.location);
                }
            }
        }
    }
    summary
}

pub enum Verdict {
    Accepted {
        summary: String,
        warnings: Vec<String>,
    },
    /// The filter's own error text (what follows [`REJECT_PREFIX`] in its log).
    Rejected(String),
    Unreadable(String),
}

pub fn check(source: &PluginSource, cli_env: &[(String, String)]) -> Verdict {
    if let Some(why) = &source.unreadable {
        return Verdict::Unreadable(why.clone());
    }
    let env = merged_env(source, cli_env);
    let settings = match Settings::parse(&source.config, &env) {
        Ok(s) => s,
        Err(e) => return Verdict::Rejected(e.to_string()),
    };
    let mut warnings = Vec::new();
    for name in &source.host_env {
        if !env.iter().any(|(k, _)| k == name) {
            warnings.push(format!(
                "{name} comes from the proxy's environment; checked without it (pass --env {name}=...)"
            ));
        }
    }
    // The filter accepts a configuration whose route metadata is bad, and ignores that
    // metadata per request (logging why): worth a warning, not a rejection.
    for (route, metadata) in &source.route_metadata {
        if let Some(e) = routes::resolve(&settings, route, Some(metadata)).metadata_error {
            warnings.push(format!(
                "route {route:?}: metadata the filter will ignore (and log): {e}"
            ));
        }
    }
    let summary = format!(
        "accepted: service {:?}, environment {}, {} route(s) in the plugin JSON{}",
        settings.service_name,
        settings.environment.name(),
        settings.routes.len(),
        if source.route_metadata.is_empty() {
            String::new()
        } else {
            format!(", {} with route metadata", source.route_metadata.len())
        }
    );
    Verdict::Accepted { summary, warnings }
}
