//! A frontal chest radiograph phantom with known findings, and the findings text that a
//! radiologist would write for it: training and test data for report generation (issue 23),
//! where no real reports can be downloaded.
//!
//! The image (PA view, radiological convention: the patient's left on the image's right,
//! bright = dense) is drawn in attenuation units and written as 16-bit PNG: body outline, two
//! lungs with vessel markings, the heart and mediastinum, the diaphragm domes, the spine, the
//! clavicles and posterior ribs. Findings are drawn with known severity and side:
//! cardiomegaly (the heart widened to a cardiothoracic ratio), pleural effusion (a meniscus
//! filling the costophrenic angle), pneumothorax (a visceral pleural line with no lung markings
//! beyond it), a nodule or mass (size in mm, lobe), lobar consolidation, and an endotracheal tube
//! (tip position above the carina). The truth holds every drawn parameter, the label masks
//! (lungs, heart) and the text; the text comes from a grammar with several phrasings per
//! finding, sentence order varied, and negatives stated at random, so a model has to learn
//! language rather than a lookup.
use medinfer_core::SeededRng;
use serde::Serialize;

/// Image side in pixels.
pub const SIZE: usize = 512;
/// Pixel size in mm (a 358 mm field of view).
pub const PIXEL_MM: f64 = 0.7;

/// A side of the chest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The patient's left (image right).
    Left,
    /// The patient's right (image left).
    Right,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Left => "left",
            Side::Right => "right",
        }
    }
}

/// Severity of a finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Small / mild.
    Mild,
    /// Moderate.
    Moderate,
    /// Large / severe.
    Severe,
}

/// A lung zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Zone {
    /// Upper lobe.
    Upper,
    /// Middle lobe (right) or lingula (left): mid zone.
    Middle,
    /// Lower lobe.
    Lower,
}

/// One drawn finding.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "finding", rename_all = "snake_case")]
pub enum Finding {
    /// The heart widened: cardiothoracic ratio given.
    Cardiomegaly {
        /// Grade.
        severity: Severity,
    },
    /// Fluid in the pleural space.
    PleuralEffusion {
        /// Side.
        side: Side,
        /// Amount.
        severity: Severity,
    },
    /// Air in the pleural space.
    Pneumothorax {
        /// Side.
        side: Side,
        /// Size.
        severity: Severity,
    },
    /// A round opacity: nodule below 30 mm, mass from 30 mm.
    Nodule {
        /// Side.
        side: Side,
        /// Zone.
        zone: Zone,
        /// Diameter in mm.
        diameter_mm: f64,
    },
    /// Airspace opacity of a lobe.
    Consolidation {
        /// Side.
        side: Side,
        /// Zone.
        zone: Zone,
    },
    /// An endotracheal tube.
    EndotrachealTube {
        /// Tip height above the carina, cm.
        tip_above_carina_cm: f64,
    },
}

impl Finding {
    /// The label this finding sets (report-level classes for F1).
    pub fn label(&self) -> &'static str {
        match self {
            Finding::Cardiomegaly { .. } => "cardiomegaly",
            Finding::PleuralEffusion { .. } => "pleural_effusion",
            Finding::Pneumothorax { .. } => "pneumothorax",
            Finding::Nodule { diameter_mm, .. } if *diameter_mm >= 30.0 => "mass",
            Finding::Nodule { .. } => "nodule",
            Finding::Consolidation { .. } => "consolidation",
            Finding::EndotrachealTube { .. } => "support_device",
        }
    }
}

/// The report-level labels, in a fixed order.
pub const LABELS: [&str; 8] = [
    "cardiomegaly",
    "pleural_effusion",
    "pneumothorax",
    "nodule",
    "mass",
    "consolidation",
    "support_device",
    "normal",
];

/// The exact truth of one phantom radiograph.
#[derive(Clone, Debug, Serialize)]
pub struct CxrTruth {
    /// Seed it was drawn from.
    pub seed: u64,
    /// Image side (pixels) and pixel size (mm).
    pub size: usize,
    /// mm per pixel.
    pub pixel_mm: f64,
    /// The findings drawn.
    pub findings: Vec<Finding>,
    /// Report-level labels (true / false for each of [`LABELS`]).
    pub labels: std::collections::BTreeMap<String, bool>,
    /// Cardiothoracic ratio as drawn: widest heart / widest inner thorax.
    pub cardiothoracic_ratio: f64,
    /// The findings text.
    pub text: String,
}

/// A rendered radiograph: 16-bit values (row-major, SIZE x SIZE), masks and truth.
#[derive(Clone, Debug)]
pub struct CxrPhantom {
    /// Pixel values 0..=65535, bright = dense.
    pub pixels: Vec<u16>,
    /// 1 = right lung, 2 = left lung, 3 = heart (as drawn, before findings that hide them).
    pub labels: Vec<u8>,
    /// The truth.
    pub truth: CxrTruth,
}

fn pick<'a>(rng: &mut SeededRng, items: &[&'a str]) -> &'a str {
    items[((rng.uniform() * items.len() as f64) as usize).min(items.len() - 1)]
}

fn chance(rng: &mut SeededRng, p: f64) -> bool {
    rng.uniform() < p
}

fn severity(rng: &mut SeededRng) -> Severity {
    match (rng.uniform() * 3.0) as usize {
        0 => Severity::Mild,
        1 => Severity::Moderate,
        _ => Severity::Severe,
    }
}

fn side(rng: &mut SeededRng) -> Side {
    if chance(rng, 0.5) {
        Side::Left
    } else {
        Side::Right
    }
}

fn zone(rng: &mut SeededRng) -> Zone {
    match (rng.uniform() * 3.0) as usize {
        0 => Zone::Upper,
        1 => Zone::Middle,
        _ => Zone::Lower,
    }
}

/// Draws the findings of a study: about a quarter normal, else one to three findings.
pub fn draw_findings(rng: &mut SeededRng) -> Vec<Finding> {
    if chance(rng, 0.25) {
        return vec![];
    }
    let mut out: Vec<Finding> = Vec::new();
    let n = 1 + (rng.uniform() * 3.0) as usize;
    let mut kinds: Vec<usize> = (0..6).collect();
    for i in (1..kinds.len()).rev() {
        let j = (rng.uniform() * (i + 1) as f64) as usize;
        kinds.swap(i, j.min(i));
    }
    for &k in kinds.iter().take(n) {
        out.push(match k {
            0 => Finding::Cardiomegaly {
                severity: severity(rng),
            },
            1 => Finding::PleuralEffusion {
                side: side(rng),
                severity: severity(rng),
            },
            2 => Finding::Pneumothorax {
                side: side(rng),
                severity: severity(rng),
            },
            3 => Finding::Nodule {
                side: side(rng),
                zone: zone(rng),
                diameter_mm: (rng.range(8.0, 45.0) * 2.0).round() / 2.0,
            },
            4 => Finding::Consolidation {
                side: side(rng),
                zone: zone(rng),
            },
            _ => Finding::EndotrachealTube {
                tip_above_carina_cm: (rng.range(1.0, 7.0) * 2.0).round() / 2.0,
            },
        });
    }
    // A pneumothorax and an effusion on one side would hide each other: keep the first.
    let mut seen_sides: Vec<Side> = Vec::new();
    out.retain(|f| match f {
        Finding::PleuralEffusion { side, .. } | Finding::Pneumothorax { side, .. } => {
            if seen_sides.contains(side) {
                false
            } else {
                seen_sides.push(*side);
                true
            }
        }
        _ => true,
    });
    out
}

fn sev_word(rng: &mut SeededRng, s: Severity, small: bool) -> &'static str {
    match (s, small) {
        (Severity::Mild, true) => pick(rng, &["Small", "Small", "Trace"]),
        (Severity::Mild, false) => pick(rng, &["Mild", "Mild", "Slight"]),
        (Severity::Moderate, _) => "Moderate",
        (Severity::Severe, true) => pick(rng, &["Large", "Large"]),
        (Severity::Severe, false) => pick(rng, &["Severe", "Marked"]),
    }
}

fn zone_words(side: Side, zone: Zone) -> &'static str {
    match (side, zone) {
        (Side::Right, Zone::Upper) => "right upper lobe",
        (Side::Right, Zone::Middle) => "right middle lobe",
        (Side::Right, Zone::Lower) => "right lower lobe",
        (Side::Left, Zone::Upper) => "left upper lobe",
        (Side::Left, Zone::Middle) => "lingula",
        (Side::Left, Zone::Lower) => "left lower lobe",
    }
}

/// The findings text of a study: one sentence per finding in several phrasings, in a random
/// order, with negatives for what is absent stated at random.
pub fn findings_text(findings: &[Finding], rng: &mut SeededRng) -> String {
    let mut s: Vec<String> = Vec::new();
    for f in findings {
        s.push(match f {
            Finding::Cardiomegaly { severity } => {
                let w = sev_word(rng, *severity, false);
                match (rng.uniform() * 3.0) as usize {
                    0 => format!("{w} cardiomegaly."),
                    1 => format!("{w} enlargement of the cardiac silhouette."),
                    _ => format!("The heart is {}ly enlarged.", w.to_lowercase()),
                }
            }
            Finding::PleuralEffusion { side, severity } => {
                let w = sev_word(rng, *severity, true);
                if chance(rng, 0.5) {
                    format!("{w} {} pleural effusion.", side.name())
                } else {
                    format!(
                        "{w} {} pleural effusion blunting the costophrenic angle.",
                        side.name()
                    )
                }
            }
            Finding::Pneumothorax { side, severity } => {
                let w = sev_word(rng, *severity, true);
                if chance(rng, 0.5) {
                    format!("{w} {} pneumothorax.", side.name())
                } else {
                    format!("There is a {} {} pneumothorax.", w.to_lowercase(), side.name())
                }
            }
            Finding::Nodule {
                side,
                zone,
                diameter_mm,
            } => {
                let what = if *diameter_mm >= 30.0 { "mass" } else { "nodule" };
                let cm = (diameter_mm / 10.0 * 10.0).round() / 10.0;
                if chance(rng, 0.5) {
                    format!("{cm:.1} cm {what} in the {}.", zone_words(*side, *zone))
                } else {
                    format!(
                        "A {what} measuring {cm:.1} cm projects over the {}.",
                        zone_words(*side, *zone)
                    )
                }
            }
            Finding::Consolidation { side, zone } => {
                if chance(rng, 0.5) {
                    format!("Consolidation in the {}.", zone_words(*side, *zone))
                } else {
                    format!("Airspace opacity of the {}.", zone_words(*side, *zone))
                }
            }
            Finding::EndotrachealTube {
                tip_above_carina_cm,
            } => {
                if chance(rng, 0.5) {
                    format!("Endotracheal tube tip {tip_above_carina_cm:.1} cm above the carina.")
                } else {
                    format!(
                        "The endotracheal tube terminates {tip_above_carina_cm:.1} cm above the carina."
                    )
                }
            }
        });
    }
    let has = |l: &str| findings.iter().any(|f| f.label() == l);
    if findings.is_empty() && chance(rng, 0.6) {
        s.push(
            pick(
                rng,
                &[
                    "No acute cardiopulmonary abnormality.",
                    "No acute cardiopulmonary process.",
                ],
            )
            .to_string(),
        );
    }
    if !has("pneumothorax") && chance(rng, 0.5) {
        s.push("No pneumothorax.".into());
    }
    if !has("pleural_effusion") && chance(rng, 0.4) {
        s.push(pick(rng, &["No pleural effusion.", "No effusion."]).to_string());
    }
    if !has("cardiomegaly") && chance(rng, 0.4) {
        s.push(
            pick(
                rng,
                &["The heart size is normal.", "Normal cardiac silhouette."],
            )
            .to_string(),
        );
    }
    if findings.is_empty() && s.is_empty() {
        s.push("Lungs are clear.".into());
    }
    for i in (1..s.len()).rev() {
        let j = ((rng.uniform() * (i + 1) as f64) as usize).min(i);
        s.swap(i, j);
    }
    s.join(" ")
}

/// Renders the phantom radiograph of `seed`.
pub fn cxr(seed: u64) -> CxrPhantom {
    let mut rng = SeededRng::new(seed ^ 0xC0FF_EE00);
    let findings = draw_findings(&mut rng);
    let text = findings_text(&findings, &mut rng);
    let n = SIZE;
    let nf = n as f64;
    // Geometry in pixels. x to the image right (patient's left), y down.
    let cx = nf * rng.range(0.48, 0.52);
    let thorax_half = nf * rng.range(0.33, 0.37); // inner thoracic half-width at its widest
    let top = nf * rng.range(0.12, 0.16);
    let dome = nf * rng.range(0.70, 0.76); // diaphragm dome height
    let lung_w = thorax_half * 0.82;
    let med_half = thorax_half * 0.16; // mediastinum half-width
                                       // Heart: an ellipse, mostly to the patient's left (image right), sitting on the diaphragm.
    let ctr_normal = rng.range(0.42, 0.48);
    let ctr = findings
        .iter()
        .find_map(|f| match f {
            Finding::Cardiomegaly { severity } => Some(match severity {
                Severity::Mild => rng.range(0.52, 0.56),
                Severity::Moderate => rng.range(0.57, 0.62),
                Severity::Severe => rng.range(0.63, 0.70),
            }),
            _ => None,
        })
        .unwrap_or(ctr_normal);
    // The ratio's denominator: the inner thorax between the lungs' outer edges.
    let heart_w = ctr * 2.0 * (med_half + lung_w);
    let heart_left = cx - heart_w * 0.35; // image-left edge (patient's right border)
    let heart_cx = heart_left + heart_w / 2.0;
    let heart_ry = heart_w * rng.range(0.36, 0.42);
    let heart_cy = dome - heart_ry * 0.55;
    let carina_y = top + (dome - top) * 0.28;
    let mut mu = vec![0f32; n * n];
    let mut labels = vec![0u8; n * n];
    let lung_of = |x: f64, y: f64| -> Option<Side> {
        // Each lung: a rounded shape from the apex (top) to the dome, between the mediastinum
        // and the chest wall.
        for (s, sign) in [(Side::Right, -1.0), (Side::Left, 1.0)] {
            let inner = cx + sign * med_half;
            let outer = cx + sign * (med_half + lung_w);
            let (lo, hi) = if sign < 0.0 {
                (outer, inner)
            } else {
                (inner, outer)
            };
            if x < lo || x > hi || y < top || y > dome + 0.03 * nf {
                continue;
            }
            let u = ((x - (lo + hi) / 2.0) / ((hi - lo) / 2.0)).abs();
            let lateral = ((x - inner) * sign / lung_w).clamp(0.0, 1.0);
            let t = (y - top) / (dome - top);
            // Narrow apex, widest at the base; the dome rises medially, the costophrenic
            // recess reaches lowest at the chest wall.
            let width_at = (t.max(0.0) * 3.0).min(1.0).sqrt();
            let dome_y = dome + 0.03 * nf * lateral * lateral;
            if u <= width_at && y <= dome_y {
                return Some(s);
            }
        }
        None
    };
    for y in 0..n {
        for x in 0..n {
            let (xf, yf) = (x as f64 + 0.5, y as f64 + 0.5);
            let i = y * n + x;
            // Body: soft tissue ellipse, thicker centrally.
            let bx = (xf - cx) / (thorax_half * 1.25);
            let by = (yf - nf * 0.55) / (nf * 0.55);
            let body = 1.0 - (bx * bx + by * by);
            let mut v = if body > 0.0 {
                0.55 + 0.25 * body.sqrt()
            } else {
                0.02
            };
            if let Some(s) = lung_of(xf, yf) {
                v -= 0.42;
                labels[i] = if s == Side::Right { 1 } else { 2 };
            }
            // Below the domes: abdomen, bright.
            if yf > dome + 0.03 * nf && (xf - cx).abs() < thorax_half && body > 0.0 {
                v = v.max(0.7);
            }
            // Heart.
            let hx = (xf - heart_cx) / (heart_w / 2.0);
            let hy = (yf - heart_cy) / heart_ry;
            if hx * hx + hy * hy <= 1.0 {
                v = v.max(0.74);
                labels[i] = 3;
            }
            // Mediastinum and spine.
            if (xf - cx).abs() < med_half && yf > top * 0.6 {
                v = v.max(0.72);
            }
            if (xf - cx).abs() < med_half * 0.55 {
                v += 0.08;
            }
            mu[i] = v as f32;
        }
    }
    // Trachea (air column) down to the carina, then the two main bronchi.
    for y in (top * 0.5) as usize..carina_y as usize {
        for x in (cx - 7.0) as usize..(cx + 7.0) as usize {
            mu[y * n + x] -= 0.12;
        }
    }
    // Posterior ribs: arcs across each lung.
    let rib_gap = (dome - top) / 9.5;
    for k in 0..10 {
        let y0 = top + rib_gap * (k as f64 + 0.3);
        for (sign, _) in [(-1.0, 0), (1.0, 1)] {
            for step in 0..(lung_w * 1.3) as usize {
                let dx = step as f64;
                let x = cx + sign * (med_half * 0.5 + dx);
                let y = y0 + 0.0009 * dx * dx + dx * 0.12;
                for t in 0..6 {
                    let yy = (y + t as f64) as usize;
                    let xx = x as usize;
                    if yy < n && xx < n {
                        mu[yy * n + xx] += 0.07;
                    }
                }
            }
        }
    }
    // Clavicles.
    for (sign, _) in [(-1.0, 0), (1.0, 1)] {
        for step in 0..(thorax_half * 0.9) as usize {
            let x = cx + sign * (med_half * 0.6 + step as f64);
            let y = top + 0.02 * nf - step as f64 * 0.08;
            for t in 0..8 {
                let (xx, yy) = (x as usize, (y + t as f64) as usize);
                if yy < n && xx < n {
                    mu[yy * n + xx] += 0.1;
                }
            }
        }
    }
    // Vessel markings: smooth random texture inside the lungs, strongest at the hila.
    let mut tex = vec![0f32; n * n];
    for v in tex.iter_mut() {
        *v = rng.normal() as f32;
    }
    let tex = box_blur(&box_blur(&tex, n, 2), n, 2);
    let hilum = |x: f64, y: f64| -> f64 {
        let d = ((x - cx).abs() - med_half) / lung_w;
        let h = ((y - (top + dome) / 2.0) / (dome - top)).abs();
        (1.0 - d).clamp(0.0, 1.0) * (1.0 - h).clamp(0.2, 1.0)
    };
    // Findings that change the lung: pneumothorax (no markings beyond the pleural line).
    let mut no_markings = vec![false; n * n];
    for f in &findings {
        match f {
            Finding::Pneumothorax { side: s, severity } => {
                let gap = match severity {
                    Severity::Mild => 0.08,
                    Severity::Moderate => 0.18,
                    Severity::Severe => 0.32,
                } * lung_w;
                let sign = if *s == Side::Left { 1.0 } else { -1.0 };
                let wall = cx + sign * (med_half + lung_w);
                for y in 0..n {
                    for x in 0..n {
                        let i = y * n + x;
                        let want = if *s == Side::Left { 2 } else { 1 };
                        if labels[i] != want {
                            continue;
                        }
                        let (xf, yf) = (x as f64 + 0.5, y as f64 + 0.5);
                        // The collapsed lung's edge follows the wall, further away at the apex.
                        let t = ((yf - top) / (dome - top)).clamp(0.0, 1.0);
                        let g = gap * (1.3 - 0.8 * t);
                        let from_wall = (wall - xf) * sign;
                        let from_apex = yf - top;
                        if from_wall < g || from_apex < g * 0.8 {
                            no_markings[i] = true;
                            mu[i] -= 0.04;
                        } else if from_wall < g + 2.0 || from_apex < g * 0.8 + 2.0 {
                            mu[i] += 0.12; // the visceral pleural line
                        }
                    }
                }
            }
            Finding::PleuralEffusion { side: s, severity } => {
                let h = match severity {
                    Severity::Mild => 0.10,
                    Severity::Moderate => 0.25,
                    Severity::Severe => 0.45,
                } * (dome - top);
                let want = if *s == Side::Left { 2 } else { 1 };
                let sign = if *s == Side::Left { 1.0 } else { -1.0 };
                let wall = cx + sign * (med_half + lung_w);
                for y in 0..n {
                    for x in 0..n {
                        let i = y * n + x;
                        if labels[i] != want {
                            continue;
                        }
                        let (xf, yf) = (x as f64 + 0.5, y as f64 + 0.5);
                        // Meniscus: higher laterally.
                        let lateral = 1.0 - ((wall - xf) * sign / lung_w).clamp(0.0, 1.0);
                        let level = dome + 0.03 * nf - h * (0.6 + 0.6 * lateral);
                        if yf > level {
                            mu[i] = mu[i].max(0.66);
                            no_markings[i] = true;
                        }
                    }
                }
            }
            _ => {}
        }
    }
    for i in 0..n * n {
        if labels[i] == 1 || labels[i] == 2 {
            let (x, y) = ((i % n) as f64 + 0.5, (i / n) as f64 + 0.5);
            if !no_markings[i] {
                mu[i] += (0.05 * tex[i].abs() as f64 * (0.4 + hilum(x, y))) as f32;
            }
        }
    }
    // Opacities inside the lungs.
    let zone_y = |z: Zone| -> (f64, f64) {
        let (a, b) = match z {
            Zone::Upper => (0.05, 0.38),
            Zone::Middle => (0.38, 0.66),
            Zone::Lower => (0.66, 1.0),
        };
        (top + a * (dome - top), top + b * (dome - top))
    };
    for f in &findings {
        match f {
            Finding::Nodule {
                side: s,
                zone: z,
                diameter_mm,
            } => {
                let (y0, y1) = zone_y(*z);
                let sign = if *s == Side::Left { 1.0 } else { -1.0 };
                // Lateral in the lung, clear of the heart's shadow.
                let ncx = cx + sign * (med_half + lung_w * rng.range(0.6, 0.8));
                let ncy = rng.range(y0 + 0.3 * (y1 - y0), y1 - 0.3 * (y1 - y0));
                let r = diameter_mm / PIXEL_MM / 2.0;
                for y in 0..n {
                    for x in 0..n {
                        let d = ((x as f64 + 0.5 - ncx).powi(2) + (y as f64 + 0.5 - ncy).powi(2))
                            .sqrt();
                        if d <= r + 1.0 {
                            let w = (r + 1.0 - d).clamp(0.0, 1.0);
                            let i = y * n + x;
                            mu[i] += (0.22 * w) as f32;
                        }
                    }
                }
            }
            Finding::Consolidation { side: s, zone: z } => {
                let (y0, y1) = zone_y(*z);
                let want = if *s == Side::Left { 2 } else { 1 };
                for y in y0 as usize..(y1 as usize).min(n) {
                    for x in 0..n {
                        let i = y * n + x;
                        if labels[i] == want {
                            // Patchy: the texture modulates the opacity; bronchi stay darker.
                            let patch = 0.5 + 0.5 * (tex[i] as f64).tanh();
                            mu[i] = mu[i].max((0.45 + 0.15 * patch) as f32);
                        }
                    }
                }
            }
            Finding::EndotrachealTube {
                tip_above_carina_cm,
            } => {
                let tip = carina_y - tip_above_carina_cm * 10.0 / PIXEL_MM;
                for y in 0..(tip.max(0.0) as usize) {
                    for dx in [-5.0, 5.0] {
                        for w in 0..2 {
                            let x = (cx + dx) as usize + w;
                            mu[y * n + x] += 0.25;
                        }
                    }
                }
            }
            _ => {}
        }
    }
    // Quantum noise and the detector's response to 16 bits.
    let pixels: Vec<u16> = mu
        .iter()
        .map(|&v| {
            let v = v as f64 + 0.01 * rng.normal();
            (v.clamp(0.0, 1.2) / 1.2 * 60000.0 + 2000.0) as u16
        })
        .collect();
    let mut labels_map = std::collections::BTreeMap::new();
    for l in LABELS {
        let on = if l == "normal" {
            findings.is_empty()
        } else {
            findings.iter().any(|f| f.label() == l)
        };
        labels_map.insert(l.to_string(), on);
    }
    CxrPhantom {
        pixels,
        labels,
        truth: CxrTruth {
            seed,
            size: n,
            pixel_mm: PIXEL_MM,
            findings,
            labels: labels_map,
            cardiothoracic_ratio: ctr,
            text,
        },
    }
}

/// The report-level labels a findings text states (the grammar's vocabulary and its common
/// synonyms; a sentence that starts with "no" states an absence). `normal` when none is stated.
pub fn labels_from_text(text: &str) -> std::collections::BTreeMap<String, bool> {
    let mut on: Vec<&str> = Vec::new();
    for sentence in text.to_lowercase().split(['.', ';', '\n']) {
        let s = sentence.trim();
        if s.is_empty() || s.starts_with("no ") || s.starts_with("without ") {
            continue;
        }
        let mut hit = |l: &'static str, words: &[&str]| {
            if words.iter().any(|w| s.contains(w)) && !on.contains(&l) {
                on.push(l);
            }
        };
        hit(
            "cardiomegaly",
            &["cardiomegaly", "enlargement of the cardiac", "ly enlarged"],
        );
        hit("pleural_effusion", &["effusion"]);
        hit("pneumothorax", &["pneumothorax"]);
        hit("nodule", &["nodule"]);
        hit("mass", &["mass"]);
        hit("consolidation", &["consolidation", "airspace opacity"]);
        hit("support_device", &["endotracheal tube", "tube tip"]);
    }
    LABELS
        .iter()
        .map(|&l| {
            let v = if l == "normal" {
                on.is_empty()
            } else {
                on.contains(&l)
            };
            (l.to_string(), v)
        })
        .collect()
}

/// F1 per label and their mean (macro F1) of predicted against true label sets; a label with
/// no true and no predicted case is left out of the mean.
pub fn f1_scores(
    truth: &[std::collections::BTreeMap<String, bool>],
    predicted: &[std::collections::BTreeMap<String, bool>],
) -> (std::collections::BTreeMap<String, f64>, f64) {
    let mut per = std::collections::BTreeMap::new();
    for l in LABELS {
        let (mut tp, mut fp, mut fneg) = (0.0, 0.0, 0.0);
        for (t, p) in truth.iter().zip(predicted) {
            match (
                t.get(l).copied().unwrap_or(false),
                p.get(l).copied().unwrap_or(false),
            ) {
                (true, true) => tp += 1.0,
                (false, true) => fp += 1.0,
                (true, false) => fneg += 1.0,
                _ => {}
            }
        }
        if tp + fp + fneg > 0.0 {
            per.insert(l.to_string(), 2.0 * tp / (2.0 * tp + fp + fneg));
        }
    }
    let macro_f1 = if per.is_empty() {
        0.0
    } else {
        per.values().sum::<f64>() / per.len() as f64
    };
    (per, macro_f1)
}

/// The phantom as an image the pipelines read (16-bit values, as from its PNG).
pub fn to_image(p: &CxrPhantom) -> medinfer_core::Image2d {
    let mut img =
        medinfer_core::Image2d::gray(SIZE, SIZE, p.pixels.iter().map(|&v| v as f32).collect())
            .expect("SIZE x SIZE values");
    img.value_range = (0.0, 65535.0);
    img.spacing = [PIXEL_MM, PIXEL_MM];
    img
}

/// Writes phantoms `first_seed .. first_seed + count` into `dir`: `cxr-SEED.png` (16-bit),
/// `cxr-SEED.json` (the truth) and `reports.jsonl` (one line per image: file, text, labels).
pub fn write_cxr(
    dir: &std::path::Path,
    first_seed: u64,
    count: usize,
    mut progress: impl FnMut(),
) -> Result<Vec<CxrTruth>, crate::PipelineError> {
    std::fs::create_dir_all(dir).map_err(|e| crate::PipelineError::output(dir, e))?;
    let mut out = Vec::with_capacity(count);
    let mut lines = String::new();
    for seed in first_seed..first_seed + count as u64 {
        let p = cxr(seed);
        let png = dir.join(format!("cxr-{seed}.png"));
        medinfer_io::raster::write_png16(&png, SIZE, SIZE, &p.pixels)?;
        let json = dir.join(format!("cxr-{seed}.json"));
        let text = serde_json::to_string_pretty(&p.truth).expect("truth serialises");
        std::fs::write(&json, text).map_err(|e| crate::PipelineError::output(&json, e))?;
        lines.push_str(
            &serde_json::json!({
                "image": format!("cxr-{seed}.png"),
                "text": p.truth.text,
                "labels": p.truth.labels,
            })
            .to_string(),
        );
        lines.push('\n');
        out.push(p.truth);
        progress();
    }
    let index = dir.join("reports.jsonl");
    std::fs::write(&index, lines).map_err(|e| crate::PipelineError::output(&index, e))?;
    Ok(out)
}

fn box_blur(v: &[f32], n: usize, r: usize) -> Vec<f32> {
    let mut tmp = vec![0f32; v.len()];
    let mut out = vec![0f32; v.len()];
    let k = (2 * r + 1) as f32;
    for y in 0..n {
        for x in 0..n {
            let mut s = 0.0;
            for d in 0..=2 * r {
                let xx = (x + d).saturating_sub(r).min(n - 1);
                s += v[y * n + xx];
            }
            tmp[y * n + x] = s / k;
        }
    }
    for y in 0..n {
        for x in 0..n {
            let mut s = 0.0;
            for d in 0..=2 * r {
                let yy = (y + d).saturating_sub(r).min(n - 1);
                s += tmp[yy * n + x];
            }
            out[y * n + x] = s / k;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The drawn cardiothoracic ratio is what the rendered masks measure.
    #[test]
    fn the_masks_measure_the_drawn_cardiothoracic_ratio() {
        for seed in 0..12 {
            let p = cxr(seed);
            let n = SIZE;
            let width = |label: &dyn Fn(u8) -> bool| {
                (0..n)
                    .map(|y| {
                        let xs: Vec<usize> =
                            (0..n).filter(|&x| label(p.labels[y * n + x])).collect();
                        xs.last().map_or(0, |l| l - xs[0] + 1)
                    })
                    .max()
                    .unwrap_or(0) as f64
            };
            let heart = width(&|l| l == 3);
            // Inner thorax: the lungs' outer edges (the mediastinum between them included).
            let thorax = width(&|l| l == 1 || l == 2 || l == 3);
            let measured = heart / thorax;
            let drawn = p.truth.cardiothoracic_ratio;
            assert!(
                (measured - drawn).abs() < 0.04,
                "seed {seed}: measured {measured:.3}, drawn {drawn:.3}"
            );
            let cardio = p.truth.labels["cardiomegaly"];
            assert_eq!(cardio, drawn > 0.5, "seed {seed}");
        }
    }

    /// The text parser recovers the truth's labels from the grammar's own texts.
    #[test]
    fn labels_read_back_from_the_grammar_are_the_truth() {
        let truths: Vec<_> = (0..200).map(|s| cxr(s).truth).collect();
        let read: Vec<_> = truths.iter().map(|t| labels_from_text(&t.text)).collect();
        for (t, r) in truths.iter().zip(&read) {
            assert_eq!(&t.labels, r, "{}", t.text);
        }
        let want: Vec<_> = truths.iter().map(|t| t.labels.clone()).collect();
        let (per, macro_f1) = f1_scores(&want, &read);
        assert_eq!(macro_f1, 1.0);
        assert_eq!(per.len(), LABELS.len());
        // One wrong label out of 200 studies costs that label's F1, not the others'.
        let mut wrong = read.clone();
        let flip = wrong[0].get_mut("pneumothorax").unwrap();
        *flip = !*flip;
        let (per, macro_f1) = f1_scores(&want, &wrong);
        assert!(per["pneumothorax"] < 1.0 && per["cardiomegaly"] == 1.0);
        assert!(macro_f1 < 1.0 && macro_f1 > 0.9);
    }

    #[test]
    fn the_text_names_every_finding_and_is_seeded() {
        let mut normal = 0;
        for seed in 0..40 {
            let p = cxr(seed);
            let t = p.truth.text.to_lowercase();
            assert!(!t.is_empty());
            for f in &p.truth.findings {
                let word = match f {
                    Finding::Cardiomegaly { .. } => "cardi",
                    Finding::PleuralEffusion { .. } => "effusion",
                    Finding::Pneumothorax { .. } => "pneumothorax",
                    Finding::Nodule { diameter_mm, .. } if *diameter_mm >= 30.0 => "mass",
                    Finding::Nodule { .. } => "nodule",
                    Finding::Consolidation { .. } => "opacity",
                    Finding::EndotrachealTube { .. } => "endotracheal tube",
                };
                let alt = match f {
                    Finding::Consolidation { .. } => t.contains("consolidation"),
                    Finding::Cardiomegaly { .. } => t.contains("ly enlarged"),
                    _ => false,
                };
                assert!(!t.contains("moderate enlarged"), "{t}");
                assert!(t.contains(word) || alt, "seed {seed}: {f:?} not in '{t}'");
            }
            if p.truth.findings.is_empty() {
                normal += 1;
                assert!(p.truth.labels["normal"]);
            }
            assert_eq!(cxr(seed).pixels, p.pixels);
        }
        assert!((4..=18).contains(&normal), "{normal} normal studies of 40");
    }
}
