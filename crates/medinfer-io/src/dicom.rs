//! DICOM files through dicom-rs (`dicom-object` parses, `dicom-pixeldata` decompresses).
//!
//! medinfer owns the *value* pipeline on top of the decoded samples, because that is where silent
//! errors live: bits-stored masking and sign extension, planar configuration, YBR to RGB, the
//! modality transform (Rescale Slope / Intercept, also when stored with VR UN, or a Modality LUT
//! Sequence; per frame for enhanced multi-frame), MONOCHROME1 bookkeeping and the value range,
//! and the VOI inputs (window, VOI LUT Sequence) handed on with each image.
//! Every declared size is checked against the bytes really present before anything is allocated
//! from it, and a panic inside a dependency becomes an error naming the file.
//!
//! | transfer syntax | supported |
//! |---|---|
//! | implicit / explicit VR little endian, explicit VR big endian, deflated | yes |
//! | encapsulated uncompressed | yes |
//! | RLE lossless | yes: medinfer's own decoder (8, 16 and 32 bits allocated) |
//! | JPEG baseline (8-bit), extended 8-bit, lossless (process 14, any predictor) | yes |
//! | JPEG extended 12-bit (grayscale) | yes: medinfer's own decoder ([`crate::jpeg12`]), since no crate decodes it |
//! | JPEG 2000 (lossless and lossy, HTJ2K excluded) | yes (pure-Rust OpenJPEG port) |
//! | JPEG-LS (lossless and near-lossless, 1 or 3 components, every interleave mode) | yes: medinfer's own decoder ([`crate::jpegls`]), checked against CharLS |
//! | JPEG XL (lossless, recompression, lossy) | yes: jxl-oxide, read back at the codestream's bit depth by medinfer (dicom-rs's adapter scales 12-bit samples wrongly) |
//! | MPEG/HEVC video | no: a clear error naming the syntax |

use crate::{fmt_err, os_err, IoError};
use dicom_core::dictionary::DataDictionaryEntry;
use dicom_core::{value::Value, DataDictionary, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, FileMetaTableBuilder, InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use medinfer_core::{Image2d, Photometric, Tags, Window};
use serde::Serialize;
use std::path::Path;

/// Largest DICOM file read (bytes).
pub const MAX_FILE_BYTES: u64 = 4 << 30;
/// Largest decoded pixel buffer accepted, in samples (rows x columns x frames x samples per
/// pixel); 2^31 samples is 8 GiB of f32 and far beyond any real acquisition on this machine.
pub const MAX_SAMPLES: u64 = 1 << 31;
/// Most frames one file may declare. Far above real acquisitions (ultrasound and XA cines run
/// to a few thousand, enhanced MR to tens of thousands) and small enough that per-frame
/// bookkeeping from a hostile header stays bounded.
pub const MAX_FRAMES: u64 = 1 << 17;
/// Deepest nesting of sequences / items accepted. Real objects nest a handful of levels;
/// dicom-rs builds (and drops) nested items recursively, so tens of thousands of levels would
/// overflow the stack, which aborts the process (a stack overflow cannot be caught).
pub const MAX_DEPTH: usize = 64;

/// Everything medinfer reads from a DICOM file apart from the pixels. Holds no
/// patient-identifying attribute.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DicomHeader {
    /// Transfer syntax UID.
    pub transfer_syntax_uid: String,
    /// Its name, when known.
    pub transfer_syntax: String,
    /// Whether medinfer can decode this transfer syntax.
    pub decodable: bool,
    /// SOP class UID.
    pub sop_class_uid: String,
    /// SOP instance UID (not identifying: a random or derived UID; echoed by STOW-RS).
    pub sop_instance_uid: String,
    /// Modality (CT, MR, CR, DX, ...).
    pub modality: String,
    /// Series instance UID.
    pub series_instance_uid: String,
    /// Study instance UID.
    pub study_instance_uid: String,
    /// Series number.
    pub series_number: Option<i64>,
    /// Series description.
    pub series_description: String,
    /// Instance number.
    pub instance_number: Option<i64>,
    /// Rows.
    pub rows: u32,
    /// Columns.
    pub columns: u32,
    /// Number of frames (1 for single-frame objects).
    pub frames: u32,
    /// Samples per pixel.
    pub samples_per_pixel: u16,
    /// Bits allocated.
    pub bits_allocated: u16,
    /// Bits stored.
    pub bits_stored: u16,
    /// High Bit: the most significant bit of a stored sample (Bits Stored - 1 unless the file
    /// says otherwise).
    pub high_bit: u16,
    /// Pixel representation: true when signed.
    pub signed: bool,
    /// Photometric interpretation as declared.
    pub photometric: String,
    /// Planar configuration (0 interleaved, 1 planar).
    pub planar_configuration: u16,
    /// Pixel spacing (row, column) in mm; Imager Pixel Spacing when Pixel Spacing is absent.
    pub pixel_spacing: Option<[f64; 2]>,
    /// Slice thickness in mm.
    pub slice_thickness: Option<f64>,
    /// Image Position (Patient), LPS mm, of the first frame.
    pub position: Option<[f64; 3]>,
    /// Image Orientation (Patient): row then column direction cosines, LPS.
    pub orientation: Option<[f64; 6]>,
    /// Trigger time in ms (cine).
    pub trigger_time: Option<f64>,
    /// Temporal position identifier (cine).
    pub temporal_position: Option<i64>,
    /// Rescale slope and intercept (1, 0 when absent).
    pub rescale: (f64, f64),
    /// Whether a Modality LUT Sequence replaces the rescale.
    pub modality_lut: bool,
    /// First window centre / width, if any.
    pub window: Option<Window>,
    /// Per-frame geometry of an enhanced multi-frame object (position LPS, rescale).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub frame_positions: Vec<[f64; 3]>,
    /// Per-frame (temporal position index or trigger delay) of an enhanced multi-frame object.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub frame_times: Vec<f64>,
}

/// An open DICOM file: header parsed, pixels decoded on demand.
pub struct DicomFile {
    path: String,
    obj: DefaultDicomObject,
    /// The parsed header.
    pub header: DicomHeader,
    per_frame_rescale: Vec<(f64, f64)>,
}

/// Runs `f`, turning a panic inside a dependency into an error that names the file.
fn guard<T>(path: &str, what: &str, f: impl FnOnce() -> Result<T, IoError>) -> Result<T, IoError> {
    medinfer_core::panic::catch(f).unwrap_or_else(|p| {
        Err(fmt_err(
            path,
            format!("{what} failed inside the DICOM library: {p}"),
        ))
    })
}

/// Reads a file into memory with a size cap.
pub(crate) fn read_bytes(path: &Path, cap: u64) -> Result<Vec<u8>, IoError> {
    let p = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(os_err(path))?;
    if meta.len() > cap {
        return Err(fmt_err(
            &p,
            format!("file is {} bytes, more than the {cap} accepted", meta.len()),
        ));
    }
    std::fs::read(path).map_err(os_err(path))
}

/// The Pixel Data tag (7FE0,0010) as little- and big-endian bytes.
const PIXEL_TAG_LE: [u8; 4] = [0xe0, 0x7f, 0x10, 0x00];
const PIXEL_TAG_BE: [u8; 4] = [0x7f, 0xe0, 0x00, 0x10];

/// How much of a file a header-only read looks at first.
const HEADER_PREFIX: u64 = 1 << 20;

fn read_prefix(path: &Path, n: u64) -> Result<Vec<u8>, IoError> {
    use std::io::Read;
    let os = os_err(path);
    let mut v = Vec::new();
    std::fs::File::open(path)
        .map_err(os)?
        .take(n)
        .read_to_end(&mut v)
        .map_err(os)?;
    Ok(v)
}

/// True when `bytes` look like DICOM (preamble + "DICM", bare "DICM", or a raw data set that
/// starts with a group 0x0002 / 0x0008 element).
pub fn looks_like_dicom(bytes: &[u8]) -> bool {
    (bytes.len() >= 132 && &bytes[128..132] == b"DICM")
        || bytes.starts_with(b"DICM")
        || (bytes.len() >= 8 && matches!(bytes[0..2], [0x02, 0x00] | [0x08, 0x00]) && bytes[3] == 0)
}

/// Guesses the encoding of a data set without file meta from its first element.
fn guess_raw_ts(bytes: &[u8]) -> &'static str {
    let big = bytes.len() >= 2 && bytes[0] == 0 && bytes[1] != 0;
    let explicit =
        bytes.len() >= 6 && bytes[4].is_ascii_uppercase() && bytes[5].is_ascii_uppercase();
    match (explicit, big) {
        (_, true) => "1.2.840.10008.1.2.2",
        (true, false) => "1.2.840.10008.1.2.1",
        (false, false) => "1.2.840.10008.1.2",
    }
}

/// How a data set is encoded, for [`check_declared_lengths`].
#[derive(Clone, Copy)]
struct Encoding {
    explicit: bool,
    big_endian: bool,
}

impl Encoding {
    /// `None` for deflated syntaxes (the bytes are compressed; dicom-rs inflates them).
    fn of(ts_uid: &str) -> Option<Self> {
        match ts_uid.trim_end_matches(['\0', ' ']) {
            "1.2.840.10008.1.2" => Some(Encoding {
                explicit: false,
                big_endian: false,
            }),
            "1.2.840.10008.1.2.2" => Some(Encoding {
                explicit: true,
                big_endian: true,
            }),
            "1.2.840.10008.1.2.1.99" | "1.2.840.10008.1.2.8.1" => None,
            _ => Some(Encoding {
                explicit: true,
                big_endian: false,
            }),
        }
    }
}

const UNDEFINED: u32 = u32::MAX;

/// Explicit VRs whose value length is a 2-byte field (PS3.5 7.1.2), as dicom-rs's decoders
/// read them; every other VR (unknown ones too, read as UN) has 2 reserved bytes and a 4-byte
/// length.
fn has_short_length(vr: &[u8; 2]) -> bool {
    matches!(
        vr,
        b"AE"
            | b"AS"
            | b"AT"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"FL"
            | b"FD"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"PN"
            | b"SH"
            | b"SL"
            | b"SS"
            | b"ST"
            | b"TM"
            | b"UI"
            | b"UL"
            | b"US"
    )
}

/// Walks a data set's element, item and fragment headers (into sequences and items) and checks
/// that every declared length fits in the bytes that are really there, before dicom-rs reads
/// the set: dicom-rs allocates each value from its declared length first (a 5 KB file declaring
/// a 4 GB element made it allocate 4 GB; found by fuzzing), so a hostile length must be refused
/// here. Returns where the data set ended (`bytes.len()`, or the Pixel Data element with
/// `stop_at_pixel_data`). Malformed structure that is not a length problem is left to dicom-rs.
fn check_declared_lengths(
    bytes: &[u8],
    start: usize,
    enc: Encoding,
    stop_at_pixel_data: bool,
) -> Result<usize, String> {
    /// A context being walked: its end (usize::MAX when its length is undefined) and its
    /// encoding. The walk mirrors how dicom-rs's parser reads (not only what the standard
    /// says), because what matters is the lengths dicom-rs will allocate from.
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        /// A data set (the top level, or an item's).
        Set,
        /// A sequence's items.
        Seq,
        /// Encapsulated pixel data fragments.
        Frags,
    }
    struct Ctx {
        kind: Kind,
        end: usize,
        explicit: bool,
        big_endian: bool,
    }
    let u16_at = |i: usize, be: bool| {
        let b = [bytes[i], bytes[i + 1]];
        if be {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    };
    let u32_at = |i: usize, be: bool| {
        let b = [bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]];
        if be {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    };
    let too_long = |g: u16, e: u16, len: u32, room: usize| {
        format!(
            "element ({g:04X},{e:04X}) declares {len} bytes but only {room} remain: truncated or corrupt"
        )
    };
    let mut stack = vec![Ctx {
        kind: Kind::Set,
        end: bytes.len(),
        explicit: enc.explicit,
        big_endian: enc.big_endian,
    }];
    let mut pos = start;
    loop {
        // Each nesting level is a sequence context plus an item context.
        if stack.len() > 2 * MAX_DEPTH + 1 {
            return Err(format!(
                "sequences nested more than {MAX_DEPTH} levels deep at byte {pos}: corrupt or hostile"
            ));
        }
        // Close the contexts whose defined length is used up.
        while stack.len() > 1 {
            let top = &stack[stack.len() - 1];
            if top.kind != Kind::Frags && top.end != usize::MAX && pos >= top.end {
                stack.pop();
            } else {
                break;
            }
        }
        let limit = stack
            .iter()
            .map(|c| c.end)
            .min()
            .unwrap_or(0)
            .min(bytes.len());
        // A header that does not fit in what is left of a sequence or item would be read by
        // dicom-rs from the bytes after it (it does not stop at item ends): refused. At the end
        // of the data itself dicom-rs stops, so the walk does too.
        let straddles = |pos: usize| {
            Err(format!(
                "at byte {pos} an element header or an open item runs past the end of its item or sequence"
            ))
        };
        if pos + 8 > limit {
            // Short of the end of the data, this is either a header crossing the end of its
            // sequence or item, or an undefined-length item still open at the end of the
            // defined-length sequence around it (dicom-rs would read on into what follows).
            return if limit < bytes.len() {
                straddles(pos)
            } else {
                Ok(pos)
            };
        }
        let top = &stack[stack.len() - 1];
        let (kind, explicit, be) = (top.kind, top.explicit, top.big_endian);
        let (g, e) = (u16_at(pos, be), u16_at(pos + 2, be));
        if kind != Kind::Set {
            // Inside a sequence: only item headers (tag + 4-byte length) are valid, as dicom-rs
            // reads them; anything else makes dicom-rs fail at the same place.
            let len = u32_at(pos + 4, be);
            pos += 8;
            match (g, e, kind) {
                (0xFFFE, 0xE000, Kind::Frags) => {
                    if len == UNDEFINED || len as usize > limit - pos {
                        return Err(too_long(g, e, len, limit - pos));
                    }
                    pos += len as usize;
                }
                (0xFFFE, 0xE000, _) => {
                    if len != UNDEFINED && len as usize > limit - pos {
                        return Err(too_long(g, e, len, limit - pos));
                    }
                    stack.push(Ctx {
                        kind: Kind::Set,
                        end: if len == UNDEFINED {
                            usize::MAX
                        } else {
                            pos + len as usize
                        },
                        explicit,
                        big_endian: be,
                    });
                }
                (0xFFFE, 0xE0DD, _) => {
                    stack.pop();
                }
                (0xFFFE, 0xE00D, _) => {}
                _ => return Ok(pos - 8),
            }
            continue;
        }
        if stop_at_pixel_data && stack.len() == 1 && (g, e) == (0x7FE0, 0x0010) {
            return Ok(pos);
        }
        // A data set: element headers as dicom-rs's decoders read them. Group FFFE has no VR
        // (tag + 4-byte length) in every encoding.
        let (vr, len, header) = if g == 0xFFFE {
            (*b"UN", u32_at(pos + 4, be), 8)
        } else if explicit {
            let vr = [bytes[pos + 4], bytes[pos + 5]];
            let short = has_short_length(&vr);
            if short {
                (vr, u16_at(pos + 6, be) as u32, 8)
            } else if pos + 12 > limit {
                return if limit < bytes.len() {
                    straddles(pos)
                } else {
                    Ok(pos)
                };
            } else {
                (vr, u32_at(pos + 8, be), 12)
            }
        } else {
            // Implicit VR: the VR dicom-rs takes from its dictionary (OW for Pixel Data and
            // overlay data, UN when unknown).
            let vr = if (g, e) == (0x7FE0, 0x0010) || (g >> 8 == 0x60 && e == 0x3000) {
                VR::OW
            } else {
                dicom_dictionary_std::StandardDataDictionary
                    .by_tag(Tag(g, e))
                    .map(|d| d.vr().relaxed())
                    .unwrap_or(VR::UN)
            };
            (vr.to_bytes(), u32_at(pos + 4, be), 8)
        };
        pos += header;
        if (g, e) == (0xFFFE, 0xE00D) {
            // Item end (dicom-rs ignores one outside any sequence).
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let seq = |end| Ctx {
            kind: Kind::Seq,
            end,
            explicit,
            big_endian: be,
        };
        if &vr == b"SQ" {
            if len != UNDEFINED && len as usize > limit - pos {
                return Err(too_long(g, e, len, limit - pos));
            }
            stack.push(seq(if len == UNDEFINED {
                usize::MAX
            } else {
                pos + len as usize
            }));
        } else if len == UNDEFINED {
            // Encapsulated pixel data holds fragments; any other undefined-length element is
            // read by dicom-rs as a sequence of data sets, in the same encoding.
            if (g, e) == (0x7FE0, 0x0010) {
                stack.push(Ctx {
                    kind: Kind::Frags,
                    end: usize::MAX,
                    explicit,
                    big_endian: be,
                });
            } else {
                stack.push(seq(usize::MAX));
            }
        } else if len as usize > limit - pos {
            return Err(too_long(g, e, len, limit - pos));
        } else {
            // dicom-rs reads len / size binary numbers but counts len bytes as read: a length
            // that is not a multiple of the size makes it lose its place in the file (fuzzing
            // found FD with length 2 turning later bytes into a 4 GB element).
            let size = match &vr {
                b"SS" | b"US" | b"OW" => 2,
                b"FL" | b"SL" | b"UL" | b"AT" | b"OF" | b"OL" => 4,
                b"FD" | b"OD" | b"SV" | b"UV" | b"OV" => 8,
                _ => 1,
            };
            if len % size != 0 {
                return Err(format!(
                    "element ({g:04X},{e:04X}) {} has length {len}, not a multiple of {size}",
                    String::from_utf8_lossy(&vr)
                ));
            }
            pos += len as usize;
        }
    }
}

/// Where the file meta group ends and the transfer syntax it names, read the way dicom-rs reads
/// it: the group length element first, then elements (of any group) until that many bytes are
/// consumed. `body` starts at "DICM". Declared lengths beyond the data are refused.
fn meta_extent(body: &[u8]) -> Result<(usize, String), String> {
    let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
    // (0002,0000) UL 4: the group length. Anything else: dicom-rs refuses the file itself.
    if body.len() < 16 || (u16_at(4), u16_at(6)) != (0x0002, 0x0000) {
        return Ok((4, String::new()));
    }
    let group_length = u32_at(12) as usize;
    let mut pos = 16;
    let mut total = 0usize;
    let mut ts = String::new();
    while total < group_length {
        if pos + 8 > body.len() {
            return Err("truncated".into());
        }
        let (g, e) = (u16_at(pos), u16_at(pos + 2));
        let vr = [body[pos + 4], body[pos + 5]];
        let short = has_short_length(&vr);
        let (len, header) = if g == 0xFFFE {
            (u32_at(pos + 4) as usize, 8)
        } else if short {
            (u16_at(pos + 6) as usize, 8)
        } else if pos + 12 > body.len() {
            return Err("truncated".into());
        } else {
            (u32_at(pos + 8) as usize, 12)
        };
        let v = pos + header;
        if len == UNDEFINED as usize || len > body.len() - v {
            return Err(format!(
                "element ({g:04X},{e:04X}) declares {len} bytes but only {} remain",
                body.len() - v
            ));
        }
        if (g, e) == (0x0002, 0x0010) {
            ts = String::from_utf8_lossy(&body[v..v + len]).into_owned();
        }
        total += header + len;
        pos = v + len;
    }
    Ok((pos, ts))
}

fn parse(path: &str, bytes: &[u8], header_only: bool) -> Result<DefaultDicomObject, IoError> {
    let opts = || {
        let o = OpenFileOptions::new().read_preamble(dicom_object::file::ReadPreamble::Never);
        if header_only {
            o.read_until(tags::PIXEL_DATA)
        } else {
            o
        }
    };
    let body = if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        Some(&bytes[128..])
    } else if bytes.starts_with(b"DICM") {
        Some(bytes)
    } else {
        None
    };
    let mut bytes = bytes;
    if let Some(body) = body {
        // "DICM" followed by a file meta group (0002,xxxx), as the standard wants ...
        if body.len() >= 6 && body[4..6] == [0x02, 0x00] {
            let le = Encoding {
                explicit: true,
                big_endian: false,
            };
            let (meta_end, ts) =
                meta_extent(body).map_err(|e| fmt_err(path, format!("file meta: {e}")))?;
            match Encoding::of(&ts) {
                // A data set written in the other VR encoding than its transfer syntax says
                // (seen from a highdicom version: JPEG Baseline declared, implicit VR written):
                // read it as what it is, as pydicom does, keeping the declared syntax for the
                // pixel data.
                Some(enc)
                    if !enc.big_endian
                        && meta_end < body.len()
                        && looks_explicit(&body[meta_end..]) != enc.explicit =>
                {
                    let actual = Encoding {
                        explicit: !enc.explicit,
                        big_endian: false,
                    };
                    let data = &body[meta_end..];
                    // dicom-rs reads the whole slice given here: for a header-only read it is
                    // cut where the checked part ends (at Pixel Data).
                    let end = check_declared_lengths(data, 0, actual, header_only)
                        .map_err(|e| fmt_err(path, e))?;
                    let data = &data[..end.min(data.len())];
                    let read_as = if actual.explicit {
                        "1.2.840.10008.1.2.1"
                    } else {
                        "1.2.840.10008.1.2"
                    };
                    let ts_read =
                        dicom_encoding::TransferSyntaxIndex::get(&TransferSyntaxRegistry, read_as)
                            .ok_or_else(|| {
                                fmt_err(path, "no implicit VR transfer syntax registered")
                            })?;
                    let ds =
                        InMemDicomObject::read_dataset_with_ts(data, ts_read).map_err(|e| {
                            fmt_err(
                                path,
                                format!("not a readable DICOM data set: {}", chain(&e)),
                            )
                        })?;
                    return with_meta(path, ds, ts.trim_end_matches(['\0', ' ']));
                }
                Some(enc) => {
                    check_declared_lengths(body, meta_end, enc, header_only)
                        .map_err(|e| fmt_err(path, e))?;
                }
                None => {
                    // Deflated: the lengths are checked on the inflated data set (explicit VR
                    // little endian). Deflate cannot expand more than 1032:1, so a stream that
                    // inflates beyond that (or beyond the file size cap) is refused.
                    let packed = &body[meta_end.min(body.len())..];
                    let cap = (packed.len() as u64)
                        .saturating_mul(1032)
                        .saturating_add(1 << 20)
                        .min(MAX_FILE_BYTES);
                    let mut inflated = Vec::new();
                    use std::io::Read;
                    flate2::read::DeflateDecoder::new(packed)
                        .take(cap + 1)
                        .read_to_end(&mut inflated)
                        .map_err(|e| fmt_err(path, format!("deflated data set: {e}")))?;
                    if inflated.len() as u64 > cap {
                        return Err(fmt_err(
                            path,
                            format!("the deflated data set inflates beyond {cap} bytes"),
                        ));
                    }
                    check_declared_lengths(&inflated, 0, le, header_only)
                        .map_err(|e| fmt_err(path, format!("deflated data set: {e}")))?;
                }
            }
            return opts()
                .from_reader(body)
                .map_err(|e| fmt_err(path, format!("not a readable DICOM file: {}", chain(&e))));
        }
        // ... or, as some writers leave it, "DICM" straight followed by the data set.
        bytes = &body[4..];
    }
    if !looks_like_dicom(bytes) {
        return Err(fmt_err(
            path,
            "not a DICOM file (no DICM magic and no data set at the start)",
        ));
    }
    // No preamble and no file meta: read the bare data set as pydicom's `force=True` does.
    let ts_uid = guess_raw_ts(bytes);
    if let Some(enc) = Encoding::of(ts_uid) {
        // dicom-rs reads the whole slice given here: for a header-only read it is cut where
        // the checked part ends (at Pixel Data). Found by fuzzing series assembly: the elements
        // after Pixel Data went unchecked and one declared 4 GB.
        let end =
            check_declared_lengths(bytes, 0, enc, header_only).map_err(|e| fmt_err(path, e))?;
        bytes = &bytes[..end.min(bytes.len())];
    }
    let ts = dicom_encoding::TransferSyntaxIndex::get(&TransferSyntaxRegistry, ts_uid)
        .ok_or_else(|| fmt_err(path, format!("transfer syntax {ts_uid} is not registered")))?;
    let ds = InMemDicomObject::read_dataset_with_ts(bytes, ts).map_err(|e| {
        fmt_err(
            path,
            format!("not a readable DICOM data set: {}", chain(&e)),
        )
    })?;
    with_meta(path, ds, ts_uid)
}

/// Whether a data set's first element has an explicit VR (two letters of a known VR after the
/// tag), as pydicom decides it.
fn looks_explicit(data: &[u8]) -> bool {
    data.len() >= 6 && VR::from_binary([data[4], data[5]]).is_some()
}

/// A data set read without its file meta, given one with transfer syntax `ts_uid` (and the SOP
/// class and instance from the data set).
fn with_meta(
    path: &str,
    ds: InMemDicomObject,
    ts_uid: &str,
) -> Result<DefaultDicomObject, IoError> {
    let sop_class = ds
        .get(tags::SOP_CLASS_UID)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        .unwrap_or_else(|| "1.2.840.10008.5.1.4.1.1.7".into());
    let sop_inst = ds
        .get(tags::SOP_INSTANCE_UID)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        .unwrap_or_else(|| "2.25.0".into());
    ds.with_meta(
        FileMetaTableBuilder::new()
            .transfer_syntax(ts_uid)
            .media_storage_sop_class_uid(sop_class)
            .media_storage_sop_instance_uid(sop_inst),
    )
    .map_err(|e| fmt_err(path, format!("cannot build file meta: {}", chain(&e))))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

// ---- attribute access, lenient like pydicom -------------------------------------------------

fn get_text<D: DataDictionary + Clone>(o: &InMemDicomObject<D>, t: Tag) -> Option<String> {
    let e = o.get(t)?;
    let s = match e.value() {
        Value::Primitive(p) if e.vr() == VR::UN => {
            String::from_utf8_lossy(&p.to_bytes()).into_owned()
        }
        _ => e.to_str().ok()?.into_owned(),
    };
    Some(
        s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
            .to_string(),
    )
}

/// Numbers of a DS / IS / binary numeric element (multi-valued with backslashes).
fn get_nums<D: DataDictionary + Clone>(o: &InMemDicomObject<D>, t: Tag) -> Option<Vec<f64>> {
    let e = o.get(t)?;
    let is_text = matches!(e.vr(), VR::DS | VR::IS | VR::UN | VR::LO | VR::SH | VR::CS);
    if !is_text {
        if let Ok(v) = e.to_multi_float64() {
            return if v.is_empty() { None } else { Some(v) };
        }
    }
    let s = get_text(o, t)?;
    let v: Result<Vec<f64>, _> = s
        .split('\\')
        .filter(|p| !p.trim().is_empty())
        .map(|p| p.trim().parse::<f64>())
        .collect();
    v.ok()
        .filter(|v| !v.is_empty() && v.iter().all(|x| x.is_finite()))
}

fn get_num<D: DataDictionary + Clone>(o: &InMemDicomObject<D>, t: Tag) -> Option<f64> {
    get_nums(o, t).map(|v| v[0])
}

fn get_uint<D: DataDictionary + Clone>(o: &InMemDicomObject<D>, t: Tag) -> Option<u64> {
    let e = o.get(t)?;
    if e.vr() == VR::UN {
        // US stored as UN in implicit little endian: two bytes.
        if let Value::Primitive(p) = e.value() {
            let b = p.to_bytes();
            if b.len() == 2 {
                return Some(u16::from_le_bytes([b[0], b[1]]) as u64);
            }
        }
    }
    get_num(o, t)
        .filter(|v| *v >= 0.0 && v.fract() == 0.0)
        .map(|v| v as u64)
}

fn first_item<D: DataDictionary + Clone>(
    o: &InMemDicomObject<D>,
    t: Tag,
) -> Option<&InMemDicomObject<D>> {
    o.get(t)?.items()?.first()
}

/// Looks `t` up in `item`'s functional group `group` (enhanced multi-frame), falling back to
/// the shared functional groups.
fn fg_nums(
    obj: &InMemDicomObject,
    frame_item: Option<&InMemDicomObject>,
    group: Tag,
    t: Tag,
) -> Option<Vec<f64>> {
    frame_item
        .and_then(|f| first_item(f, group))
        .and_then(|g| get_nums(g, t))
        .or_else(|| {
            first_item(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)
                .and_then(|s| first_item(s, group))
                .and_then(|g| get_nums(g, t))
        })
}

fn arr<const N: usize>(v: Option<Vec<f64>>) -> Option<[f64; N]> {
    v.and_then(|v| v.get(..N).and_then(|s| s.try_into().ok()))
}

impl DicomFile {
    /// Opens and parses a DICOM file (header and pixel data, not yet decoded).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, IoError> {
        Self::open_inner(path.as_ref(), false)
    }

    /// Parses only the header (stops before Pixel Data): fast, for inspecting and sorting series.
    pub fn open_header(path: impl AsRef<Path>) -> Result<Self, IoError> {
        Self::open_inner(path.as_ref(), true)
    }

    fn open_inner(path: &Path, header_only: bool) -> Result<Self, IoError> {
        let p = path.display().to_string();
        if header_only {
            // Headers sit in front of the pixel data: read the first MiB, and the whole file
            // only when that was not enough to reach Pixel Data.
            let prefix = read_prefix(path, HEADER_PREFIX)?;
            if (prefix.len() as u64) < HEADER_PREFIX {
                return Self::from_bytes_inner(&p, &prefix, true, prefix.len() as u64);
            }
            let file_len = std::fs::metadata(path).map_err(os_err(path))?.len();
            // The prefix holds the whole header when the Pixel Data tag is in it (either byte
            // order); otherwise a parse of the prefix could end early and miss elements.
            let has_pixel_tag = prefix
                .windows(4)
                .any(|w| w == PIXEL_TAG_LE || w == PIXEL_TAG_BE);
            if has_pixel_tag {
                if let Ok(f) = Self::from_bytes_inner(&p, &prefix, true, file_len) {
                    return Ok(f);
                }
            }
        }
        let bytes = read_bytes(path, MAX_FILE_BYTES)?;
        Self::from_bytes_inner(&p, &bytes, header_only, bytes.len() as u64)
    }

    /// Parses DICOM from memory; `name` is used in error messages (fuzzing entry point).
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<Self, IoError> {
        Self::from_bytes_inner(name, bytes, false, bytes.len() as u64)
    }

    /// Parses `bytes` (the whole file, or its first part for a header-only read of a file of
    /// `file_len` bytes).
    fn from_bytes_inner(
        p: &str,
        bytes: &[u8],
        header_only: bool,
        file_len: u64,
    ) -> Result<Self, IoError> {
        guard(p, "parsing", || {
            let obj = parse(p, bytes, header_only)?;
            let (header, per_frame_rescale) = read_header(p, &obj)?;
            let has_pixels = if header_only {
                bytes
                    .windows(4)
                    .any(|w| w == PIXEL_TAG_LE || w == PIXEL_TAG_BE)
            } else {
                obj.get(tags::PIXEL_DATA).is_some()
            };
            if has_pixels {
                check_size_against_file(p, &header, file_len)?;
            }
            Ok(DicomFile {
                path: p.to_string(),
                obj,
                header,
                per_frame_rescale,
            })
        })
    }

    /// The file name used in messages.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Decodes every frame into images in modality units.
    pub fn images(&self) -> Result<Vec<Image2d>, IoError> {
        guard(&self.path, "decoding", || decode(self))
    }
}

fn read_header(
    p: &str,
    obj: &DefaultDicomObject,
) -> Result<(DicomHeader, Vec<(f64, f64)>), IoError> {
    let ts_uid = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches(['\0', ' '])
        .to_string();
    let ts = dicom_encoding::TransferSyntaxIndex::get(&TransferSyntaxRegistry, &ts_uid);
    let ds: &InMemDicomObject = obj;
    let rows = get_uint(ds, tags::ROWS).unwrap_or(0);
    let columns = get_uint(ds, tags::COLUMNS).unwrap_or(0);
    let frames_declared = get_num(ds, tags::NUMBER_OF_FRAMES).unwrap_or(1.0);
    if frames_declared > MAX_FRAMES as f64 {
        return Err(fmt_err(
            p,
            format!("Number of Frames {frames_declared} is more than the {MAX_FRAMES} accepted"),
        ));
    }
    let frames = frames_declared.max(1.0) as u64;
    let spp = get_uint(ds, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let bits_allocated = get_uint(ds, tags::BITS_ALLOCATED).unwrap_or(0);
    let bits_stored = get_uint(ds, tags::BITS_STORED).unwrap_or(bits_allocated);
    let limits_ok = rows <= 65535 && columns <= 65535 && spp <= 4;
    if !limits_ok {
        return Err(fmt_err(p, format!("absurd image geometry: {rows} rows x {columns} columns x {frames} frames x {spp} samples")));
    }
    let samples = rows
        .checked_mul(columns)
        .and_then(|v| v.checked_mul(frames))
        .and_then(|v| v.checked_mul(spp))
        .unwrap_or(u64::MAX);
    if samples > MAX_SAMPLES {
        return Err(fmt_err(
            p,
            format!("{rows} rows x {columns} columns x {frames} frames x {spp} samples = {samples} samples, more than the {MAX_SAMPLES} accepted"),
        ));
    }
    let window = match (
        get_nums(ds, tags::WINDOW_CENTER),
        get_nums(ds, tags::WINDOW_WIDTH),
    ) {
        (Some(c), Some(w)) if w[0] > 0.0 => Some(Window {
            center: c[0],
            width: w[0],
        }),
        _ => None,
    };
    // Enhanced multi-frame: per-frame positions and rescales.
    let per_frame: Vec<&InMemDicomObject> = ds
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items())
        .map(|items| items.iter().collect())
        .unwrap_or_default();
    let mut frame_positions = Vec::new();
    let mut frame_times = Vec::new();
    let mut per_frame_rescale = Vec::new();
    for f in &per_frame {
        if let Some(pos) = arr::<3>(fg_nums(
            ds,
            Some(f),
            tags::PLANE_POSITION_SEQUENCE,
            tags::IMAGE_POSITION_PATIENT,
        )) {
            frame_positions.push(pos);
        }
        let slope = fg_nums(
            ds,
            Some(f),
            tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
            tags::RESCALE_SLOPE,
        );
        let icpt = fg_nums(
            ds,
            Some(f),
            tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
            tags::RESCALE_INTERCEPT,
        );
        per_frame_rescale.push((slope.map_or(1.0, |v| v[0]), icpt.map_or(0.0, |v| v[0])));
        let t = fg_nums(
            ds,
            Some(f),
            tags::CARDIAC_SYNCHRONIZATION_SEQUENCE,
            tags::NOMINAL_CARDIAC_TRIGGER_DELAY_TIME,
        )
        .or_else(|| {
            fg_nums(
                ds,
                Some(f),
                tags::FRAME_CONTENT_SEQUENCE,
                tags::TEMPORAL_POSITION_INDEX,
            )
        });
        if let Some(t) = t {
            frame_times.push(t[0]);
        }
    }
    if frame_positions.len() != per_frame.len() {
        frame_positions.clear();
    }
    // RT Dose (and other classic multi-frame grids): one Image Position for the first frame and
    // the Grid Frame Offset Vector along the normal (C.8.8.3.2). The first offset is 0 when
    // relative and the first frame's coordinate along the normal when absolute; either way
    // frame i lies (offset[i] - offset[0]) from the first frame.
    if frame_positions.is_empty() && frames > 1 {
        let gfov = get_nums(ds, tags::GRID_FRAME_OFFSET_VECTOR);
        let pos = arr::<3>(get_nums(ds, tags::IMAGE_POSITION_PATIENT));
        let iop = arr::<6>(get_nums(ds, tags::IMAGE_ORIENTATION_PATIENT));
        if let (Some(off), Some(p), Some(o)) = (gfov, pos, iop) {
            if off.len() as u64 == frames && off.iter().all(|v| v.is_finite()) {
                let n = [
                    o[1] * o[5] - o[2] * o[4],
                    o[2] * o[3] - o[0] * o[5],
                    o[0] * o[4] - o[1] * o[3],
                ];
                frame_positions = off
                    .iter()
                    .map(|d| {
                        let d = d - off[0];
                        [p[0] + d * n[0], p[1] + d * n[1], p[2] + d * n[2]]
                    })
                    .collect();
            }
        }
    }
    if frame_times.len() != per_frame.len() {
        frame_times.clear();
    }
    if per_frame_rescale.len() as u64 != frames || per_frame.is_empty() {
        per_frame_rescale.clear();
    }
    let first = per_frame.first().copied();
    // RT Dose stores Gy as value x Dose Grid Scaling (C.8.8.3.3), with no rescale elements:
    // that is its modality transform.
    let dose_scaling = get_num(ds, tags::DOSE_GRID_SCALING).filter(|v| v.is_finite() && *v != 0.0);
    let rescale = (
        get_num(ds, tags::RESCALE_SLOPE)
            .or(dose_scaling)
            .or_else(|| {
                fg_nums(
                    ds,
                    first,
                    tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
                    tags::RESCALE_SLOPE,
                )
                .map(|v| v[0])
            })
            .unwrap_or(1.0),
        get_num(ds, tags::RESCALE_INTERCEPT)
            .or_else(|| {
                fg_nums(
                    ds,
                    first,
                    tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
                    tags::RESCALE_INTERCEPT,
                )
                .map(|v| v[0])
            })
            .unwrap_or(0.0),
    );
    let pixel_spacing = arr::<2>(get_nums(ds, tags::PIXEL_SPACING))
        .or_else(|| {
            arr::<2>(fg_nums(
                ds,
                first,
                tags::PIXEL_MEASURES_SEQUENCE,
                tags::PIXEL_SPACING,
            ))
        })
        .or_else(|| arr::<2>(get_nums(ds, tags::IMAGER_PIXEL_SPACING)))
        .filter(|s| s[0] > 0.0 && s[1] > 0.0);
    let header = DicomHeader {
        transfer_syntax: ts
            .map(|t| t.name().to_string())
            .unwrap_or_else(|| "unknown".into()),
        decodable: ts.is_some_and(|t| t.can_decode_all()) || decoded_by_medinfer(&ts_uid),
        transfer_syntax_uid: ts_uid,
        sop_class_uid: get_text(ds, tags::SOP_CLASS_UID).unwrap_or_default(),
        sop_instance_uid: get_text(ds, tags::SOP_INSTANCE_UID).unwrap_or_default(),
        modality: get_text(ds, tags::MODALITY).unwrap_or_default(),
        series_instance_uid: get_text(ds, tags::SERIES_INSTANCE_UID).unwrap_or_default(),
        study_instance_uid: get_text(ds, tags::STUDY_INSTANCE_UID).unwrap_or_default(),
        series_number: get_num(ds, tags::SERIES_NUMBER).map(|v| v as i64),
        series_description: get_text(ds, tags::SERIES_DESCRIPTION).unwrap_or_default(),
        instance_number: get_num(ds, tags::INSTANCE_NUMBER).map(|v| v as i64),
        rows: rows as u32,
        columns: columns as u32,
        frames: frames as u32,
        samples_per_pixel: spp as u16,
        bits_allocated: bits_allocated as u16,
        bits_stored: bits_stored as u16,
        high_bit: get_uint(ds, tags::HIGH_BIT)
            .map(|v| v.min(u16::MAX as u64) as u16)
            .unwrap_or((bits_stored as u16).saturating_sub(1)),
        signed: get_uint(ds, tags::PIXEL_REPRESENTATION) == Some(1),
        photometric: get_text(ds, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default(),
        planar_configuration: get_uint(ds, tags::PLANAR_CONFIGURATION).unwrap_or(0) as u16,
        pixel_spacing,
        slice_thickness: get_num(ds, tags::SLICE_THICKNESS).or_else(|| {
            fg_nums(
                ds,
                first,
                tags::PIXEL_MEASURES_SEQUENCE,
                tags::SLICE_THICKNESS,
            )
            .map(|v| v[0])
        }),
        position: arr::<3>(get_nums(ds, tags::IMAGE_POSITION_PATIENT))
            .or_else(|| frame_positions.first().copied()),
        orientation: arr::<6>(get_nums(ds, tags::IMAGE_ORIENTATION_PATIENT)).or_else(|| {
            arr::<6>(fg_nums(
                ds,
                first,
                tags::PLANE_ORIENTATION_SEQUENCE,
                tags::IMAGE_ORIENTATION_PATIENT,
            ))
        }),
        trigger_time: get_num(ds, tags::TRIGGER_TIME),
        temporal_position: get_num(ds, tags::TEMPORAL_POSITION_IDENTIFIER).map(|v| v as i64),
        rescale,
        modality_lut: ds
            .get(tags::MODALITY_LUT_SEQUENCE)
            .and_then(|e| e.items())
            .is_some_and(|i| !i.is_empty()),
        window,
        frame_positions,
        frame_times,
    };
    Ok((header, per_frame_rescale))
}

/// Refuses a header whose image could not fit in the file: a few hundred bytes declaring
/// millions of frames would otherwise drive per-frame bookkeeping (series layout) and volume
/// allocation from nothing. Native pixel data needs its full size (deflate can shrink it at
/// most 1032:1); encapsulated data at least one byte per frame.
fn check_size_against_file(p: &str, h: &DicomHeader, file_len: u64) -> Result<(), IoError> {
    if h.rows == 0 || h.columns == 0 {
        return Ok(());
    }
    let samples = h.rows as u64 * h.columns as u64 * h.frames as u64 * h.samples_per_pixel as u64;
    let mut native_bytes = (samples * h.bits_allocated.max(1) as u64).div_ceil(8);
    if h.photometric == "YBR_FULL_422" {
        // Two stored samples per pixel (Y1 Y2 Cb Cr for each pair).
        native_bytes = native_bytes / 3 * 2;
    }
    let need = match h.transfer_syntax_uid.as_str() {
        "1.2.840.10008.1.2" | "1.2.840.10008.1.2.1" | "1.2.840.10008.1.2.2" => native_bytes,
        "1.2.840.10008.1.2.1.99" | "1.2.840.10008.1.2.8.1" => native_bytes / 1032,
        _ => h.frames as u64,
    };
    if need > file_len {
        return Err(fmt_err(
            p,
            format!(
                "{} frame(s) of {}x{}x{} at {} bits need at least {need} bytes, the file has {file_len}: truncated or corrupt",
                h.frames, h.columns, h.rows, h.samples_per_pixel, h.bits_allocated
            ),
        ));
    }
    Ok(())
}

impl DicomHeader {
    /// The non-identifying tags an image read from this file carries.
    pub fn tags(&self) -> Tags {
        let mut t = Tags::new();
        t.set("source_format", "dicom");
        t.set("modality", &self.modality);
        t.set("transfer_syntax", &self.transfer_syntax);
        t.set("transfer_syntax_uid", &self.transfer_syntax_uid);
        t.set("sop_class_uid", &self.sop_class_uid);
        t.set("series_instance_uid", &self.series_instance_uid);
        t.set("study_instance_uid", &self.study_instance_uid);
        t.set("photometric", &self.photometric);
        t.set("bits_allocated", self.bits_allocated.to_string());
        t.set("bits_stored", self.bits_stored.to_string());
        if let Some(n) = self.series_number {
            t.set("series_number", n.to_string());
        }
        if let Some(n) = self.instance_number {
            t.set("instance_number", n.to_string());
        }
        if let Some(v) = self.trigger_time {
            t.set("trigger_time", v.to_string());
        }
        if let Some(w) = self.window {
            t.set("window_center", w.center.to_string());
            t.set("window_width", w.width.to_string());
        }
        if !self.series_description.is_empty() {
            t.set("series_description", &self.series_description);
        }
        t
    }

    /// The smallest and largest stored value the encoding allows (before the modality transform).
    pub fn stored_range(&self) -> (f64, f64) {
        let bits = self.bits_stored.clamp(1, 32) as i32;
        if self.signed {
            (-(2f64.powi(bits - 1)), 2f64.powi(bits - 1) - 1.0)
        } else {
            (0.0, 2f64.powi(bits) - 1.0)
        }
    }
}

/// Modality LUT from the first item of the Modality LUT Sequence: (first mapped value, table).
/// A Modality LUT: stored values from `first` on map to `table`; `range` is the table's extent.
struct ModalityLut {
    first: f64,
    table: Vec<f32>,
    range: (f32, f32),
}

fn modality_lut(
    obj: &DefaultDicomObject,
    p: &str,
    signed: bool,
) -> Result<Option<ModalityLut>, IoError> {
    let Some(item) = first_item(obj, tags::MODALITY_LUT_SEQUENCE) else {
        return Ok(None);
    };
    let (first, table, _) = read_lut(item, p, signed, "Modality LUT")?;
    let range = medinfer_core::min_max(&table);
    Ok(Some(ModalityLut {
        first,
        table,
        range,
    }))
}

/// The first item of the VOI LUT Sequence (PS3.3 C.11.2), if the file has one.
fn voi_lut(
    obj: &DefaultDicomObject,
    p: &str,
    signed: bool,
) -> Result<Option<medinfer_core::VoiLut>, IoError> {
    let Some(item) = first_item(obj, tags::VOILUT_SEQUENCE) else {
        return Ok(None);
    };
    let (first, table, bits) = read_lut(item, p, signed, "VOI LUT")?;
    if !(1..=16).contains(&bits) {
        return Err(fmt_err(p, format!("VOI LUT with {bits} bits per entry")));
    }
    Ok(Some(medinfer_core::VoiLut { first, table, bits }))
}

/// A LUT item's (first mapped value, entries, bits per entry), from its LUT Descriptor and
/// LUT Data; `what` names the sequence in errors.
fn read_lut(
    item: &InMemDicomObject,
    p: &str,
    signed: bool,
    what: &str,
) -> Result<(f64, Vec<f32>, u32), IoError> {
    let desc = get_nums(item, tags::LUT_DESCRIPTOR)
        .filter(|d| d.len() == 3)
        .ok_or_else(|| fmt_err(p, format!("{what} Sequence without a valid LUT Descriptor")))?;
    let e = item
        .get(tags::LUT_DATA)
        .ok_or_else(|| fmt_err(p, format!("{what} Sequence without LUT Data")))?;
    // The entry count is US (0 means 65536); a negative or fractional count (an SS-encoded -1,
    // say) would give an empty table and an index underflow when it is applied.
    if !(0.0..=65535.0).contains(&desc[0]) || desc[0].fract() != 0.0 {
        return Err(fmt_err(
            p,
            format!("{what} Descriptor declares {} entries", desc[0]),
        ));
    }
    let n = if desc[0] == 0.0 {
        65536
    } else {
        desc[0] as usize
    };
    let bits = desc[2] as u32;
    let raw: Vec<f32> = match e.value() {
        Value::Primitive(v) => {
            if bits <= 8 && matches!(e.vr(), VR::OB | VR::UN) {
                v.to_bytes().iter().map(|&b| b as f32).collect()
            } else if let Ok(vals) = e.to_multi_float64() {
                vals.iter().map(|&x| x as f32).collect()
            } else {
                v.to_bytes()
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]) as f32)
                    .collect()
            }
        }
        _ => return Err(fmt_err(p, "LUT Data is not a primitive value")),
    };
    if raw.len() < n {
        return Err(fmt_err(
            p,
            format!("{what} declares {n} entries but holds {}", raw.len()),
        ));
    }
    // The first mapped value is US or SS depending on the pixel representation; a value above
    // 32767 stored as US means negative when the pixels are signed.
    let first = if signed && desc[1] > 32767.0 {
        desc[1] - 65536.0
    } else {
        desc[1]
    };
    Ok((first, raw[..n].to_vec(), bits))
}

fn decode(f: &DicomFile) -> Result<Vec<Image2d>, IoError> {
    let h = &f.header;
    let p = f.path.as_str();
    if h.rows == 0 || h.columns == 0 {
        return Err(fmt_err(p, "no image: Rows or Columns missing or zero"));
    }
    if !h.decodable {
        return Err(fmt_err(
            p,
            format!(
                "transfer syntax {} ({}) cannot be decoded by medinfer",
                h.transfer_syntax, h.transfer_syntax_uid
            ),
        ));
    }
    if !matches!(h.bits_allocated, 1 | 8 | 16 | 32) {
        return Err(fmt_err(
            p,
            format!(
                "Bits Allocated {} is not supported (1, 8, 16, 32)",
                h.bits_allocated
            ),
        ));
    }
    if h.bits_stored == 0 || h.bits_stored > h.bits_allocated {
        return Err(fmt_err(
            p,
            format!(
                "Bits Stored {} with Bits Allocated {}",
                h.bits_stored, h.bits_allocated
            ),
        ));
    }
    // High Bit places the stored bits inside the allocated ones. The standard now fixes it at
    // Bits Stored - 1 (what pydicom assumes, ignoring the element); older files may put the
    // samples higher (High Bit 15 with 12 bits stored), which medinfer honours as dcmtk does,
    // by shifting them down. A High Bit outside the allocated bits, or too low to hold the
    // stored ones, contradicts the other two and is refused.
    if h.high_bit >= h.bits_allocated || h.high_bit + 1 < h.bits_stored {
        return Err(fmt_err(
            p,
            format!(
                "High Bit {} contradicts Bits Stored {} and Bits Allocated {}",
                h.high_bit, h.bits_stored, h.bits_allocated
            ),
        ));
    }
    let pi = h.photometric.as_str();
    let (channels, photometric, ybr) = match (h.samples_per_pixel, pi) {
        (1, "MONOCHROME1") => (1, Photometric::Monochrome1, false),
        (1, "MONOCHROME2") | (1, "") => (1, Photometric::Monochrome2, false),
        (1, "PALETTE COLOR") => (1, Photometric::Rgb, false),
        (3, "RGB") => (3, Photometric::Rgb, false),
        (3, "YBR_FULL") | (3, "YBR_FULL_422") => (3, Photometric::Rgb, true),
        (3, "YBR_ICT") | (3, "YBR_RCT") => (3, Photometric::Rgb, false),
        (s, pi) => {
            return Err(fmt_err(
                p,
                format!(
                    "{s} samples per pixel with photometric interpretation {pi:?} is not supported"
                ),
            ))
        }
    };
    let pd = f
        .obj
        .get(tags::PIXEL_DATA)
        .ok_or_else(|| fmt_err(p, "no Pixel Data element"))?;
    let encapsulated = matches!(pd.value(), Value::PixelSequence(_));
    // PALETTE COLOR: one stored index per pixel, three output channels through the LUTs.
    let palette = if pi == "PALETTE COLOR" {
        Some(crate::palette::read(&f.obj, h.signed).map_err(|e| fmt_err(p, e))?)
    } else {
        None
    };
    // Native YBR_FULL_422 stores two samples per pixel (Y1 Y2 Cb Cr for each pair).
    let native_422 = !encapsulated && pi == "YBR_FULL_422";
    if native_422 && (h.bits_allocated != 8 || !h.columns.is_multiple_of(2)) {
        return Err(fmt_err(
            p,
            format!(
                "uncompressed YBR_FULL_422 with {} bits allocated and {} columns (8 bits and an even width expected)",
                h.bits_allocated, h.columns
            ),
        ));
    }
    // Sizes come from the file: every product is checked (the header's sample cap makes them
    // fit, but a check here cannot wrap whatever changes upstream).
    let size_err = || fmt_err(p, "image size overflows");
    let frame_samples = (h.rows as usize)
        .checked_mul(h.columns as usize)
        .and_then(|v| v.checked_mul(channels))
        .ok_or_else(size_err)?;
    let all_samples = frame_samples
        .checked_mul(h.frames as usize)
        .ok_or_else(size_err)?;
    let nframes = h.frames as usize;
    let bytes_per = if h.bits_allocated == 1 {
        1
    } else {
        h.bits_allocated as usize / 8
    };
    // For native encodings the bytes must be there before anything is decoded or allocated.
    if !encapsulated {
        let have = match pd.value() {
            Value::Primitive(v) => v.calculate_byte_len(),
            _ => 0,
        };
        let need = if h.bits_allocated == 1 {
            all_samples.div_ceil(8)
        } else if native_422 {
            all_samples / 3 * 2
        } else {
            all_samples.checked_mul(bytes_per).ok_or_else(size_err)?
        };
        if have < need {
            return Err(fmt_err(
                p,
                format!("Pixel Data holds {have} bytes but {} rows x {} columns x {} frames x {channels} samples x {} bits need {need} (truncated file?)", h.rows, h.columns, h.frames, h.bits_allocated),
            ));
        }
    }
    // Compressed data cannot expand without bound: RLE at most 64x (a 2-byte run gives 128
    // bytes); the other codecs are held to 10,000x or 64 MiB, whichever is larger (far above
    // any real image, blank ones included). A few KB declaring gigapixels is refused before a
    // decoder allocates the output (fuzzing found decoders that allocate it first).
    if encapsulated {
        let encoded: usize = pd
            .value()
            .fragments()
            .map(|f| f.iter().map(|x| x.len()).sum())
            .unwrap_or(0);
        let need = all_samples.checked_mul(bytes_per).ok_or_else(size_err)?;
        let rle = h.transfer_syntax_uid == "1.2.840.10008.1.2.5";
        if rle {
            check_rle_headers(pd.value()).map_err(|e| fmt_err(p, e))?;
        }
        let cap = if rle {
            encoded.saturating_mul(64).saturating_add(64 * nframes)
        } else {
            encoded.saturating_mul(10_000).max(64 << 20)
        };
        if need > cap {
            return Err(fmt_err(
                p,
                format!(
                    "{} x {} x {} frame(s) ({need} bytes) cannot come from {encoded} bytes of {} data",
                    h.columns, h.rows, nframes, h.transfer_syntax
                ),
            ));
        }
    }
    // Native 8 / 16-bit pixel data is used in place, as parsed (no copy); everything else goes
    // through dicom-pixeldata.
    let expanded_422;
    // Explicit VR big endian: multi-byte samples are big-endian in the file whatever the VR
    // (OB holds them as bytes, OW as swapped words): rebuilt in file order, then swapped per
    // sample, as pydicom reads them.
    let big_endian = h.transfer_syntax_uid == "1.2.840.10008.1.2.2";
    let big_endian_le = if big_endian && !encapsulated && h.bits_allocated > 8 {
        let file_order: Vec<u8> = match pd.value() {
            Value::Primitive(PrimitiveValue::U8(v)) => v.to_vec(),
            Value::Primitive(PrimitiveValue::U16(v)) => {
                v.iter().flat_map(|w| w.to_be_bytes()).collect()
            }
            Value::Primitive(PrimitiveValue::I16(v)) => {
                v.iter().flat_map(|w| w.to_be_bytes()).collect()
            }
            Value::Primitive(PrimitiveValue::U32(v)) => {
                v.iter().flat_map(|w| w.to_be_bytes()).collect()
            }
            Value::Primitive(PrimitiveValue::I32(v)) => {
                v.iter().flat_map(|w| w.to_be_bytes()).collect()
            }
            Value::Primitive(other) => other.to_bytes().to_vec(),
            _ => Vec::new(),
        };
        let k = bytes_per;
        let n = all_samples.checked_mul(k).ok_or_else(size_err)?;
        if file_order.len() < n {
            return Err(fmt_err(
                p,
                format!("Pixel Data holds {} bytes, {n} needed", file_order.len()),
            ));
        }
        file_order[..n]
            .chunks_exact(k)
            .flat_map(|c| c.iter().rev().copied())
            .collect::<Vec<u8>>()
    } else {
        Vec::new()
    };
    let in_place = match (encapsulated, h.bits_allocated, pd.value()) {
        _ if !big_endian_le.is_empty() => Some(Raw::Bytes(&big_endian_le)),
        (false, 8, Value::Primitive(PrimitiveValue::U8(v))) if native_422 => {
            expanded_422 = expand_ybr422(&v[..all_samples / 3 * 2]);
            Some(Raw::Bytes(&expanded_422))
        }
        (false, 8, Value::Primitive(PrimitiveValue::U8(v))) => Some(Raw::Bytes(&v[..])),
        (false, 16, Value::Primitive(PrimitiveValue::U16(v))) => Some(Raw::U16(&v[..])),
        (false, 16, Value::Primitive(PrimitiveValue::I16(v))) => Some(Raw::I16(&v[..])),
        _ => None,
    };
    let decoded;
    let jpeg12;
    let jxl;
    let rle_frames;
    let jpeg_colour;
    let rle = h.transfer_syntax_uid == "1.2.840.10008.1.2.5";
    let jpeg8_colour = encapsulated
        && channels == 3
        && h.bits_allocated == 8
        && matches!(
            h.transfer_syntax_uid.as_str(),
            "1.2.840.10008.1.2.4.50"
                | "1.2.840.10008.1.2.4.51"
                | "1.2.840.10008.1.2.4.57"
                | "1.2.840.10008.1.2.4.70"
        );
    let jls;
    let raw_all = match in_place {
        Some(r) => r,
        None if is_jpegls(h, encapsulated) => {
            jls = decode_jpegls(pd.value(), h, nframes, channels).map_err(|e| {
                fmt_err(
                    p,
                    format!("cannot decode pixel data ({}): {e}", h.transfer_syntax),
                )
            })?;
            match &jls {
                Decoded::U8(v) => Raw::Bytes(v),
                Decoded::U16(v) => Raw::U16(v),
            }
        }
        None if jpeg8_colour => {
            jpeg_colour = decode_jpeg_colour(pd.value(), h, nframes).map_err(|e| {
                fmt_err(
                    p,
                    format!("cannot decode pixel data ({}): {e}", h.transfer_syntax),
                )
            })?;
            Raw::Bytes(&jpeg_colour)
        }
        None if rle && encapsulated => {
            rle_frames = decode_rle(pd.value(), h, nframes, channels, bytes_per)
                .map_err(|e| fmt_err(p, format!("cannot decode pixel data (RLE Lossless): {e}")))?;
            Raw::Bytes(&rle_frames)
        }
        None if is_jpeg_xl(h, encapsulated) => {
            jxl = decode_jpeg_xl(pd.value(), h, nframes, frame_samples).map_err(|e| {
                fmt_err(
                    p,
                    format!("cannot decode pixel data ({}): {e}", h.transfer_syntax),
                )
            })?;
            match &jxl {
                Decoded::U8(v) => Raw::Bytes(v),
                Decoded::U16(v) => Raw::U16(v),
            }
        }
        None if is_jpeg12(h, encapsulated, channels) => {
            jpeg12 = decode_jpeg12(pd.value(), h, nframes).map_err(|e| {
                fmt_err(
                    p,
                    format!("cannot decode pixel data ({}): {e}", h.transfer_syntax),
                )
            })?;
            Raw::U16(&jpeg12)
        }
        None => {
            if encapsulated {
                check_codestream_sizes(pd.value(), h, channels).map_err(|e| {
                    fmt_err(
                        p,
                        format!("cannot decode pixel data ({}): {e}", h.transfer_syntax),
                    )
                })?;
            }
            decoded = f.obj.decode_pixel_data().map_err(|e| {
                fmt_err(
                    p,
                    format!(
                        "cannot decode pixel data ({}): {}",
                        h.transfer_syntax,
                        chain(&e)
                    ),
                )
            })?;
            Raw::Bytes(decoded.data())
        }
    };
    let need = all_samples;
    if raw_all.samples(h.bits_allocated) < need {
        return Err(fmt_err(
            p,
            format!("decoded pixel data has {} samples, {need} expected for {nframes} frame(s) of {}x{}x{channels}", raw_all.samples(h.bits_allocated), h.columns, h.rows),
        ));
    }
    // Encapsulated codecs deliver interleaved samples (RLE's planes are interleaved by its
    // decoder), already converted to RGB by JPEG decoders; RLE keeps the declared colour space.
    let planar = h.planar_configuration == 1 && channels == 3 && !encapsulated;
    // Colour JPEG is decoded without the codec's own colour transform: the Photometric
    // Interpretation says what the components are (PS3.5 8.2.1), as pydicom reads them.
    let convert_ybr = ybr && (!encapsulated || rle || jpeg8_colour);
    let lut = if channels == 1 && h.modality_lut && palette.is_none() {
        modality_lut(&f.obj, p, h.signed)?
    } else {
        None
    };
    let voi = if channels == 1 && palette.is_none() {
        voi_lut(&f.obj, p, h.signed)?.map(std::sync::Arc::new)
    } else {
        None
    };
    let (smin, smax) = h.stored_range();
    // Codecs deliver samples aligned at bit 0; only native data can sit higher.
    let high_bit_shift = if encapsulated {
        0
    } else {
        (h.high_bit + 1 - h.bits_stored) as u32
    };
    let mut tags = h.tags();
    if nframes > 1 {
        tags.set("number_of_frames", nframes.to_string());
    }
    let mut images = Vec::with_capacity(nframes);
    for fr in 0..nframes {
        let raw = raw_all.frame(fr, frame_samples, h.bits_allocated);
        // The rescale is applied while converting (in f64), so 32-bit stored values keep
        // their precision up to the one rounding to f32.
        let rescale = if channels == 1 && lut.is_none() && palette.is_none() {
            f.per_frame_rescale.get(fr).copied().unwrap_or(h.rescale)
        } else {
            (1.0, 0.0)
        };
        let mut vals = samples(raw, h, frame_samples, rescale, high_bit_shift);
        if planar {
            let n = frame_samples / 3;
            let mut inter = vec![0f32; frame_samples];
            for i in 0..n {
                for c in 0..3 {
                    inter[i * 3 + c] = vals[c * n + i];
                }
            }
            vals = inter;
        }
        if convert_ybr {
            let maxv = (smax + 1.0) as f32;
            let half = maxv / 2.0;
            for px in vals.chunks_exact_mut(3) {
                let (y, cb, cr) = (px[0], px[1] - half, px[2] - half);
                px[0] = (y + 1.402 * cr).round().clamp(0.0, maxv - 1.0);
                px[1] = (y - 0.344_136 * cb - 0.714_136 * cr)
                    .round()
                    .clamp(0.0, maxv - 1.0);
                px[2] = (y + 1.772 * cb).round().clamp(0.0, maxv - 1.0);
            }
        }
        let value_range;
        let mut out_channels = channels;
        if let Some(pal) = &palette {
            vals = vals.iter().flat_map(|&v| pal.rgb(v as i64)).collect();
            out_channels = 3;
            value_range = (0.0, pal.max);
        } else if let Some(lut) = &lut {
            let last = lut.table.len() - 1;
            for v in vals.iter_mut() {
                let i = (*v as f64 - lut.first).clamp(0.0, last as f64) as usize;
                *v = lut.table[i];
            }
            value_range = lut.range;
        } else if channels == 1 {
            let (slope, icpt) = rescale;
            let (a, b) = ((smin * slope + icpt) as f32, (smax * slope + icpt) as f32);
            value_range = (a.min(b), a.max(b));
        } else {
            value_range = (smin as f32, smax as f32);
        }
        images.push(Image2d {
            width: h.columns as usize,
            height: h.rows as usize,
            channels: out_channels,
            data: vals,
            spacing: h.pixel_spacing.unwrap_or([1.0, 1.0]),
            photometric,
            value_range,
            window: h.window,
            voi_lut: voi.clone(),
            tags: tags.clone(),
        });
    }
    Ok(images)
}

/// The frames of encapsulated JPEG data: one fragment per frame, or fragments up to the one
/// that ends with an EOI marker (trailing padding allowed), or all of them for one frame.
fn jpeg_frames(fragments: &[Vec<u8>], nframes: usize) -> Result<Vec<Vec<u8>>, String> {
    if fragments.len() == nframes {
        return Ok(fragments.to_vec());
    }
    if nframes == 1 {
        return Ok(vec![fragments.iter().flatten().copied().collect()]);
    }
    let mut frames = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    for f in fragments {
        cur.extend_from_slice(f);
        let end = f.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        if end >= 2 && f[end - 2..end] == [0xFF, 0xD9] {
            frames.push(std::mem::take(&mut cur));
        }
    }
    if frames.len() != nframes {
        return Err(format!(
            "{} JPEG frames found in {} fragments, {nframes} declared",
            frames.len(),
            fragments.len()
        ));
    }
    Ok(frames)
}

/// 8-bit colour JPEG (baseline, extended, lossless) decoded with no colour transform (the
/// components as stored: RGB or YCbCr by the Photometric Interpretation), interleaved.
fn decode_jpeg_colour(
    value: &Value<InMemDicomObject>,
    h: &DicomHeader,
    nframes: usize,
) -> Result<Vec<u8>, String> {
    let fragments = value.fragments().ok_or("no pixel fragments")?;
    let (w, hgt) = (h.columns as usize, h.rows as usize);
    let mut out = Vec::with_capacity(w * hgt * 3 * nframes);
    for (i, data) in jpeg_frames(fragments, nframes)?.iter().enumerate() {
        let mut dec = jpeg_decoder::Decoder::new(std::io::Cursor::new(data));
        dec.set_max_decoding_buffer_size(w * hgt * 3 + 1024);
        // `RGB` interleaves the three components untouched (jpeg-decoder 0.3.2's `None` writes
        // them plane by plane and overruns its line buffer).
        dec.set_color_transform(jpeg_decoder::ColorTransform::RGB);
        let px = dec.decode().map_err(|e| format!("frame {i}: {e}"))?;
        let info = dec
            .info()
            .ok_or_else(|| format!("frame {i}: no frame header"))?;
        if (info.width as usize, info.height as usize) != (w, hgt)
            || info.pixel_format != jpeg_decoder::PixelFormat::RGB24
        {
            return Err(format!(
                "frame {i} is {}x{} {:?}, the header declares {w}x{hgt} with 3 samples",
                info.width, info.height, info.pixel_format
            ));
        }
        out.extend_from_slice(&px);
    }
    Ok(out)
}

/// Uncompressed YBR_FULL_422 (two pixels in Y1 Y2 Cb Cr) expanded to full YBR (Y Cb Cr per
/// pixel), as pydicom does before its colour conversion.
fn expand_ybr422(packed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(packed.len() / 4 * 6);
    for q in packed.chunks_exact(4) {
        out.extend_from_slice(&[q[0], q[2], q[3], q[1], q[2], q[3]]);
    }
    out
}

/// Every frame of RLE Lossless pixel data through medinfer's own decoder ([`crate::rle`]):
/// one fragment per frame (a single frame may span several fragments).
fn decode_rle(
    value: &Value<InMemDicomObject>,
    h: &DicomHeader,
    nframes: usize,
    samples: usize,
    bytes: usize,
) -> Result<Vec<u8>, String> {
    let fragments = value.fragments().ok_or("no pixel fragments")?;
    if !h.bits_allocated.is_multiple_of(8) {
        return Err(format!("{} bits allocated", h.bits_allocated));
    }
    let joined;
    let frames: Vec<&[u8]> = if fragments.len() == nframes {
        fragments.iter().map(|f| &f[..]).collect()
    } else if nframes == 1 {
        joined = fragments.iter().flatten().copied().collect::<Vec<u8>>();
        vec![&joined[..]]
    } else {
        return Err(format!(
            "{} fragments for {nframes} frames (RLE stores one fragment per frame)",
            fragments.len()
        ));
    };
    let mut out = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let fr = crate::rle::decode_frame(f, h.rows as usize, h.columns as usize, samples, bytes)
            .map_err(|e| format!("frame {i}: {e}"))?;
        out.extend_from_slice(&fr);
    }
    Ok(out)
}

/// Every RLE fragment's 64-byte header (PS3.5 G.3.1): at most 15 segments, offsets inside the
/// fragment. dicom-rs's RLE decoder allocates the segment table from the declared count and
/// indexes the fragment with the offsets unchecked (fuzzing found a 5.6 GB allocation and an
/// index panic).
fn check_rle_headers(value: &Value<InMemDicomObject>) -> Result<(), String> {
    for (i, f) in value.fragments().unwrap_or(&[]).iter().enumerate() {
        if f.len() < 64 {
            return Err(format!(
                "RLE fragment {i} is {} bytes, shorter than its 64-byte header",
                f.len()
            ));
        }
        let word =
            |k: usize| u32::from_le_bytes([f[4 * k], f[4 * k + 1], f[4 * k + 2], f[4 * k + 3]]);
        let n = word(0) as usize;
        if !(1..=15).contains(&n) {
            return Err(format!(
                "RLE fragment {i} declares {n} segments (1 to 15 allowed)"
            ));
        }
        for k in 1..=n {
            let off = word(k) as usize;
            if off < 64 || off > f.len() {
                return Err(format!(
                    "RLE fragment {i}: segment {k} starts at byte {off}, outside the fragment of {} bytes",
                    f.len()
                ));
            }
        }
    }
    Ok(())
}

/// Transfer syntaxes medinfer decodes with its own code (whatever dicom-rs was built with).
fn decoded_by_medinfer(ts_uid: &str) -> bool {
    matches!(
        ts_uid,
        "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" | "1.2.840.10008.1.2.5"
    )
}

/// The image size a JPEG or JPEG 2000 codestream declares must be the header's before
/// dicom-rs decodes it: its adapters size the output from the header and then copy what the
/// codec returns (a larger JPEG image slices past the buffer and panics; a JPEG 2000 SIZ of
/// 100,000 x 100,000 makes openjp2 allocate 40 GB first, both found by fuzzing). Every
/// fragment that starts a codestream is checked; continuation fragments are skipped.
fn check_codestream_sizes(
    value: &Value<InMemDicomObject>,
    h: &DicomHeader,
    channels: usize,
) -> Result<(), String> {
    let Some(fragments) = value.fragments() else {
        return Ok(());
    };
    let want = (h.columns as u64, h.rows as u64, channels as u64);
    for (i, f) in fragments.iter().enumerate() {
        let got = if f.starts_with(&[0xFF, 0xD8]) {
            jpeg_sof_size(f)
        } else {
            j2k_siz_size(f)
        };
        if let Some((w, hgt, c)) = got {
            // A JPEG height of 0 defers the rows to a DNL marker: checked after decoding.
            if w != want.0 || (hgt != want.1 && hgt != 0) || c != want.2 {
                return Err(format!(
                    "fragment {i} holds a {w} x {hgt} image of {c} component(s), the header \
                     declares {} x {} x {}",
                    want.0, want.1, want.2
                ));
            }
        }
    }
    Ok(())
}

/// (columns, rows, components) from a JPEG stream's SOF segment, if it lies in `data`.
fn jpeg_sof_size(data: &[u8]) -> Option<(u64, u64, u64)> {
    let mut i = 2;
    loop {
        while data.get(i) == Some(&0xFF) && data.get(i + 1) == Some(&0xFF) {
            i += 1;
        }
        if *data.get(i)? != 0xFF {
            return None;
        }
        let m = *data.get(i + 1)?;
        let len = u16::from_be_bytes([*data.get(i + 2)?, *data.get(i + 3)?]) as usize;
        if matches!(m, 0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF) {
            let b = data.get(i + 4..i + 10)?;
            let rows = u16::from_be_bytes([b[1], b[2]]) as u64;
            let cols = u16::from_be_bytes([b[3], b[4]]) as u64;
            return Some((cols, rows, b[5] as u64));
        }
        if m == 0xDA || len < 2 {
            return None;
        }
        i += 2 + len;
    }
}

/// (columns, rows, components) from a JPEG 2000 codestream's SIZ segment (a raw codestream,
/// or the `jp2c` box of a JP2 file), if it lies in `data`.
fn j2k_siz_size(data: &[u8]) -> Option<(u64, u64, u64)> {
    const SOC_SIZ: [u8; 4] = [0xFF, 0x4F, 0xFF, 0x51];
    let start = if data.starts_with(&SOC_SIZ) {
        0
    } else if data.get(4..8) == Some(b"jP  ") {
        data.windows(4).position(|w| w == SOC_SIZ)?
    } else {
        return None;
    };
    let siz = data.get(start + 4..start + 42)?;
    let u32_at = |k: usize| u32::from_be_bytes([siz[k], siz[k + 1], siz[k + 2], siz[k + 3]]) as u64;
    let (x, y, xo, yo) = (u32_at(4), u32_at(8), u32_at(12), u32_at(16));
    let c = u16::from_be_bytes([siz[36], siz[37]]) as u64;
    Some((x.saturating_sub(xo), y.saturating_sub(yo), c))
}

/// JPEG-LS lossless and near-lossless (1.2.840.10008.1.2.4.80 / .81).
fn is_jpegls(h: &DicomHeader, encapsulated: bool) -> bool {
    encapsulated
        && matches!(
            h.transfer_syntax_uid.as_str(),
            "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81"
        )
}

/// Every frame of JPEG-LS pixel data through medinfer's own decoder ([`crate::jpegls`]).
fn decode_jpegls(
    value: &Value<InMemDicomObject>,
    h: &DicomHeader,
    nframes: usize,
    channels: usize,
) -> Result<Decoded, String> {
    let fragments = value.fragments().ok_or("no pixel fragments")?;
    let (w, hgt) = (h.columns as usize, h.rows as usize);
    let mut out: Vec<u16> = Vec::with_capacity(w * hgt * channels * nframes);
    for (i, data) in jpeg_frames(fragments, nframes)?.iter().enumerate() {
        let img = crate::jpegls::decode(data, (w, hgt, channels))
            .map_err(|e| format!("frame {i}: {e}"))?;
        out.extend_from_slice(&img.samples);
    }
    Ok(if h.bits_allocated <= 8 {
        Decoded::U8(out.iter().map(|&v| v as u8).collect())
    } else {
        Decoded::U16(out)
    })
}

/// JPEG XL (1.2.840.10008.1.2.4.110 / .111 / .112).
fn is_jpeg_xl(h: &DicomHeader, encapsulated: bool) -> bool {
    encapsulated
        && matches!(
            h.transfer_syntax_uid.as_str(),
            "1.2.840.10008.1.2.4.110" | "1.2.840.10008.1.2.4.111" | "1.2.840.10008.1.2.4.112"
        )
}

/// Samples decoded by medinfer itself.
enum Decoded {
    U8(Vec<u8>),
    U16(Vec<u16>),
}

/// JPEG XL frames (one fragment each) through jxl-oxide, read back at the codestream's own bit
/// depth. dicom-rs's adapter asks jxl-oxide for 16-bit samples, which jxl-oxide scales to the
/// full 0..65535 range for any other depth: a 12-bit image came back multiplied by 16 and then
/// lost its high bits to Bits Stored (found by the JPEG XL fixture). Here the normalised
/// samples are scaled by the codestream's `2^bits - 1` instead: exact for lossless files.
fn decode_jpeg_xl(
    value: &Value<InMemDicomObject>,
    h: &DicomHeader,
    nframes: usize,
    frame_samples: usize,
) -> Result<Decoded, String> {
    let fragments = value.fragments().ok_or("no pixel fragments")?;
    if fragments.len() != nframes {
        return Err(format!(
            "{} fragments for {nframes} frame(s); JPEG XL needs one fragment per frame",
            fragments.len()
        ));
    }
    let mut out = Vec::with_capacity(frame_samples * nframes);
    for (fr, bytes) in fragments.iter().enumerate() {
        let image = jxl_oxide::JxlImage::builder()
            .read(&bytes[..])
            .map_err(|e| format!("frame {fr}: {e}"))?;
        let (w, hh) = (image.width() as usize, image.height() as usize);
        if (w, hh) != (h.columns as usize, h.rows as usize) {
            return Err(format!(
                "frame {fr} is {w}x{hh}, the header declares {}x{}",
                h.columns, h.rows
            ));
        }
        let bits = image.image_header().metadata.bit_depth.bits_per_sample();
        if !(1..=16).contains(&bits) {
            return Err(format!("frame {fr}: {bits}-bit samples"));
        }
        let render = image
            .render_frame(0)
            .map_err(|e| format!("frame {fr}: {e}"))?;
        let mut stream = render.stream();
        let mut buf = vec![0f32; frame_samples];
        let n = stream.write_to_buffer(&mut buf);
        if n != frame_samples {
            return Err(format!(
                "frame {fr} gave {n} samples, {frame_samples} expected"
            ));
        }
        let max = ((1u32 << bits) - 1) as f32;
        out.extend(buf.iter().map(|&v| (v * max).round().clamp(0.0, max)));
    }
    Ok(if h.bits_allocated <= 8 {
        Decoded::U8(out.iter().map(|&v| v as u8).collect())
    } else {
        Decoded::U16(out.iter().map(|&v| v as u16).collect())
    })
}

/// 12-bit lossy JPEG (JPEG Extended, process 2 & 4), which no decoder in dicom-rs handles:
/// medinfer's own [`crate::jpeg12`] decodes it.
fn is_jpeg12(h: &DicomHeader, encapsulated: bool, channels: usize) -> bool {
    encapsulated
        && channels == 1
        && h.bits_allocated == 16
        && h.transfer_syntax_uid == "1.2.840.10008.1.2.4.51"
}

/// Every frame of a 12-bit JPEG Extended pixel sequence: the fragments joined, then one JPEG
/// stream per frame, back to back (a stream's entropy-coded data cannot contain an SOI marker).
fn decode_jpeg12(
    value: &Value<InMemDicomObject>,
    h: &DicomHeader,
    nframes: usize,
) -> Result<Vec<u16>, String> {
    let fragments = value.fragments().ok_or("no pixel fragments")?;
    let joined: Vec<u8> = fragments.iter().flatten().copied().collect();
    let (w, hgt) = (h.columns as usize, h.rows as usize);
    let mut out = Vec::with_capacity(w * hgt * nframes);
    let mut pos = 0;
    for fr in 0..nframes {
        while pos + 1 < joined.len() && !(joined[pos] == 0xFF && joined[pos + 1] == 0xD8) {
            pos += 1;
        }
        if pos + 1 >= joined.len() {
            return Err(format!("frame {fr} of {nframes}: no JPEG stream left"));
        }
        let f = crate::jpeg12::decode(&joined[pos..], (w, hgt))
            .map_err(|e| format!("frame {fr}: {e}"))?;
        out.extend_from_slice(&f.data);
        pos += f.consumed.max(2);
    }
    Ok(out)
}

/// Stored samples: decoded bytes (native-endian) or the parsed element's own 16-bit values.
#[derive(Clone, Copy)]
enum Raw<'a> {
    Bytes(&'a [u8]),
    U16(&'a [u16]),
    I16(&'a [i16]),
}

impl<'a> Raw<'a> {
    fn samples(&self, bits_allocated: u16) -> usize {
        match self {
            Raw::Bytes(b) if bits_allocated > 8 => b.len() / (bits_allocated as usize / 8),
            Raw::Bytes(b) => b.len(),
            Raw::U16(v) => v.len(),
            Raw::I16(v) => v.len(),
        }
    }
    fn frame(&self, fr: usize, n: usize, bits_allocated: u16) -> Raw<'a> {
        match *self {
            Raw::Bytes(b) => {
                let k = if bits_allocated > 8 {
                    bits_allocated as usize / 8
                } else {
                    1
                };
                Raw::Bytes(&b[fr * n * k..(fr + 1) * n * k])
            }
            Raw::U16(v) => Raw::U16(&v[fr * n..(fr + 1) * n]),
            Raw::I16(v) => Raw::I16(&v[fr * n..(fr + 1) * n]),
        }
    }
}

/// Stored samples to f32, honouring bits stored and the sign, with the rescale
/// `(slope, intercept)` applied in f64 (one rounding to f32 at the end). 8 and 16-bit samples go
/// through a table of every possible stored value, built with the same arithmetic.
fn samples(raw: Raw, h: &DicomHeader, n: usize, (slope, icpt): (f64, f64), shift: u32) -> Vec<f32> {
    let bits = h.bits_stored as u32;
    let signed = h.signed;
    let mask: u32 = if bits >= 32 {
        u32::MAX
    } else {
        (1u32 << bits) - 1
    };
    let map = move |v: u32| -> f32 {
        let v = (v >> shift) & mask;
        let x = if signed {
            sign_extend(v, bits) as f64
        } else {
            v as f64
        };
        (x * slope + icpt) as f32
    };
    let table = |size: u32| -> Vec<f32> { (0..size).map(map).collect() };
    match (raw, h.bits_allocated) {
        (Raw::Bytes(b), 1) => b[..n].iter().map(|&x| map((x != 0) as u32)).collect(),
        (Raw::Bytes(b), 8) => {
            let t = table(256);
            b[..n].iter().map(|&x| t[x as usize]).collect()
        }
        (Raw::Bytes(b), 16) => {
            let t = table(65536);
            b.chunks_exact(2)
                .take(n)
                .map(|c| t[u16::from_ne_bytes([c[0], c[1]]) as usize])
                .collect()
        }
        (Raw::U16(v), _) => {
            let t = table(65536);
            v[..n].iter().map(|&x| t[x as usize]).collect()
        }
        (Raw::I16(v), _) => {
            let t = table(65536);
            v[..n].iter().map(|&x| t[x as u16 as usize]).collect()
        }
        (Raw::Bytes(b), _) => b
            .chunks_exact(4)
            .take(n)
            .map(|c| map(u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
    }
}

fn sign_extend(v: u32, bits: u32) -> i64 {
    if bits >= 32 {
        return v as i32 as i64;
    }
    let shift = 32 - bits;
    (((v << shift) as i32) >> shift) as i64
}

/// Reads every frame of a DICOM file (convenience for [`DicomFile::open`] + `images`).
pub fn read_images(path: impl AsRef<Path>) -> Result<Vec<Image2d>, IoError> {
    DicomFile::open(path)?.images()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_extension() {
        assert_eq!(sign_extend(0xfff, 12), -1);
        assert_eq!(sign_extend(0x7ff, 12), 2047);
        assert_eq!(sign_extend(0x800, 12), -2048);
        assert_eq!(sign_extend(0xffff_ffff, 32), -1);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let e = DicomFile::from_bytes("x.dcm", b"hello world, not dicom at all")
            .err()
            .unwrap();
        assert!(e.to_string().starts_with("x.dcm: not a DICOM file"), "{e}");
        let mut b = vec![0u8; 128];
        b.extend_from_slice(b"DICM\x02\x00\x10\x00UI");
        let e = DicomFile::from_bytes("t.dcm", &b).err().unwrap();
        assert!(e.to_string().contains("t.dcm"), "{e}");
    }
}
