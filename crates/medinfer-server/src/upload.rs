//! Uploaded studies: a DICOM series as a zip or as multipart parts, a NIfTI file, or one DICOM
//! file, staged into a job's folder for the pipelines (which read paths).
//!
//! Hostile uploads are refused with a reason, never followed:
//! - zip entry names that climb out (`..`), are absolute, or carry a drive or backslash are
//!   refused; entry names are never used as paths anyway (files are written as numbered
//!   files), so no name can reach outside the job's folder;
//! - zip bombs: the bytes actually inflated are counted against a total limit (the sizes a zip
//!   declares are not trusted), and so is the number of entries; nested zips are not opened.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Limits on what one upload may unpack to.
#[derive(Clone, Copy, Debug)]
pub struct UploadLimits {
    /// Most files (zip entries and parts together).
    pub max_files: usize,
    /// Most bytes written, after unzipping.
    pub max_bytes: u64,
}

impl Default for UploadLimits {
    fn default() -> Self {
        UploadLimits {
            max_files: 10_000,
            max_bytes: 2 << 30,
        }
    }
}

/// Files of one upload, written into a folder as they arrive.
pub struct Staging {
    dir: PathBuf,
    limits: UploadLimits,
    files: Vec<PathBuf>,
    bytes: u64,
}

/// Whether a zip entry or multipart file name is a plain relative path.
pub fn safe_entry_name(name: &str) -> bool {
    let drive = name.as_bytes().get(1) == Some(&b':');
    let climbs = name.split('/').any(|c| c == "..");
    !(name.starts_with('/') || name.contains(['\\', '\0']) || drive || climbs)
}

impl Staging {
    /// Stages into `dir` (created).
    pub fn new(dir: PathBuf, limits: UploadLimits) -> Result<Staging, String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot stage the upload: {e}"))?;
        Ok(Staging {
            dir,
            limits,
            files: Vec::new(),
            bytes: 0,
        })
    }

    /// Adds one uploaded file (a zip is unpacked; `name` is only checked and used for errors).
    pub fn add(&mut self, bytes: &[u8], name: Option<&str>) -> Result<(), String> {
        let label = name.unwrap_or("the body");
        if let Some(n) = name {
            if !safe_entry_name(n) {
                return Err(format!("file name '{n}' is not a plain relative name"));
            }
        }
        if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
            return self.add_zip(bytes, label);
        }
        if bytes.is_empty() {
            return Err(format!("{label} is empty"));
        }
        // The readers recognise formats by content, but gzip'd NIfTI by its name.
        let ext = if bytes.starts_with(&[0x1f, 0x8b]) {
            ".nii.gz"
        } else {
            ""
        };
        let mut r = bytes;
        self.write(&mut r, ext, label)
    }

    fn add_zip(&mut self, bytes: &[u8], label: &str) -> Result<(), String> {
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes))
            .map_err(|e| format!("{label}: not a readable zip ({e})"))?;
        for i in 0..z.len() {
            let mut f = z
                .by_index(i)
                .map_err(|e| format!("{label}: zip entry {i}: {e}"))?;
            let name = f.name().to_string();
            if !safe_entry_name(&name) {
                return Err(format!(
                    "{label}: zip entry '{name}' points outside the archive (absolute or '..')"
                ));
            }
            if f.is_dir() || name.ends_with('/') {
                continue;
            }
            if f.is_symlink() {
                return Err(format!("{label}: zip entry '{name}' is a symbolic link"));
            }
            // Hidden files of archivers (__MACOSX/, .DS_Store) are not studies.
            if name.starts_with("__MACOSX/")
                || name.rsplit('/').next().unwrap_or("").starts_with('.')
            {
                continue;
            }
            let entry = format!("{label}: zip entry '{name}'");
            self.write(&mut f, "", &entry)?;
        }
        Ok(())
    }

    /// Writes one file, counting the bytes really read against the limits.
    fn write(&mut self, r: &mut dyn Read, ext: &str, label: &str) -> Result<(), String> {
        if self.files.len() >= self.limits.max_files {
            return Err(format!(
                "the upload has more than {} files",
                self.limits.max_files
            ));
        }
        let path = self.dir.join(format!("{:05}{ext}", self.files.len()));
        let mut out = std::fs::File::create(&path).map_err(|e| format!("staging: {e}"))?;
        let left = self.limits.max_bytes - self.bytes;
        let n =
            std::io::copy(&mut r.take(left + 1), &mut out).map_err(|e| format!("{label}: {e}"))?;
        if n > left {
            return Err(format!(
                "{label}: the upload unpacks to more than {} MiB (a zip bomb, or a study too large for this server)",
                self.limits.max_bytes >> 20
            ));
        }
        self.bytes += n;
        self.files.push(path);
        Ok(())
    }

    /// The path the pipelines read: the one file when it is a NIfTI, else the folder.
    pub fn finish(self) -> Result<PathBuf, String> {
        match self.files.as_slice() {
            [] => Err("the upload holds no files".into()),
            [one] if is_nifti(one) => Ok(one.clone()),
            _ => Ok(self.dir),
        }
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

fn is_nifti(p: &Path) -> bool {
    matches!(medinfer_io::detect(p), Ok(Some(medinfer_io::Format::Nifti)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in entries {
            z.start_file(*name, opts).unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
        buf.into_inner()
    }

    #[test]
    fn traversal_and_absolute_names_are_refused() {
        for bad in [
            "../evil.dcm",
            "a/../../evil",
            "/etc/passwd",
            "C:evil",
            "a\\..\\b",
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut s = Staging::new(dir.path().join("in"), UploadLimits::default()).unwrap();
            let e = s.add(&zip_of(&[(bad, b"x")]), None).unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
            assert!(!dir.path().join("evil.dcm").exists());
        }
    }

    #[test]
    fn a_zip_bomb_stops_at_the_limit_whatever_it_declares() {
        let zeros = vec![0u8; 8 << 20];
        let bomb = zip_of(&[("a.dcm", &zeros), ("b.dcm", &zeros)]);
        assert!(bomb.len() < 100_000, "compressed {}", bomb.len());
        let dir = tempfile::tempdir().unwrap();
        let limits = UploadLimits {
            max_files: 100,
            max_bytes: 10 << 20,
        };
        let mut s = Staging::new(dir.path().join("in"), limits).unwrap();
        let e = s.add(&bomb, Some("study.zip")).unwrap_err();
        assert!(e.contains("zip bomb"), "{e}");
        assert!(s.bytes() <= 10 << 20);
    }

    #[test]
    fn entries_are_numbered_files_and_a_lone_nifti_is_the_input() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Staging::new(dir.path().join("in"), UploadLimits::default()).unwrap();
        s.add(
            &zip_of(&[
                ("x/1.dcm", b"one"),
                ("x/2.dcm", b"two"),
                ("__MACOSX/._1", b"junk"),
            ]),
            None,
        )
        .unwrap();
        let input = s.finish().unwrap();
        assert_eq!(input, dir.path().join("in"));
        assert_eq!(std::fs::read(input.join("00001")).unwrap(), b"two");
        assert!(!input.join("00002").exists());

        let mut s = Staging::new(dir.path().join("gz"), UploadLimits::default()).unwrap();
        s.add(&[0x1f, 0x8b, 8, 0], Some("exam.nii.gz")).unwrap();
        // Not a valid NIfTI inside, but named so the reader tries gzip'd NIfTI and says why.
        assert!(s.finish().unwrap().ends_with("00000.nii.gz"));
    }

    #[test]
    fn too_many_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let limits = UploadLimits {
            max_files: 2,
            max_bytes: 1 << 20,
        };
        let mut s = Staging::new(dir.path().join("in"), limits).unwrap();
        let e = s
            .add(&zip_of(&[("1", b"a"), ("2", b"b"), ("3", b"c")]), None)
            .unwrap_err();
        assert!(e.contains("more than 2 files"), "{e}");
    }
}
