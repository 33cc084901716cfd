//! The bootstraps in `envoy/`: each one passes `envoy --mode validate` (which also loads the
//! module and runs its configuration, so a plugin JSON the filter rejects fails here), and the
//! demo's story plays out against a real Envoy running `envoy/demo.yaml`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use marty_integration::{demo, envoy, workspace_root, EnvoyConfig};

/// The module path the bootstraps name, relative to the repository root.
const WASM_IN_YAML: &str = "target/wasm32-wasip1/release/marty_resilience.wasm";

fn envoy_bin() -> PathBuf {
    EnvoyConfig::new(0).resolved_envoy_bin()
}

/// Panics with what to do when the module the bootstraps name is not built.
fn require_module() {
    EnvoyConfig::new(0)
        .wasm_path(workspace_root().join(WASM_IN_YAML))
        .resolved_wasm_path();
}

/// `envoy/*.yaml`, relative to the repository root, sorted.
fn bootstraps() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("envoy"))
        .expect("read envoy/")
        .map(|e| e.expect("envoy/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .map(|p| p.strip_prefix(&root).expect("under the root").to_path_buf())
        .collect();
    files.sort();
    files
}

/// `envoy --mode validate -c <file>` from the repository root, where the bootstraps' relative
/// module path resolves.
fn validate(file: &Path) -> Output {
    Command::new(envoy_bin())
        .args(["--mode", "validate", "--log-level", "info", "-c"])
        .arg(file)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run envoy --mode validate: {e}"))
}

fn output_text(out: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the startup listing of extensions (lines indented after the source location).
    text.lines()
        .filter(|l| !l.contains("]   "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_bootstrap_in_envoy_dir_validates() {
    require_module();
    let files = bootstraps();
    for expected in ["envoy/demo.yaml", "envoy/envoy.yaml"] {
        assert!(
            files.iter().any(|f| f == Path::new(expected)),
            "{expected} missing; found {files:?}"
        );
    }
    for file in &files {
        let out = validate(file);
        let text = output_text(&out);
        assert!(
            out.status.success(),
            "{} does not validate ({}):\n{text}",
            file.display(),
            out.status
        );
        // Validation instantiates a local module: its configure log proves the plugin JSON
        // (and the VM's MARTY_RESILIENCE_* variables) were accepted, not merely parsed by
        // Envoy. A module fetched over HTTP (`code.remote`) is not fetched in validate mode;
        // remote_loading.rs runs envoy/remote.yaml against a module server instead.
        let remote = text.contains("Wasm remote code fetch is unstable");
        assert!(
            remote || text.contains("configured: service"),
            "{}: the module's configure log is missing:\n{text}",
            file.display()
        );
    }
}

#[test]
fn validation_rejects_a_plugin_configuration_the_filter_rejects() {
    // Guards the test above: validate mode must run the module's configuration, or a broken
    // plugin JSON in envoy/*.yaml would pass unnoticed.
    require_module();
    let yaml = read_bootstrap("envoy/demo.yaml");
    let broken = replace_exactly(
        &yaml,
        "\"failure_threshold\": 3",
        "\"failure_threshold\": 0",
        1,
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, broken).expect("write broken bootstrap");
    let out = validate(&path);
    let text = output_text(&out);
    assert!(
        !out.status.success(),
        "a broken plugin configuration validated:\n{text}"
    );
    assert!(
        text.contains("routes.users.circuit_breaker.failure_threshold"),
        "the filter's error names the field:\n{text}"
    );
}

#[test]
fn demo_story_plays_out() {
    require_module();
    let yaml = read_bootstrap("envoy/demo.yaml");
    // The demo's fixed ports could collide with another test or a running demo: move them.
    let mut last_error = String::new();
    for _ in 0..3 {
        let [front, upstream, admin] = free_ports();
        let mut bootstrap = replace_exactly(
            &yaml,
            "port_value: 10000",
            &format!("port_value: {front}"),
            1,
        );
        bootstrap = replace_exactly(
            &bootstrap,
            "port_value: 10001",
            &format!("port_value: {upstream}"),
            2,
        );
        bootstrap = replace_exactly(
            &bootstrap,
            "port_value: 9901",
            &format!("port_value: {admin}"),
            1,
        );
        let dir = tempfile::Builder::new()
            .prefix("marty-demo-test-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().join("demo.yaml");
        std::fs::write(&path, &bootstrap).expect("write demo bootstrap");
        let log = dir.path().join("envoy.log");

        let envoy = match RunningEnvoy::start(&path, &log, admin) {
            Ok(envoy) => envoy,
            // A port taken between picking and binding: pick again.
            Err(e) if e.contains("ddress already in use") => {
                last_error = e;
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        let summary = demo::run(&demo::Options::new(front, admin)).unwrap_or_else(|e| {
            panic!(
                "the demo story did not play out: {e}\n--- envoy log ---\n{}",
                envoy.log_tail()
            )
        });
        assert!(
            summary.opened >= 2,
            "opened, then reopened by the failed probe: {summary:?}"
        );
        assert!(summary.half_opened >= 2, "{summary:?}");
        assert_eq!(
            summary.closed, 1,
            "closed again after recovery: {summary:?}"
        );
        assert!(summary.rejected >= 5, "rejected locally: {summary:?}");
        assert_eq!(
            summary.upstream_during_rejections, 0,
            "no rejected request reached the upstream: {summary:?}"
        );
        // Phase (e): one abort asked for with the trigger header, answered by the filter (the
        // story itself fails unless the breaker is still CLOSED after it).
        assert_eq!(summary.faults_aborted, 1, "one injected abort: {summary:?}");
        assert_eq!(
            summary.upstream_during_fault, 0,
            "the injected abort never reached the upstream: {summary:?}"
        );
        assert_eq!(
            summary.failures_during_fault, 0,
            "the injected abort never counted toward the breaker: {summary:?}"
        );
        return;
    }
    panic!("could not start Envoy on free ports: {last_error}");
}

fn read_bootstrap(relative: &str) -> String {
    let path = workspace_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[track_caller]
fn replace_exactly(text: &str, from: &str, to: &str, count: usize) -> String {
    let found = text.matches(from).count();
    assert_eq!(
        found, count,
        "expected {from:?} {count} time(s) in the bootstrap, found {found}"
    );
    text.replace(from, to)
}

/// Three distinct ports that were free a moment ago (all held at once while picking).
fn free_ports() -> [u16; 3] {
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect();
    [ports[0], ports[1], ports[2]]
}

/// Envoy run from the repository root on a bootstrap file; killed on drop.
struct RunningEnvoy {
    child: Child,
    log: PathBuf,
}

impl RunningEnvoy {
    fn start(bootstrap: &Path, log: &Path, admin_port: u16) -> Result<RunningEnvoy, String> {
        let file = std::fs::File::create(log).expect("create envoy log");
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(bootstrap)
            .args([
                "--concurrency",
                "2",
                "--disable-hot-restart",
                "--log-level",
                "info",
            ])
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log handle"))
            .stderr(file)
            .spawn()
            .map_err(|e| format!("spawn envoy: {e}"))?;
        let mut envoy = RunningEnvoy {
            child,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = envoy.child.try_wait().expect("wait on envoy") {
                return Err(format!(
                    "envoy exited during startup ({status}):\n{}",
                    envoy.log_tail()
                ));
            }
            let why = match envoy::admin_ready(admin_port) {
                Ok(()) => return Ok(envoy),
                Err(why) => why,
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "envoy not ready within 30 s: {why}\n{}",
                    envoy.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.contains("]   ")).collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for RunningEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
