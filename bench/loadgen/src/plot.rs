//! The scale curve, drawn with `plotters` as SVG: two panels (throughput, p99 latency) against
//! the connection count, one line per path. The levels (8, 32, 128, 512) grow by ×4, so they
//! sit evenly spaced: the x axis is log-scaled by construction.

use plotters::prelude::*;

/// One point: (connections, req/s, p99 ms).
type Point = (usize, f64, f64);
/// A panel: its title and the value of a point it plots.
type Panel = (&'static str, fn(&Point) -> f64);

/// One path's points.
pub struct Series {
    pub name: String,
    pub points: Vec<Point>,
}

const SIZE: (u32, u32) = (960, 420);
const COLORS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
];

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

/// The x-axis label at `x`: the connection count when `x` is a level's position, else none.
fn level_label(levels: &[usize], x: f64) -> String {
    let i = x.round();
    if (x - i).abs() > 1e-6 || i < 0.0 {
        return String::new();
    }
    // A whole, non-negative position (checked above).
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let i = i as usize;
    levels.get(i).map(ToString::to_string).unwrap_or_default()
}

fn failed(e: impl std::fmt::Display) -> String {
    format!("drawing the scale curve: {e}")
}

/// The SVG document for `series` over the connection counts `levels`.
pub fn svg(title: &str, levels: &[usize], series: &[Series]) -> Result<String, String> {
    let mut doc = String::new();
    {
        let root = SVGBackend::with_string(&mut doc, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let root = root.titled(title, ("sans-serif", 17)).map_err(failed)?;
        let panels: [Panel; 2] = [("req/s", |p| p.1), ("p99 latency, ms", |p| p.2)];
        let last = levels.len().saturating_sub(1).max(1) as f64;
        for (area, (label, value)) in root.split_evenly((1, 2)).iter().zip(panels) {
            let top = series
                .iter()
                .flat_map(|s| s.points.iter().map(value))
                .fold(0.0, f64::max);
            let top = nice_max(top);
            let mut chart = ChartBuilder::on(area)
                .caption(label, ("sans-serif", 14))
                .margin(14)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(-0.25..last + 0.25, 0.0..top)
                .map_err(failed)?;
            chart
                .configure_mesh()
                .x_labels(levels.len())
                .x_label_formatter(&|x| level_label(levels, *x))
                .x_desc("connections (log scale)")
                .y_label_formatter(&|y| match top >= 10.0 {
                    true => format!("{y:.0}"),
                    false => format!("{y:.1}"),
                })
                .light_line_style(TRANSPARENT)
                .draw()
                .map_err(failed)?;
            for (n, one) in series.iter().enumerate() {
                let color = COLORS[n % COLORS.len()];
                let points: Vec<(f64, f64)> = one
                    .points
                    .iter()
                    .filter_map(|p| Some((levels.iter().position(|l| *l == p.0)? as f64, value(p))))
                    .collect();
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                    .map_err(failed)?
                    .label(one.name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 22, y)], color.stroke_width(3))
                    });
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                    .map_err(failed)?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(failed)?;
        }
        root.present().map_err(failed)?;
    }
    Ok(doc)
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
    fn only_level_positions_are_labelled() {
        let levels = [8, 32, 128, 512];
        assert_eq!(level_label(&levels, 0.0), "8");
        assert_eq!(level_label(&levels, 3.0), "512");
        assert_eq!(level_label(&levels, 1.5), "");
        assert_eq!(level_label(&levels, 4.0), "");
        assert_eq!(level_label(&levels, -1.0), "");
    }

    #[test]
    fn every_point_and_level_is_drawn() {
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
        let doc = svg("scale", &[8, 32, 128], &series).expect("drawn");
        // plotters puts a text's content on a line of its own.
        let texts = doc.replace('\n', "");
        assert!(
            doc.starts_with("<svg") && doc.trim_end().ends_with("</svg>"),
            "{doc}"
        );
        // Two panels × (3 + 2) points.
        assert_eq!(doc.matches("<circle").count(), 10, "{doc}");
        // Each level labels the x axis of both panels.
        for level in ["8", "32", "128"] {
            assert_eq!(
                texts.matches(&format!(">{level}</text>")).count(),
                2,
                "{level}"
            );
        }
        // Both legends name both paths, escaped.
        assert_eq!(
            texts.matches(">POST /userinfo/ &lt;x&gt;</text>").count(),
            2,
            "{doc}"
        );
        assert!(!doc.contains("<x>"));
    }
}
