//! `--plot FILE.svg`: one SVG with a panel per measured distribution: the uncontended
//! acquire+release latency and the handoff gap (ours against the floor, as cumulative
//! distributions on a logarithmic time axis), and throughput against clients (contended). Drawn
//! with `plotters`, no external tools.

use std::path::Path;

use plotters::prelude::*;

use super::report::{self, Report};
use crate::exit::{self, Failure};

/// Width of the image, and height of one panel, in pixels.
const WIDTH: u32 = 960;
const PANEL: u32 = 400;

/// Colours by role, the same in every panel.
const OURS: RGBColor = RGBColor(214, 39, 40);
const OURS_TRY: RGBColor = RGBColor(255, 127, 14);
const FLOOR: RGBColor = RGBColor(31, 119, 180);
const REFERENCE: RGBColor = RGBColor(44, 160, 44);

/// One line of a distribution panel: label, colour, points (µs, fraction).
type Series = (String, RGBColor, Vec<(f64, f64)>);

/// A panel: a distribution plot or a throughput plot.
enum Panel {
    Cdf { title: String, series: Vec<Series> },
    Throughput { title: String, points: Vec<(f64, f64)>, floor: Vec<(f64, f64)>, uncontended: Option<f64> },
}

/// Writes the plot of `report` to `path`.
///
/// # Errors
///
/// 74 when the file cannot be written or the plot cannot be drawn.
pub fn write(report: &Report, path: &Path) -> Result<(), Failure> {
    let panels = panels(report);
    let height = PANEL * u32::try_from(panels.len().max(1)).unwrap_or(1);
    let mut svg = String::new();
    draw(report, &panels, &mut svg, height)
        .map_err(|e| Failure::new(exit::IO_ERROR, format!("cannot draw the plot: {e}")))?;
    std::fs::write(path, svg).map_err(|e| Failure::io(format!("cannot write the plot to {}", path.display()), e))
}

fn panels(report: &Report) -> Vec<Panel> {
    let mut panels = Vec::new();
    let who = format!("{} ({})", report.backend, report.mode);
    if let Some(u) = &report.uncontended {
        let mut series = vec![
            (u.lock.what.clone(), OURS, u.lock.cdf.clone()),
            (u.try_lock.what.clone(), OURS_TRY, u.try_lock.cdf.clone()),
        ];
        series.extend(u.floors.iter().enumerate().map(|(i, f)| match i {
            0 => (format!("floor: {}", f.what), FLOOR, f.cdf.clone()),
            _ => (format!("ref: {}", f.what), REFERENCE, f.cdf.clone()),
        }));
        panels.push(Panel::Cdf { title: format!("uncontended acquire + release latency, {who}"), series });
    }
    if let Some(h) = &report.handoff
        && h.skipped.is_none()
    {
        let mut series = vec![(h.ours.what.clone(), OURS, h.ours.cdf.clone())];
        if let Some(f) = &h.floor {
            series.push((format!("floor: {}", f.what), FLOOR, f.cdf.clone()));
        }
        panels.push(Panel::Cdf { title: format!("handoff gap: release → waiting peer holds, {who}"), series });
    }
    if let Some(c) = &report.contended
        && !c.is_empty()
    {
        let kind = c.first().map_or("clients", |r| r.kind.as_str());
        panels.push(Panel::Throughput {
            title: format!("contended throughput against {kind}, {who}"),
            points: c.iter().map(|r| (f64::from(r.clients), r.ops_per_sec)).collect(),
            floor: c.iter().filter_map(|r| r.floor.as_ref().map(|f| (f64::from(r.clients), f.ops_per_sec))).collect(),
            uncontended: report.uncontended.as_ref().map(|u| u.lock.ops_per_sec),
        });
    }
    panels
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(report: &Report, panels: &[Panel], svg: &mut String, height: u32) -> DrawResult {
    let root = SVGBackend::with_string(svg, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)?;
    if panels.is_empty() {
        root.draw(&Text::new(
            format!("interlock bench {}: no latency or throughput workload was run", report.backend),
            (20, 40),
            ("sans-serif", 18),
        ))?;
    }
    let areas = root.split_evenly((panels.len().max(1), 1));
    for (panel, area) in panels.iter().zip(&areas) {
        match panel {
            Panel::Cdf { title, series } => cdf(area, title, series)?,
            Panel::Throughput { title, points, floor, uncontended } => {
                throughput(area, title, points, floor, *uncontended)?
            }
        }
    }
    root.present()?;
    Ok(())
}

/// Cumulative distributions on a log time axis (µs), clipped at the largest 99.9th percentile so
/// one outlier does not squash the rest.
fn cdf<DB: DrawingBackend>(area: &DrawingArea<DB, plotters::coord::Shift>, title: &str, series: &[Series]) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let lo = series.iter().flat_map(|(_, _, s)| s.first()).map(|p| p.0).fold(f64::INFINITY, f64::min);
    let hi = series
        .iter()
        .filter_map(|(_, _, s)| s.iter().find(|p| p.1 >= 0.999).or(s.last()))
        .map(|p| p.0)
        .fold(0.0, f64::max);
    let (lo, hi) =
        if lo.is_finite() && hi > 0.0 { ((lo * 0.8).max(0.01), (hi * 1.25).max(lo * 2.0)) } else { (0.1, 1000.0) };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..100.0)?;
    chart
        .configure_mesh()
        .x_desc("latency (µs, log scale)")
        .y_desc("% of operations ≤ x")
        .x_labels(40)
        .max_light_lines(1)
        .x_label_formatter(&|v| if is_round(*v) { report::ns(*v * 1e3) } else { String::new() })
        .y_label_formatter(&|v| format!("{v:.0}%"))
        .draw()?;
    for (label, color, points) in series {
        let color = *color;
        let pts: Vec<(f64, f64)> =
            points.iter().filter(|p| p.0 >= lo && p.0 <= hi).map(|&(x, y)| (x, y * 100.0)).collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 13))
        .draw()?;
    Ok(())
}

/// True for 1, 2 and 5 times a power of ten: the only values a log axis labels, so labels never
/// crowd.
fn is_round(v: f64) -> bool {
    if v <= 0.0 {
        return false;
    }
    let mantissa = v / 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().any(|m| (mantissa - m).abs() < 1e-6)
}

/// Total acquisitions per second against the number of clients, with the uncontended rate and
/// half of it (the target) as reference lines.
fn throughput<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    points: &[(f64, f64)],
    floor: &[(f64, f64)],
    uncontended: Option<f64>,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    // Clients on a log2 axis, labelled at the powers of two.
    let log2 = |v: f64| v.max(1.0).log2();
    let x_lo = points.iter().map(|p| log2(p.0)).fold(1.0, f64::min) - 0.5;
    let x_hi = points.iter().map(|p| log2(p.0)).fold(1.0, f64::max) + 0.5;
    let points: Vec<(f64, f64)> = points.iter().map(|&(x, y)| (log2(x), y)).collect();
    let floor: Vec<(f64, f64)> = floor.iter().map(|&(x, y)| (log2(x), y)).collect();
    // Headroom above the data for the legend.
    let y_hi = points.iter().chain(&floor).map(|p| p.1).chain(uncontended).fold(1.0, f64::max) * 1.45;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(72)
        .build_cartesian_2d(x_lo..x_hi, 0.0..y_hi)?;
    chart
        .configure_mesh()
        .x_desc("clients (log scale)")
        .y_desc("acquisitions / s, all clients")
        .x_labels(24)
        .max_light_lines(1)
        .x_label_formatter(&|v| {
            if (v - v.round()).abs() < 1e-6 && v.round() >= 0.0 {
                format!("{:.0}", 2f64.powf(v.round()))
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|v| report::ops(*v))
        .draw()?;
    let ours = OURS;
    chart
        .draw_series(LineSeries::new(points, ours.stroke_width(2)).point_size(4))?
        .label("interlock, contended")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], ours.stroke_width(2)));
    if !floor.is_empty() {
        chart
            .draw_series(LineSeries::new(floor, FLOOR.stroke_width(2)).point_size(4))?
            .label("floor, contended (same critical section)")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], FLOOR.stroke_width(2)));
    }
    if let Some(u) = uncontended {
        for (value, label, color) in
            [(u, "interlock uncontended, 1 client", OURS_TRY), (u / 2.0, "target: half of uncontended", REFERENCE)]
        {
            chart
                .draw_series(DashedLineSeries::new([(x_lo, value), (x_hi, value)], 6, 4, color.stroke_width(1)))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(1)));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 13))
        .draw()?;
    Ok(())
}
