//! `airlock-bench report`: turn the medians `bench/compare.sh` collected into the
//! markdown tables and the chart of `docs/benchmarks.md`.
//!
//! The input is tab-separated, one metric per line: its key, then the figure for direct,
//! airlock, nginx and HAProxy, `–` where there is none.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// The columns of the input, in order.
const PROXIES: [&str; 4] = ["direct", "airlock", "nginx", "HAProxy"];
const DIRECT: usize = 0;
const AIRLOCK: usize = 1;

/// Rows of the figures table: key and label.
const ROWS: &[(&str, &str)] = &[
    ("cpu_1024", "proxy CPU µs per relayed 1 KiB message"),
    ("cpu_16384", "proxy CPU µs per relayed 16 KiB message"),
    ("msgs_1024", "relayed 1 KiB messages/s"),
    ("msgs_16384", "relayed 16 KiB messages/s"),
    ("p50_1024", "1 KiB round trip p50 µs"),
    ("p99_1024", "1 KiB round trip p99 µs"),
    ("p50_16384", "16 KiB round trip p50 µs"),
    ("p99_16384", "16 KiB round trip p99 µs"),
    (
        "paced_cpu",
        "paced 10k msg/s of 256 B: proxy CPU µs per message",
    ),
    ("paced_p50", "paced: round trip p50 µs"),
    ("paced_p99", "paced: round trip p99 µs"),
    ("paced_p999", "paced: round trip p99.9 µs"),
    ("paced_lost", "paced: echoes lost"),
    ("hs_cpu", "proxy CPU µs per handshake"),
    ("hs_cpu_1", "… with 1 example plugin"),
    ("hs_cpu_2", "… with 2 example plugins"),
    ("hs_rate", "handshakes/s"),
    ("hs_p99", "handshake p99 µs"),
    ("idle_kib", "proxy memory KiB per idle tunnel"),
    (
        "cpu_frames_1024",
        "frame-aware route: CPU µs per relayed 1 KiB message",
    ),
    (
        "cpu_frames_16384",
        "frame-aware route: CPU µs per relayed 16 KiB message",
    ),
    (
        "idle_frames_kib",
        "frame-aware route: memory KiB per idle tunnel",
    ),
    (
        "hs_cpu_trace001",
        "tracing 1% of handshakes: CPU µs per handshake",
    ),
    (
        "hs_cpu_trace1",
        "tracing every handshake: CPU µs per handshake",
    ),
    (
        "cpu_1024_trace001",
        "tracing 1%: CPU µs per relayed 1 KiB message",
    ),
    (
        "cpu_1024_trace1",
        "tracing every tunnel: CPU µs per relayed 1 KiB message",
    ),
];

/// A figure airlock is measured by: how it is computed for each proxy, and the goal for
/// airlock's ratio to the better of nginx and HAProxy (lower is better throughout).
#[derive(Clone, Copy)]
struct Goal {
    label: &'static str,
    /// The label under its bars in the chart.
    short: &'static str,
    measure: Measure,
    goal: f64,
}

#[derive(Clone, Copy)]
enum Measure {
    /// The metric itself.
    Plain(&'static str),
    /// The metric minus the direct run's: latency the proxy adds. When noise made the
    /// direct run no faster than every proxy, the subtraction means nothing and the
    /// metric itself is compared, under the `unsubtracted` labels.
    AddedTo {
        key: &'static str,
        unsubtracted: &'static str,
        unsubtracted_short: &'static str,
    },
    /// airlock with plugins over airlock without; compared with 1.0, not with the others.
    PluginCost(&'static str, &'static str),
}

const GOALS: &[Goal] = &[
    Goal {
        label: "CPU per relayed 1 KiB message",
        short: "CPU per 1 KiB message",
        measure: Measure::Plain("cpu_1024"),
        goal: 0.8,
    },
    Goal {
        label: "CPU per relayed 16 KiB message",
        short: "CPU per 16 KiB message",
        measure: Measure::Plain("cpu_16384"),
        goal: 1.0,
    },
    Goal {
        label: "memory per idle tunnel",
        short: "memory per idle tunnel",
        measure: Measure::Plain("idle_kib"),
        goal: 1.0,
    },
    Goal {
        label: "CPU per handshake, no plugins",
        short: "CPU per handshake",
        measure: Measure::Plain("hs_cpu"),
        goal: 1.0,
    },
    Goal {
        label: "paced p99 added latency",
        short: "paced p99 added latency",
        measure: Measure::AddedTo {
            key: "paced_p99",
            unsubtracted: "paced p99 round trip (the direct run was slower: not subtracted)",
            unsubtracted_short: "paced p99 round trip",
        },
        goal: 1.0,
    },
    Goal {
        label: "handshake CPU with 2 plugins ÷ without",
        short: "-",
        measure: Measure::PluginCost("hs_cpu_2", "hs_cpu"),
        goal: 1.1,
    },
];

impl Goal {
    /// The goal as this run's figures support it.
    fn resolve(&self, figures: &Figures) -> Goal {
        if let Measure::AddedTo {
            key,
            unsubtracted,
            unsubtracted_short,
        } = self.measure
            && let Some(direct) = get(figures, key, DIRECT)
            && [AIRLOCK, 2, 3]
                .into_iter()
                .filter_map(|c| get(figures, key, c))
                .any(|proxy| proxy <= direct)
        {
            return Goal {
                label: unsubtracted,
                short: unsubtracted_short,
                measure: Measure::Plain(key),
                goal: self.goal,
            };
        }
        *self
    }
}

/// Per metric key, each column's figure and its text as measured.
type Figures = HashMap<String, [Option<(f64, String)>; 4]>;

/// Read the medians file.
pub fn read(path: &Path) -> anyhow::Result<Figures> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut figures = Figures::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let fields: Vec<&str> = line.split('\t').collect();
        let [key, values @ ..] = fields.as_slice() else {
            continue;
        };
        if values.len() != PROXIES.len() {
            bail!(
                "{}:{}: expected a key and {} figures, found {} fields",
                path.display(),
                n + 1,
                PROXIES.len(),
                fields.len()
            );
        }
        let mut row: [Option<(f64, String)>; 4] = Default::default();
        for (slot, value) in row.iter_mut().zip(values) {
            let text = value.trim();
            *slot = text.parse::<f64>().ok().map(|x| (x, text.to_string()));
        }
        figures.insert((*key).to_string(), row);
    }
    Ok(figures)
}

fn get(figures: &Figures, key: &str, column: usize) -> Option<f64> {
    figures
        .get(key)
        .and_then(|row| Some(row[column].as_ref()?.0))
}

/// A goal's figure for one proxy column (1 to 3).
fn value(figures: &Figures, measure: &Measure, column: usize) -> Option<f64> {
    match measure {
        Measure::Plain(key) => get(figures, key, column),
        Measure::AddedTo { key, .. } => {
            Some(get(figures, key, column)? - get(figures, key, DIRECT)?)
        }
        Measure::PluginCost(with, without) => {
            Some(get(figures, with, column)? / get(figures, without, column)?)
        }
    }
}

/// What airlock's figure is divided by: the better of nginx and HAProxy, or 1 for a
/// ratio that is already relative.
fn baseline(figures: &Figures, measure: &Measure) -> Option<f64> {
    match measure {
        Measure::PluginCost(..) => Some(1.0),
        _ => {
            let others = [2, 3].map(|c| value(figures, measure, c));
            others.into_iter().flatten().reduce(f64::min)
        }
    }
}

/// A measured figure as it was written, with thousands separated; `–` if missing.
fn text(figures: &Figures, key: &str, column: usize) -> String {
    match figures.get(key).and_then(|row| row[column].as_ref()) {
        Some((x, _)) if x.abs() >= 1000.0 => show(*x),
        Some((_, text)) => text.clone(),
        None => "–".into(),
    }
}

fn show(x: f64) -> String {
    if x.abs() >= 1000.0 {
        let whole = x.round() as i64;
        let digits = whole.abs().to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if whole < 0 { format!("-{out}") } else { out }
    } else if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// The figures table and the goals table, in markdown.
pub fn markdown(figures: &Figures) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| | {} |", PROXIES.join(" | "));
    let _ = writeln!(out, "|---|---|---|---|---|");
    for (key, label) in ROWS {
        let cells: Vec<String> = (0..PROXIES.len())
            .map(
                |c| match figures.get(*key).and_then(|row| row[c].as_ref()) {
                    Some((x, _)) if x.abs() >= 1000.0 => show(*x),
                    Some((_, text)) => text.clone(),
                    None => "–".into(),
                },
            )
            .collect();
        let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| | airlock | nginx | HAProxy | airlock ÷ best | goal | met |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for goal in GOALS {
        let goal = goal.resolve(figures);
        let cell = |c: usize| match goal.measure {
            Measure::Plain(key) => text(figures, key, c),
            _ => value(figures, &goal.measure, c).map_or_else(|| "–".into(), show),
        };
        let ratio = value(figures, &goal.measure, AIRLOCK)
            .zip(baseline(figures, &goal.measure))
            // Rounded as shown, so that the verdict agrees with the figure printed.
            .map(|(a, b)| (a / b * 100.0).round() / 100.0);
        let (others, ratio_cell, met) = match (&goal.measure, ratio) {
            (Measure::PluginCost(..), Some(r)) => {
                ("– | –".to_string(), format!("{r:.2}"), r <= goal.goal)
            }
            (_, Some(r)) => (
                format!("{} | {}", cell(2), cell(3)),
                format!("{r:.2}"),
                r <= goal.goal,
            ),
            (_, None) => (format!("{} | {}", cell(2), cell(3)), "–".into(), false),
        };
        let airlock = match goal.measure {
            Measure::PluginCost(..) => ratio_cell.clone(),
            _ => cell(AIRLOCK),
        };
        let _ = writeln!(
            out,
            "| {} | {airlock} | {others} | {ratio_cell} | ≤ {:.1} | {} |",
            goal.label,
            goal.goal,
            if ratio.is_none() {
                "–"
            } else if met {
                "yes"
            } else {
                "no"
            }
        );
    }
    out
}

/// A grouped bar chart of each proxy's figure as a multiple of the better of nginx and
/// HAProxy (lower is better), with airlock's goal marked.
pub fn chart(figures: &Figures, path: &Path) -> anyhow::Result<()> {
    let goals: Vec<Goal> = GOALS
        .iter()
        .filter(|g| !matches!(g.measure, Measure::PluginCost(..)))
        .map(|g| g.resolve(figures))
        .collect();
    let bars: Vec<[Option<f64>; 3]> = goals
        .iter()
        .map(|g| {
            let base = baseline(figures, &g.measure).filter(|b| *b > 0.0);
            [1, 2, 3].map(|c| Some(value(figures, &g.measure, c)? / base?))
        })
        .collect();
    let top = bars
        .iter()
        .flatten()
        .flatten()
        .copied()
        .fold(2.0_f64, f64::max)
        .min(10.0)
        * 1.1;
    let colors = [
        RGBColor(0xd9, 0x5f, 0x02),
        RGBColor(0x1b, 0x9e, 0x77),
        RGBColor(0x75, 0x70, 0xb3),
    ];

    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Cost relative to the better of nginx and HAProxy (lower is better)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(48)
        .build_cartesian_2d(0.0..goals.len() as f64, 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .y_max_light_lines(1)
        .y_desc("× best of nginx, HAProxy")
        .y_label_formatter(&|y| format!("{y:.1}"))
        .draw()?;
    for (p, color) in colors.iter().enumerate() {
        let rects = bars.iter().enumerate().filter_map(|(i, group)| {
            let v = group[p]?.min(top);
            let x0 = i as f64 + 0.15 + 0.23 * p as f64;
            Some(Rectangle::new([(x0, 0.0), (x0 + 0.2, v)], color.filled()))
        });
        chart
            .draw_series(rects)?
            .label(PROXIES[p + 1])
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .draw_series(goals.iter().enumerate().map(|(i, g)| {
            PathElement::new(
                [(i as f64 + 0.1, g.goal), (i as f64 + 0.9, g.goal)],
                BLACK.stroke_width(2),
            )
        }))?
        .label("airlock's goal")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 10, y)], BLACK.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    for (i, g) in goals.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
        root.draw(&Text::new(
            g.short,
            (x, y + 8),
            TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Center, VPos::Top)),
        ))?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(tsv: &str) -> Figures {
        // Tests run in parallel threads of one process: one directory per call.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("airlock-report-{}-{call}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("results.tsv");
        std::fs::write(&path, tsv).unwrap();
        let figures = read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        figures
    }

    #[test]
    fn goals_are_ratios_to_the_better_of_nginx_and_haproxy() {
        let f = figures(
            "cpu_1024\t–\t4.0\t5.0\t6.2\n\
             hs_cpu\t–\t93.0\t65.0\t81.7\n\
             hs_cpu_2\t–\t102.3\t–\t–\n\
             paced_p99\t500\t700\t650\t900\n\
             msgs_1024\t220160\t115075.5\t123092\t115448\n",
        );
        let md = markdown(&f);
        assert!(
            md.contains("| CPU per relayed 1 KiB message | 4.0 | 5.0 | 6.2 | 0.80 | ≤ 0.8 | yes |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| CPU per handshake, no plugins | 93.0 | 65.0 | 81.7 | 1.43 | ≤ 1.0 | no |"
            ),
            "{md}"
        );
        // Added latency: 700 - 500 against min(650, 900) - 500.
        assert!(
            md.contains("| paced p99 added latency | 200 | 150 | 400 | 1.33 | ≤ 1.0 | no |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| handshake CPU with 2 plugins ÷ without | 1.10 | – | – | 1.10 | ≤ 1.1 | yes |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| relayed 1 KiB messages/s | 220,160 | 115,076 | 123,092 | 115,448 |"),
            "{md}"
        );
        // Nothing measured: no verdict.
        assert!(
            md.contains("| memory per idle tunnel | – | – | – | – | ≤ 1.0 | – |"),
            "{md}"
        );
    }

    #[test]
    fn a_direct_run_slower_than_a_proxy_is_not_subtracted() {
        // The direct run's p99 (1,610) is above HAProxy's: added latency would be
        // negative for it, so the round trips are compared as they are.
        let f = figures("paced_p99\t1610\t1287\t1434\t1500\n");
        let md = markdown(&f);
        assert!(
            md.contains(
                "| paced p99 round trip (the direct run was slower: not subtracted) \
                 | 1,287 | 1,434 | 1,500 | 0.90 | ≤ 1.0 | yes |"
            ),
            "{md}"
        );
        assert!(!md.contains("added latency"), "{md}");
    }

    #[test]
    fn a_short_line_is_an_error_with_its_place() {
        let dir = std::env::temp_dir().join(format!("airlock-report-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("results.tsv");
        std::fs::write(&path, "cpu_1024\t–\t4.0\n").unwrap();
        let err = read(&path).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            err.ends_with("results.tsv:1: expected a key and 4 figures, found 3 fields"),
            "{err}"
        );
    }

    #[test]
    fn the_chart_is_an_svg_with_every_label() {
        let f = figures("cpu_1024\t–\t4.0\t5.0\t6.2\nidle_kib\t–\t2.1\t17.6\t4.5\n");
        let path = std::env::temp_dir().join(format!("airlock-chart-{}.svg", std::process::id()));
        chart(&f, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        for label in [
            "CPU per 1 KiB message",
            "memory per idle tunnel",
            "nginx",
            "HAProxy",
        ] {
            assert!(svg.contains(label), "{label} missing");
        }
    }
}
