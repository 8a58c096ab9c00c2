//! `completion.svg`: for every method, how many hosts had the blob after t
//! seconds (a step line per method), with S/U marked. Hand-written SVG.

use std::fmt::Write as _;

use super::report::Report;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 160.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];

pub fn completion_svg(report: &Report) -> String {
    let hosts = report.setup.hosts.max(1) as f64;
    let latest = report
        .methods
        .iter()
        .flat_map(|m| m.hosts.iter().filter_map(|h| h.done_s))
        .chain(report.setup.su_seconds)
        .fold(0.0_f64, f64::max);
    let x_max = nice_ceiling(latest.max(0.1));
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |secs: f64| LEFT + secs / x_max * plot_w;
    let y = |count: f64| TOP + plot_h - count / hosts * plot_h;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let s = &report.setup;
    let title = format!(
        "Hosts done over time: N={}, links {}, blob {}",
        s.hosts, s.rate, s.size
    );
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="18" font-size="14">{}</text>"#,
        escape(&title)
    );

    // Axes, ticks and grid.
    let _ = writeln!(
        svg,
        r##"<path d="M{LEFT},{TOP} V{} H{}" stroke="black" fill="none"/>"##,
        TOP + plot_h,
        LEFT + plot_w
    );
    for i in 0..=5 {
        let secs = x_max * i as f64 / 5.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1}" stroke="#ddd"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3}</text>"##,
            x(secs),
            TOP + plot_h,
            TOP + plot_h + 16.0,
            trim(secs)
        );
    }
    let step = (hosts / 8.0).ceil().max(1.0);
    let mut count = 0.0;
    while count <= hosts {
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{:.1}" text-anchor="end">{count}</text>"##,
            LEFT - 6.0,
            y(count) + 4.0
        );
        count += step;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds after all downloads started</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 12.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(16,{}) rotate(-90)" text-anchor="middle">hosts done</text>"#,
        TOP + plot_h / 2.0
    );
    if let Some(su) = report.setup.su_seconds {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1}" stroke="#888" stroke-dasharray="4,4"/><text x="{0:.1}" y="{2}" fill="#555"> S/U</text>"##,
            x(su),
            TOP + plot_h,
            TOP + 12.0
        );
    }

    // One step line per method, and the legend.
    for (i, method) in report.methods.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut done: Vec<f64> = method.hosts.iter().filter_map(|h| h.done_s).collect();
        done.sort_by(f64::total_cmp);
        let mut path = format!("M{:.1},{:.1}", x(0.0), y(0.0));
        for (k, secs) in done.iter().enumerate() {
            let _ = write!(path, " H{:.1} V{:.1}", x(*secs), y(k as f64 + 1.0));
        }
        let _ = writeln!(
            svg,
            r#"<path d="{path}" stroke="{color}" stroke-width="2" fill="none"/>"#
        );
        for (k, secs) in done.iter().enumerate() {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                x(*secs),
                y(k as f64 + 1.0)
            );
        }
        let label = match method.makespan_s {
            Some(m) => format!("{} ({m:.1} s)", method.method),
            None => format!("{} (failed)", method.method),
        };
        let ly = TOP + 20.0 + 20.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<rect x="{}" y="{}" width="14" height="4" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
            LEFT + plot_w + 12.0,
            ly - 4.0,
            LEFT + plot_w + 32.0,
            ly,
            escape(&label)
        );
    }
    svg.push_str("</svg>\n");
    svg
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
