//! The charts BENCHMARKS.md embeds: per backend, one panel per workload,
//! one bar per contender (its median), labelled with mq's ratio to it.

use std::path::Path;

use plotters::prelude::*;

use crate::{Kind, Result_};

fn colour(kind: Kind) -> RGBColor {
    match kind {
        Kind::Mq => RGBColor(0x1f, 0x77, 0xb4),
        Kind::Peer => RGBColor(0xff, 0x7f, 0x0e),
        Kind::Raw => RGBColor(0x7f, 0x7f, 0x7f),
    }
}

/// Draws `path`: the throughput of every contender of `backend`'s workloads.
pub fn throughput(path: &Path, backend: &str, results: &[&Result_]) -> Result<(), String> {
    // A panel is as high as its rows need, so that labels never overlap.
    let heights: Vec<u32> = results.iter().map(|r| panel_height(r.contenders.len())).collect();
    let height = 50 + heights.iter().sum::<u32>();
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (title, body) = root.split_vertically(50);
    title
        .titled(
            &format!(
                "{backend}: messages per second (latency: p50 and p99, µs), medians of interleaved rounds; blue mq, orange peers, grey raw client"
            ),
            ("sans-serif", 15),
        )
        .map_err(|e| e.to_string())?;
    let breaks: Vec<u32> = heights
        .iter()
        .scan(0, |at, h| {
            *at += h;
            Some(*at)
        })
        .take(heights.len().saturating_sub(1))
        .collect();
    let panels = body.split_by_breakpoints(&[] as &[u32], &breaks);
    for (area, r) in panels.iter().zip(results) {
        if r.latency {
            latency(area, r)?;
            continue;
        }
        let max = r.contenders.iter().map(|c| c.median).fold(1.0, f64::max);
        let n = r.contenders.len();
        let mq = r.contenders.iter().find(|c| c.kind == Kind::Mq).map(|c| c.median);
        let mut chart = panel(area, &r.workload, max * 2.0, n as f64, &|x| {
            format!("{:.0}k", x / 1000.0)
        })?;
        for (i, c) in r.contenders.iter().enumerate() {
            let top = n as f64 - i as f64 - 0.15;
            let bottom = n as f64 - i as f64 - 0.85;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(0.0, bottom), (c.median, top)],
                    colour(c.kind).filled(),
                )))
                .map_err(|e| e.to_string())?;
            let label = match (mq, c.kind) {
                (Some(q), Kind::Peer | Kind::Raw) if c.median > 0.0 => {
                    format!(
                        "{}: {:.0}  (mq / {}: {:.2})",
                        c.contender,
                        c.median,
                        c.contender,
                        q / c.median
                    )
                }
                _ => format!("{}: {:.0}", c.contender, c.median),
            };
            chart
                .draw_series(std::iter::once(Text::new(
                    label,
                    (c.median + max * 0.01, n as f64 - i as f64 - 0.3),
                    ("sans-serif", 12),
                )))
                .map_err(|e| e.to_string())?;
        }
    }
    root.present().map_err(|e| e.to_string())
}

/// The height of a panel of `rows` bars: its caption and x axis, and 22
/// pixels a bar.
fn panel_height(rows: usize) -> u32 {
    60 + 22 * u32::try_from(rows).unwrap_or(u32::MAX / 44).max(2)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// A latency panel: per contender a bar for p50 (light) and one for p99.
fn latency<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    r: &Result_,
) -> Result<(), String> {
    let rows: Vec<(String, Kind, f64, f64)> = r
        .contenders
        .iter()
        .map(|c| (c.contender.clone(), c.kind, median(&c.p50_us), median(&c.p99_us)))
        .collect();
    let max = rows.iter().map(|r| r.3).fold(1.0, f64::max);
    let mq = rows.iter().find(|r| r.1 == Kind::Mq).map(|r| (r.2, r.3));
    let n = rows.len() as f64;
    let mut chart = panel(area, &r.workload, max * 2.2, n, &|x| format!("{x:.0} µs"))?;
    for (i, (name, kind, p50, p99)) in rows.iter().enumerate() {
        let base = n - i as f64;
        let c = colour(*kind);
        chart
            .draw_series([
                Rectangle::new([(0.0, base - 0.5), (*p99, base - 0.15)], c.filled()),
                Rectangle::new([(0.0, base - 0.85), (*p50, base - 0.5)], c.mix(0.45).filled()),
            ])
            .map_err(|e| e.to_string())?;
        let ratio = match mq {
            Some((m50, m99)) if *kind != Kind::Mq && *p50 > 0.0 && *p99 > 0.0 => {
                format!("  (mq / {name}: p50 {:.2}, p99 {:.2})", m50 / p50, m99 / p99)
            }
            _ => String::new(),
        };
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{name}: p50 {p50:.0} µs, p99 {p99:.0} µs{ratio}"),
                (*p99 + max * 0.01, base - 0.3),
                ("sans-serif", 12),
            )))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

type Panel<'a, DB> = ChartContext<
    'a,
    DB,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// One workload's panel: its caption, an x axis up to `x_max` labelled by
/// `x_label`, `rows` bars high, no y axis.
fn panel<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    x_max: f64,
    rows: f64,
    x_label: &dyn Fn(&f64) -> String,
) -> Result<Panel<'a, DB>, String> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 14))
        .margin(6)
        .x_label_area_size(22)
        .y_label_area_size(10)
        .build_cartesian_2d(0.0..x_max, 0.0..rows)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .light_line_style(WHITE)
        .x_label_formatter(x_label)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(chart)
}
