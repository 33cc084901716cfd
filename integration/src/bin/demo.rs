//! `./scripts/demo`'s traffic driver: tells the circuit breaker's story against an Envoy
//! running `envoy/demo.yaml` (see `marty_integration::demo`).
//!
//! Usage: demo [--front PORT] [--admin PORT] [--pacing-ms MS]

use std::process::ExitCode;
use std::time::Duration;

use marty_integration::demo::{self, Options};

fn main() -> ExitCode {
    let opts = match parse(std::env::args().skip(1)) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("demo: {e}\nusage: demo [--front PORT] [--admin PORT] [--pacing-ms MS]");
            return ExitCode::from(2);
        }
    };
    match demo::run(&opts) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\ndemo FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut opts = Options::new(10000, 9901);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--front" => opts.front_port = port(&value()?)?,
            "--admin" => opts.admin_port = port(&value()?)?,
            "--pacing-ms" => {
                let ms: u64 = value()?.parse().map_err(|e| format!("--pacing-ms: {e}"))?;
                opts.pacing = Duration::from_millis(ms);
            }
            "-h" | "--help" => return Err("help".into()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(opts)
}

fn port(s: &str) -> Result<u16, String> {
    s.parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("not a port: {s:?}"))
}
