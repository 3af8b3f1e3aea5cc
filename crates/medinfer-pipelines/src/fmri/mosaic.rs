//! `components.png`: one row per group component, its sagittal, coronal and axial slices
//! through the peak (the classifier's own view, [`super::slices`]) over the brain mask, with
//! the component number, label and probability written beside it.
//!
//! The text is drawn with a built-in 5 x 7 pixel font (capitals, digits, `.` `_` `-`): a PNG
//! writer has no fonts, and a font-rendering crate for one line per row is not worth its
//! weight.

use super::prep::Grid;
use super::{slices, GroupComponent};
use crate::PipelineError;

/// Pixels per slice pixel.
const SCALE: usize = 3;
/// Text pixels per font pixel.
const TEXT: usize = 2;
/// Height of the header band that carries the caution, when there is one.
const HEADER_H: usize = 7 * TEXT + 12;

const FONT: &[(char, [u8; 7])] = &[
    (
        'A',
        [
            0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001,
        ],
    ),
    (
        'B',
        [
            0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110,
        ],
    ),
    (
        'C',
        [
            0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110,
        ],
    ),
    (
        'D',
        [
            0b11110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b11110,
        ],
    ),
    (
        'E',
        [
            0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111,
        ],
    ),
    (
        'F',
        [
            0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000,
        ],
    ),
    (
        'G',
        [
            0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111,
        ],
    ),
    (
        'H',
        [
            0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001,
        ],
    ),
    (
        'I',
        [
            0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110,
        ],
    ),
    (
        'J',
        [
            0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100,
        ],
    ),
    (
        'K',
        [
            0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001,
        ],
    ),
    (
        'L',
        [
            0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111,
        ],
    ),
    (
        'M',
        [
            0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001,
        ],
    ),
    (
        'N',
        [
            0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001,
        ],
    ),
    (
        'O',
        [
            0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110,
        ],
    ),
    (
        'P',
        [
            0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000,
        ],
    ),
    (
        'Q',
        [
            0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101,
        ],
    ),
    (
        'R',
        [
            0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001,
        ],
    ),
    (
        'S',
        [
            0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110,
        ],
    ),
    (
        'T',
        [
            0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100,
        ],
    ),
    (
        'U',
        [
            0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110,
        ],
    ),
    (
        'V',
        [
            0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100,
        ],
    ),
    (
        'W',
        [
            0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010,
        ],
    ),
    (
        'X',
        [
            0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001,
        ],
    ),
    (
        'Y',
        [
            0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100, 0b00100,
        ],
    ),
    (
        'Z',
        [
            0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111,
        ],
    ),
    (
        '0',
        [
            0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110,
        ],
    ),
    (
        '1',
        [
            0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110,
        ],
    ),
    (
        '2',
        [
            0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111,
        ],
    ),
    (
        '3',
        [
            0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110,
        ],
    ),
    (
        '4',
        [
            0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010,
        ],
    ),
    (
        '5',
        [
            0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110,
        ],
    ),
    (
        '6',
        [
            0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110,
        ],
    ),
    (
        '7',
        [
            0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000,
        ],
    ),
    (
        '8',
        [
            0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110,
        ],
    ),
    (
        '9',
        [
            0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100,
        ],
    ),
    (
        '.',
        [
            0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100,
        ],
    ),
    (
        '_',
        [
            0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b11111,
        ],
    ),
    (
        '-',
        [
            0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000,
        ],
    ),
];

fn glyph(c: char) -> [u8; 7] {
    let c = c.to_ascii_uppercase();
    FONT.iter()
        .find(|(g, _)| *g == c)
        .map(|(_, rows)| *rows)
        .unwrap_or([0; 7])
}

struct Canvas {
    w: usize,
    h: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    fn put(&mut self, x: usize, y: usize, c: [u8; 3]) {
        if x < self.w && y < self.h {
            let a = (y * self.w + x) * 3;
            self.rgb[a..a + 3].copy_from_slice(&c);
        }
    }

    fn text(&mut self, x0: usize, y0: usize, s: &str, c: [u8; 3]) {
        for (i, ch) in s.chars().enumerate() {
            let rows = glyph(ch);
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..5 {
                    if bits >> (4 - col) & 1 == 1 {
                        for dy in 0..TEXT {
                            for dx in 0..TEXT {
                                self.put(x0 + (i * 6 + col) * TEXT + dx, y0 + r * TEXT + dy, c);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A map value (scaled to its peak) over the mask coverage as a colour: positive values from
/// red to yellow, negative ones blue, the brain grey below a fifth of the peak.
fn colour(v: f32, brain: f32) -> [u8; 3] {
    if v >= 0.2 {
        let t = ((v - 0.2) / 0.8).clamp(0.0, 1.0);
        [255, (60.0 + 195.0 * t) as u8, 0]
    } else if v <= -0.2 {
        let t = ((-v - 0.2) / 0.8).clamp(0.0, 1.0);
        [0, (80.0 + 120.0 * t) as u8, 255]
    } else {
        let g = (25.0 + 70.0 * brain.clamp(0.0, 1.0)) as u8;
        [g, g, g]
    }
}

/// Writes the mosaic of the group maps to `path`: `group_slices[k]` are group component `k`'s
/// slices ([`slices::component_slices`], the classifier's view) through its peak, with the
/// field of view centred on `centre_mm`; `header` (the classifier's caution) goes in a band
/// across the top when given.
pub(super) fn write(
    path: &std::path::Path,
    header: Option<&str>,
    group_slices: &[Vec<f32>],
    group: &[GroupComponent],
    grid: &Grid,
    mask: &[bool],
    centre_mm: [f64; 3],
) -> Result<(), PipelineError> {
    let s = slices::SIZE;
    let tile = s * SCALE;
    let text_w = 40 * 6 * TEXT;
    let (w, row_h) = (3 * (tile + 4) + text_w, tile + 4);
    let top = if header.is_some() { HEADER_H } else { 0 };
    let h = top + row_h * group.len().max(1);
    let mut cv = Canvas {
        w,
        h,
        rgb: vec![0u8; w * h * 3],
    };
    if let Some(t) = header {
        cv.text(6, 6, t, [255, 120, 120]);
    }
    let mask_f: Vec<f32> = mask.iter().map(|&m| m as u8 as f32).collect();
    for ((r, g), map) in group.iter().enumerate().zip(group_slices) {
        let brain = slices::component_slices(&mask_f, grid, g.peak_mm, centre_mm, 1.0);
        for ch in 0..3 {
            for y in 0..s {
                for x in 0..s {
                    let i = ch * s * s + y * s + x;
                    let c = colour(map[i], brain[i]);
                    for dy in 0..SCALE {
                        for dx in 0..SCALE {
                            cv.put(
                                ch * (tile + 4) + x * SCALE + dx,
                                top + r * row_h + y * SCALE + dy,
                                c,
                            );
                        }
                    }
                }
            }
        }
        let y0 = top + r * row_h + tile / 2 - 7 * TEXT;
        let x0 = 3 * (tile + 4) + 8;
        cv.text(x0, y0, &format!("IC{:02}", g.index), [255, 255, 255]);
        let label = match (g.label, g.probability) {
            (Some(l), Some(p)) => format!("{l} {p:.2}"),
            _ => "not classified".to_string(),
        };
        cv.text(x0, y0 + 10 * TEXT, &label, [255, 220, 120]);
    }
    medinfer_io::raster::write_png8(path, cv.w, cv.h, 3, &cv.rgb)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_character_has_a_glyph() {
        for l in super::super::CLASSES {
            for c in l.chars() {
                assert!(glyph(c) != [0; 7], "no glyph for {c:?} in {l}");
            }
        }
        for c in "IC0123456789.".chars() {
            assert!(glyph(c) != [0; 7], "{c:?}");
        }
    }
}
