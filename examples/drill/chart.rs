//! The SVG chart: goodput, in flight and the learned limit, waiting-room
//! depth and breaker state over time, both stacks on one time axis.

use std::path::Path;

use plotters::prelude::*;

use super::run::{Sample, StackRun};
use super::scenario::Plan;

const BROWNOUT: RGBColor = RGBColor(31, 119, 180);
const BROWNOUT_LIGHT: RGBColor = RGBColor(140, 190, 230);
const BASELINE: RGBColor = RGBColor(214, 39, 40);
const BASELINE_LIGHT: RGBColor = RGBColor(240, 160, 160);
const CAPACITY: RGBColor = RGBColor(120, 120, 120);
const MAINTENANCE: RGBColor = RGBColor(240, 170, 0);

/// Writes the chart to `path`.
pub fn write_svg(
    path: &Path,
    plan: &Plan,
    brownout: &StackRun,
    baseline: &StackRun,
) -> Result<(), String> {
    draw(path, plan, brownout, baseline).map_err(|err| format!("{}: {err}", path.display()))
}

fn draw(
    path: &Path,
    plan: &Plan,
    brownout: &StackRun,
    baseline: &StackRun,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1400, 1200)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!(
            "brownout drill: scenario {:?}, seed {} — brownout (blue) vs plain tower (red)",
            plan.name, plan.seed
        ),
        ("sans-serif", 22),
    )?;
    let panels = root.split_evenly((4, 1));
    let hours = |t: f64| t / 3600.0;
    let x_max = hours(plan.total.as_secs_f64());
    let boundaries: Vec<f64> = plan
        .phases
        .iter()
        .skip(1)
        .map(|p| hours(p.start.as_secs_f64()))
        .collect();
    let x_fmt = |x: &f64| {
        let minutes = (x * 60.0).round() as u64;
        format!("{}:{:02}", minutes / 60, minutes % 60)
    };
    // Legends go where the longest phase starts (an outage: little to see).
    let longest = plan
        .phases
        .iter()
        .max_by_key(|p| p.duration)
        .map_or(0.0, |p| {
            hours(p.start.as_secs_f64() + p.duration.as_secs_f64() * 0.08)
        });
    let legend_at = (longest / x_max.max(1e-9)).clamp(0.0, 0.8);
    let maintenance: Vec<(f64, f64)> = plan
        .phases
        .iter()
        .filter(|p| p.maintenance.is_some())
        .map(|p| (hours(p.start.as_secs_f64()), hours(p.end().as_secs_f64())))
        .collect();
    let shade = |bottom: f64, top: f64| {
        maintenance.iter().map(move |&(from, until)| {
            Rectangle::new(
                [(from, bottom), (until, top)],
                MAINTENANCE.mix(0.12).filled(),
            )
        })
    };
    let phase_line = |x: f64, top: f64| {
        PathElement::new(vec![(x, 0.0), (x, top)], ShapeStyle::from(&BLACK.mix(0.25)))
    };

    // 1. Goodput, and what the back end could serve.
    let capacity: Vec<(f64, f64)> = plan
        .phases
        .iter()
        .flat_map(|p| {
            let c = p.throughput(plan);
            [
                (hours(p.start.as_secs_f64()), c),
                (hours(p.end().as_secs_f64()), c),
            ]
        })
        .collect();
    let offered: Vec<(f64, f64)> = plan
        .phases
        .iter()
        .flat_map(|p| {
            [
                (hours(p.start.as_secs_f64()), p.rate),
                (hours(p.end().as_secs_f64()), p.rate),
            ]
        })
        .collect();
    let top = max_of(
        capacity
            .iter()
            .chain(&offered)
            .map(|(_, y)| *y)
            .chain(brownout.samples.iter().map(|s| s.goodput))
            .chain(baseline.samples.iter().map(|s| s.goodput)),
    ) * 1.15;
    let mut chart = ChartBuilder::on(&panels[0])
        .margin(8)
        .caption("goodput: requests served per second", ("sans-serif", 16))
        .x_label_area_size(28)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..top)?;
    chart
        .configure_mesh()
        .x_label_formatter(&x_fmt)
        .y_desc("req/s")
        .light_line_style(WHITE)
        .draw()?;
    chart.draw_series(shade(0.0, top))?;
    chart.draw_series(boundaries.iter().map(|&x| phase_line(x, top)))?;
    for p in &plan.phases {
        chart.draw_series(std::iter::once(Text::new(
            p.name.clone(),
            (hours(p.start.as_secs_f64()) + x_max * 0.004, top * 0.97),
            ("sans-serif", 13),
        )))?;
    }
    chart
        .draw_series(LineSeries::new(
            offered,
            ShapeStyle::from(&CAPACITY.mix(0.5)),
        ))?
        .label("offered (new requests)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], CAPACITY.mix(0.5)));
    chart
        .draw_series(LineSeries::new(capacity, CAPACITY.stroke_width(2)))?
        .label("back end's capacity")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], CAPACITY.stroke_width(2)));
    series(
        &mut chart,
        &baseline.samples,
        |s| Some(s.goodput),
        BASELINE,
        "baseline",
    )?;
    series(
        &mut chart,
        &brownout.samples,
        |s| Some(s.goodput),
        BROWNOUT,
        "brownout",
    )?;
    legend(&mut chart, legend_at)?;

    // 2. In flight and the limit.
    let top = max_of(
        brownout
            .samples
            .iter()
            .chain(&baseline.samples)
            .flat_map(|s| [s.inflight as f64, f64::from(s.limit.unwrap_or(0))]),
    ) * 1.15;
    let mut chart = ChartBuilder::on(&panels[1])
        .margin(8)
        .caption(
            "calls in flight to the back end, and the limit (brownout: learned; baseline: fixed)",
            ("sans-serif", 16),
        )
        .x_label_area_size(28)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..top)?;
    chart
        .configure_mesh()
        .x_label_formatter(&x_fmt)
        .y_desc("calls")
        .light_line_style(WHITE)
        .draw()?;
    chart.draw_series(shade(0.0, top))?;
    chart.draw_series(boundaries.iter().map(|&x| phase_line(x, top)))?;
    series(
        &mut chart,
        &baseline.samples,
        |s| Some(s.inflight as f64),
        BASELINE_LIGHT,
        "baseline in flight",
    )?;
    series(
        &mut chart,
        &baseline.samples,
        |s| s.limit.map(f64::from),
        BASELINE,
        "baseline limit",
    )?;
    series(
        &mut chart,
        &brownout.samples,
        |s| Some(s.inflight as f64),
        BROWNOUT_LIGHT,
        "brownout in flight",
    )?;
    series(
        &mut chart,
        &brownout.samples,
        |s| s.limit.map(f64::from),
        BROWNOUT,
        "brownout learned limit",
    )?;
    legend(&mut chart, legend_at)?;

    // 3. Waiting room.
    let top = max_of(brownout.samples.iter().map(|s| s.waiting as f64)).max(1.0) * 1.15;
    let mut chart = ChartBuilder::on(&panels[2])
        .margin(8)
        .caption(
            "waiting-room depth (the baseline has none: it sheds or times out)",
            ("sans-serif", 16),
        )
        .x_label_area_size(28)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..top)?;
    chart
        .configure_mesh()
        .x_label_formatter(&x_fmt)
        .y_desc("requests")
        .light_line_style(WHITE)
        .draw()?;
    chart.draw_series(shade(0.0, top))?;
    chart.draw_series(boundaries.iter().map(|&x| phase_line(x, top)))?;
    series(
        &mut chart,
        &brownout.samples,
        |s| Some(s.waiting as f64),
        BROWNOUT,
        "brownout waiting",
    )?;
    legend(&mut chart, legend_at)?;

    // 4. Breaker state.
    let mut chart = ChartBuilder::on(&panels[3])
        .margin(8)
        .caption(
            "brownout's breaker, sampled (the baseline has none); shaded: planned maintenance",
            ("sans-serif", 16),
        )
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, -0.2..3.2)?;
    chart
        .configure_mesh()
        .x_label_formatter(&x_fmt)
        .x_desc("time since the start (h:mm)")
        .y_labels(4)
        .y_label_formatter(&|y: &f64| {
            match y.round() as i64 {
                0 => "closed",
                1 => "half-open",
                2 => "open",
                3 => "forced",
                _ => "",
            }
            .to_owned()
        })
        .light_line_style(WHITE)
        .draw()?;
    chart.draw_series(shade(-0.2, 3.2))?;
    chart.draw_series(boundaries.iter().map(|&x| {
        PathElement::new(
            vec![(x, -0.2), (x, 3.2)],
            ShapeStyle::from(&BLACK.mix(0.25)),
        )
    }))?;
    let steps: Vec<(f64, f64)> = brownout
        .samples
        .windows(2)
        .filter_map(|w| {
            Some([
                (hours(w[0].t), w[0].breaker?),
                (hours(w[1].t), w[0].breaker?),
            ])
        })
        .flatten()
        .collect();
    chart.draw_series(LineSeries::new(steps, BROWNOUT.stroke_width(2)))?;

    root.present()?;
    Ok(())
}

type Chart<'a> = ChartContext<
    'a,
    SVGBackend<'a>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn series(
    chart: &mut Chart<'_>,
    samples: &[Sample],
    value: impl Fn(&Sample) -> Option<f64>,
    color: RGBColor,
    label: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|s| Some((s.t / 3600.0, value(s)?)))
        .collect();
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(2)))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    Ok(())
}

/// The legend, `at` (a share of the width) from the left of the plot.
fn legend(chart: &mut Chart<'_>, at: f64) -> Result<(), Box<dyn std::error::Error>> {
    let width = chart.plotting_area().dim_in_pixel().0;
    let x = (f64::from(width) * at) as i32;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::Coordinate(x, 5))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 13))
        .draw()?;
    Ok(())
}

fn max_of(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(1.0, f64::max)
}
