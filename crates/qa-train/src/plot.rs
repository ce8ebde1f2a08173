//! The training curve: loss per logged step, and EM/F1 per evaluation when there are any,
//! as an SVG (no font files needed; the viewer renders the text).

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::metrics_log::MetricsRecord;

/// Why the curve was not written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error(transparent)]
    Draw(#[from] DrawingAreaErrorKind<std::io::Error>),
    #[error(transparent)]
    Write(#[from] squad_core::Error),
}

/// `(step, value)` of the records `pick` finds a finite value in.
fn series(
    records: &[MetricsRecord],
    pick: impl Fn(&MetricsRecord) -> Option<f64>,
) -> Vec<(f64, f64)> {
    records
        .iter()
        .filter_map(|r| Some((r.step() as f64, pick(r)?)))
        .filter(|(_, y)| y.is_finite())
        .collect()
}

fn step_loss(record: &MetricsRecord) -> Option<f64> {
    match record {
        MetricsRecord::Step(r) => Some(r.loss),
        _ => None,
    }
}

/// An evaluation metric (`exact_match`, `f1`) of an eval record.
fn eval_metric(record: &MetricsRecord, key: &str) -> Option<f64> {
    match record {
        MetricsRecord::Eval(r) => r.eval.get(key)?.as_f64(),
        _ => None,
    }
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
) -> Result<Chart<'a>, PlotError> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..last_step, y)?;
    chart.configure_mesh().x_desc("optimizer step").draw()?;
    Ok(chart)
}

/// Writes the plot to `path` (atomically). Nothing to plot: no file.
pub fn training_curve(records: &[MetricsRecord], path: &Path) -> Result<bool, PlotError> {
    let loss = series(records, step_loss);
    if loss.is_empty() {
        return Ok(false);
    }
    let metric = |key: &'static str| series(records, move |r| eval_metric(r, key));
    let (em, f1) = (metric("exact_match"), metric("f1"));
    let last_step = loss.iter().map(|p| p.0).fold(1.0, f64::max);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((1, if f1.is_empty() { 1 } else { 2 }));
        let (lo, hi) = range(&loss);
        let mut chart = panel(&panels[0], "training loss", last_step, lo..hi)?;
        chart.draw_series(LineSeries::new(loss, &BLUE))?;
        if !f1.is_empty() {
            let mut chart = panel(&panels[1], "eval EM / F1", last_step, 0f64..100f64)?;
            for (points, color, name) in [(em, &RED, "EM"), (f1, &GREEN, "F1")] {
                chart
                    .draw_series(LineSeries::new(points.clone(), color))?
                    .label(name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
                chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
            }
            chart.configure_series_labels().border_style(BLACK).draw()?;
        }
        root.present()?;
    }
    squad_core::fsutil::write_atomic_bytes(path, svg.as_bytes())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics_log::{DoneRecord, EvalRecord, StepRecord};

    fn step(step: usize, loss: f64) -> MetricsRecord {
        MetricsRecord::Step(StepRecord {
            epoch: 0.0,
            features_per_second: 1.0,
            grad_norm: 1.0,
            learning_rate: 1e-5,
            loss,
            step,
            train_seconds: 1.0,
        })
    }

    #[test]
    fn draws_loss_and_eval_panels_and_nothing_without_steps() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("curve.svg");
        let done = MetricsRecord::Done(DoneRecord {
            done: true,
            step: 2,
            train_features_per_second: 1.0,
            train_loss: 5.0,
            train_seconds: 2.0,
        });
        assert!(!training_curve(std::slice::from_ref(&done), &path).unwrap());
        assert!(!path.exists());

        let mut records = vec![step(1, 6.0), step(2, f64::NAN), step(3, 4.0), done];
        assert!(training_curve(&records, &path).unwrap());
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("training loss") && !svg.contains("eval EM / F1"));
        let eval = serde_json::json!({"exact_match": 50.0, "f1": 60.0});
        records.push(MetricsRecord::Eval(EvalRecord {
            epoch: 1.0,
            eval: eval.as_object().unwrap().clone(),
            eval_features_per_second: 10.0,
            step: 3,
        }));
        assert!(training_curve(&records, &path).unwrap());
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("eval EM / F1") && svg.contains("polyline"));
    }
}
