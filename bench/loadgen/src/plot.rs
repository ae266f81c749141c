//! The scale curve as an SVG written by hand: two panels (throughput, p99 latency) against the
//! connection count on a log-2 axis, one line per path. (`plotters` is not in the offline
//! registry this project builds from, and two line charts need no library.)

use std::fmt::Write as _;

/// One point: (connections, req/s, p99 ms).
type Point = (usize, f64, f64);
/// A panel: its title and the value of a point it plots.
type Panel = (&'static str, fn(&Point) -> f64);

/// One path's points.
pub struct Series {
    pub name: String,
    pub points: Vec<Point>,
}

const W: f64 = 920.0;
const H: f64 = 400.0;
const PANEL_W: f64 = 380.0;
const PANEL_H: f64 = 280.0;
const TOP: f64 = 60.0;
const LEFTS: [f64; 2] = [80.0, 540.0];
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// A round upper bound for an axis: 1, 2 or 5 times a power of ten, at least `max`.
fn nice_max(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|v| *v >= max)
        .unwrap_or(10.0 * power)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG document for `series` over the connection counts `levels`.
pub fn svg(title: &str, levels: &[usize], series: &[Series]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    let x_of = |i: usize, left: f64| {
        let n = levels.len().max(2) - 1;
        left + PANEL_W * i as f64 / n as f64
    };
    let panels: [Panel; 2] = [("req/s", |p| p.1), ("p99 latency, ms", |p| p.2)];
    for (panel, (label, value)) in panels.iter().enumerate() {
        let left = LEFTS[panel];
        let max = series
            .iter()
            .flat_map(|s| s.points.iter().map(value))
            .fold(0.0, f64::max);
        let top_value = nice_max(max);
        let y_of = |v: f64| TOP + PANEL_H - PANEL_H * (v / top_value).clamp(0.0, 1.0);
        // Frame, grid and labels.
        let _ = writeln!(
            s,
            r##"<rect x="{left}" y="{TOP}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#444"/>"##
        );
        for tick in 0..=4 {
            let v = top_value * f64::from(tick) / 4.0;
            let y = y_of(v);
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                left + PANEL_W,
                left - 6.0,
                y + 4.0,
                if top_value >= 10.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.1}")
                }
            );
        }
        for (i, level) in levels.iter().enumerate() {
            let x = x_of(i, left);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{}" stroke="#eee"/><text x="{x:.1}" y="{}" text-anchor="middle">{level}</text>"##,
                TOP + PANEL_H,
                TOP + PANEL_H + 16.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">connections (log scale)</text>"#,
            left + PANEL_W / 2.0,
            TOP + PANEL_H + 34.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{}</text>"#,
            left + PANEL_W / 2.0,
            TOP - 10.0,
            escape(label)
        );
        // One polyline with dots per series.
        for (n, one) in series.iter().enumerate() {
            let color = COLORS[n % COLORS.len()];
            let points: Vec<(f64, f64)> = one
                .points
                .iter()
                .filter_map(|p| {
                    let i = levels.iter().position(|l| *l == p.0)?;
                    Some((x_of(i, left), y_of(value(p))))
                })
                .collect();
            let path: Vec<String> = points
                .iter()
                .map(|(x, y)| format!("{x:.1},{y:.1}"))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
                path.join(" ")
            );
            for (x, y) in &points {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{color}"/>"#
                );
            }
        }
    }
    // Legend under the panels.
    for (n, one) in series.iter().enumerate() {
        let x = LEFTS[0] + 200.0 * n as f64;
        let y = H - 12.0;
        let color = COLORS[n % COLORS.len()];
        let _ = writeln!(
            s,
            r#"<line x1="{x}" y1="{}" x2="{}" y2="{}" stroke="{color}" stroke-width="3"/><text x="{}" y="{y}">{}</text>"#,
            y - 4.0,
            x + 24.0,
            y - 4.0,
            x + 30.0,
            escape(&one.name)
        );
    }
    let _ = writeln!(s, "</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(nice_max(4321.0), 5000.0);
        assert_eq!(nice_max(17.0), 20.0);
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(100.0), 100.0);
    }

    #[test]
    fn every_point_is_drawn() {
        let series = [
            Series {
                name: "GET /me".into(),
                points: vec![(8, 1000.0, 2.0), (32, 2000.0, 9.0), (128, 2100.0, 40.0)],
            },
            Series {
                name: "POST /userinfo/ <x>".into(),
                points: vec![(8, 500.0, 4.0), (32, 900.0, 20.0)],
            },
        ];
        let doc = svg("scale", &[8, 32, 128], &series);
        assert!(doc.starts_with("<svg") && doc.trim_end().ends_with("</svg>"));
        // Two panels × (3 + 2) points.
        assert_eq!(doc.matches("<circle").count(), 10);
        assert!(doc.contains("&lt;x&gt;") && !doc.contains("<x>"));
    }
}
