//! A dependency-free SVG bar chart of throughput per configuration (a dozen bars need no
//! plotting library).
use crate::BenchResult;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Horizontal bars of items/s, one per configuration, labelled with backend, precision, mode
/// and streams x threads, annotated with mean latency.
pub fn render_svg(title: &str, results: &[BenchResult]) -> String {
    let bar_h = 26.0;
    let gap = 10.0;
    let left = 330.0;
    let width = 900.0;
    let plot_w = width - left - 140.0;
    let top = 50.0;
    let height = top + results.len() as f64 * (bar_h + gap) + 40.0;
    let max = results
        .iter()
        .map(|r| r.throughput_per_s)
        .fold(0.0f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let colour = |b: &str| match b {
        "openvino" => "#1f77b4",
        "ort" => "#ff7f0e",
        _ => "#2ca02c",
    };
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="13">
<rect width="100%" height="100%" fill="white"/>
<text x="{x}" y="28" font-size="16" font-weight="bold">{t}</text>
"#,
        x = 10,
        t = esc(title)
    );
    for (i, r) in results.iter().enumerate() {
        let y = top + i as f64 * (bar_h + gap);
        let w = plot_w * r.throughput_per_s / max;
        let isa = r.isa_label();
        let label = format!(
            "{}{isa} {} {} {}x{} b{}",
            r.backend, r.effective_precision, r.mode, r.streams, r.threads, r.batch
        );
        s.push_str(&format!(
            r#"<text x="{lx}" y="{ty}" text-anchor="end">{label}</text>
<rect x="{left}" y="{y}" width="{w:.1}" height="{bar_h}" fill="{c}"/>
<text x="{vx:.1}" y="{ty}">{v:.1}/s ({m:.1} ms)</text>
"#,
            lx = left - 8.0,
            ty = y + bar_h * 0.7,
            label = esc(&label),
            c = colour(r.backend.name()),
            vx = left + w + 6.0,
            v = r.throughput_per_s,
            m = r.latency_ms.mean,
        ));
    }
    s.push_str(&format!(
        r##"<text x="{left}" y="{y}" fill="#555">items per second (longer is better)</text>
</svg>
"##,
        y = height - 12.0
    ));
    s
}
