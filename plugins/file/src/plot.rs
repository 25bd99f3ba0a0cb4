//! `telemetry.png`: like the original, a grid of two columns of subplots titled
//! "Training Statistics", one per y key against the x key, each the running mean with a
//! band of plus/minus one running standard deviation, y limits fitted to the band.
//!
//! Series come from the host's downsampled reads (a few points per pixel column, keeping
//! each bucket's first, last, minimum and maximum), so a redraw at a million rows costs
//! what it costs at a thousand. Up to that many rows the curve is exactly the original's
//! (window `moving_average` rows); beyond, the window spans the same share of the points,
//! and the band is the spread of the kept points, so no spike is hidden.

use std::io::BufWriter;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::config::PlotSettings;
use crate::text_backend::TextBackend;
use telemetry_plugin::history::{self, RowRange, Span};

/// The curve colour (matplotlib's first colour); tests look for it.
pub const CURVE: RGBColor = RGBColor(31, 119, 180);

struct Curve {
    name: String,
    /// (x, mean, std) per point.
    points: Vec<(f64, f64, f64)>,
    /// Points before this index are the first, partial window; y limits ignore them.
    settled_from: usize,
}

fn read_points(settings: &PlotSettings, ykey: &str, budget: u32) -> Result<(Vec<f64>, Vec<f64>, bool), String> {
    let rows = history::row_count();
    let error = |error| format!("reading {ykey}: {error:?}");
    if rows <= u64::from(budget) {
        let range = RowRange { first: 0, count: rows };
        let xs = history::read_series(&settings.xkey, range).map_err(error)?;
        let ys = history::read_series(ykey, range).map_err(error)?;
        return Ok((xs, ys, true));
    }
    let points = history::downsample(ykey, Span::All, budget).map_err(error)?;
    let mut xs = Vec::with_capacity(points.rows.len());
    for row in &points.rows {
        let x = history::read_series(&settings.xkey, RowRange { first: *row, count: 1 }).map_err(error)?;
        xs.push(x.first().copied().unwrap_or(f64::NAN));
    }
    Ok((xs, points.values, false))
}

fn curve(settings: &PlotSettings, ykey: &str, budget: u32) -> Result<Curve, String> {
    let (xs, ys, exact) = read_points(settings, ykey, budget)?;
    let pairs: Vec<(f64, f64)> = xs.into_iter().zip(ys).filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
    let window = if exact {
        settings.moving_average
    } else {
        let rows = history::row_count().max(1) as f64;
        ((settings.moving_average as f64 * pairs.len() as f64 / rows).round() as usize).max(4)
    };
    let mut points = Vec::with_capacity(pairs.len());
    let (mut sum, mut squares) = (0.0, 0.0);
    for (index, (x, y)) in pairs.iter().enumerate() {
        sum += y;
        squares += y * y;
        if index >= window {
            let old = pairs[index - window].1;
            sum -= old;
            squares -= old * old;
        }
        let count = (index + 1).min(window) as f64;
        let mean = sum / count;
        let variance = (squares / count - mean * mean).max(0.0);
        points.push((*x, mean, variance.sqrt()));
    }
    Ok(Curve { name: ykey.to_string(), points, settled_from: window.saturating_sub(1) })
}

/// Axis labels that fit: 250000000 as 250M, 12500 as 12.5k, small numbers as they are.
fn short_number(value: f64) -> String {
    let magnitude = value.abs();
    let (scaled, suffix) = match magnitude {
        _ if magnitude >= 1e9 => (value / 1e9, "G"),
        _ if magnitude >= 1e6 => (value / 1e6, "M"),
        _ if magnitude >= 1e4 => (value / 1e3, "k"),
        _ => (value, ""),
    };
    let text = if suffix.is_empty() && magnitude < 10.0 { format!("{scaled:.3}") } else { format!("{scaled:.1}") };
    let text = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.').to_string() } else { text };
    format!("{text}{suffix}")
}

fn limits(values: impl Iterator<Item = (f64, f64)>) -> (f64, f64) {
    let (low, high) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), (a, b)| (low.min(a), high.max(b)));
    if !low.is_finite() || !high.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((high - low) * 0.05).max(high.abs().max(1.0) * 1e-6);
    (low - pad, high + pad)
}

fn draw_curve<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, curve: &Curve, xkey: &str) -> Result<(), String> {
    let error = |error: DrawingAreaErrorKind<DB::ErrorType>| format!("drawing {}: {error}", curve.name);
    let (x_low, x_high) = limits(curve.points.iter().map(|(x, _, _)| (*x, *x)));
    let settled = if curve.points.len() > curve.settled_from { &curve.points[curve.settled_from..] } else { &curve.points[..] };
    let (y_low, y_high) = limits(settled.iter().map(|(_, mean, std)| (mean - std, mean + std)));
    let mut chart = ChartBuilder::on(area)
        .caption(&curve.name, ("sans-serif", 18))
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(x_low..x_high, y_low..y_high)
        .map_err(error)?;
    chart
        .configure_mesh()
        .x_desc(xkey)
        .y_desc(&curve.name)
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&|value| short_number(*value))
        .y_label_formatter(&|value| short_number(*value))
        .label_style(("sans-serif", 12))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(error)?;
    if curve.points.is_empty() {
        return Ok(());
    }
    let clamp = |y: f64| y.clamp(y_low, y_high);
    let mut band: Vec<(f64, f64)> = curve.points.iter().map(|(x, mean, std)| (*x, clamp(mean + std))).collect();
    band.extend(curve.points.iter().rev().map(|(x, mean, std)| (*x, clamp(mean - std))));
    chart.draw_series(std::iter::once(Polygon::new(band, CURVE.mix(0.25).filled()))).map_err(error)?;
    chart.draw_series(LineSeries::new(curve.points.iter().map(|(x, mean, _)| (*x, clamp(*mean))), CURVE.stroke_width(2))).map_err(error)?;
    Ok(())
}

/// Renders the plot into an RGB buffer.
pub fn render(settings: &PlotSettings) -> Result<Vec<u8>, String> {
    let (width, height) = (settings.width, settings.height);
    let columns = 2;
    let rows = settings.ykeys.len().div_ceil(columns);
    // About two points per pixel column of a subplot.
    let budget = (width / columns as u32).max(50) * 2;
    let curves = settings.ykeys.iter().map(|ykey| curve(settings, ykey, budget)).collect::<Result<Vec<_>, _>>()?;
    let mut buffer = vec![255u8; (width * height * 3) as usize];
    {
        let backend = TextBackend::new(BitMapBackend::with_buffer(&mut buffer, (width, height)));
        let root = backend.into_drawing_area();
        root.fill(&WHITE).map_err(|error| error.to_string())?;
        let root = root.titled("Training Statistics", ("sans-serif", 26)).map_err(|error| error.to_string())?;
        let areas = root.split_evenly((rows, columns));
        for (curve, area) in curves.iter().zip(areas.iter()) {
            draw_curve(area, curve, &settings.xkey)?;
        }
        root.present().map_err(|error| error.to_string())?;
    }
    Ok(buffer)
}

/// Draws `telemetry.png` in `dir`, atomically.
pub fn draw(settings: &PlotSettings, dir: &Path) -> Result<(), String> {
    let buffer = render(settings)?;
    let path = dir.join("telemetry.png");
    let temporary = dir.join("telemetry.png.tmp");
    let file = std::fs::File::create(&temporary).map_err(|error| format!("{}: {error}", temporary.display()))?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), settings.width, settings.height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fastest);
    let mut writer = encoder.write_header().map_err(|error| error.to_string())?;
    writer.write_image_data(&buffer).map_err(|error| error.to_string())?;
    writer.finish().map_err(|error| error.to_string())?;
    std::fs::rename(&temporary, &path).map_err(|error| format!("{}: {error}", path.display()))
}
