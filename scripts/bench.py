#!/usr/bin/env python3
"""Benchmark of the marty-resilience Wasm filter against Envoy without it (stdlib only).

Run through ./scripts/bench, which installs Envoy, wrk and the toolchain and builds the module;
this file only measures. Topology, all on 127.0.0.1 over HTTP/1.1 keep-alive:

    load generator -> front Envoy (variant) -> upstream Envoy (direct_response 200, --concurrency 1)

Variants of the front Envoy share one bootstrap except for the HTTP filter chain:
    base             router only
    filter           marty_resilience (breaker enabled and closed, route "bench" named in the plugin JSON)
    filter_bulkhead  same, plus max_concurrent_requests high enough never to reject (adds a gauge read)
Diagnostic variants (--diag, callgrind only) price parts of the request path; see docs/performance.md.

Two measurements:
  1. callgrind (deterministic): user-space instructions (Ir) of the front Envoy per request at
     --concurrency 1, N sequential requests on one keep-alive connection.
  2. wall clock: interleaved rounds, every variant's front Envoy alive at once, one wrk burst per
     variant per round in rotating order; ratios are paired with base of the same round.
"""

from __future__ import annotations

import argparse
import atexit
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

ROUTE = "bench"
REQUESTS_STAT = f"wasmcustom.marty_resilience.route.{ROUTE}.requests_total"
HCM_PREFIX = "http.ingress."

BREAKER = {"failure_threshold": 5, "recovery_timeout": 30}
FILTER_JSON = {"service_name": "bench", "routes": {ROUTE: {"circuit_breaker": dict(BREAKER)}}}
BULKHEAD_JSON = {
    "service_name": "bench",
    "routes": {ROUTE: {"circuit_breaker": dict(BREAKER, max_concurrent_requests=1_000_000)}},
}

# name -> plugin JSON (None: no filter), Envoy route name ("" = unnamed), the stat that must equal
# the requests the front Envoy received (None: none), module ("filter" or "noop"), description.
def variant(plugin, route, stat, what, module="filter"):
    return {"plugin": plugin, "route": route, "stat": stat, "module": module, "what": what}


VARIANTS = {
    "base": variant(None, ROUTE, None, "no filter"),
    "filter": variant(FILTER_JSON, ROUTE, REQUESTS_STAT, "breaker on, closed, route named in the plugin JSON"),
    "filter_bulkhead": variant(BULKHEAD_JSON, ROUTE, REQUESTS_STAT,
                               "as filter + max_concurrent_requests=1000000 (one gauge read more)"),
}
DEFAULT_STAT = "wasmcustom.marty_resilience.route.default.requests_total"
DIAG_VARIANTS = {
    "diag_noop": variant({}, ROUTE, None, "empty proxy-wasm filter, same SDK (scripts/bench.d/noop): dispatch floor",
                         module="noop"),
    "diag_disabled": variant({"service_name": "bench", "routes": {ROUTE: {"circuit_breaker": {"enabled": False}}}},
                             ROUTE, REQUESTS_STAT, "breaker disabled for the route: clocks, route property, 1 counter"),
    "diag_unnamed": variant({"service_name": "bench"}, "", DEFAULT_STAT,
                            "as filter, but the Envoy route has no name (route_name property empty): 'default' bucket"),
    "diag_unlisted": variant({"service_name": "bench"}, "other_route", DEFAULT_STAT,
                             "as filter, but the route name is not in the plugin JSON: 'default' bucket"),
    "diag_faults0": variant(
        {"service_name": "bench", "routes": {ROUTE: {"circuit_breaker": dict(BREAKER), "failure_injection": {
            "enabled": True, "base_failure_rate": 0.0, "delay": {"rate": 0.0}}}}},
        ROUTE, REQUESTS_STAT, "as filter + failure_injection enabled at rate 0 (decided, never fires)"),
    "diag_health": variant(
        {"service_name": "bench", "health": {"enabled": True}, "routes": {ROUTE: {"circuit_breaker": dict(BREAKER)}}},
        ROUTE, REQUESTS_STAT, "as filter + health endpoint enabled (every request's :path is checked)"),
}

# Per-route counters that must stay 0 when nothing triggers, and the filter's own error counters.
TRIGGER_LEAVES = ("failure_total", "rejected_total", "concurrency_rejected_total", "circuit_opened_total",
                  "faults_aborted_total", "faults_delayed_total", "faults_overflow_total",
                  "fault_header_rejected_total")
FILTER_ERROR_COUNTERS = ("cas_exhausted_total", "shared_data_errors_total", "state_reset_total",
                         "route_config_rejected_total")

PIDS: dict[int, subprocess.Popen] = {}
PIDFILE: Path | None = None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    pass


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


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def stats(admin: int) -> dict[str, int]:
    code, body = http_get(admin, "/stats", timeout=30)
    if code != 200:
        raise BenchError(f"admin :{admin} /stats answered {code}")
    out = {}
    for line in body.splitlines():
        name, _, value = line.partition(": ")
        if value.isdigit():
            out[name] = int(value)
    return out


class KeepAliveClient:
    """Exactly N sequential requests on one HTTP/1.1 connection; checks every status is 200."""

    REQUEST = b"GET / HTTP/1.1\r\nhost: bench\r\nuser-agent: bench\r\n\r\n"

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

    def run(self, n: int) -> None:
        for i in range(n):
            self.sock.sendall(self.REQUEST)
            status = self._response()
            if status != 200:
                raise BenchError(f"request {i + 1}/{n}: status {status}")

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
    route = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}
    return bootstrap(hcm([route], [router()]), [])


def front_config(name: str, upstream_port: int, args) -> dict:
    v = ALL_VARIANTS[name]
    plugin, route_name = v["plugin"], v["route"]
    wasm = args.noop_wasm if v["module"] == "noop" else args.wasm
    if wasm is None:
        raise BenchError(f"{name} needs --noop-wasm")
    filters = []
    if plugin is not None:
        filters.append(
            {
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
                            "value": json.dumps(plugin),
                        },
                        "vm_config": {
                            "vm_id": "marty_resilience",
                            "runtime": "envoy.wasm.runtime.v8",
                            "code": {"local": {"filename": str(wasm)}},
                        },
                    },
                },
            }
        )
    filters.append(router())
    route = {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}
    if route_name:
        route["name"] = route_name
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
    return bootstrap(hcm([route], filters), [cluster])


ALL_VARIANTS = {**VARIANTS, **DIAG_VARIANTS}


class Envoy:
    """One Envoy process. The constructor only spawns it; ready() waits for LIVE (bounded)."""

    def __init__(self, name: str, args, config: dict, concurrency: int, cpus: str | None = None,
                 valgrind: list[str] | None = None):
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
        self.proc = spawn((valgrind or []) + cmd, d / f"{name}.stderr", cpus)
        self.admin = self.port = 0

    def ready(self, timeout: float = 60.0) -> "Envoy":
        self.admin = self._wait_ready(timeout)
        self.port = self._listener_port()
        return self

    def _fail(self, why: str) -> BenchError:
        tail = ""
        for f in (self.log, self.log.with_suffix(".stderr")):
            if f.exists():
                tail += f"\n--- {f} (tail) ---\n" + "\n".join(f.read_text(errors="replace").splitlines()[-30:])
        return BenchError(f"envoy {self.name}: {why}{tail}")

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
                    code, body = http_get(admin, "/ready", timeout=2)
                    if code == 200 and body.strip() == "LIVE":
                        return admin
                except OSError:
                    pass
            time.sleep(0.1)
        raise self._fail(f"not LIVE after {timeout:.0f} s")

    def _listener_port(self) -> int:
        code, body = http_get(self.admin, "/listeners?format=json")
        if code != 200:
            raise self._fail(f"/listeners answered {code}")
        for status in json.loads(body).get("listener_statuses", []):
            if status.get("name") == "ingress":
                return int(status["local_address"]["socket_address"]["port_value"])
        raise self._fail("no ingress listener")

    def cpu_seconds(self) -> float:
        # utime + stime of the Envoy process (all threads); taskset execs, so the pid is Envoy's.
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wait_idle(self, timeout: float = 10.0) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while True:
            s = stats(self.admin)
            if s.get(HCM_PREFIX + "downstream_rq_active", 0) == 0 or time.monotonic() > deadline:
                return s
            time.sleep(0.1)

    def stop(self) -> None:
        stop(self.proc, grace=30.0)


def check_stats(variant: str, s: dict[str, int], expect_min: int = 1) -> int:
    """Checks a front Envoy's cumulative stats; returns the requests it served."""
    served = s.get(HCM_PREFIX + "downstream_rq_completed", 0)
    if served < expect_min:
        raise BenchError(f"{variant}: front Envoy completed {served} requests, expected >= {expect_min}")
    bad = {k: s.get(HCM_PREFIX + f"downstream_rq_{k}", 0) for k in ("1xx", "3xx", "4xx", "5xx")}
    if any(bad.values()) or s.get(HCM_PREFIX + "downstream_rq_2xx", 0) != served:
        raise BenchError(f"{variant}: non-2xx responses from the front Envoy: {bad}, 2xx "
                         f"{s.get(HCM_PREFIX + 'downstream_rq_2xx', 0)} of {served}")
    stat = ALL_VARIANTS[variant]["stat"]
    if stat is not None:
        total = s.get(HCM_PREFIX + "downstream_rq_total", 0)
        got = s.get(stat)
        if got != total:
            raise BenchError(f"{variant}: {stat} = {got}, but the front Envoy received {total} requests")
        for leaf in TRIGGER_LEAVES:
            name = stat.replace("requests_total", leaf)
            if s.get(name, 0) != 0:
                raise BenchError(f"{variant}: {name} = {s[name]} (nothing should trigger)")
        for leaf in FILTER_ERROR_COUNTERS:
            name = f"wasmcustom.marty_resilience.{leaf}"
            if s.get(name, 0) != 0:
                raise BenchError(f"{variant}: filter error counter {name} = {s[name]}")
    return served


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


def run_callgrind(args, upstream_port: int, variants: list[str]) -> dict[str, dict]:
    cgdir = args.out / "callgrind"
    cgdir.mkdir(exist_ok=True)
    n, warm = args.cg_requests, args.cg_warmup
    log(f"\n== callgrind: front Envoy --concurrency 1 under valgrind, {warm} warm-up + {n} measured "
        f"sequential requests on one connection, variants {', '.join(variants)}")
    # Start-up under valgrind (V8 compiles the module) is the slow part: start every variant at once,
    # then measure one at a time while the others sit idle (instrumentation is off, so they count nothing).
    t0 = time.monotonic()
    envoys: dict[str, Envoy] = {}
    results = {}
    try:
        for v in variants:
            vg = ["valgrind", "--tool=callgrind", "--smc-check=all-non-file", "--instr-atstart=no",
                  f"--callgrind-out-file={cgdir}/cg.{v}.%p"]
            envoys[v] = Envoy(f"cg-{v}", args, front_config(v, upstream_port, args), 1, valgrind=vg)
        skipped = []
        for v in variants:
            try:
                envoys[v].ready(args.cg_start_timeout)
            except BenchError as err:
                if v in VARIANTS:
                    raise
                # Diagnostic configs follow the filter's evolving schema: a rejected one is reported, not fatal.
                log(f"   {v}: SKIPPED, Envoy did not start with this configuration ({str(err).splitlines()[0]})")
                envoys[v].stop()
                skipped.append(v)
                continue
            log(f"   {v}: ready after {time.monotonic() - t0:.0f} s (pid {envoys[v].proc.pid})")
        for v in variants:
            if v in skipped:
                continue
            e = envoys[v]
            pid = str(e.proc.pid)
            client = KeepAliveClient(e.port, timeout=120)
            client.run(warm)
            before = set(cgdir.glob(f"cg.{v}.*"))
            callgrind_control("-z", pid)
            callgrind_control("-i", "on", pid)
            t = time.monotonic()
            client.run(n)
            took = time.monotonic() - t
            callgrind_control("-i", "off", pid)
            callgrind_control("-d", pid)
            client.close()
            total = dump_total(cgdir, f"cg.{v}.", before)
            # Timers (Envoy's, the filter's 250 ms tick) run by wall time, not per request: count an
            # idle stretch to show how much of the figure they are.
            before = set(cgdir.glob(f"cg.{v}.*"))
            callgrind_control("-z", pid)
            callgrind_control("-i", "on", pid)
            time.sleep(args.cg_idle)
            callgrind_control("-i", "off", pid)
            callgrind_control("-d", pid)
            idle = dump_total(cgdir, f"cg.{v}.", before, allow_zero=True)
            served = check_stats(v, e.wait_idle(), expect_min=warm + n)
            if served != warm + n:
                raise BenchError(f"{v}: front Envoy completed {served} requests, sent {warm + n}")
            background = idle / args.cg_idle * took / n
            results[v] = {"ir_total": total, "requests": n, "ir_per_request": total / n, "seconds": took,
                          "idle_ir_per_s": idle / args.cg_idle, "background_ir_per_request": background}
            log(f"   {v}: {total / n:,.0f} Ir/request ({n} requests in {took:.1f} s; "
                f"idle timers {idle / args.cg_idle:,.0f} Ir/s = ~{background:,.0f} Ir/request of it)")
            e.stop()
    finally:
        for e in envoys.values():
            e.stop()
    return results


# ---------------------------------------------------------------- wall clock

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
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s", "--latency", f"http://127.0.0.1:{port}/"]
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


def run_wallclock(args, upstream: Envoy, k: int, variants: list[str], raw) -> list[dict]:
    upstream_port = upstream.port
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
            envoys[v] = Envoy(f"k{k}-{v}", args, front_config(v, upstream_port, args), k, front_cpus)
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
                after = e.wait_idle()
                check_stats(v, after)
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


def summarize_wallclock(records: list[dict], variants: list[str], k: int) -> list[dict]:
    rows = []
    base = {rec["round"]: rec for rec in records if rec["variant"] == "base" and rec["k"] == k}
    for v in variants:
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


# ---------------------------------------------------------------- report


def net(r: dict) -> float:
    return r["ir_per_request"] - r["background_ir_per_request"]


def table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def report(args, meta: dict, cg: dict, wall: list[dict], variants: list[str]) -> str:
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
    if cg:
        b = cg.get("base", {}).get("ir_per_request")
        bn = net(cg["base"]) if "base" in cg else None
        lines += [f"## Instructions per request (callgrind, front Envoy, --concurrency 1, "
                  f"{args.cg_requests} requests on one connection) — the figure that matters", "",
                  "Ir/request = all user-space instructions of the front Envoy while the N requests ran, / N. "
                  "Timers (Envoy's, the filter's 250 ms tick) tick by wall time, which valgrind stretches ~50x; "
                  "'net' subtracts an idle-rate estimate of them and moves less with machine load.", ""]
        rows = []
        for v, r in cg.items():
            ir, irn = r["ir_per_request"], net(r)
            if v == "base" or b is None:
                rows.append([v, f"{ir:,.0f}", "—", "**1.000**", f"{irn:,.0f}", "1.000", ALL_VARIANTS[v]["what"]])
            else:
                rows.append([v, f"{ir:,.0f}", f"{(ir - b) / 1e3:+.1f} k", f"**{ir / b:.3f}**",
                             f"{irn:,.0f}", f"{irn / bn:.3f} ({(irn - bn) / 1e3:+.1f} k)", ALL_VARIANTS[v]["what"]])
        lines += [table(["variant", "Ir / request", "Δ vs base", "ratio vs base", "net of timers",
                         "net ratio (Δ)", "what"], rows), ""]
    for k in sorted({r["k"] for r in wall}):
        krows = [r for r in wall if r["k"] == k]
        pin = " (front pinned to CPU0, wrk + upstream on CPU1)" if args.pin and k == 1 else ""
        lines += [f"## Wall clock, front Envoy --concurrency {k}{pin}: medians of {krows[0]['n']} "
                  f"interleaved rounds, wrk -t1 -c{args.conns} -d{args.duration:g}s", "",
                  "Ratios are the median over rounds of (variant / base of the same round); "
                  "[min–max] over rounds.", ""]
        rows = []
        for r in krows:
            def cell(key, fmt):
                val = format(r[key], fmt)
                if r["variant"] == "base":
                    return val
                lo, hi = r[key + "_ratio_range"]
                return f"{val} · **{r[key + '_ratio']:.2f}×** [{lo:.2f}–{hi:.2f}]"
            rows.append([r["variant"], cell("rps", ",.0f"), cell("p50_us", ",.0f"), cell("p99_us", ",.0f"),
                         cell("cpu_us_per_req", ".1f")])
        lines += [table(["variant", "req/s", "p50 µs", "p99 µs", "front CPU µs/req"], rows), ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envoy", type=Path, required=True, help="Envoy binary (scripts/bench passes it)")
    ap.add_argument("--wasm", type=Path, required=True, help="module to measure (scripts/bench passes a copy)")
    ap.add_argument("--out", type=Path, required=True, help="results directory (scripts/bench: target/bench/<time>)")
    ap.add_argument("--noop-wasm", type=Path, help="empty filter module for the diag_noop variant")
    ap.add_argument("--quick", action="store_true", help="~1 minute: fewer rounds, shorter bursts, fewer requests")
    ap.add_argument("--diag", action="store_true", help="also measure the diagnostic variants (callgrind only)")
    ap.add_argument("--only", choices=["callgrind", "wallclock"], help="run only one of the two measurements")
    ap.add_argument("--variants", help=f"comma-separated subset of {','.join(VARIANTS)} (base is always kept)")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--duration", type=float, help="seconds per wrk burst")
    ap.add_argument("--warmup", type=float, help="seconds of warm-up per variant before the rounds")
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--concurrency", default="1,2", help="front Envoy worker counts for the wall-clock runs")
    ap.add_argument("--cg-requests", type=int)
    ap.add_argument("--cg-warmup", type=int)
    ap.add_argument("--cg-idle", type=float, help="seconds of idle counting per variant (timer share estimate)")
    ap.add_argument("--cg-start-timeout", type=float, default=300.0)
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
    ks = [int(x) for x in args.concurrency.split(",") if x]

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
    log(f"upstream Envoy (direct_response 200) on :{up.port}")
    cg, wall, raw_records = {}, [], []
    try:
        if args.only in (None, "callgrind"):
            cg = run_callgrind(args, up.port, cg_variants)
            (args.out / "callgrind.json").write_text(json.dumps(cg, indent=1))
        if args.only in (None, "wallclock"):
            with open(args.out / "wallclock.jsonl", "w") as raw:
                for k in ks:
                    raw_records += run_wallclock(args, up, k, variants, raw)
                    wall += summarize_wallclock(raw_records, variants, k)
    finally:
        up.stop()
    meta["elapsed_s"] = time.monotonic() - started
    meta["machine"] += f", at end {os.getloadavg()[0]:.2f}"
    text = report(args, meta, cg, wall, variants)
    (args.out / "summary.md").write_text(text + "\n")
    print(text, flush=True)
    if cg and "base" in cg:
        b = cg["base"]["ir_per_request"]
        for v, r in cg.items():
            if v != "base":
                bn = net(cg["base"])
                print(f"IR/REQUEST {v}: {r['ir_per_request']:,.0f} = {r['ir_per_request'] / b:.3f}x base "
                      f"({(r['ir_per_request'] - b) / 1e3:+.1f} k); net of timers {net(r):,.0f} = "
                      f"{net(r) / bn:.3f}x ({(net(r) - bn) / 1e3:+.1f} k)", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        log(f"\nbench: FAILED: {e}")
        sys.exit(1)
