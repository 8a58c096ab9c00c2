//! Hand-written SVG charts:
//! - `completion.svg`: for every method, how many hosts had the blob after t
//!   seconds (a step line per method), with S/U marked;
//! - `uploads-<method>.svg`: every host's upload rate over time during one
//!   method, which shows whose uplink limits the swarm.

use std::fmt::Write as _;

use super::report::{MethodReport, Report, Setup};

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf",
];

pub fn completion_svg(report: &Report) -> String {
    let hosts = report.setup.hosts.max(1) as f64;
    let latest = report
        .methods
        .iter()
        .flat_map(|m| m.hosts.iter().filter_map(|h| h.done_s))
        .chain(report.setup.su_seconds)
        .fold(0.0_f64, f64::max);
    let s = &report.setup;
    let mut plot = Plot::new(
        &format!(
            "Hosts done over time: N={}, links {}, blob {}",
            s.hosts, s.rate, s.size
        ),
        "hosts done",
        nice_ceiling(latest.max(0.1)),
        hosts,
        (hosts / 8.0).ceil().max(1.0),
    );
    if let Some(su) = s.su_seconds {
        plot.marker(su, "S/U");
    }
    for (i, method) in report.methods.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut done: Vec<f64> = method.hosts.iter().filter_map(|h| h.done_s).collect();
        done.sort_by(f64::total_cmp);
        let points: Vec<(f64, f64)> = done
            .iter()
            .enumerate()
            .map(|(k, t)| (*t, k as f64 + 1.0))
            .collect();
        plot.steps(&points, color);
        plot.dots(&points, color);
        let label = match method.makespan_s {
            Some(m) => format!("{} ({m:.1} s)", method.method),
            None => format!("{} (failed)", method.method),
        };
        plot.legend(i, color, &label);
    }
    plot.finish()
}

/// Upload rate of every host over time, if the method has a timeline.
pub fn uploads_svg(method: &MethodReport, setup: &Setup) -> Option<String> {
    let timeline = method.timeline.as_ref()?;
    let mut series: Vec<Vec<(f64, f64)>> = vec![Vec::new(); timeline.hosts.len()];
    for pair in timeline.samples.windows(2) {
        let dt = pair[1].t_s - pair[0].t_s;
        if dt <= 0.0 {
            continue;
        }
        let t = (pair[0].t_s + pair[1].t_s) / 2.0;
        for (h, points) in series.iter_mut().enumerate() {
            let bytes = pair[1].tx_bytes[h].saturating_sub(pair[0].tx_bytes[h]);
            points.push((t, bytes as f64 * 8.0 / dt / 1e6));
        }
    }
    let last_t = timeline.samples.last().map_or(0.0, |s| s.t_s);
    let peak = series.iter().flatten().map(|p| p.1).fold(0.0_f64, f64::max);
    let y_max = nice_ceiling(
        setup
            .rate_bits_per_sec
            .map_or(peak, |b| b as f64 / 1e6 * 1.1)
            .max(peak)
            .max(1.0),
    );
    let mut plot = Plot::new(
        &format!(
            "{}: upload rate per host (links {}, blob {})",
            method.method, setup.rate, setup.size
        ),
        "Mbit/s sent",
        nice_ceiling(last_t.max(0.1)),
        y_max,
        y_max / 5.0,
    );
    if let Some(su) = setup.su_seconds {
        plot.marker(su, "S/U");
    }
    for (i, (host, points)) in timeline.hosts.iter().zip(&series).enumerate() {
        let color = COLORS[i % COLORS.len()];
        plot.line(points, color);
        let sent = timeline.samples.last().zip(timeline.samples.first());
        let sent = sent.map_or(0, |(last, first)| {
            last.tx_bytes[i].saturating_sub(first.tx_bytes[i])
        });
        plot.legend(
            i,
            color,
            &format!("{host} ({:.2} x S)", sent as f64 / setup.size_bytes.max(1) as f64),
        );
    }
    Some(plot.finish())
}

/// One chart: axes from 0 to `x_max` seconds and 0 to `y_max`.
struct Plot {
    svg: String,
    x_max: f64,
    y_max: f64,
}

impl Plot {
    fn new(title: &str, y_label: &str, x_max: f64, y_max: f64, y_step: f64) -> Plot {
        let mut plot = Plot {
            svg: String::new(),
            x_max,
            y_max,
        };
        let (w, h) = (plot_w(), plot_h());
        let svg = &mut plot.svg;
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            svg,
            r#"<text x="{LEFT}" y="18" font-size="14">{}</text>"#,
            escape(title)
        );
        let _ = writeln!(
            svg,
            r##"<path d="M{LEFT},{TOP} V{} H{}" stroke="black" fill="none"/>"##,
            TOP + h,
            LEFT + w
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">seconds after all downloads started</text>"#,
            LEFT + w / 2.0,
            HEIGHT - 12.0
        );
        let _ = writeln!(
            svg,
            r#"<text transform="translate(16,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
            TOP + h / 2.0,
            escape(y_label)
        );
        for i in 0..=5 {
            let secs = x_max * f64::from(i) / 5.0;
            let x = plot.x(secs);
            let _ = writeln!(
                plot.svg,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{0}" stroke="#ddd"/><text x="{x:.1}" y="{1}" text-anchor="middle">{2}</text>"##,
                TOP + h,
                TOP + h + 16.0,
                trim(secs)
            );
        }
        let mut value = 0.0;
        while value <= y_max + 1e-9 {
            let y = plot.y(value) + 4.0;
            let _ = writeln!(
                plot.svg,
                r#"<text x="{}" y="{y:.1}" text-anchor="end">{}</text>"#,
                LEFT - 6.0,
                trim(value)
            );
            value += y_step.max(f64::EPSILON);
        }
        plot
    }

    fn x(&self, secs: f64) -> f64 {
        LEFT + secs / self.x_max * plot_w()
    }

    fn y(&self, value: f64) -> f64 {
        TOP + plot_h() - value / self.y_max * plot_h()
    }

    /// A dashed vertical line at `secs`.
    fn marker(&mut self, secs: f64, label: &str) {
        let x = self.x(secs);
        let _ = writeln!(
            self.svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{}" stroke="#888" stroke-dasharray="4,4"/><text x="{x:.1}" y="{}" fill="#555"> {}</text>"##,
            TOP + plot_h(),
            TOP + 12.0,
            escape(label)
        );
    }

    /// A staircase from the origin through `points` (sorted by x).
    fn steps(&mut self, points: &[(f64, f64)], color: &str) {
        let mut d = format!("M{:.1},{:.1}", self.x(0.0), self.y(0.0));
        for (x, y) in points {
            let _ = write!(d, " H{:.1} V{:.1}", self.x(*x), self.y(*y));
        }
        let _ = writeln!(
            self.svg,
            r#"<path d="{d}" stroke="{color}" stroke-width="2" fill="none"/>"#
        );
    }

    /// A polyline through `points`.
    fn line(&mut self, points: &[(f64, f64)], color: &str) {
        let coords: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", self.x(*x), self.y(*y)))
            .collect();
        let _ = writeln!(
            self.svg,
            r#"<polyline points="{}" stroke="{color}" stroke-width="1.5" fill="none"/>"#,
            coords.join(" ")
        );
    }

    fn dots(&mut self, points: &[(f64, f64)], color: &str) {
        for (x, y) in points {
            let (cx, cy) = (self.x(*x), self.y(*y));
            let _ = writeln!(
                self.svg,
                r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="3" fill="{color}"/>"#
            );
        }
    }

    /// Entry `index` of the legend right of the plot.
    fn legend(&mut self, index: usize, color: &str, label: &str) {
        let y = TOP + 20.0 + 20.0 * index as f64;
        let x = LEFT + plot_w() + 12.0;
        let _ = writeln!(
            self.svg,
            r#"<rect x="{x}" y="{}" width="14" height="4" fill="{color}"/><text x="{}" y="{y}">{}</text>"#,
            y - 4.0,
            x + 20.0,
            escape(label)
        );
    }

    fn finish(mut self) -> String {
        self.svg.push_str("</svg>\n");
        self.svg
    }
}

fn plot_w() -> f64 {
    WIDTH - LEFT - RIGHT
}

fn plot_h() -> f64 {
    HEIGHT - TOP - BOTTOM
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * magnitude)
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings() {
        assert_eq!(nice_ceiling(17.7), 20.0);
        assert_eq!(nice_ceiling(89.8), 100.0);
        assert_eq!(nice_ceiling(0.3), 0.5);
        assert_eq!(trim(2.50), "2.5");
    }
}
