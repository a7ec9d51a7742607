//! Who may reach the admin API: whoever can open its Unix socket (mode 0600:
//! the agent's own user and root), and, on the optional loopback TCP port,
//! whoever presents the bearer token kept in `DATA/admin.token` (0600).

use super::error;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("admin token {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin token {path} is readable by other users (mode {mode:o}); make it 0600")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("admin token {0} is empty")]
    Empty(PathBuf),
    #[error("admin socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Reads the admin token from `path`, creating it (32 random bytes, hex,
/// mode 0600) when it does not exist. A token file other users can read is
/// refused.
pub fn load_or_create_token(path: &Path) -> Result<String, AccessError> {
    let io = |source| AccessError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut f) => {
            let mut bytes = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            f.write_all(token.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
            return Ok(token);
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(e)),
    }
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(AccessError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    let token = std::fs::read_to_string(path)
        .map_err(io)?
        .trim()
        .to_string();
    if token.is_empty() {
        return Err(AccessError::Empty(path.to_path_buf()));
    }
    Ok(token)
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn check_token(State(token): State<Arc<String>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if same(g.as_bytes(), token.as_bytes()) => next.run(req).await,
        Some(_) => {
            tracing::warn!(path = %req.uri().path(), "admin request refused: wrong token");
            error(
                StatusCode::UNAUTHORIZED,
                "bad_token",
                "the admin token is wrong",
            )
        }
        None => {
            tracing::warn!(path = %req.uri().path(), "admin request refused: no token");
            error(
                StatusCode::UNAUTHORIZED,
                "no_token",
                "the admin port wants Authorization: Bearer <DATA/admin.token>",
            )
        }
    }
}

/// `app` behind the bearer token.
pub(super) fn require_token(app: Router, token: String) -> Router {
    app.layer(axum::middleware::from_fn_with_state(
        Arc::new(token),
        check_token,
    ))
}

/// Binds the admin socket at `path` with mode 0600 from its first moment:
/// it is bound inside a fresh 0700 directory beside `path`, narrowed to
/// 0600 there, then renamed into place (replacing a stale socket).
pub(super) fn bind_admin_socket(path: &Path) -> Result<tokio::net::UnixListener, AccessError> {
    let err = |source| AccessError::Socket {
        path: path.to_path_buf(),
        source,
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let private = parent.join(format!(".admin-sock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(err)?;
    let staged = private.join("s");
    let bound = (|| -> std::io::Result<tokio::net::UnixListener> {
        let l = tokio::net::UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(l)
    })();
    let _ = std::fs::remove_dir_all(&private);
    bound.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_made_once_0600_and_an_exposed_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("admin.token");
        let t = load_or_create_token(&p).unwrap();
        assert_eq!(t.len(), 64);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create_token(&p).unwrap(), t);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_create_token(&p),
            Err(AccessError::Exposed { .. })
        ));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }

    #[tokio::test]
    async fn the_admin_socket_is_0600_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("admin.sock");
        std::fs::write(&p, b"stale").unwrap();
        let _l = bind_admin_socket(&p).unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
