//! The training curve: loss per logged step, and EM/F1 per evaluation when there are any,
//! as an SVG (no font files needed; the viewer renders the text).

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use serde_json::{Map, Value};

fn series(
    records: &[Map<String, Value>],
    pick: impl Fn(&Map<String, Value>) -> Option<f64>,
) -> Vec<(f64, f64)> {
    records
        .iter()
        .filter_map(|r| Some((r.get("step")?.as_f64()?, pick(r)?)))
        .filter(|(_, y)| y.is_finite())
        .collect()
}

fn range(points: &[(f64, f64)]) -> (f64, f64) {
    let lo = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.05).max(1e-3);
    (lo - pad, hi + pad)
}

type Chart<'a> = ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// One titled panel over optimizer steps `0..last_step`, with its grid drawn.
fn panel<'a>(
    area: &DrawingArea<SVGBackend<'a>, plotters::coord::Shift>,
    caption: &str,
    last_step: f64,
    y: std::ops::Range<f64>,
) -> Result<Chart<'a>, String> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..last_step, y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("optimizer step")
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(chart)
}

/// Writes the plot to `path` (atomically). Nothing to plot: no file.
pub fn training_curve(records: &[Map<String, Value>], path: &Path) -> Result<bool, String> {
    let loss = series(records, |r| r.get("loss")?.as_f64());
    if loss.is_empty() {
        return Ok(false);
    }
    let metric = |key: &'static str| series(records, move |r| r.get("eval")?.get(key)?.as_f64());
    let (em, f1) = (metric("exact_match"), metric("f1"));
    let last_step = loss.iter().map(|p| p.0).fold(1.0, f64::max);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let panels = root.split_evenly((1, if f1.is_empty() { 1 } else { 2 }));
        let (lo, hi) = range(&loss);
        let mut chart = panel(&panels[0], "training loss", last_step, lo..hi)?;
        chart
            .draw_series(LineSeries::new(loss, &BLUE))
            .map_err(|e| e.to_string())?;
        if !f1.is_empty() {
            let mut chart = panel(&panels[1], "eval EM / F1", last_step, 0f64..100f64)?;
            for (points, color, name) in [(em, &RED, "EM"), (f1, &GREEN, "F1")] {
                chart
                    .draw_series(LineSeries::new(points.clone(), color))
                    .map_err(|e| e.to_string())?
                    .label(name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| e.to_string())?;
            }
            chart
                .configure_series_labels()
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    squad_core::fsutil::write_atomic_bytes(path, svg.as_bytes()).map_err(|e| e.to_string())?;
    Ok(true)
}
