//! Result files for the page: listed and served from the runs directory only.
//! A path is resolved (symlinks and `..` included) before it is checked, and
//! nothing is served as HTML, so a run's files can neither reach outside it
//! nor run script in the page.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::super::core::ApiError;
use super::super::App;
use super::fail;

/// The resolved path if it is a file inside `root`.
pub(super) fn confined(root: &Path, path: &Path) -> Result<PathBuf, ApiError> {
    let root = root
        .canonicalize()
        .map_err(|e| ApiError::new(404, format!("{}: {e}", root.display())))?;
    let p = path
        .canonicalize()
        .map_err(|e| ApiError::new(404, format!("{}: {e}", path.display())))?;
    if !p.starts_with(&root) {
        return Err(ApiError::new(
            403,
            format!(
                "{}: only files under the runs directory {} are served",
                path.display(),
                root.display()
            ),
        ));
    }
    if !p.is_file() {
        return Err(ApiError::new(
            404,
            format!("{}: not a file", path.display()),
        ));
    }
    Ok(p)
}

/// What a file is sent as: images and text as themselves, everything else
/// (HDF5, HTML included) as a download.
fn kind(path: &Path) -> (&'static str, bool) {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "png" => ("image/png", true),
        "jpg" | "jpeg" => ("image/jpeg", true),
        "json" => ("application/json", true),
        "txt" | "log" | "csv" | "toml" | "out" | "err" | "md" | "" => {
            ("text/plain; charset=utf-8", true)
        }
        _ => ("application/octet-stream", false),
    }
}

#[derive(Deserialize)]
pub(super) struct FileQuery {
    path: String,
}

/// `/ui/file?path=ABS`: one file under the runs directory, streamed.
pub(super) async fn serve(State(app): State<App>, Query(q): Query<FileQuery>) -> Response {
    let path = match confined(&app.runs_dir, Path::new(&q.path)) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => return fail(ApiError::new(404, format!("{}: {e}", path.display()))),
    };
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let (mime, inline) = kind(&path);
    // A header value: printable ASCII only, no quotes.
    let name: String = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let disposition = if inline {
        format!("inline; filename=\"{name}\"")
    } else {
        format!("attachment; filename=\"{name}\"")
    };
    // A log still being written grows: send what the length promised.
    use tokio::io::AsyncReadExt;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file.take(len)));
    (
        [
            (header::CONTENT_TYPE, mime.to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (header::CONTENT_SECURITY_POLICY, "sandbox".to_string()),
        ],
        body,
    )
        .into_response()
}

/// One file of a run's directory.
#[derive(Serialize)]
pub(super) struct Entry {
    /// Relative to the run directory.
    pub rel: String,
    pub path: String,
    pub bytes: u64,
    pub image: bool,
}

/// The files under `dir`, breadth first, at most `limit`; whether more were
/// left out.
pub(super) fn list(dir: &Path, limit: usize) -> (Vec<Entry>, bool) {
    let mut out = Vec::new();
    let mut queue = std::collections::VecDeque::from([dir.to_path_buf()]);
    while let Some(d) = queue.pop_front() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut entries: Vec<_> = rd.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let Ok(ft) = e.file_type() else { continue };
            let p = e.path();
            if ft.is_dir() {
                queue.push_back(p);
            } else if ft.is_file() {
                if out.len() == limit {
                    return (out, true);
                }
                let rel = p.strip_prefix(dir).unwrap_or(&p).display().to_string();
                out.push(Entry {
                    image: matches!(kind(&p).0, "image/png" | "image/jpeg"),
                    bytes: e.metadata().map(|m| m.len()).unwrap_or(0),
                    path: p.display().to_string(),
                    rel,
                });
            }
        }
    }
    (out, false)
}

/// The last `max` bytes of a text file, from a line start; `None` if absent.
pub(super) fn tail(path: &Path, max: u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let from = len.saturating_sub(max);
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    Some(match (from > 0, text.find('\n')) {
        (true, Some(i)) => format!("…\n{}", &text[i + 1..]),
        _ => text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_under_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("runs");
        std::fs::create_dir_all(root.join("1/results")).unwrap();
        std::fs::write(root.join("1/results/g2.png"), b"png").unwrap();
        std::fs::write(root.join("1/stdout"), b"log\n").unwrap();
        std::fs::write(t.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(t.path().join("secret"), root.join("1/link")).unwrap();
        assert!(confined(&root, &root.join("1/results/g2.png")).is_ok());
        assert_eq!(
            confined(&root, &root.join("1/../../secret"))
                .unwrap_err()
                .status,
            403
        );
        assert_eq!(
            confined(&root, &root.join("1/link")).unwrap_err().status,
            403
        );
        assert_eq!(
            confined(&root, &root.join("1/results")).unwrap_err().status,
            404
        );
        assert_eq!(
            confined(&root, &root.join("1/none")).unwrap_err().status,
            404
        );
        let (l, more) = list(&root.join("1"), 10);
        assert!(!more);
        assert_eq!(l.len(), 2);
        assert!(l
            .iter()
            .any(|e| e.rel == "results/g2.png" && e.image && e.bytes == 3));
        assert!(list(&root.join("1"), 1).1);
        assert_eq!(kind(Path::new("a.html")).0, "application/octet-stream");
    }

    #[test]
    fn tail_starts_at_a_line() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("stdout");
        std::fs::write(&p, "first line\nsecond\nthird\n").unwrap();
        assert_eq!(tail(&p, 1000).unwrap(), "first line\nsecond\nthird\n");
        assert_eq!(tail(&p, 10).unwrap(), "…\nthird\n");
        assert!(tail(&t.path().join("none"), 10).is_none());
    }
}
