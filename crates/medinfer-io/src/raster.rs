//! PNG (1 to 16-bit; gray, gray + alpha, RGB, RGBA, palette) and JPEG (8 and 12-bit, gray and
//! colour) through the `png` and `jpeg-decoder` crates, and PNG writing for windowed views and
//! colour mask overlays.
//!
//! Values keep the file's scale (0..=255 or 0..=65535) and `value_range` records the encoding's
//! full range, which TorchXRayVision-style normalization needs (an 8 MB PadChest PNG is 16-bit
//! even when its pixels use only 12 bits). Alpha is dropped; palettes are expanded to RGB.

use crate::{fmt_err, os_err, IoError};
use medinfer_core::{Image2d, Photometric, Tags};
use std::io::BufReader;
use std::path::Path;

/// Largest image accepted, in pixels (2^28: 16384 x 16384).
pub const MAX_PIXELS: u64 = 1 << 28;

fn open(path: &Path) -> Result<BufReader<std::fs::File>, IoError> {
    std::fs::File::open(path)
        .map(BufReader::new)
        .map_err(os_err(path))
}

/// Decodes a PNG file.
pub fn read_png(path: impl AsRef<Path>) -> Result<Image2d, IoError> {
    let path = path.as_ref();
    let bytes = crate::dicom::read_bytes(path, 1 << 31)?;
    decode_png(&path.display().to_string(), &bytes)
}

/// Decodes PNG bytes; `name` appears in errors (fuzzing entry point).
pub fn decode_png(name: &str, bytes: &[u8]) -> Result<Image2d, IoError> {
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    dec.set_transformations(png::Transformations::EXPAND);
    dec.set_limits(png::Limits {
        bytes: (MAX_PIXELS * 8) as usize,
    });
    let mut reader = dec
        .read_info()
        .map_err(|e| fmt_err(name, format!("not a readable PNG: {e}")))?;
    let (w, h) = {
        let i = reader.info();
        (i.width as u64, i.height as u64)
    };
    if w * h > MAX_PIXELS {
        return Err(fmt_err(
            name,
            format!("{w} x {h} pixels, more than the {MAX_PIXELS} accepted"),
        ));
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| fmt_err(name, "PNG output size overflows"))?;
    let mut buf = vec![0u8; size];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| fmt_err(name, format!("corrupt PNG data: {e}")))?;
    let (ct, depth) = (frame.color_type, frame.bit_depth);
    let samples = ct.samples();
    let sixteen = depth == png::BitDepth::Sixteen;
    let n = (w * h) as usize;
    let stride = frame.line_size;
    let channels = if samples >= 3 { 3 } else { 1 };
    let mut data = Vec::with_capacity(n * channels);
    for row in buf[..frame.buffer_size()].chunks_exact(stride) {
        if sixteen {
            for px in row[..w as usize * samples * 2].chunks_exact(samples * 2) {
                for c in 0..channels {
                    data.push(u16::from_be_bytes([px[2 * c], px[2 * c + 1]]) as f32);
                }
            }
        } else if samples == 1 {
            data.extend(row[..w as usize].iter().map(|&v| v as f32));
        } else {
            for px in row[..w as usize * samples].chunks_exact(samples) {
                for &v in &px[..channels] {
                    data.push(v as f32);
                }
            }
        }
    }
    let maxv = if sixteen { 65535.0 } else { 255.0 };
    Ok(raster_image(
        w as usize,
        h as usize,
        channels,
        data,
        maxv,
        "png",
        if sixteen { 16 } else { 8 },
    ))
}

fn raster_image(
    w: usize,
    h: usize,
    channels: usize,
    data: Vec<f32>,
    maxv: f32,
    fmt: &str,
    bits: u32,
) -> Image2d {
    let mut tags = Tags::new();
    tags.set("source_format", fmt);
    tags.set("bits_stored", bits.to_string());
    Image2d {
        width: w,
        height: h,
        channels,
        data,
        spacing: [1.0, 1.0],
        photometric: if channels == 3 {
            Photometric::Rgb
        } else {
            Photometric::Monochrome2
        },
        value_range: (0.0, maxv),
        window: None,
        voi_lut: None,
        tags,
    }
}

/// Decodes a JPEG file (baseline / progressive 8-bit, lossless and 12-bit gray).
pub fn read_jpeg(path: impl AsRef<Path>) -> Result<Image2d, IoError> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let mut dec = jpeg_decoder::Decoder::new(open(path)?);
    decode_jpeg_with(&name, &mut dec)
}

/// Decodes JPEG bytes; `name` appears in errors (fuzzing entry point).
pub fn decode_jpeg(name: &str, bytes: &[u8]) -> Result<Image2d, IoError> {
    let mut dec = jpeg_decoder::Decoder::new(bytes);
    decode_jpeg_with(name, &mut dec)
}

fn decode_jpeg_with<R: std::io::Read>(
    name: &str,
    dec: &mut jpeg_decoder::Decoder<R>,
) -> Result<Image2d, IoError> {
    dec.set_max_decoding_buffer_size((MAX_PIXELS * 4) as usize);
    dec.read_info()
        .map_err(|e| fmt_err(name, format!("not a readable JPEG: {e}")))?;
    let info = dec
        .info()
        .ok_or_else(|| fmt_err(name, "JPEG without a frame header"))?;
    let (w, h) = (info.width as usize, info.height as usize);
    if (w * h) as u64 > MAX_PIXELS || w == 0 || h == 0 {
        return Err(fmt_err(
            name,
            format!("{w} x {h} pixels is outside 1..{MAX_PIXELS}"),
        ));
    }
    let px = dec
        .decode()
        .map_err(|e| fmt_err(name, format!("corrupt JPEG data: {e}")))?;
    use jpeg_decoder::PixelFormat as F;
    let (channels, data, maxv, bits): (usize, Vec<f32>, f32, u32) = match info.pixel_format {
        F::L8 => (1, px.iter().map(|&v| v as f32).collect(), 255.0, 8),
        F::L16 => (
            1,
            px.chunks_exact(2)
                .map(|c| u16::from_ne_bytes([c[0], c[1]]) as f32)
                .collect(),
            65535.0,
            16,
        ),
        F::RGB24 => (3, px.iter().map(|&v| v as f32).collect(), 255.0, 8),
        F::CMYK32 => return Err(fmt_err(name, "CMYK JPEG is not supported")),
    };
    if data.len() < w * h * channels {
        return Err(fmt_err(
            name,
            "JPEG decoded to fewer pixels than its header declares",
        ));
    }
    Ok(raster_image(w, h, channels, data, maxv, "jpeg", bits))
}

/// Writes an 8-bit PNG: gray when `channels == 1`, RGB when 3. Values are clamped to 0..=255.
pub fn write_png8(
    path: impl AsRef<Path>,
    width: usize,
    height: usize,
    channels: usize,
    data: &[u8],
) -> Result<(), IoError> {
    let path = path.as_ref();
    let p = path.display().to_string();
    if data.len() != width * height * channels || !(channels == 1 || channels == 3) {
        return Err(fmt_err(
            &p,
            format!("{} bytes for a {width}x{height}x{channels} PNG", data.len()),
        ));
    }
    let f = std::fs::File::create(path).map_err(os_err(path))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(f), width as u32, height as u32);
    enc.set_color(if channels == 1 {
        png::ColorType::Grayscale
    } else {
        png::ColorType::Rgb
    });
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(|e| fmt_err(&p, e.to_string()))?;
    w.write_image_data(data)
        .map_err(|e| fmt_err(&p, e.to_string()))?;
    w.finish().map_err(|e| fmt_err(&p, e.to_string()))
}

/// Writes a 16-bit grayscale PNG (big-endian samples, as PNG stores them).
pub fn write_png16(
    path: impl AsRef<Path>,
    width: usize,
    height: usize,
    data: &[u16],
) -> Result<(), IoError> {
    let path = path.as_ref();
    let p = path.display().to_string();
    if data.len() != width * height {
        return Err(fmt_err(
            &p,
            format!("{} samples for a {width}x{height} PNG", data.len()),
        ));
    }
    let f = std::fs::File::create(path).map_err(os_err(path))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(f), width as u32, height as u32);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Sixteen);
    let mut w = enc.write_header().map_err(|e| fmt_err(&p, e.to_string()))?;
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_be_bytes()).collect();
    w.write_image_data(&bytes)
        .map_err(|e| fmt_err(&p, e.to_string()))?;
    w.finish().map_err(|e| fmt_err(&p, e.to_string()))
}

/// An 8-bit view of a grayscale image. The VOI transform, in DICOM's order of precedence as
/// pydicom's `apply_voi_lut` applies it: the `window` (centre, width) asked for; else the file's
/// VOI LUT (its output scaled from the LUT's bit depth to 0..=255); else the file's window
/// (DICOM's linear VOI function); else the image's own min..max. MONOCHROME1 comes out inverted
/// after the VOI transform (PS3.3 C.7.6.3.1.2), so that bright means dense either way.
pub fn to_u8_view(img: &Image2d, window: Option<(f64, f64)>) -> Result<Vec<u8>, IoError> {
    if let (None, Some(lut), 1) = (window, &img.voi_lut, img.channels) {
        let mut d = img.data.clone();
        lut.apply(&mut d);
        let scale = 255.0 / lut.max_value().max(1.0);
        let invert = img.photometric == medinfer_core::Photometric::Monochrome1;
        return Ok(d
            .iter()
            .map(|&v| {
                let x = (v * scale).round().clamp(0.0, 255.0) as u8;
                if invert {
                    255 - x
                } else {
                    x
                }
            })
            .collect());
    }
    let g = img.clone().to_monochrome2().to_gray();
    let mut d = g.data;
    let (c, w) = match window.or(img.window.map(|w| (w.center, w.width))) {
        Some(cw) => cw,
        None => {
            let (lo, hi) = medinfer_core::min_max(&d);
            (
                ((lo + hi) as f64 + 1.0) / 2.0,
                ((hi - lo) as f64 + 1.0).max(1.0),
            )
        }
    };
    medinfer_core::preprocess::window(&mut d, c, w, 0.0, 255.0)
        .map_err(|e| fmt_err("view", e.to_string()))?;
    Ok(d.iter().map(|v| v.round() as u8).collect())
}

/// Colours for label overlays (label 1, 2, 3, ...; cycled).
pub const LABEL_COLOURS: [[u8; 3]; 6] = [
    [230, 60, 60],
    [60, 200, 90],
    [70, 130, 240],
    [240, 200, 40],
    [200, 80, 220],
    [40, 210, 210],
];

/// Blends a label mask (0 = background) over an 8-bit gray view with opacity `alpha` (0..1).
pub fn overlay(gray: &[u8], labels: &[u8], alpha: f32) -> Vec<u8> {
    let mut out = Vec::with_capacity(gray.len() * 3);
    for (&g, &l) in gray.iter().zip(labels) {
        if l == 0 {
            out.extend_from_slice(&[g, g, g]);
        } else {
            let c = LABEL_COLOURS[(l as usize - 1) % LABEL_COLOURS.len()];
            for k in c {
                out.push(((1.0 - alpha) * g as f32 + alpha * k as f32).round() as u8);
            }
        }
    }
    out
}
