//! The tune report: a Markdown table of every candidate and an SVG chart of accuracy drop
//! against speed with the Pareto front marked.

use super::{Candidate, Objective, Status, TuneOutcome};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Indices of the candidates on the Pareto front of (speed: higher is better, drop: lower is
/// better) among those with both measured, fastest first.
pub fn pareto_front(cands: &[Candidate]) -> Vec<usize> {
    let pts: Vec<(usize, f64, f64)> = cands
        .iter()
        .enumerate()
        .filter_map(|(i, c)| Some((i, c.speed()?, c.drop?)))
        .collect();
    let mut front: Vec<(usize, f64)> = pts
        .iter()
        .filter(|&&(i, s, d)| {
            !pts.iter()
                .any(|&(j, s2, d2)| j != i && s2 >= s && d2 <= d && (s2 > s || d2 < d))
        })
        .map(|&(i, s, _)| (i, s))
        .collect();
    front.sort_by(|a, b| b.1.total_cmp(&a.1));
    front.into_iter().map(|(i, _)| i).collect()
}

fn speed_text(o: &TuneOutcome, c: &Candidate) -> String {
    match (o.objective, c.speed()) {
        (Objective::Latency, Some(s)) => format!("{:.2} ms", 1e3 / s),
        (Objective::Throughput, Some(s)) => format!("{s:.1} items/s"),
        _ => "-".into(),
    }
}

fn status_text(s: &Status) -> &'static str {
    match s {
        Status::Chosen => "**chosen**",
        Status::RunnerUp => "runner-up",
        Status::Halved => "halved",
        Status::Screened => "screened out",
        Status::OverBudget => "over budget",
        Status::Crashed => "crashed",
        Status::Failed => "failed",
        Status::Skipped => "skipped",
        Status::Measured => "measured",
    }
}

/// A Markdown report: the choice, its confidence, and a table of every candidate (fastest
/// first), Pareto-front members marked.
pub fn render_markdown(o: &TuneOutcome) -> String {
    let c = o.choice();
    let front = pareto_front(&o.candidates);
    let mut s = format!(
        "# medinfer tune\n\nCPU: {}, {} cores used. Objective: {}. Accuracy: {} against the FP32 model \
         on {} ({} validation samples), budget: drop <= {}.\n\n**Chosen: {}** ({}, {} drop {:.4}).\n",
        o.cpu,
        o.cores,
        match o.objective {
            Objective::Latency => "latency (median of one request)",
            Objective::Throughput => "throughput (items per second)",
        },
        o.metric,
        o.reference_backend,
        o.validation_samples,
        o.max_drop,
        c.label,
        speed_text(o, c),
        o.metric,
        c.drop.unwrap_or(0.0),
    );
    if let (Some(r), Some(_), Some(ratio)) = (o.runner_up, o.anchor, o.ratio_median) {
        s.push_str(&format!(
            "\nOver the runner-up ({}): {ratio:.3}x (their median speeds over the anchor's).\n",
            o.candidates[r].label
        ));
    }
    if let (Some(r), Some([lo, hi])) = (o.runner_up, o.confidence) {
        s.push_str(&format!(
            "\nOver the runner-up ({}), per paired round: {lo:.3}x to {hi:.3}x, median {:.3}x ({} rounds).\n",
            o.candidates[r].label,
            o.ratio_median.unwrap_or(1.0),
            o.rounds
        ));
    }
    // The defaults ride along in the halving: the choice's median ratio over them, where it
    // is not them (`vs_anchor` holds the halving's ratios over the defaults).
    if let (None, Some(v)) = (o.anchor, c.vs_anchor.filter(|v| (v - 1.0).abs() > 1e-12)) {
        s.push_str(&format!(
            "\nOver OpenVINO's INT8 defaults, which ran in every paired round: {v:.3}x (median of the \
             per-round ratios).\n"
        ));
    }
    for n in &o.notes {
        s.push_str(&format!("\nNote: {n}\n"));
    }
    let anchored = o.anchor.is_some();
    if let Some(a) = o.anchor {
        s.push_str(&format!(
            "\nExhaustive search: every candidate in paired rounds, in waves, each round with the \
             anchor {}; ranked by the median per-round speed over the anchor's (`vs anchor`).\n",
            o.candidates[a].label
        ));
    }
    s.push_str(&format!(
        "\nTune time: {:.0} s.\n\n| candidate | effective precision | {} drop | speed |{} paired rounds | Pareto | status | reason |\n|---|---|---|---|{}---|---|---|---|\n",
        o.elapsed_s,
        o.metric,
        if anchored { " vs anchor |" } else { "" },
        if anchored { "---|" } else { "" },
    ));
    let mut idx: Vec<usize> = (0..o.candidates.len()).collect();
    idx.sort_by(|&a, &b| {
        o.candidates[b]
            .speed()
            .unwrap_or(-1.0)
            .total_cmp(&o.candidates[a].speed().unwrap_or(-1.0))
    });
    for i in idx {
        let c = &o.candidates[i];
        let vs = if anchored {
            format!(
                " {} |",
                c.vs_anchor
                    .map(|v| format!("{v:.3}x"))
                    .unwrap_or_else(|| "-".into())
            )
        } else {
            String::new()
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} |{vs} {} | {} | {} | {} |\n",
            c.label,
            if c.effective_precision.is_empty() {
                "-"
            } else {
                &c.effective_precision
            },
            c.drop
                .map(|d| format!("{d:.4}"))
                .unwrap_or_else(|| "-".into()),
            speed_text(o, c),
            c.rounds.len(),
            if front.contains(&i) { "yes" } else { "" },
            status_text(&c.status),
            c.reason.as_deref().unwrap_or("").replace('|', "/"),
        ));
    }
    s
}

/// An SVG scatter of accuracy drop (up = worse) against speed (right = faster) for every
/// measured candidate: the budget as a dashed line, the Pareto front joined, the choice ringed.
pub fn render_svg(o: &TuneOutcome) -> String {
    let (w, h) = (900.0, 560.0);
    let (left, right, top, bottom) = (80.0, 260.0, 50.0, 60.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let pts: Vec<(usize, f64, f64)> = o
        .candidates
        .iter()
        .enumerate()
        .filter_map(|(i, c)| Some((i, c.speed()?, c.drop?)))
        .collect();
    let smax = pts.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.05;
    let dmax = pts.iter().map(|p| p.2).fold(o.max_drop, f64::max).max(1e-6) * 1.1;
    let dmin = pts.iter().map(|p| p.2).fold(0.0, f64::min);
    let x = |s: f64| left + pw * s / smax;
    let y = |d: f64| top + ph * (1.0 - (d - dmin) / (dmax - dmin).max(1e-12));
    let unit = match o.objective {
        Objective::Latency => "requests / s (1000 / median ms)",
        Objective::Throughput => "items / s",
    };
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="24" font-size="15" font-weight="bold">medinfer tune: {title}</text>
<line x1="{left}" y1="{yb}" x2="{xr}" y2="{yb}" stroke="#333"/>
<line x1="{left}" y1="{top}" x2="{left}" y2="{yb}" stroke="#333"/>
<text x="{left}" y="{yl}" fill="#333">{unit} (right is faster)</text>
<text x="12" y="{top}" fill="#333" transform="rotate(-90 12 {top})" text-anchor="end">{metric} drop vs FP32 (down is better)</text>
<line x1="{left}" y1="{yc}" x2="{xr}" y2="{yc}" stroke="#c00" stroke-dasharray="6 4"/>
<text x="{xr}" y="{ycl}" fill="#c00" text-anchor="end">budget {budget}</text>
"##,
        title = esc(&o.choice().label),
        yb = top + ph,
        xr = left + pw,
        yl = h - 20.0,
        metric = esc(&o.metric),
        yc = y(o.max_drop),
        ycl = y(o.max_drop) - 4.0,
        budget = o.max_drop,
    );
    for k in 0..=4 {
        let sv = smax * k as f64 / 4.0;
        let dv = dmin + (dmax - dmin) * k as f64 / 4.0;
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">{sv:.1}</text>\n<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#555\">{dv:.4}</text>\n",
            x(sv),
            top + ph + 16.0,
            left - 6.0,
            y(dv) + 4.0
        ));
    }
    let front = pareto_front(&o.candidates);
    let path: Vec<String> = front
        .iter()
        .filter_map(|&i| pts.iter().find(|p| p.0 == i))
        .map(|p| format!("{:.1},{:.1}", x(p.1), y(p.2)))
        .collect();
    if path.len() > 1 {
        s.push_str(&format!(
            "<polyline points=\"{}\" fill=\"none\" stroke=\"#2a2\" stroke-width=\"2\"/>\n",
            path.join(" ")
        ));
    }
    let colour = |b: &str| match b {
        "openvino" => "#1f77b4",
        "ort" => "#ff7f0e",
        _ => "#2ca02c",
    };
    for &(i, sp, d) in &pts {
        let c = &o.candidates[i];
        let r = if front.contains(&i) { 6.0 } else { 4.0 };
        s.push_str(&format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"{r}\" fill=\"{}\" opacity=\"0.8\"><title>{}</title></circle>\n",
            x(sp),
            y(d),
            colour(c.backend.name()),
            esc(&c.label)
        ));
        if i == o.chosen {
            s.push_str(&format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"11\" fill=\"none\" stroke=\"#000\" stroke-width=\"2\"/>\n",
                x(sp),
                y(d)
            ));
        }
    }
    // Legend: the front, fastest first.
    s.push_str(&format!(
        "<text x=\"{}\" y=\"{top}\" font-weight=\"bold\">Pareto front</text>\n",
        left + pw + 16.0
    ));
    for (k, &i) in front.iter().take(20).enumerate() {
        let c = &o.candidates[i];
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{:.1}\" fill=\"{}\">{}{}</text>\n",
            left + pw + 16.0,
            top + 18.0 * (k + 1) as f64,
            colour(c.backend.name()),
            if i == o.chosen { "* " } else { "" },
            esc(&c.label)
        ));
    }
    s.push_str("</svg>\n");
    s
}
