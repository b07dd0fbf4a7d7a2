//! Reports: a phase's throughput, latency percentiles and failures as a table, as JSON, and
//! latency-by-percentile curves as a hand-written SVG chart.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::load::Measured;

/// The percentiles every report shows.
pub(crate) const QUANTILES: [(f64, &str); 5] = [
    (0.5, "p50"),
    (0.9, "p90"),
    (0.99, "p99"),
    (0.999, "p99_9"),
    (1.0, "max"),
];

/// One measured phase with its name.
#[derive(Debug, Clone)]
pub(crate) struct Phase {
    /// `service` or a baseline's name.
    pub(crate) target: String,
    pub(crate) measured: Measured,
}

impl Phase {
    pub(crate) fn p99_ms(&self) -> f64 {
        self.measured.quantile_ms(0.99)
    }

    pub(crate) fn json(&self) -> Value {
        let m = &self.measured;
        let mut latency = serde_json::Map::new();
        for (q, name) in QUANTILES {
            let v = if q >= 1.0 {
                m.max_ms()
            } else {
                m.quantile_ms(q)
            };
            latency.insert(name.to_string(), json!(v));
        }
        latency.insert("mean".into(), json!(m.latency.mean() / 1e3));
        let failures: Vec<Value> = m
            .failures
            .iter()
            .map(|(kind, f)| {
                json!({
                    "code": kind.code,
                    "reason": kind.reason,
                    "count": f.count,
                    "example": f.example,
                })
            })
            .collect();
        json!({
            "target": self.target,
            "ok": m.ok,
            "errors": m.errors,
            "seconds": m.elapsed.as_secs_f64(),
            "per_second": m.throughput(),
            "latency_ms": latency,
            "errors_by_code": failures,
        })
    }
}

/// Prints phases as a table on stdout, failures below it.
pub(crate) fn print_table(phases: &[&Phase]) {
    println!(
        "{:<16} {:>9} {:>7} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "target", "ok", "errors", "per second", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    for p in phases {
        let m = &p.measured;
        println!(
            "{:<16} {:>9} {:>7} {:>11.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            p.target,
            m.ok,
            m.errors,
            m.throughput(),
            m.quantile_ms(0.5),
            m.quantile_ms(0.9),
            m.quantile_ms(0.99),
            m.quantile_ms(0.999),
            m.max_ms()
        );
    }
    for p in phases {
        for (kind, f) in &p.measured.failures {
            let reason = if kind.reason.is_empty() {
                "-"
            } else {
                &kind.reason
            };
            println!(
                "{}: {} × {} {} (first: {})",
                p.target, f.count, kind.code, reason, f.example
            );
        }
    }
}

/// Points of a latency-by-percentile curve: (x, ms) with x = -log10(1 - q), so 90 % is 1,
/// 99 % is 2, 99.9 % is 3; up to the highest percentile the samples resolve.
fn curve(m: &Measured) -> Vec<(f64, f64)> {
    if m.latency.is_empty() {
        return Vec::new();
    }
    let n = m.latency.len() as f64;
    let top = n.log10().clamp(1.0, 5.0);
    let mut out = Vec::new();
    let steps = 200;
    for s in 0..=steps {
        let x = top * f64::from(s) / f64::from(steps);
        let q = 1.0 - 10f64.powf(-x);
        out.push((x, m.latency.value_at_quantile(q) as f64 / 1e3));
    }
    out
}

/// An SVG chart of latency by percentile, one line per phase.
pub(crate) fn svg(title: &str, phases: &[&Phase]) -> String {
    const W: f64 = 800.0;
    const H: f64 = 480.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 20.0;
    const TOP: f64 = 40.0;
    const BOTTOM: f64 = 60.0;
    const COLOURS: [&str; 6] = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    let curves: Vec<Vec<(f64, f64)>> = phases.iter().map(|p| curve(&p.measured)).collect();
    let x_max = curves
        .iter()
        .flat_map(|c| c.iter().map(|(x, _)| *x))
        .fold(1.0f64, f64::max)
        .ceil();
    let y_max = nice_ceiling(
        curves
            .iter()
            .flat_map(|c| c.iter().map(|(_, y)| *y))
            .fold(0.0f64, f64::max),
    );
    let px = |x: f64| LEFT + x / x_max * (W - LEFT - RIGHT);
    let py = |y: f64| H - BOTTOM - y / y_max * (H - TOP - BOTTOM);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    // Axes and grid.
    for i in 0..=5 {
        let y = y_max * f64::from(i) / 5.0;
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" x2="{}" y1="{y1:.1}" y2="{y1:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            py(y) + 4.0,
            trim(y),
            y1 = py(y),
        );
    }
    let mut x = 0.0;
    while x <= x_max + 1e-9 {
        let label = percentile_label(x);
        let _ = writeln!(
            out,
            r##"<line x1="{x1:.1}" x2="{x1:.1}" y1="{TOP}" y2="{}" stroke="#ddd"/><text x="{x1:.1}" y="{}" text-anchor="middle">{label}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 16.0,
            x1 = px(x),
        );
        x += 1.0;
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 18.0
    );
    let _ = writeln!(
        out,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">latency (ms)</text>"#,
        (TOP + H - BOTTOM) / 2.0,
        (TOP + H - BOTTOM) / 2.0
    );
    for (i, (phase, c)) in phases.iter().zip(&curves).enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> = c
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let ly = TOP + 8.0 + 18.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            LEFT + 40.0,
            LEFT + 46.0,
            ly + 4.0,
            escape(&format!(
                "{} ({:.0}/s, p99 {:.3} ms)",
                phase.target,
                phase.measured.throughput(),
                phase.p99_ms()
            )),
            lx = LEFT + 16.0,
        );
    }
    out.push_str("</svg>\n");
    out
}

fn percentile_label(x: f64) -> String {
    let q = 100.0 * (1.0 - 10f64.powf(-x));
    let s = format!("{q:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::load::histogram;

    fn phase(target: &str, values: &[u64]) -> Phase {
        let mut h = histogram();
        for v in values {
            h.record(*v).unwrap();
        }
        Phase {
            target: target.into(),
            measured: Measured {
                ok: values.len() as u64,
                errors: 0,
                failures: BTreeMap::new(),
                latency: h,
                elapsed: Duration::from_secs(1),
            },
        }
    }

    #[test]
    fn json_has_the_percentiles() {
        let p = phase("service", &(1..=1000).collect::<Vec<_>>());
        let j = p.json();
        assert_eq!(j["ok"], 1000);
        let p99 = j["latency_ms"]["p99"].as_f64().unwrap();
        assert!((0.98..=1.0).contains(&p99), "{p99}");
        assert_eq!(j["latency_ms"]["max"].as_f64().unwrap(), 1.0);
        assert_eq!(j["per_second"].as_f64().unwrap(), 1000.0);
    }

    #[test]
    fn svg_draws_one_line_per_phase() {
        let a = phase("service", &[100, 200, 300, 5000]);
        let b = phase("echo <x>", &[50, 60, 70]);
        let s = svg("encrypt", &[&a, &b]);
        assert!(s.starts_with("<svg"));
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.contains("echo &lt;x&gt;"));
        assert!(s.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn axis_helpers() {
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(12.0), 20.0);
    }
}
