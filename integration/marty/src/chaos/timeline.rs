//! One self-contained SVG per scenario: requests per second by outcome, each breaker's state
//! over time, and latency, on a shared time axis with the steps marked.

use std::fmt::Write as _;

use super::report::xml;
use super::runner::{percentile_of, ScenarioResult};
use super::traffic::Kind;

const WIDTH: f64 = 960.0;
const LEFT: f64 = 120.0;
const RIGHT: f64 = 20.0;
const BIN: f64 = 0.5;
const OK: &str = "#4caf50";
const ERROR: &str = "#e53935";
const REJECTED: &str = "#fb8c00";

pub fn svg(r: &ScenarioResult) -> String {
    let end = r
        .steps
        .last()
        .map(|s| s.ended_s)
        .unwrap_or(r.duration_s)
        .max(r.duration_s)
        .max(1.0);
    let plot = WIDTH - LEFT - RIGHT;
    let x = |t: f64| LEFT + plot * (t / end).clamp(0.0, 1.0);
    let bins = (end / BIN).ceil() as usize;

    // Requests per second by outcome, per bin.
    let mut counts = vec![[0usize; 3]; bins.max(1)];
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); bins.max(1)];
    for o in &r.outcomes {
        let i = ((o.at.as_secs_f64() / BIN) as usize).min(counts.len() - 1);
        let k = match o.kind {
            Kind::Ok => 0,
            Kind::Error => 1,
            Kind::Rejected => 2,
        };
        counts[i][k] += 1;
        latencies[i].push(o.latency.as_secs_f64() * 1000.0);
    }
    let max_rps = counts
        .iter()
        .map(|c| (c.iter().sum::<usize>() as f64) / BIN)
        .fold(1.0, f64::max);
    let max_ms = r
        .outcomes
        .iter()
        .map(|o| o.latency.as_secs_f64() * 1000.0)
        .fold(10.0, f64::max);

    let rps_top = 70.0;
    let rps_h = 140.0;
    let lanes_top = rps_top + rps_h + 48.0;
    let lane_h = 22.0;
    let lat_top = lanes_top + lane_h * r.routes.len().max(1) as f64 + 40.0;
    let lat_h = 120.0;
    let height = lat_top + lat_h + 50.0;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="22" font-size="16" font-weight="bold">{} — {}</text>"#,
        xml(&r.name),
        if r.passed { "PASS" } else { "FAIL" }
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="42" fill="dimgray">{}</text>"#,
        xml(&r
            .description
            .lines()
            .next()
            .unwrap_or_default()
            .chars()
            .take(130)
            .collect::<String>())
    );

    // Steps: shaded bands and names across every panel.
    for (i, step) in r.steps.iter().enumerate() {
        let (x0, x1) = (x(step.started_s), x(step.ended_s));
        let fill = if i % 2 == 0 { "#f4f6fa" } else { "#ffffff" };
        let _ = writeln!(
            s,
            r#"<rect x="{x0:.1}" y="{}" width="{:.1}" height="{}" fill="{fill}"/>"#,
            rps_top - 12.0,
            (x1 - x0).max(0.5),
            height - rps_top - 30.0
        );
        let mark = if step.passed { "" } else { " ✗" };
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" fill="black">{}{mark}</text>"#,
            x0 + 3.0,
            rps_top - 1.0,
            xml(&step.name)
        );
    }

    // Panel 1: stacked bars.
    let _ = writeln!(
        s,
        r#"<text x="10" y="{}">requests/s</text>"#,
        rps_top + 14.0
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="{}" fill="gray">max {max_rps:.0}</text>"#,
        rps_top + 30.0
    );
    let bar_w = plot * BIN / end;
    for (i, c) in counts.iter().enumerate() {
        let mut y = rps_top + rps_h;
        for (k, color) in [(0, OK), (1, ERROR), (2, REJECTED)] {
            let h = rps_h * (c[k] as f64 / BIN) / max_rps;
            if h > 0.0 {
                y -= h;
                let _ = writeln!(
                    s,
                    r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{color}"/>"#,
                    x(i as f64 * BIN),
                    (bar_w - 1.0).min(x(end) - x(i as f64 * BIN)).max(0.5)
                );
            }
        }
    }
    axis(&mut s, rps_top + rps_h);
    ticks(&mut s, rps_top + rps_h, end, &x);
    legend(&mut s, rps_top + rps_h + 30.0);

    // Panel 2: breaker state lanes.
    for (lane, route) in r.routes.iter().enumerate() {
        let y = lanes_top + lane as f64 * lane_h;
        let stat = marty_resilience_core::config::stat_name(route);
        let _ = writeln!(
            s,
            r#"<text x="10" y="{:.1}">breaker {}</text>"#,
            y + 15.0,
            xml(route)
        );
        let points: Vec<(f64, i64)> = r
            .samples
            .iter()
            .filter_map(|p| Some((p.at.as_secs_f64(), *p.states.get(&stat)?)))
            .collect();
        for (i, (t, state)) in points.iter().enumerate() {
            let next = points.get(i + 1).map_or(end, |p| p.0);
            let color = match state {
                0 => OK,
                1 => ERROR,
                _ => REJECTED,
            };
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{}" fill="{color}"><title>{}</title></rect>"#,
                x(*t),
                (x(next) - x(*t)).max(0.5),
                lane_h - 4.0,
                match state {
                    0 => "closed",
                    1 => "open",
                    _ => "half-open",
                }
            );
        }
    }
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="{:.1}" fill="dimgray">breaker: green closed, red open, orange half-open (from the filter's circuit_state gauge)</text>"#,
        lanes_top + lane_h * r.routes.len().max(1) as f64 + 12.0
    );

    // Panel 3: latency, p50 and max per bin.
    let _ = writeln!(s, r#"<text x="10" y="{}">latency</text>"#, lat_top + 14.0);
    let _ = writeln!(
        s,
        r#"<text x="10" y="{}" fill="gray">max {max_ms:.0}ms</text>"#,
        lat_top + 30.0
    );
    let ly = |ms: f64| lat_top + lat_h - lat_h * (ms / max_ms).clamp(0.0, 1.0);
    for (label, p, color) in [("p50", 50.0, "#1e88e5"), ("max", 100.0, "#8e24aa")] {
        let pts: Vec<String> = latencies
            .iter_mut()
            .enumerate()
            .filter_map(|(i, v)| {
                let ms = percentile_of(v, p)?;
                Some(format!("{:.1},{:.1}", x((i as f64 + 0.5) * BIN), ly(ms)))
            })
            .collect();
        if !pts.is_empty() {
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.5"><title>{label}</title></polyline>"#,
                pts.join(" ")
            );
        }
    }
    axis(&mut s, lat_top + lat_h);
    ticks(&mut s, lat_top + lat_h, end, &x);
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="{:.1}" fill="dimgray"><tspan fill="#1e88e5">p50</tspan> and <tspan fill="#8e24aa">max</tspan> per {BIN}s, client-measured; time axis in seconds since the scenario started ({end:.1}s)</text>"##,
        lat_top + lat_h + 34.0
    );
    s.push_str("</svg>\n");
    s
}

fn axis(s: &mut String, y: f64) {
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="darkgray"/>"#,
        WIDTH - RIGHT
    );
}

/// A mark and a label every second (every 5 s past 20 s, every 30 s past 2 min).
fn ticks(s: &mut String, y: f64, end: f64, x: &dyn Fn(f64) -> f64) {
    let step = if end > 120.0 {
        30.0
    } else if end > 20.0 {
        5.0
    } else {
        1.0
    };
    let mut t = 0.0;
    while t <= end {
        let _ = writeln!(
            s,
            r#"<line x1="{0:.1}" y1="{y}" x2="{0:.1}" y2="{1}" stroke="darkgray"/><text x="{0:.1}" y="{2}" fill="gray" font-size="10" text-anchor="middle">{t}s</text>"#,
            x(t),
            y + 4.0,
            y + 14.0
        );
        t += step;
    }
}

fn legend(s: &mut String, y: f64) {
    let mut x = LEFT;
    for (label, color) in [
        ("ok", OK),
        ("error", ERROR),
        ("rejected by the breaker", REJECTED),
    ] {
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="10" height="10" fill="{color}"/><text x="{}" y="{y}">{label}</text>"#,
            y - 9.0,
            x + 14.0
        );
        x += 30.0 + label.len() as f64 * 7.0;
    }
}
