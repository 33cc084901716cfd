#!/usr/bin/env python3
"""Benchmark of the marty-resilience Wasm filter against Envoy without it (stdlib only).

Run through ./scripts/bench, which installs Envoy, wrk, valgrind and the toolchain and builds the
module; this file only measures. Topology, all on 127.0.0.1 over HTTP/1.1 keep-alive:

    load generator -> front Envoy (variant) -> upstream Envoy (direct_response 200, --concurrency 1;
                                               503 on /fail, used to trip the breaker of `open`)

Every front Envoy has the same route table: `marty_health` (prefix /resilience/) and `bench`
(prefix /, the route every measured request takes), both to the upstream. Variants differ only in
the HTTP filter chain and the plugin JSON (VARIANTS below: the rows of issue 8's table).

Measurements:
  1. callgrind (deterministic, gated): user-space instructions (Ir) of the whole front Envoy per
     request at --concurrency 1, N sequential requests on one keep-alive connection, every variant
     in the same run as `base` (Envoy alone).
  2. wall clock (reported, not gated: it wobbles 10-40 % on a shared 2-vCPU machine): interleaved
     rounds of `base` and `breaker`, one wrk burst each per round in rotating order; ratios are
     paired with base of the same round.
  3. RSS: base and breaker at 1, 2 and 4 workers (medians of several starts); then flatness: the
     `breaker` front Envoy serves 10^6 requests (wrk) after a warm-up, its RSS sampled after every burst.

--check exits 1 when a gated goal is missed or could not be measured (GOALS and report()).
"""

from __future__ import annotations

import argparse
import atexit
import collections
import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROUTE = "bench"  # the Envoy route every measured request takes, listed in the plugin JSON `routes`
HEALTH_ROUTE = "marty_health"  # the Envoy route the operator gives `health.route`
HEALTH_PREFIX = "/resilience/"
HEALTH_PATH = "/resilience/health"
FAIL_PATH = "/fail"  # the upstream answers 503 here: a breaker failure on the bench route
HCM_PREFIX = "http.ingress."
UPSTREAM_RQ = "cluster.upstream.upstream_rq_total"
MODULE_GOAL_BYTES = 300 * 1024
MiB = 1024 * 1024

BREAKER = {"failure_threshold": 5, "recovery_timeout": 30}
BULKHEAD = {"max_concurrent_requests": 1_000_000}  # never reached: prices the cap, not a rejection
FAULTS_AT_RATE_0 = {"enabled": True, "base_failure_rate": 0.0, "delay": {"rate": 0.0},
                    "header_trigger": {"enabled": True}}
HEALTH = {"enabled": True, "route": HEALTH_ROUTE}
RETRY = {"enabled": True, "max_attempts": 3}
# One upstream failure opens it, and it stays open for the whole run.
BREAKER_TRIPS_AT_ONCE = {"failure_threshold": 1, "recovery_timeout": 86400, "max_recovery_timeout": 86400}
ABORT_EVERY_REQUEST = {"enabled": True, "base_failure_rate": 1.0, "abort": {"http_status": 503},
                       "delay": {"rate": 0.0}}


def plugin(route: dict, health: dict | None = None) -> dict:
    p: dict = {"service_name": "bench", "routes": {ROUTE: route}}
    if health is not None:
        p["health"] = health
    return p


@dataclasses.dataclass(frozen=True)
class Goal:
    kind: str  # "ratio": net Ir/request ≤ limit × base; "over": net Ir/request − breaker's ≤ limit
    limit: float
    bold: bool = False

    def text(self) -> str:
        t = f"≤ {self.limit:.2f}" if self.kind == "ratio" else f"≤ +{self.limit / 1e3:g}k"
        return f"**{t}**" if self.bold else t


@dataclasses.dataclass(frozen=True)
class Variant:
    label: str  # first column of the table
    plugin: dict | None  # None: no filter at all
    goal: Goal | None = None
    # How the measured requests are answered: "upstream" (200 from the upstream), "breaker" (503 by
    # the open breaker) or "abort" (503 by an injected fault).
    answer: str = "upstream"
    probes: tuple[str, ...] = ()  # after the measurement, prove these features live: "health", "faults", "retry"
    bench_route_name: str = ROUTE  # diagnostics only: "" (unnamed) or a name absent from `routes`
    bucket: str = ROUTE  # the filter's stats bucket the requests land in
    module: str = "filter"  # "filter" or "noop" (diagnostics)
    # Request headers the bootstrap registers as O(1) inline headers (`inline_headers`; diagnostics).
    inline_headers: tuple[str, ...] = ()


VARIANTS = {
    "base": Variant("Envoy alone", None),
    "nothing": Variant("nothing (breaker `enabled: false`)", plugin({"circuit_breaker": {"enabled": False}}),
                       Goal("ratio", 1.23)),
    "breaker": Variant("breaker, closed", plugin({"circuit_breaker": dict(BREAKER)}), Goal("ratio", 1.30, True)),
    "+bulkhead": Variant("+ `max_concurrent_requests`", plugin({"circuit_breaker": dict(BREAKER, **BULKHEAD)}),
                         Goal("over", 1_500)),
    "+faults": Variant("+ fault injection enabled, rate 0, header trigger on, no header sent",
                       plugin({"circuit_breaker": dict(BREAKER), "failure_injection": FAULTS_AT_RATE_0}),
                       Goal("over", 5_000), probes=("faults",)),
    "+health": Variant("+ health endpoint enabled (request not for it)",
                       plugin({"circuit_breaker": dict(BREAKER)}, health=HEALTH), Goal("over", 1_000),
                       probes=("health",)),
    "+retry": Variant("+ retry enabled (`max_attempts: 3`)", plugin({"circuit_breaker": dict(BREAKER), "retry": RETRY}),
                      Goal("over", 25_000), probes=("retry",)),
    "everything": Variant("everything above at once",
                          plugin({"circuit_breaker": dict(BREAKER, **BULKHEAD), "failure_injection": FAULTS_AT_RATE_0,
                                  "retry": RETRY}, health=HEALTH),
                          Goal("ratio", 1.53, True), probes=("health", "faults", "retry")),
    "open": Variant("breaker open: local 503", plugin({"circuit_breaker": BREAKER_TRIPS_AT_ONCE}),
                    Goal("ratio", 0.97), answer="breaker"),
    "abort": Variant("injected abort: local 503",
                     plugin({"circuit_breaker": dict(BREAKER), "failure_injection": ABORT_EVERY_REQUEST}),
                     Goal("ratio", 0.97), answer="abort"),
}
# Diagnostic variants (--diag, callgrind, not gated) price the dispatch floor, route resolution and the
# trigger header registered inline.
DIAG_VARIANTS = {
    "diag_noop": Variant("diag: empty proxy-wasm filter on the Rust SDK (scripts/bench.d/noop): dispatch floor", {},
                         bucket="", module="noop"),
    "diag_unnamed": Variant("diag: breaker, but the bench route has no name (bucket of its cluster)",
                            plugin({"circuit_breaker": dict(BREAKER)}), bench_route_name="", bucket="upstream"),
    "diag_unlisted": Variant("diag: breaker, bench route named but not in `routes` (its own bucket)",
                             plugin({"circuit_breaker": dict(BREAKER)}), bench_route_name="other_route",
                             bucket="other_route"),
}
# The deployment tip of docs/faults.md: the trigger header registered inline in the bootstrap, so
# that reading it does not make Envoy build the request header map's dictionary.
TRIGGER_INLINE = ("x-failure-inject",)
DIAG_VARIANTS["diag_faults_inline"] = Variant(
    "diag: + faults as `+faults`, trigger header registered inline (bootstrap `inline_headers`)",
    VARIANTS["+faults"].plugin, inline_headers=TRIGGER_INLINE)
DIAG_VARIANTS["diag_everything_inline"] = Variant(
    "diag: everything as `everything`, trigger header registered inline (bootstrap `inline_headers`)",
    VARIANTS["everything"].plugin, inline_headers=TRIGGER_INLINE)
ALL_VARIANTS = {**VARIANTS, **DIAG_VARIANTS}
WALL_VARIANTS = ["base", "breaker"]

# Per-route counters that stay 0 unless the variant's answer moves them, and the filter's own errors.
TRIGGER_LEAVES = ("failure_total", "rejected_total", "concurrency_rejected_total", "circuit_opened_total",
                  "faults_aborted_total", "faults_delayed_total", "faults_overflow_total",
                  "fault_header_rejected_total", "retry_attempts_total", "retries_suppressed_breaker_total",
                  "retries_suppressed_budget_total")
FILTER_ERROR_COUNTERS = ("cas_exhausted_total", "shared_data_errors_total", "state_reset_total",
                         "route_config_rejected_total")

PIDS: dict[int, subprocess.Popen] = {}
PIDFILE: Path | None = None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    pass


def stat_name(bucket: str, leaf: str) -> str:
    return f"wasmcustom.marty_resilience.route.{bucket}.{leaf}"


# ---------------------------------------------------------------- processes


def _write_pidfile() -> None:
    if PIDFILE is not None:
        PIDFILE.write_text("".join(f"{p}\n" for p in PIDS))


def spawn(cmd: list[str], logfile: Path, cpus: str | None = None) -> subprocess.Popen:
    if cpus is not None:
        cmd = ["taskset", "-c", cpus, *cmd]
    with open(logfile, "ab") as out:
        # Own session: a Ctrl-C reaches only us; cleanup() then stops the children by pid.
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    PIDS[proc.pid] = proc
    _write_pidfile()
    return proc


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
    PIDS.pop(proc.pid, None)
    _write_pidfile()


def cleanup() -> None:
    for proc in list(PIDS.values()):
        try:
            stop(proc, grace=5.0)
        except Exception as e:  # noqa: BLE001 - best effort on the way out
            log(f"cleanup: pid {proc.pid}: {e}")


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


# ---------------------------------------------------------------- HTTP helpers


def http_get(port: int, path: str, timeout: float = 5.0, headers: dict | None = None) -> tuple[int, str, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace"), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace"), {k.lower(): v for k, v in e.headers.items()}


def stats(admin: int) -> dict[str, int]:
    code, body, _ = http_get(admin, "/stats", timeout=30)
    if code != 200:
        raise BenchError(f"admin :{admin} /stats answered {code}")
    out = {}
    for line in body.splitlines():
        name, _, value = line.partition(": ")
        if value.isdigit():
            out[name] = int(value)
    return out


class KeepAliveClient:
    """Exactly N sequential requests on one HTTP/1.1 connection; checks every status."""

    def __init__(self, port: int, timeout: float = 60.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def _response(self) -> int:
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise BenchError("connection closed by the front Envoy")
            self.buf += chunk
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise BenchError("connection closed mid-body")
            rest += chunk
        self.buf = rest[length:]
        return status

    def get(self, path: str = "/") -> int:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nhost: bench\r\nuser-agent: bench\r\n\r\n".encode())
        return self._response()

    def run(self, n: int, expect: int, path: str = "/") -> None:
        for i in range(n):
            status = self.get(path)
            if status != expect:
                raise BenchError(f"request {i + 1}/{n} to {path}: status {status}, expected {expect}")

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------- Envoy configs


def sockaddr(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def router() -> dict:
    return {
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
            "dynamic_stats": False,
        },
    }


def hcm(routes: list[dict], http_filters: list[dict]) -> dict:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "ingress",
            "codec_type": "HTTP1",
            "generate_request_id": False,
            "route_config": {
                "name": "local",
                "virtual_hosts": [{"name": "local", "domains": ["*"], "routes": routes}],
            },
            "http_filters": http_filters,
        },
    }


def bootstrap(listener_filters: dict, clusters: list[dict]) -> dict:
    return {
        "admin": {"address": sockaddr(0)},
        "static_resources": {
            "listeners": [
                {"name": "ingress", "address": sockaddr(0), "filter_chains": [{"filters": [listener_filters]}]}
            ],
            "clusters": clusters,
        },
    }


def upstream_config() -> dict:
    def answer(match: dict, status: int) -> dict:
        return {"match": match, "direct_response": {"status": status, "body": {"inline_string": "ok"}}}

    return bootstrap(hcm([answer({"path": FAIL_PATH}, 503), answer({"prefix": "/"}, 200)], [router()]), [])


def wasm_filter(plugin_json: dict, wasm: Path) -> dict:
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "marty_resilience",
                "root_id": "marty_resilience",
                # A VM that fails must show up as 503s, which the checks count.
                "failure_policy": "FAIL_CLOSED",
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": json.dumps(plugin_json),
                },
                "vm_config": {
                    "vm_id": "marty_resilience",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(wasm)}},
                },
            },
        },
    }


def front_config(name: str, upstream_port: int, args) -> dict:
    v = ALL_VARIANTS[name]
    filters = []
    if v.plugin is not None:
        wasm = args.noop_wasm if v.module == "noop" else args.wasm
        if wasm is None:
            raise BenchError(f"{name} needs --noop-wasm")
        filters.append(wasm_filter(v.plugin, wasm))
    filters.append(router())
    # The same route table for every variant: the health route first, then the catch-all.
    health = {"name": HEALTH_ROUTE, "match": {"prefix": HEALTH_PREFIX}, "route": {"cluster": "upstream"}}
    bench = {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}
    if v.bench_route_name:
        bench["name"] = v.bench_route_name
    thresholds = [
        {
            "priority": p,
            "max_connections": 100000,
            "max_pending_requests": 100000,
            "max_requests": 100000,
            "max_retries": 100000,
        }
        for p in ("DEFAULT", "HIGH")
    ]
    cluster = {
        "name": "upstream",
        "type": "STATIC",
        "connect_timeout": "1s",
        "circuit_breakers": {"thresholds": thresholds},
        "load_assignment": {
            "cluster_name": "upstream",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": sockaddr(upstream_port)}}]}],
        },
    }
    config = bootstrap(hcm([health, bench], filters), [cluster])
    if v.inline_headers:
        config["inline_headers"] = [{"inline_header_name": h, "inline_header_type": "REQUEST_HEADER"}
                                    for h in v.inline_headers]
    return config


class Envoy:
    """One Envoy process. The constructor only spawns it; ready() waits for LIVE (bounded)."""

    def __init__(self, name: str, args, config: dict, concurrency: int, cpus: str | None = None,
                 prefix: list[str] | None = None):
        self.name = name
        d = args.out / "envoy"
        d.mkdir(exist_ok=True)
        self.cfg = d / f"{name}.json"
        self.cfg.write_text(json.dumps(config, indent=1))
        self.log = d / f"{name}.log"
        self.addr_file = d / f"{name}.admin"
        self.addr_file.unlink(missing_ok=True)
        cmd = [
            str(args.envoy), "-c", str(self.cfg), "--concurrency", str(concurrency),
            "--disable-hot-restart", "--log-level", "warn", "--log-path", str(self.log),
            "--admin-address-path", str(self.addr_file),
        ]
        self.proc = spawn((prefix or []) + cmd, d / f"{name}.stderr", cpus)
        self.binary = str(Path(args.envoy).resolve())
        self.admin = self.port = 0

    def ready(self, timeout: float = 60.0) -> "Envoy":
        self.admin = self._wait_ready(timeout)
        self.port = self._listener_port()
        return self

    def why(self) -> str:
        """The Envoy log line that best says why it failed (the filter names the rejected field)."""
        lines = []
        for f in (self.log, self.log.with_suffix(".stderr")):
            if f.exists():
                lines += f.read_text(errors="replace").splitlines()
        for pattern in (r"invalid marty-resilience configuration.*", r"wasm log .*", r"\[(critical|error)\].*"):
            hits = [m.group(0) for ln in lines if (m := re.search(pattern, ln))]
            if hits:
                return re.sub(r"^wasm log (marty_resilience )+", "", hits[0]).strip()[:300]
        return (lines[-1][:300] if lines else "no log output")

    def _fail(self, why: str) -> BenchError:
        tail = ""
        for f in (self.log, self.log.with_suffix(".stderr")):
            if f.exists():
                tail += f"\n--- {f} (tail) ---\n" + "\n".join(f.read_text(errors="replace").splitlines()[-30:])
        return BenchError(f"envoy {self.name}: {why}: {self.why()}{tail}")

    def _wait_ready(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        admin = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise self._fail(f"exited with {self.proc.returncode} during start-up")
            if admin is None and self.addr_file.exists():
                text = self.addr_file.read_text().strip()
                if text:
                    admin = int(text.rsplit(":", 1)[1])
            if admin is not None:
                try:
                    code, body, _ = http_get(admin, "/ready", timeout=2)
                    if code == 200 and body.strip() == "LIVE":
                        return admin
                except OSError:
                    pass
            time.sleep(0.1)
        raise self._fail(f"not LIVE after {timeout:.0f} s")

    def _listener_port(self) -> int:
        code, body, _ = http_get(self.admin, "/listeners?format=json")
        if code != 200:
            raise self._fail(f"/listeners answered {code}")
        for status in json.loads(body).get("listener_statuses", []):
            if status.get("name") == "ingress":
                return int(status["local_address"]["socket_address"]["port_value"])
        raise self._fail("no ingress listener")

    def cpu_seconds(self) -> float:
        # utime + stime of the Envoy process (all threads); taskset and nice exec, so the pid is Envoy's.
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise BenchError(f"{self.name}: no VmRSS in /proc/{self.proc.pid}/status")

    def memory_anatomy(self) -> dict[str, int]:
        """Where the RSS is, in bytes (diagnostic; docs/performance.md "What the RSS is made of").

        From /proc/<pid>/smaps: pages of the Envoy binary (V8's code and data are in it, paged
        in once a VM runs), anonymous executable pages (the compiled Wasm code), other mapped
        files, and other anonymous pages. The last is split with Envoy's /memory (tcmalloc):
        `allocator_live` (bytes allocated), `allocator_held` (physical bytes the allocator holds
        beyond them: free pages and per-thread caches, which RSS counts though nothing uses them)
        and `anon_other` (the rest: V8's own heaps, the Wasm linear memories, thread stacks).
        """
        parts = {"envoy_binary": 0, "wasm_code": 0, "other_files": 0, "anon": 0}
        kind = None
        for line in Path(f"/proc/{self.proc.pid}/smaps").read_text().splitlines():
            fields = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                perms, path = fields[1], (fields[5] if len(fields) > 5 else "")
                if path == self.binary:
                    kind = "envoy_binary"
                elif path.startswith("/"):
                    kind = "other_files"
                elif "x" in perms:
                    kind = "wasm_code"
                else:
                    kind = "anon"
            elif fields and fields[0] == "Rss:" and kind is not None:
                parts[kind] += int(fields[1]) * 1024
        code, body, _ = http_get(self.admin, "/memory")
        if code != 200:
            raise self._fail(f"/memory answered {code}")
        memory = json.loads(body)
        live, physical = int(memory["allocated"]), int(memory["total_physical_bytes"])
        parts["allocator_live"] = live
        parts["allocator_held"] = max(physical - live, 0)
        parts["anon_other"] = parts.pop("anon") - physical
        return parts

    def wait_idle(self, timeout: float = 10.0) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while True:
            s = stats(self.admin)
            if s.get(HCM_PREFIX + "downstream_rq_active", 0) == 0 or time.monotonic() > deadline:
                return s
            time.sleep(0.1)

    def stop(self) -> None:
        stop(self.proc, grace=30.0)


# ---------------------------------------------------------------- correctness checks


class Ledger:
    """What the bench sent to one front Envoy and how each request must have been answered."""

    def __init__(self):
        self.sent = 0
        self.upstream = 0  # requests the front Envoy must have sent to the upstream
        self.status = collections.Counter()  # "2xx"/"5xx" -> count
        self.leaves = collections.Counter()  # filter counter leaf -> expected value

    def add(self, n: int, status: int, upstream: bool, **leaves: int) -> None:
        self.sent += n
        self.upstream += n if upstream else 0
        self.status[f"{status // 100}xx"] += n
        for leaf, k in leaves.items():
            self.leaves[leaf] += k


def mismatches(v: Variant, s: dict[str, int], ledger: Ledger | None) -> list[str]:
    """What in the front Envoy's cumulative stats disagrees with the ledger (None: all 2xx, counts from Envoy)."""
    out = []

    def want(name: str, expected: int) -> None:
        if s.get(name, 0) != expected:
            out.append(f"{name} = {s.get(name, 0)}, expected {expected}")

    completed = s.get(HCM_PREFIX + "downstream_rq_completed", 0)
    if ledger is not None:
        want(HCM_PREFIX + "downstream_rq_completed", ledger.sent)
        want(UPSTREAM_RQ, ledger.upstream)
        for cls in ("1xx", "2xx", "3xx", "4xx", "5xx"):
            want(HCM_PREFIX + f"downstream_rq_{cls}", ledger.status[cls])
    else:
        want(HCM_PREFIX + "downstream_rq_2xx", completed)
    if v.plugin is not None and v.bucket and v.module == "filter":
        # The filter saw every request the front Envoy received (including any wrk cut off at the end).
        want(stat_name(v.bucket, "requests_total"), s.get(HCM_PREFIX + "downstream_rq_total", 0))
        expected_leaves = ledger.leaves if ledger is not None else {}
        for leaf in TRIGGER_LEAVES:
            want(stat_name(v.bucket, leaf), expected_leaves.get(leaf, 0))
        for leaf in FILTER_ERROR_COUNTERS:
            want(f"wasmcustom.marty_resilience.{leaf}", 0)
    return out


def settled_stats(e: Envoy, name: str, ledger: Ledger | None, timeout: float = 30.0) -> dict[str, int]:
    """Polls the stats until they agree with the ledger: the filter may flush its counters on its tick."""
    v = ALL_VARIANTS[name]
    deadline = time.monotonic() + timeout
    while True:
        s = e.wait_idle()
        bad = mismatches(v, s, ledger)
        if not bad:
            return s
        if time.monotonic() > deadline:
            raise BenchError(f"{name}: stats disagree with what was sent after {timeout:.0f} s: " + "; ".join(bad))
        time.sleep(0.2)


def probe(name: str, e: Envoy, what: str) -> None:
    """After the measurement: proves a feature of the variant is live, so a silently ignored config is caught."""
    if what == "health":
        code, body, _ = http_get(e.port, HEALTH_PATH, timeout=60)
        if code != 200 or '"overall_healthy"' not in body:
            raise BenchError(f"{name}: {HEALTH_PATH} answered {code} {body[:200]!r}, expected the filter's 200 JSON")
    elif what == "faults":
        code, _, headers = http_get(e.port, "/", timeout=60, headers={"x-failure-inject": "abort=503"})
        if code != 503 or headers.get("x-marty-fault") != "abort":
            raise BenchError(f"{name}: a request with x-failure-inject: abort=503 got {code}, "
                             f"x-marty-fault {headers.get('x-marty-fault')!r}: header trigger not live")
    elif what == "retry":
        before = stats(e.admin).get("cluster.upstream.upstream_rq_retry", 0)
        code, _, _ = http_get(e.port, FAIL_PATH, timeout=60)
        after = stats(e.admin).get("cluster.upstream.upstream_rq_retry", 0)
        if code != 503 or after <= before:
            raise BenchError(f"{name}: {FAIL_PATH} answered {code} with {after - before} Envoy retries: "
                             f"the route's retry policy is not applied")


def open_breaker(name: str, client: KeepAliveClient, ledger: Ledger) -> None:
    """Trips the `open` variant's breaker (failure_threshold 1) with one upstream 503 on the bench route."""
    status = client.get(FAIL_PATH)
    if status != 503:
        raise BenchError(f"{name}: {FAIL_PATH} answered {status}, expected the upstream's 503")
    ledger.add(1, 503, upstream=True, failure_total=1, circuit_opened_total=1)
    deadline = time.monotonic() + 30
    while True:
        status = client.get("/")
        if status == 503:
            ledger.add(1, 503, upstream=False, rejected_total=1)
            return
        if status != 200 or time.monotonic() > deadline:
            raise BenchError(f"{name}: the breaker did not open after an upstream failure (status {status})")
        ledger.add(1, 200, upstream=True)
        time.sleep(0.1)


def send(name: str, client: KeepAliveClient, ledger: Ledger, n: int) -> None:
    """n measured-kind requests, answered the way the variant says, recorded in the ledger."""
    answer = ALL_VARIANTS[name].answer
    if answer == "upstream":
        client.run(n, 200)
        ledger.add(n, 200, upstream=True)
    elif answer == "breaker":
        client.run(n, 503)
        ledger.add(n, 503, upstream=False, rejected_total=n)
    elif answer == "abort":
        client.run(n, 503)
        ledger.add(n, 503, upstream=False, faults_aborted_total=n)
    else:
        raise BenchError(f"{name}: unknown answer {answer}")


# ---------------------------------------------------------------- callgrind


def callgrind_control(*args: str) -> str:
    r = subprocess.run(["callgrind_control", *args], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise BenchError(f"callgrind_control {' '.join(args)} failed: {r.stdout}{r.stderr}")
    return r.stdout


def dump_total(directory: Path, prefix: str, before: set[Path], allow_zero: bool = False) -> int:
    new = sorted(set(directory.glob(prefix + "*")) - before, key=lambda p: p.stat().st_mtime)
    if not new:
        raise BenchError(f"no callgrind dump {prefix}* appeared")
    total = 0
    for f in new:  # one file unless --separate-threads; sum to be safe
        totals = [line for line in f.read_text(errors="replace").splitlines() if line.startswith("totals:")]
        if not totals:
            raise BenchError(f"{f}: no totals line")
        total += int(totals[-1].split()[1])
    if total <= 0 and not allow_zero:
        raise BenchError(f"callgrind counted nothing in {', '.join(map(str, new))}")
    return total


def counted(pid: str, cgdir: Path, prefix: str, body) -> tuple[int, float]:
    """Ir of the process while body() runs (instrumentation on only then), and the seconds it took."""
    before = set(cgdir.glob(prefix + "*"))
    callgrind_control("-z", pid)
    callgrind_control("-i", "on", pid)
    t = time.monotonic()
    body()
    took = time.monotonic() - t
    callgrind_control("-i", "off", pid)
    callgrind_control("-d", pid)
    return dump_total(cgdir, prefix, before, allow_zero=True), took


def measure_callgrind(args, v: str, e: Envoy, cgdir: Path) -> dict:
    n, warm = args.cg_requests, args.cg_warmup
    ledger = Ledger()
    client = KeepAliveClient(e.port, timeout=120)
    if ALL_VARIANTS[v].answer == "breaker":
        open_breaker(v, client, ledger)
    send(v, client, ledger, warm)
    pid = str(e.proc.pid)
    total, took = counted(pid, cgdir, f"cg.{v}.", lambda: send(v, client, ledger, n))
    client.close()
    if total <= 0:
        raise BenchError(f"{v}: callgrind counted nothing")
    # Timers (Envoy's, the filter's 250 ms tick) run by wall time, which valgrind stretches ~50x:
    # count an idle stretch right after to estimate their share of the figure.
    idle, idle_s = counted(pid, cgdir, f"cg.{v}.", lambda: time.sleep(args.cg_idle))
    settled_stats(e, v, ledger)
    background = idle / idle_s * took / n
    log(f"   {v}: {total / n:,.0f} Ir/request ({n} requests in {took:.1f} s; idle timers "
        f"{idle / idle_s:,.0f} Ir/s = ~{background:,.0f} Ir/request of it); stats agree: "
        f"{ledger.sent} sent, {ledger.upstream} upstream, {dict(ledger.status)}, {dict(ledger.leaves) or 'no trigger'}")
    for what in ALL_VARIANTS[v].probes:
        probe(v, e, what)
    return {"ir_total": total, "requests": n, "ir_per_request": total / n, "seconds": took,
            "idle_ir_per_s": idle / idle_s, "background_ir_per_request": background,
            "net_ir_per_request": total / n - background}


def run_callgrind(args, upstream_port: int, variants: list[str]) -> tuple[dict[str, dict], dict[str, str]]:
    """Returns (results by variant, reason by variant not measured). A failing `base` is fatal."""
    cgdir = args.out / "callgrind"
    cgdir.mkdir(exist_ok=True)
    log(f"\n== callgrind: front Envoy --concurrency 1 under valgrind (nice -n {args.cg_nice}), "
        f"{args.cg_warmup} warm-up + {args.cg_requests} measured sequential requests on one connection, "
        f"variants {', '.join(variants)}")
    # Start-up under valgrind (V8 compiles the module) is the slow part: start every variant at once,
    # then measure one at a time while the others sit idle (instrumentation is off, so they count nothing).
    t0 = time.monotonic()
    envoys: dict[str, Envoy] = {}
    results: dict[str, dict] = {}
    failed: dict[str, str] = {}

    def not_measured(v: str, err: BenchError) -> None:
        if v == "base":
            raise err
        # "envoy cg-x: exited with 1 during start-up: <the filter's message>" -> "Envoy did not start: ..."
        reason = re.sub(r"^envoy \S+: (exited with -?\d+ during start-up|not LIVE after \d+ s): ",
                        "Envoy did not start: ", str(err).splitlines()[0])
        log(f"   {v}: NOT MEASURED: {reason}")
        failed[v] = reason
        envoys[v].stop()

    try:
        for v in variants:
            vg = ["nice", "-n", str(args.cg_nice), "valgrind", "--tool=callgrind", "--smc-check=all-non-file",
                  "--instr-atstart=no", f"--callgrind-out-file={cgdir}/cg.{v}.%p"]
            envoys[v] = Envoy(f"cg-{v}", args, front_config(v, upstream_port, args), 1, prefix=vg)
        for v in variants:
            try:
                envoys[v].ready(args.cg_start_timeout)
                log(f"   {v}: ready after {time.monotonic() - t0:.0f} s (pid {envoys[v].proc.pid})")
            except BenchError as err:
                not_measured(v, err)
        for v in variants:
            if v in failed:
                continue
            try:
                results[v] = measure_callgrind(args, v, envoys[v], cgdir)
            except (BenchError, OSError) as err:
                not_measured(v, err if isinstance(err, BenchError) else BenchError(f"{v}: {err}"))
            envoys[v].stop()
    finally:
        for e in envoys.values():
            e.stop()
    return results, failed


# ---------------------------------------------------------------- wall clock and RSS

WRK_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6}


def parse_wrk(out: str) -> dict:
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise BenchError(f"unparsable wrk output:\n{out}")
    res = {"rps": float(m.group(1))}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        if not m:
            raise BenchError(f"no {pct}% line in wrk output (--latency missing?):\n{out}")
        res[f"p{pct}_us"] = float(m.group(1)) * WRK_UNITS[m.group(2)]
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    return res


def wrk(port: int, seconds: float, conns: int, cpus: str | None) -> dict:
    seconds = max(1, round(seconds))  # wrk takes whole seconds only
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/"]
    if cpus is not None:
        cmd = ["taskset", "-c", cpus, *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if r.returncode != 0:
        raise BenchError(f"wrk failed ({r.returncode}): {r.stdout}{r.stderr}")
    res = parse_wrk(r.stdout)
    if res["non2xx"] or res["socket_errors"]:
        raise BenchError(f"wrk saw {res['non2xx']} non-2xx responses and {res['socket_errors']} socket errors:\n{r.stdout}")
    return res


def set_affinity(pid: int, cpus: set[int]) -> None:
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)


def run_wallclock(args, upstream: Envoy, k: int, raw) -> list[dict]:
    """Interleaved wrk rounds of base and breaker at --concurrency k; returns the bursts."""
    variants = WALL_VARIANTS
    pin = args.pin and k == 1
    front_cpus, gen_cpus = ("0", "1") if pin else (None, None)
    set_affinity(upstream.proc.pid, {1} if pin else set(range(os.cpu_count() or 1)))
    log(f"\n== wall clock, front Envoy --concurrency {k}"
        + (" (front pinned to CPU0; wrk + upstream on CPU1)" if pin else " (unpinned)")
        + f": {args.rounds} rounds x {len(variants)} variants, wrk -t1 -c{args.conns} -d{args.duration:g}s --latency")
    envoys = {}
    records = []
    try:
        for v in variants:
            envoys[v] = Envoy(f"k{k}-{v}", args, front_config(v, upstream.port, args), k, front_cpus)
        for e in envoys.values():
            e.ready()
        for v in variants:  # warm-up: connections, V8 tiering, stats created
            wrk(envoys[v].port, args.warmup, args.conns, gen_cpus)
        for r in range(args.rounds):
            order = variants[r % len(variants):] + variants[: r % len(variants)]
            if r % 2:
                order.reverse()
            line = []
            for v in order:
                e = envoys[v]
                before_stats = e.wait_idle()
                cpu0 = e.cpu_seconds()
                res = wrk(e.port, args.duration, args.conns, gen_cpus)
                cpu1 = e.cpu_seconds()
                after = settled_stats(e, v, None)
                served = after.get(HCM_PREFIX + "downstream_rq_completed", 0) - before_stats.get(
                    HCM_PREFIX + "downstream_rq_completed", 0)
                res.update(variant=v, k=k, round=r, served=served,
                           cpu_us_per_req=(cpu1 - cpu0) * 1e6 / served if served else float("nan"))
                records.append(res)
                raw.write(json.dumps(res) + "\n")
                raw.flush()
                line.append(f"{v} {res['rps']:,.0f}/s")
            log(f"   round {r + 1}/{args.rounds}: " + ", ".join(line))
    finally:
        for e in envoys.values():
            e.stop()
    return records


def summarize_wallclock(records: list[dict], k: int) -> list[dict]:
    rows = []
    base = {rec["round"]: rec for rec in records if rec["variant"] == "base" and rec["k"] == k}
    for v in WALL_VARIANTS:
        recs = [rec for rec in records if rec["variant"] == v and rec["k"] == k]
        if not recs:
            continue
        row = {"variant": v, "k": k, "n": len(recs)}
        for key in ("rps", "p50_us", "p99_us", "cpu_us_per_req"):
            row[key] = statistics.median(rec[key] for rec in recs)
            ratios = [rec[key] / base[rec["round"]][key] for rec in recs if rec["round"] in base]
            row[key + "_ratio"] = statistics.median(ratios) if ratios else float("nan")
            row[key + "_ratio_range"] = (min(ratios), max(ratios)) if ratios else (float("nan"),) * 2
        rows.append(row)
    return rows


def run_rss_workers(args, upstream: Envoy) -> dict:
    """VmRSS of base and breaker front Envoys at each worker count, after the same short wrk load.

    The RSS of one configuration differs by up to ~1-3 MiB from one start to the next, so each
    (variant, workers) pair is started args.rss_starts times and the median is kept; the cost per
    extra worker is the slope between 1 and the most workers measured, which divides that noise.
    """
    log(f"\n== RSS per worker count: base and breaker at --concurrency {','.join(map(str, args.rss_workers))}, "
        f"{args.rss_starts} starts each, RSS after a {args.warmup:g} s wrk burst")
    out: dict = {}
    for k in args.rss_workers:
        envoys = {}
        # With --diag at 1 worker, also the empty proxy-wasm filter: V8's own floor.
        variants = WALL_VARIANTS + (["diag_noop"] if args.noop_wasm and k == 1 else [])
        try:
            for v in variants:
                for i in range(args.rss_starts):
                    envoys[(v, i)] = Envoy(f"rss-k{k}-{v}-{i}", args, front_config(v, upstream.port, args), k)
            for e in envoys.values():
                e.ready()
            for (v, _), e in envoys.items():
                wrk(e.port, args.warmup, args.conns, None)
                settled_stats(e, v, None)
            samples = {v: sorted(envoys[(v, i)].rss_bytes() for i in range(args.rss_starts)) for v in variants}
            # Where the RSS is (diagnostic), at 1 worker: the median of each part over the starts.
            anatomy = {}
            if k == 1:
                for v in variants:
                    each = [envoys[(v, i)].memory_anatomy() for i in range(args.rss_starts)]
                    anatomy[v] = {part: statistics.median(a[part] for a in each) for part in each[0]}
        finally:
            for e in envoys.values():
                e.stop()
        out[k] = {v: {"median": statistics.median(x), "samples": x} for v, x in samples.items()}
        for v, parts in anatomy.items():
            out[k][v]["anatomy"] = parts
        log(f"   {k} worker(s): " + "; ".join(
            f"{v} median {out[k][v]['median'] / MiB:.1f} MiB [{x[0] / MiB:.1f}–{x[-1] / MiB:.1f}]"
            for v, x in samples.items()))
    return out


def run_rss_flatness(args, upstream: Envoy) -> dict:
    """The breaker front Envoy (1 worker) serves a warm-up, then args.rss_requests more; RSS after every burst."""
    log(f"\n== RSS flatness: breaker front Envoy --concurrency 1, {args.rss_warmup:,} warm-up + "
        f"{args.rss_requests:,} requests (wrk -c{args.conns}), RSS sampled after every burst")
    e = Envoy("rss-breaker", args, front_config("breaker", upstream.port, args), 1)
    try:
        e.ready()

        def serve(target: int, samples: list[int]) -> None:
            served = settled_stats(e, "breaker", None).get(HCM_PREFIX + "downstream_rq_completed", 0)
            chunk = (target - served) / 10  # about ten bursts (ten RSS samples) per phase
            rate = 5_000.0  # requests/s guess for the first burst; then measured
            while served < target:
                seconds = round(min(20.0, max(1.0, min(target - served, chunk) / rate)))
                res = wrk(e.port, seconds, args.conns, None)
                now = settled_stats(e, "breaker", None).get(HCM_PREFIX + "downstream_rq_completed", 0)
                rate = max(100.0, (now - served) / seconds)
                served = now
                samples.append(e.rss_bytes())
                log(f"   {served:,} served, {res['rps']:,.0f}/s, RSS {samples[-1] / MiB:.2f} MiB")

        warm: list[int] = []
        serve(args.rss_warmup, warm)
        start = settled_stats(e, "breaker", None).get(HCM_PREFIX + "downstream_rq_completed", 0)
        samples = [e.rss_bytes()]
        serve(start + args.rss_requests, samples)
        end = settled_stats(e, "breaker", None).get(HCM_PREFIX + "downstream_rq_completed", 0)
    finally:
        e.stop()
    return {"warmup_requests": start, "requests": end - start, "samples": samples,
            "after_warmup": samples[0], "final": samples[-1], "spread": max(samples) - min(samples)}


# ---------------------------------------------------------------- goals and report


def net(r: dict) -> float:
    return r["ir_per_request"] - r["background_ir_per_request"]


def table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "**NO**")


def cost_rows(cg: dict, failed: dict, variants: list[str]) -> tuple[list[list[str]], list[str]]:
    """Issue 8's table, one row per gated variant, and the list of missed goals."""
    rows, missed = [], []
    base = cg.get("base")
    breaker = cg.get("breaker")
    for v in variants:
        var = VARIANTS.get(v)
        if var is None or var.goal is None:
            continue
        g = var.goal
        if v in failed or v not in cg or base is None or (g.kind == "over" and breaker is None):
            reason = failed.get(v) or ("`breaker` not measured" if g.kind == "over" else "not run")
            rows.append([var.label, f"not measured: {reason}", "", g.text(), "**NO**"])
            missed.append(f"{v}: not measured ({reason})")
            continue
        r = cg[v]
        if g.kind == "ratio":
            ratio = net(r) / net(base)
            ok = ratio <= g.limit
            rows.append([var.label, f"{net(r) / 1e3:.1f}k", f"{ratio:.3f}", g.text(), verdict(ok)])
            if not ok:
                missed.append(f"{v}: {ratio:.3f}× Envoy alone, goal {g.text().strip('*')}")
        else:
            delta = net(r) - net(breaker)
            ok = delta <= g.limit
            shown = round(delta / 1e3, 1) + 0.0  # + 0.0: no "-0.0k" for a few Ir below breaker
            rows.append([var.label, f"{shown:+.1f}k", "", g.text(), verdict(ok)])
            if not ok:
                missed.append(f"{v}: {delta / 1e3:+.1f}k Ir over breaker, goal {g.text().strip('*')}")
    return rows, missed


ANATOMY_PARTS = (
    ("envoy_binary", "Envoy binary pages (V8 in it)"),
    ("wasm_code", "compiled Wasm code"),
    ("allocator_live", "allocator: live"),
    ("allocator_held", "allocator: held free"),
    ("anon_other", "V8 heaps, linear memories, stacks"),
    ("other_files", "other files"),
)


def anatomy_text(with_: dict, without: dict) -> str:
    return "; ".join(f"{label} {(with_[part] - without[part]) / MiB:+.1f}" for part, label in ANATOMY_PARTS) + " MiB"


def other_rows(args, meta: dict, wall: list[dict], rss: dict, flat: dict | None) -> tuple[list[list[str]], list[str]]:
    rows, missed = [], []
    size = meta["wasm_bytes"]
    ok = size <= MODULE_GOAL_BYTES
    rows.append(["module size", f"{size:,} bytes", f"≤ {MODULE_GOAL_BYTES:,} (300 KiB)", verdict(ok)])
    if not ok:
        missed.append(f"module: {size:,} bytes, goal ≤ {MODULE_GOAL_BYTES:,}")
    for k, goal in ((1, 0.80), (2, 0.90)):
        r = next((r for r in wall if r["k"] == k and r["variant"] == "breaker"), None)
        if r is None:
            continue
        lo, hi = r["rps_ratio_range"]
        rows.append([f"req/s, breaker vs base, {k} worker{'s' if k > 1 else ''} (wall clock)",
                     f"{r['rps_ratio']:.2f}× [{lo:.2f}–{hi:.2f}]", f"≥ {goal:.2f}×",
                     ("yes" if r["rps_ratio"] >= goal else "no") + " (reported, not gated)"])
    if 1 in rss:
        def delta(k: int) -> float:
            return rss[k]["breaker"]["median"] - rss[k]["base"]["median"]

        def spread(k: int) -> str:
            return ", ".join(f"{v} {rss[k][v]['median'] / MiB:.1f} [{rss[k][v]['samples'][0] / MiB:.1f}–"
                             f"{rss[k][v]['samples'][-1] / MiB:.1f}]" for v in ("breaker", "base"))

        starts = len(rss[1]["base"]["samples"])
        d1 = delta(1)
        ok = d1 <= 25 * MiB
        rows.append([f"RSS with the filter − without, 1 worker (medians of {starts} starts)",
                     f"{d1 / MiB:+.1f} MiB ({spread(1)})", "≤ +25 MiB", verdict(ok)])
        if not ok:
            missed.append(f"RSS: {d1 / MiB:+.1f} MiB at 1 worker, goal ≤ +25 MiB")
        if "diag_noop" in rss[1]:
            floor = rss[1]["diag_noop"]["median"] - rss[1]["base"]["median"]
            rows.append(["RSS, empty proxy-wasm filter (diag_noop) − without, 1 worker: V8's floor",
                         f"{floor / MiB:+.1f} MiB; the filter {(d1 - floor) / MiB:+.1f} MiB above it", "",
                         "(diagnostic)"])
        if "anatomy" in rss[1]["breaker"] and "anatomy" in rss[1]["base"]:
            rows.append(["RSS with − without, 1 worker, by where it is (medians of each part)",
                         anatomy_text(rss[1]["breaker"]["anatomy"], rss[1]["base"]["anatomy"]), "",
                         "(diagnostic)"])
            if "anatomy" in rss[1].get("diag_noop", {}):
                rows.append(["the same, the filter − the empty filter (diag_noop)",
                             anatomy_text(rss[1]["breaker"]["anatomy"], rss[1]["diag_noop"]["anatomy"]), "",
                             "(diagnostic)"])
        if 2 in rss:
            rows.append([f"RSS with − without, 2 workers", f"{delta(2) / MiB:+.1f} MiB ({spread(2)}); "
                         f"{(delta(2) - d1) / MiB:+.1f} MiB over 1 worker", "", "(the slope below is gated)"])
        kmax = max(rss)
        if kmax > 1:
            per = (delta(kmax) - d1) / (kmax - 1)
            ok = per <= 1.5 * MiB
            rows.append([f"RSS with − without, per extra worker (slope 1→{kmax} workers)",
                         f"{per / MiB:+.2f} MiB ({delta(kmax) / MiB:+.1f} MiB at {kmax}: {spread(kmax)})",
                         "≤ +1.5 MiB", verdict(ok)])
            if not ok:
                missed.append(f"RSS: {per / MiB:+.2f} MiB per extra worker, goal ≤ +1.5 MiB")
    if flat is not None:
        ok = flat["spread"] <= MiB
        rows.append([f"RSS spread over {flat['requests']:,} requests after {flat['warmup_requests']:,} warm-up "
                     f"(breaker, 1 worker)", f"{flat['spread'] / MiB:.2f} MiB ({flat['after_warmup'] / MiB:.1f} → "
                     f"{flat['final'] / MiB:.1f}, {len(flat['samples'])} samples)", "within 1 MiB", verdict(ok)])
        if not ok:
            missed.append(f"RSS flatness: {flat['spread'] / MiB:.2f} MiB spread, goal within 1 MiB")
    return rows, missed


def report(args, meta: dict, cg: dict, failed: dict, cg_variants: list[str], wall: list[dict], rss: dict,
           flat: dict | None) -> tuple[str, list[str]]:
    lines = [
        "# marty-resilience benchmark",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}",
        f"- envoy: {meta['envoy_version']}",
        f"- module: {meta['wasm']} ({meta['wasm_bytes']:,} bytes, sha256 {meta['wasm_sha256'][:16]}…)",
        f"- machine: {meta['machine']}",
        f"- wall time of this run: {meta['elapsed_s']:.0f} s",
        "",
    ]
    missed: list[str] = []
    if cg or failed:
        base = cg.get("base")
        lines += [f"## Cost per request (callgrind, front Envoy 1.40, --concurrency 1, {args.cg_requests} "
                  f"sequential keep-alive requests, Envoy route `{ROUTE}` listed in `routes`)", "",
                  "Ir/req = user-space instructions of the whole front Envoy per request, net of an idle-rate "
                  "estimate of its timers (valgrind stretches wall time ~50×); × Envoy alone = that / the same "
                  "for `base` (the same Envoy without the filter) in this run. '+' rows are increments over "
                  "'breaker, closed'." + (f" Envoy alone: {net(base) / 1e3:.1f}k Ir/req." if base else ""), ""]
        rows, m = cost_rows(cg, failed, cg_variants)
        missed += m
        lines += [table(["what is on for the route", "Ir/req", "× Envoy alone", "goal", "met"], rows), ""]
        detail = []
        for v in cg_variants:
            if v in cg:
                r = cg[v]
                ratio = f"{net(r) / net(base):.3f}" if base else ""
                detail.append([f"`{v}`", ALL_VARIANTS[v].label, f"{r['ir_per_request']:,.0f}",
                               f"{r['background_ir_per_request']:,.0f}", f"{net(r):,.0f}", ratio])
            else:
                detail.append([f"`{v}`", ALL_VARIANTS[v].label, "not measured", "", "", failed.get(v, "not run")])
        lines += ["Every variant, raw and net:", "",
                  table(["variant", "what", "raw Ir/req", "idle timers", "net Ir/req", "net × base"], detail), ""]
    rows, m = other_rows(args, meta, wall, rss, flat)
    missed += m
    lines += ["## Module, wall clock, memory", "",
              "Wall-clock ratios are reported, not gated by --check: they move 10–40 % between runs on this "
              "shared 2-vCPU machine. RSS (VmRSS of the front Envoy) is gated.", "",
              table(["measure", "value", "goal", "met"], rows), ""]
    for k in sorted({r["k"] for r in wall}):
        krows = [r for r in wall if r["k"] == k]
        pin = " (front pinned to CPU0, wrk + upstream on CPU1)" if args.pin and k == 1 else ""
        lines += [f"### Wall clock, front Envoy --concurrency {k}{pin}: medians of {krows[0]['n']} "
                  f"interleaved rounds, wrk -t1 -c{args.conns} -d{args.duration:g}s", "",
                  "Ratios are the median over rounds of (breaker / base of the same round); "
                  "[min–max] over rounds.", ""]
        trows = []
        for r in krows:
            def cell(key, fmt):
                val = format(r[key], fmt)
                if r["variant"] == "base":
                    return val
                lo, hi = r[key + "_ratio_range"]
                return f"{val} · **{r[key + '_ratio']:.2f}×** [{lo:.2f}–{hi:.2f}]"
            trows.append([r["variant"], cell("rps", ",.0f"), cell("p50_us", ",.0f"), cell("p99_us", ",.0f"),
                          cell("cpu_us_per_req", ".1f")])
        lines += [table(["variant", "req/s", "p50 µs", "p99 µs", "front CPU µs/req"], trows), ""]
    if args.check:
        lines += ["## --check", ""]
        lines += [f"- MISSED {m}" for m in missed] or ["- every gated goal is met"]
        lines.append("")
    return "\n".join(lines), missed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envoy", type=Path, required=True, help="Envoy binary (scripts/bench passes it)")
    ap.add_argument("--wasm", type=Path, required=True, help="module to measure (scripts/bench passes a private copy of "
                    "the one it built, or of its own --wasm FILE)")
    ap.add_argument("--out", type=Path, required=True, help="results directory (scripts/bench: target/bench/<time>)")
    ap.add_argument("--noop-wasm", type=Path, help="empty filter module for the diag_noop variant")
    ap.add_argument("--check", action="store_true", help="exit 1 when a gated goal is missed or not measured")
    ap.add_argument("--quick", action="store_true",
                    help="~3-5 minutes: 1000 callgrind requests, 2 rounds of 2 s bursts, RSS over 10^5 requests")
    ap.add_argument("--diag", action="store_true", help="also measure the diagnostic variants (callgrind), and the empty filter's RSS at 1 worker")
    ap.add_argument("--only", choices=["callgrind", "wallclock", "rss"], help="run only one of the measurements")
    ap.add_argument("--variants", help=f"comma-separated subset of {','.join(VARIANTS)} "
                                       "(base, and breaker for '+' rows, are always kept)")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--duration", type=float, help="seconds per wrk burst")
    ap.add_argument("--warmup", type=float, help="seconds of warm-up per variant before the rounds")
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--concurrency", default="1,2", help="front Envoy worker counts for the wall-clock runs")
    ap.add_argument("--cg-requests", type=int)
    ap.add_argument("--cg-warmup", type=int)
    ap.add_argument("--cg-idle", type=float, help="seconds of idle counting per variant (timer share estimate)")
    ap.add_argument("--cg-start-timeout", type=float, default=900.0)
    ap.add_argument("--cg-nice", type=int, default=10, help="nice level of the valgrind Envoys (Ir do not depend on it)")
    ap.add_argument("--rss-workers", default="1,2,4",
                    help="worker counts of the RSS comparison: must include 1; 2 is reported; the largest gives the slope")
    ap.add_argument("--rss-starts", type=int, help="Envoy starts per variant and worker count (median kept)")
    ap.add_argument("--rss-requests", type=int, help="requests of the RSS flatness run after its warm-up")
    ap.add_argument("--rss-warmup", type=int, help="warm-up requests of the RSS flatness run")
    ap.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin at --concurrency 1")
    ap.add_argument("--command", default=" ".join(shlex.quote(a) for a in sys.argv))
    args = ap.parse_args()
    q = args.quick
    args.rounds = args.rounds or (2 if q else 6)
    args.duration = args.duration or (2.0 if q else 5.0)
    args.warmup = args.warmup or (1.0 if q else 2.0)
    args.cg_requests = args.cg_requests or (1000 if q else 3000)
    args.cg_warmup = args.cg_warmup or (200 if q else 300)
    args.cg_idle = args.cg_idle or (2.0 if q else 5.0)
    args.rss_requests = args.rss_requests or (100_000 if q else 1_000_000)
    args.rss_warmup = args.rss_warmup or (20_000 if q else 100_000)
    args.rss_starts = args.rss_starts or (3 if q else 5)
    ks = [int(x) for x in args.concurrency.split(",") if x]
    args.rss_workers = sorted({int(x) for x in args.rss_workers.split(",") if x})
    if not args.rss_workers or args.rss_workers[0] != 1:
        raise BenchError("--rss-workers must include 1")

    global PIDFILE
    args.out.mkdir(parents=True, exist_ok=True)
    PIDFILE = args.out / "pids"
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)

    started = time.monotonic()
    variants = list(VARIANTS)
    if args.variants:
        chosen = {v.strip() for v in args.variants.split(",") if v.strip()}
        unknown = chosen - set(VARIANTS)
        if unknown:
            raise BenchError(f"unknown variant(s) {', '.join(sorted(unknown))}; known: {', '.join(VARIANTS)}")
        if any(VARIANTS[v].goal and VARIANTS[v].goal.kind == "over" for v in chosen):
            chosen.add("breaker")
        variants = [v for v in VARIANTS if v == "base" or v in chosen]
    cg_variants = variants + ([v for v in DIAG_VARIANTS if v != "diag_noop" or args.noop_wasm]
                               if args.diag else [])
    version = subprocess.run([str(args.envoy), "--version"], capture_output=True, text=True).stdout.strip()
    version = version.split("version:", 1)[-1].strip()
    wasm_bytes = args.wasm.read_bytes()
    meta = {
        "command": args.command,
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "envoy_version": version,
        "wasm": str(args.wasm),
        "wasm_bytes": len(wasm_bytes),
        "wasm_sha256": hashlib.sha256(wasm_bytes).hexdigest(),
        "machine": f"{os.cpu_count()} CPU; 1-min load average at start {os.getloadavg()[0]:.2f}",
    }
    log(f"results in {args.out}")

    up = Envoy("upstream", args, upstream_config(), 1).ready()
    log(f"upstream Envoy (direct_response 200, 503 on {FAIL_PATH}) on :{up.port}")
    cg, failed, wall, rss, flat = {}, {}, [], {}, None
    try:
        if args.only in (None, "callgrind"):
            cg, failed = run_callgrind(args, up.port, cg_variants)
            (args.out / "callgrind.json").write_text(json.dumps({"measured": cg, "not_measured": failed}, indent=1))
        if args.only in (None, "wallclock"):
            records = []
            with open(args.out / "wallclock.jsonl", "w") as raw:
                for k in ks:
                    records += run_wallclock(args, up, k, raw)
                    wall += summarize_wallclock(records, k)
        if args.only in (None, "rss"):
            rss = run_rss_workers(args, up)
            flat = run_rss_flatness(args, up)
        if rss or flat:
            (args.out / "rss.json").write_text(json.dumps({"per_workers": rss, "flatness": flat}, indent=1))
    finally:
        up.stop()
    meta["elapsed_s"] = time.monotonic() - started
    meta["machine"] += f", at end {os.getloadavg()[0]:.2f}"
    text, missed = report(args, meta, cg, failed, cg_variants, wall, rss, flat)
    (args.out / "summary.md").write_text(text + "\n")
    print(text, flush=True)
    if args.check and missed:
        log("\nbench --check: FAILED, goals missed:\n" + "\n".join(f"  - {m}" for m in missed))
        return 1
    if args.check:
        log("\nbench --check: every gated goal is met")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        log(f"\nbench: FAILED: {e}")
        sys.exit(1)
