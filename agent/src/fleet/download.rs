//! Resumable bundle downloads over fetch streams: `fleet/partial/DIGEST.part`
//! grows chunk by chunk; the signed header is prechecked as soon as it has
//! arrived, so a bundle this device would refuse is not fetched to the end.

use super::activator::Activator;
use super::wire::{read_server_frame, send_frame};
use super::{fleet_dir, Refusal};
use crate::failpoint::crash_point;
use ferry_protocol::desired::Assignment;
use ferry_protocol::frames::{AgentFrame, FrameReader, ServerFrame};
use ferry_protocol::keys::Digest;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Why a download did not complete.
pub(crate) enum FetchError {
    /// Refused (by the control plane, the disk-space check or the header
    /// precheck): not retried in this session.
    Refused(Refusal),
    /// The connection broke: the session reconnects and resumes.
    Broken(String),
}

/// Room for the rest of a download of `total` bytes that has `have`, plus
/// the store's copy made at activation, plus 5% of the bundle or 1 MiB of
/// slack. Refused before a byte is fetched, so a full disk never takes down
/// what already serves.
pub fn check_space(free: u64, have: u64, total: u64) -> Result<(), Refusal> {
    let slack = (total / 20).max(1 << 20);
    let need = total
        .saturating_sub(have)
        .saturating_add(total)
        .saturating_add(slack);
    if free < need {
        return Err(Refusal::new(
            "no_space",
            format!("{free} bytes free on the data volume; this {total}-byte bundle needs {need}"),
        ));
    }
    Ok(())
}

/// Magic and header length: the bytes before the encoded header.
const PREAMBLE: u64 = 12;

/// Where the signed header of the (partial) bundle at `path` ends, from its
/// preamble; `None` when the preamble is not a bundle's.
fn preamble_end(path: &Path) -> Option<u64> {
    use std::io::Read;
    let mut pre = [0u8; PREAMBLE as usize];
    std::fs::File::open(path).ok()?.read_exact(&mut pre).ok()?;
    if pre[..8] != ferry_protocol::bundle::MAGIC {
        return None;
    }
    let len = u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]) as u64;
    (len as usize <= ferry_protocol::bundle::HEADER_LIMIT).then_some(PREAMBLE + len)
}

/// Path of the partial download of `digest`.
pub fn partial_path(data: &Path, digest: &Digest) -> PathBuf {
    fleet_dir(data)
        .join("partial")
        .join(format!("{}.part", digest.to_hex()))
}

/// Bytes on disk of the partial download of `digest` (0 when none).
pub(crate) fn partial_len(data: &Path, digest: &Digest) -> u64 {
    std::fs::metadata(partial_path(data, digest))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// The partial downloads on disk, by digest, with their lengths: what a
/// restarted agent resumes.
pub(crate) fn scan_partials(data: &Path) -> HashMap<Digest, u64> {
    let Ok(dir) = std::fs::read_dir(fleet_dir(data).join("partial")) else {
        return HashMap::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let name = e.file_name().into_string().ok()?;
        let digest = Digest::from_hex(name.strip_suffix(".part")?).ok()?;
        Some((digest, e.metadata().ok()?.len()))
    })
    .collect()
}

/// What a download needs besides the connection.
pub(crate) struct Fetcher {
    pub data: PathBuf,
    /// Per-agent download rate limit, bytes per second.
    pub max_bytes_per_sec: Option<u64>,
    pub act: Arc<dyn Activator>,
}

impl Fetcher {
    /// Downloads `a`'s bundle into its partial file, resuming at `offset`
    /// (the reconciler's count of what is on disk; never past the file's
    /// end). Progress frames go to `progress`, advisory.
    pub(crate) async fn download(
        &self,
        conn: &quinn::Connection,
        a: &Assignment,
        offset: u64,
        progress: &tokio::sync::mpsc::Sender<AgentFrame>,
    ) -> Result<PathBuf, FetchError> {
        let broken = |e: String| FetchError::Broken(e);
        let path = partial_path(&self.data, &a.manifest_digest);
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| broken(format!("creating {}: {e}", dir.display())))?;
        }
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(|e| broken(format!("opening {}: {e}", path.display())))?;
        let on_disk = f.metadata().await.map_err(|e| broken(e.to_string()))?.len();
        let have = on_disk.min(offset);
        if have != on_disk {
            f.set_len(have).await.map_err(|e| broken(e.to_string()))?;
        }
        let (mut s, mut r) = conn.open_bi().await.map_err(|e| broken(e.to_string()))?;
        send_frame(
            &mut s,
            &AgentFrame::Fetch {
                digest: a.manifest_digest,
                offset: have,
            },
        )
        .await
        .map_err(|e| broken(e.to_string()))?;
        let _ = s.finish();
        let mut reader = FrameReader::new();
        let (start, total) = match read_server_frame(&mut r, &mut reader)
            .await
            .map_err(|e| broken(e.to_string()))?
        {
            Some(ServerFrame::FetchStart { offset, total, .. }) => (offset, total),
            Some(ServerFrame::FetchRefused { reason, .. }) => {
                return Err(FetchError::Refused(Refusal::new("fetch_refused", reason)))
            }
            Some(_) => return Err(broken("unexpected reply to Fetch".into())),
            None => return Err(broken("fetch stream closed".into())),
        };
        if start != have {
            f.set_len(start).await.map_err(|e| broken(e.to_string()))?;
        }
        if let Ok(free) = fs2::available_space(&self.data) {
            check_space(free, start, total).map_err(FetchError::Refused)?;
        }
        if have > 0 {
            tracing::info!(model = %a.model, offset = start, total, "resuming download");
        }
        let mut pos = start;
        let began = std::time::Instant::now();
        let mut next_progress = 0u64;
        // End of the signed header in the file, once known; checked once.
        let mut header_end: Option<u64> = None;
        let mut header_checked = false;
        let mut half_way = pos * 2 >= total;
        while pos < total {
            let frame = read_server_frame(&mut r, &mut reader)
                .await
                .map_err(|e| broken(e.to_string()))?;
            let Some(ServerFrame::Chunk { offset, data, .. }) = frame else {
                return Err(broken(format!("download ended at {pos} of {total} bytes")));
            };
            if offset != pos {
                return Err(broken(format!("chunk at {offset}, expected {pos}")));
            }
            if pos + data.len() as u64 > total {
                return Err(FetchError::Refused(Refusal::new(
                    "length_mismatch",
                    format!("server sent more than the {total} bytes it declared"),
                )));
            }
            f.write_all(&data)
                .await
                .map_err(|e| broken(format!("writing {}: {e}", path.display())))?;
            pos += data.len() as u64;
            if !header_checked {
                if header_end.is_none() && pos >= PREAMBLE {
                    f.flush().await.map_err(|e| broken(e.to_string()))?;
                    header_end = preamble_end(&path);
                    // Not a bundle preamble: full verification refuses it.
                    header_checked = header_end.is_none();
                }
                if header_end.is_some_and(|end| pos >= end) {
                    header_checked = true;
                    f.flush().await.map_err(|e| broken(e.to_string()))?;
                    let act = self.act.clone();
                    let (p, a2) = (path.clone(), a.clone());
                    let res = tokio::task::spawn_blocking(move || act.precheck(&p, &a2))
                        .await
                        .unwrap_or_else(|e| Err(Refusal::new("internal", e.to_string())));
                    if let Err(r) = res {
                        // Refused before the artifacts: never resume this file.
                        drop(f);
                        let _ = std::fs::remove_file(&path);
                        return Err(FetchError::Refused(r));
                    }
                }
            }
            if !half_way && pos * 2 >= total && pos < total {
                half_way = true;
                f.flush().await.map_err(|e| broken(e.to_string()))?;
                crash_point("fleet-download-half");
            }
            if let Some(rate) = self.max_bytes_per_sec.filter(|r| *r > 0) {
                let due = Duration::from_secs_f64((pos - start) as f64 / rate as f64);
                let spent = began.elapsed();
                if due > spent {
                    tokio::time::sleep(due - spent).await;
                }
            }
            if pos >= next_progress || pos == total {
                next_progress = pos + total / 10 + 1;
                // Advisory: never let a slow control stream hold up the download.
                let _ = progress.try_send(AgentFrame::Progress {
                    manifest_digest: a.manifest_digest,
                    received: pos,
                    total,
                });
            }
        }
        f.flush().await.map_err(|e| broken(e.to_string()))?;
        f.sync_all().await.map_err(|e| broken(e.to_string()))?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_space_check_counts_the_rest_of_the_download_and_the_store_copy() {
        let mb = 1 << 20;
        // 10 MB bundle, nothing yet: 10 (download) + 10 (store) + 1 slack.
        assert!(check_space(21 * mb, 0, 10 * mb).is_ok());
        let r = check_space(20 * mb, 0, 10 * mb).unwrap_err();
        assert_eq!(r.code, "no_space");
        assert!(r.reason.contains("needs"), "{}", r.reason);
        // Half downloaded already: 5 less needed.
        assert!(check_space(16 * mb, 5 * mb, 10 * mb).is_ok());
        assert!(check_space(0, 0, u64::MAX).is_err());
    }

    #[test]
    fn partial_downloads_are_found_by_digest() {
        let d = tempfile::tempdir().unwrap();
        let digest = ferry_protocol::keys::sha256(b"bundle");
        let p = partial_path(d.path(), &digest);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, [0u8; 300]).unwrap();
        std::fs::write(p.with_file_name("junk.part"), b"x").unwrap();
        let found = scan_partials(d.path());
        assert_eq!(found.len(), 1);
        assert_eq!(found[&digest], 300);
        assert_eq!(partial_len(d.path(), &digest), 300);
    }
}
