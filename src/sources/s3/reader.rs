//! Reading one file as a stream of lines, without holding it in memory.
//!
//! The decoders (`zip`, `flate2`) are synchronous, so a file is read on a thread of its own
//! that sends lines into a bounded channel: it runs ahead of the pipeline by at most
//! [`CHANNEL`] lines and stops when the source drops the receiver. The object is read through
//! [`ObjectReader`], `Read + Seek` over ranged GETs of [`BLOCK`] bytes: a zip's central
//! directory sits at its end, so zips need seeking, and gzip and plain files are simply read
//! front to back. Every GET carries the ETag of the listing (`If-Match`), so a file replaced
//! while it is being read fails instead of mixing two versions.

use super::listing::ObjectInfo;
use crate::base::secret::Secret;
use object_store::{path::Path as StorePath, GetOptions, GetRange, ObjectStore};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Bytes fetched per GET.
const BLOCK: u64 = 4 * 1024 * 1024;
/// Lines read ahead of the pipeline.
const CHANNEL: usize = 512;
/// A longer line is reported instead of read into memory.
pub const MAX_LINE: usize = 16 * 1024 * 1024;

#[derive(Debug)]
pub enum Msg {
    /// The zip entry the following lines come from (zips with more than one entry only).
    Entry(String),
    /// A line without its line break, counted from 1 within its entry.
    Line {
        line: u64,
        bytes: Vec<u8>,
    },
    /// A line longer than [`MAX_LINE`], skipped.
    TooLong {
        line: u64,
    },
    /// The file could not be read to its end.
    Failed(String),
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Zip,
    Gzip,
    Plain,
}

fn kind(key: &str) -> Kind {
    let lower = key.to_ascii_lowercase();
    if lower.ends_with(".zip") {
        Kind::Zip
    } else if lower.ends_with(".gz") {
        Kind::Gzip
    } else {
        Kind::Plain
    }
}

/// Starts reading `info` on a thread of its own.
pub fn spawn(
    store: Arc<dyn ObjectStore>,
    info: &ObjectInfo,
    zip_password: Option<Secret>,
) -> io::Result<mpsc::Receiver<Msg>> {
    let (tx, rx) = mpsc::channel(CHANNEL);
    let reader = ObjectReader {
        store,
        path: StorePath::from(info.key.as_str()),
        size: info.size,
        etag: info.etag.clone(),
        pos: 0,
        buf: bytes::Bytes::new(),
        buf_start: 0,
        runtime: tokio::runtime::Handle::current(),
    };
    let kind = kind(&info.key);
    std::thread::Builder::new()
        .name("s3-file".into())
        .spawn(move || {
            let last = match read(reader, kind, zip_password.as_ref().map(Secret::expose), &tx) {
                Ok(()) => Msg::End,
                Err(Stop::Failed(e)) => Msg::Failed(e),
                Err(Stop::Dropped) => return,
            };
            let _ = tx.blocking_send(last);
        })?;
    Ok(rx)
}

enum Stop {
    Failed(String),
    /// The source stopped listening (the run ended early): nothing to report.
    Dropped,
}

fn read<R: Read + Seek>(
    src: R,
    kind: Kind,
    password: Option<&str>,
    tx: &mpsc::Sender<Msg>,
) -> Result<(), Stop> {
    match kind {
        Kind::Plain => lines(BufReader::with_capacity(64 * 1024, src), tx),
        Kind::Gzip => lines(
            BufReader::new(flate2::read::MultiGzDecoder::new(BufReader::new(src))),
            tx,
        ),
        Kind::Zip => {
            let mut zip = zip::ZipArchive::new(src)
                .map_err(|e| Stop::Failed(format!("not a readable zip file: {e}")))?;
            let files: Vec<(usize, String)> = (0..zip.len())
                .filter_map(|i| {
                    let name = zip.name_for_index(i)?.ok()?.into_owned();
                    (!name.ends_with('/')).then_some((i, name))
                })
                .collect();
            let several = files.len() > 1;
            for (i, name) in files {
                let entry = match password {
                    Some(p) => zip.by_index_decrypt(i, p.as_bytes()),
                    None => zip.by_index(i),
                }
                .map_err(|e| Stop::Failed(zip_error(&name, e, password.is_some())))?;
                if several {
                    send(tx, Msg::Entry(name.clone()))?;
                }
                lines(BufReader::new(entry), tx).map_err(|s| match s {
                    Stop::Failed(e) => Stop::Failed(format!("zip entry {name}: {e}")),
                    d => d,
                })?;
            }
            Ok(())
        }
    }
}

fn zip_error(name: &str, e: zip::result::ZipError, with_password: bool) -> String {
    use zip::result::ZipError;
    match e {
        ZipError::InvalidPassword => {
            format!("zip entry {name}: S3_ZIP_PASSWORD is not the password of this file")
        }
        ZipError::UnsupportedArchive(why) if why.to_ascii_lowercase().contains("password") => {
            if with_password {
                format!("zip entry {name}: {why}")
            } else {
                format!("zip entry {name} is encrypted: set S3_ZIP_PASSWORD")
            }
        }
        e => format!("zip entry {name}: {e}"),
    }
}

fn send(tx: &mpsc::Sender<Msg>, msg: Msg) -> Result<(), Stop> {
    tx.blocking_send(msg).map_err(|_| Stop::Dropped)
}

/// Splits a stream into lines (`\n`, with a `\r` before it dropped); blank lines are no
/// records but are counted, so line numbers match what an editor shows.
fn lines(mut r: impl BufRead, tx: &mpsc::Sender<Msg>) -> Result<(), Stop> {
    let mut line_no: u64 = 0;
    let mut buf: Vec<u8> = Vec::new();
    let mut too_long = false;
    let emit = |line_no: u64, buf: &mut Vec<u8>, too_long: bool| -> Result<(), Stop> {
        if too_long {
            buf.clear();
            return send(tx, Msg::TooLong { line: line_no });
        }
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            buf.clear();
            return Ok(());
        }
        send(
            tx,
            Msg::Line {
                line: line_no,
                bytes: std::mem::take(buf),
            },
        )
    };
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Stop::Failed(format!(
                    "reading failed after line {line_no}: {e}"
                )))
            }
        };
        if chunk.is_empty() {
            if !buf.is_empty() || too_long {
                emit(line_no + 1, &mut buf, too_long)?;
            }
            return Ok(());
        }
        let (part, consumed, ends_line) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], i + 1, true),
            None => (chunk, chunk.len(), false),
        };
        if !too_long {
            if buf.len() + part.len() > MAX_LINE {
                too_long = true;
                buf = Vec::new();
            } else {
                buf.extend_from_slice(part);
            }
        }
        r.consume(consumed);
        if ends_line {
            line_no += 1;
            emit(line_no, &mut buf, too_long)?;
            too_long = false;
        }
    }
}

/// `Read + Seek` over an object, by ranged GETs of [`BLOCK`] bytes, each waited for on the
/// runtime that the pipeline drives.
struct ObjectReader {
    store: Arc<dyn ObjectStore>,
    path: StorePath,
    size: u64,
    etag: Option<String>,
    pos: u64,
    buf: bytes::Bytes,
    buf_start: u64,
    runtime: tokio::runtime::Handle,
}

impl ObjectReader {
    fn fetch(&mut self) -> io::Result<()> {
        let end = (self.pos + BLOCK).min(self.size);
        let options = GetOptions {
            range: Some(GetRange::Bounded(self.pos..end)),
            if_match: self.etag.clone(),
            ..GetOptions::default()
        };
        let store = self.store.clone();
        let path = self.path.clone();
        let bytes = self
            .runtime
            .block_on(async move {
                match store.get_opts(&path, options).await {
                    Ok(r) => r.bytes().await,
                    Err(e) => Err(e),
                }
            })
            .map_err(|e| match e {
                object_store::Error::Precondition { .. } => {
                    io::Error::other("the file was replaced while it was read")
                }
                e => io::Error::other(e),
            })?;
        if bytes.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file is shorter than listed",
            ));
        }
        self.buf_start = self.pos;
        self.buf = bytes;
        Ok(())
    }
}

impl Read for ObjectReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || out.is_empty() {
            return Ok(0);
        }
        let buffered =
            self.pos >= self.buf_start && self.pos < self.buf_start + self.buf.len() as u64;
        if !buffered {
            self.fetch()?;
        }
        let offset = (self.pos - self.buf_start) as usize;
        let n = out.len().min(self.buf.len() - offset);
        out[..n].copy_from_slice(&self.buf[offset..offset + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ObjectReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            )
        })?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(input: &[u8]) -> Vec<String> {
        let (tx, mut rx) = mpsc::channel(1000);
        let input = input.to_vec();
        std::thread::spawn(move || {
            let r = lines(BufReader::with_capacity(3, &input[..]), &tx);
            assert!(r.is_ok());
        })
        .join()
        .unwrap();
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            out.push(match m {
                Msg::Line { line, bytes } => {
                    format!("{line}:{}", String::from_utf8(bytes).unwrap())
                }
                Msg::TooLong { line } => format!("{line}:too long"),
                other => format!("{other:?}"),
            });
        }
        out
    }

    #[test]
    fn lines_are_numbered_as_an_editor_shows_them() {
        assert_eq!(
            collect(b"a\r\n\nbb\n  \nccc"),
            ["1:a", "3:bb", "5:ccc"],
            "blank lines counted, not sent; last line without a break"
        );
        assert_eq!(collect(b"x\n"), ["1:x"]);
        assert!(collect(b"").is_empty());
    }

    #[test]
    fn a_line_too_long_is_reported_not_kept() {
        let mut input = b"ok\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE + 1));
        input.extend(b"\nafter\n");
        assert_eq!(collect(&input), ["1:ok", "2:too long", "3:after"]);
    }

    fn read_all(bytes: &[u8], kind: Kind, password: Option<&str>) -> Result<Vec<String>, String> {
        let (tx, mut rx) = mpsc::channel(1000);
        let bytes = bytes.to_vec();
        let password = password.map(String::from);
        let result = std::thread::spawn(move || {
            read(std::io::Cursor::new(bytes), kind, password.as_deref(), &tx)
        })
        .join()
        .unwrap();
        let mut out = Vec::new();
        while let Ok(Msg::Line { line, bytes }) = rx.try_recv() {
            out.push(format!("{line}:{}", String::from_utf8(bytes).unwrap()));
        }
        match result {
            Ok(()) => Ok(out),
            Err(Stop::Failed(e)) => Err(e),
            Err(Stop::Dropped) => Err("dropped".into()),
        }
    }

    #[test]
    fn zipcrypto_zips_are_read_with_the_password() {
        // Made with Info-ZIP: `zip -P zc-pass zipcrypto.zip events.log`.
        let zip = include_bytes!("testdata/zipcrypto.zip");
        let lines = read_all(zip, Kind::Zip, Some("zc-pass")).unwrap();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("1:CEF:0|Cato Networks"));
        assert!(lines[1].contains("zipcrypto line 2"));
        let e = read_all(zip, Kind::Zip, None).unwrap_err();
        assert!(e.contains("encrypted: set S3_ZIP_PASSWORD"), "{e}");
        let e = read_all(zip, Kind::Zip, Some("wrong")).unwrap_err();
        assert!(
            e.contains("not the password") || e.contains("zip entry events.log"),
            "{e}"
        );
    }

    #[test]
    fn gzip_members_are_read_one_after_the_other() {
        use std::io::Write;
        let mut all = Vec::new();
        for part in ["a\nb\n", "c\n"] {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(part.as_bytes()).unwrap();
            all.extend(e.finish().unwrap());
        }
        assert_eq!(
            read_all(&all, Kind::Gzip, None).unwrap(),
            ["1:a", "2:b", "3:c"]
        );
        assert!(read_all(b"not gzip", Kind::Gzip, None).is_err());
        assert!(read_all(b"PK\x03\x04 not a zip", Kind::Zip, None)
            .unwrap_err()
            .contains("not a readable zip"));
    }

    #[test]
    fn kinds_by_name() {
        assert_eq!(kind("a/CATO1.ZIP"), Kind::Zip);
        assert_eq!(kind("a/x.json.gz"), Kind::Gzip);
        assert_eq!(kind("a/x.log"), Kind::Plain);
    }
}
