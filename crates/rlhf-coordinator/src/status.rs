//! What the run looks like from outside: the admin API's status, progress on a terminal
//! (a bar) or in logs (one line per iteration), and the end-of-run plot.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressStyle};
use rlhf_data::MetricsRecord;
use rlhf_proto::v1;

/// Every state a run's status can be in (`StatusResponse.state`), in the order a run meets
/// them; the metrics endpoint reports each.
pub const STATES: [&str; 7] = [
    "starting", "running", "pausing", "paused", "stopping", "finished", "failed",
];

/// The run's status, shared with the admin service.
#[derive(Debug, Clone, Default)]
pub struct SharedStatus(Arc<Mutex<v1::StatusResponse>>);

impl SharedStatus {
    /// Applies a change.
    pub fn update(&self, f: impl FnOnce(&mut v1::StatusResponse)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// A copy of the current status.
    pub fn get(&self) -> v1::StatusResponse {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Progress output: a bar on a terminal, log lines otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
}

impl Progress {
    pub fn new(total: u64, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {pos}/{len} iterations  {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        });
        Self { bar, total }
    }

    /// The iterations planned, changed while the run goes on (`Admin.Set`).
    pub fn set_total(&mut self, total: u64) {
        if total != self.total {
            self.total = total;
            if let Some(bar) = &self.bar {
                bar.set_length(total);
            }
        }
    }

    /// Starts the bar at the iterations a resumed run had already done.
    pub fn resumed_at(&self, done: u64) {
        match &self.bar {
            Some(bar) => bar.set_position(done),
            None => tracing::info!("resumed after iteration {done} of {}", self.total),
        }
    }

    /// Reports a finished iteration.
    pub fn iteration(&self, m: &MetricsRecord, t: &MetricsRecord) {
        let f = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into());
        let held = m
            .extra
            .get("heldout_reward")
            .map(|r| format!(" heldout {r:.4}"))
            .unwrap_or_default();
        let msg = format!(
            "reward {} kl {} loss {}{held} ({:.1}s)",
            f(m.reward_mean),
            f(m.kl),
            f(m.loss),
            t.extra.get("iteration_s").copied().unwrap_or(0.0)
        );
        match &self.bar {
            Some(bar) => {
                bar.set_message(msg);
                bar.inc(1);
            }
            None => tracing::info!(iteration = m.iteration + 1, of = self.total, "{msg}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

/// Writes an SVG plot of reward (training samples and held-out) and KL over iterations.
pub fn write_plot(
    path: &Path,
    metrics: &[MetricsRecord],
    heldout: &[(u64, f64)],
) -> std::io::Result<()> {
    let reward: Vec<(f64, f64)> = metrics
        .iter()
        .filter_map(|m| m.reward_mean.map(|r| (m.iteration as f64, r)))
        .collect();
    let held: Vec<(f64, f64)> = heldout.iter().map(|(v, r)| (*v as f64, *r)).collect();
    let kl: Vec<(f64, f64)> = metrics
        .iter()
        .filter_map(|m| m.kl.map(|k| (m.iteration as f64 + 1.0, k)))
        .collect();
    let mut svg = String::from(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"720\" height=\"560\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"720\" height=\"560\" fill=\"white\"/>\n",
    );
    panel(
        &mut svg,
        20.0,
        "reward (mean of sampled completions; dots: held-out, by policy version)",
        &[(&reward, "#1f77b4", false), (&held, "#d62728", true)],
    );
    panel(
        &mut svg,
        300.0,
        "KL to reference (mean sequence log-ratio)",
        &[(&kl, "#2ca02c", false)],
    );
    svg.push_str("</svg>\n");
    std::fs::write(path, svg)
}

/// A series to draw: points, colour, and whether to draw dots instead of a line.
type Series<'a> = (&'a Vec<(f64, f64)>, &'a str, bool);

/// One chart: axes with min/max labels and a polyline (or dots) per series.
fn panel(svg: &mut String, top: f64, title: &str, series: &[Series<'_>]) {
    let (left, width, height) = (70.0, 620.0, 220.0);
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(s, _, _)| s.iter().copied())
        .collect();
    let (mut x0, mut x1, mut y0, mut y1) = (0.0f64, 1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for (x, y) in &pts {
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    if y1 - y0 < 1e-12 {
        y0 -= 0.5;
        y1 += 0.5;
    }
    x0 = x0.min(0.0);
    let sx = |x: f64| left + (x - x0) / (x1 - x0).max(1e-12) * width;
    let sy = |y: f64| top + 20.0 + height - (y - y0) / (y1 - y0) * height;
    svg.push_str(&format!(
        "<text x=\"{left}\" y=\"{}\">{title}</text>\n",
        top + 12.0
    ));
    svg.push_str(&format!(
        "<rect x=\"{left}\" y=\"{}\" width=\"{width}\" height=\"{height}\" fill=\"none\" stroke=\"#999\"/>\n",
        top + 20.0
    ));
    svg.push_str(&format!(
        "<text x=\"5\" y=\"{}\">{y1:.3}</text>\n",
        sy(y1) + 4.0
    ));
    svg.push_str(&format!(
        "<text x=\"5\" y=\"{}\">{y0:.3}</text>\n",
        sy(y0) + 4.0
    ));
    svg.push_str(&format!(
        "<text x=\"{left}\" y=\"{}\">{x0:.0}</text>\n",
        top + height + 36.0
    ));
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">iteration {x1:.0}</text>\n",
        left + width,
        top + height + 36.0
    ));
    for (s, color, dots) in series {
        if *dots {
            for (x, y) in s.iter() {
                svg.push_str(&format!(
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{color}\"/>\n",
                    sx(*x),
                    sy(*y)
                ));
            }
        } else if !s.is_empty() {
            let line: Vec<String> = s
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
                .collect();
            svg.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
                line.join(" ")
            ));
        }
    }
}
