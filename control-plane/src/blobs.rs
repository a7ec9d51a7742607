//! Content-addressed artifact storage over `object_store`: the local disk by
//! default (`DATA/artifacts`), any S3-compatible store for the scaled setup.
//!
//! Blobs live at `TENANT/sha256/DIGEST`. They are written only after the
//! bundle they came from verified, so a blob's name is its checked digest.

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::prefix::PrefixStore;
use object_store::ObjectStore;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("artifact store: {0}")]
    Store(#[from] object_store::Error),
    #[error("artifact store: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid --artifacts URL {0:?}: use s3://BUCKET[/PREFIX] or file:///PATH")]
    BadUrl(String),
}

#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    describe: String,
}

/// S3 settings beyond the URL; unset fields come from the usual `AWS_*`
/// environment variables.
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

impl Blobs {
    /// Blobs under `dir` on the local disk.
    pub fn local(dir: &Path) -> Result<Self, BlobError> {
        std::fs::create_dir_all(dir)?;
        let fs = LocalFileSystem::new_with_prefix(dir)?;
        Ok(Self {
            store: Arc::new(fs),
            describe: format!("file://{}", dir.display()),
        })
    }

    /// Blobs in an S3 bucket: `url` is `s3://BUCKET[/PREFIX]`.
    pub fn s3(url: &str, opts: &S3Options) -> Result<Self, BlobError> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| BlobError::BadUrl(url.to_string()))?;
        let (bucket, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b, p.trim_matches('/')),
            None => (rest, ""),
        };
        if bucket.is_empty() {
            return Err(BlobError::BadUrl(url.to_string()));
        }
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let endpoint = opts
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        if let Some(ep) = endpoint {
            b = b
                .with_allow_http(ep.starts_with("http://"))
                .with_endpoint(ep)
                .with_virtual_hosted_style_request(false);
        }
        if let Some(r) = &opts.region {
            b = b.with_region(r);
        }
        let s3: Arc<dyn ObjectStore> = Arc::new(b.build()?);
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            s3
        } else {
            Arc::new(PrefixStore::new(s3, prefix))
        };
        Ok(Self {
            store,
            describe: url.to_string(),
        })
    }

    pub fn describe(&self) -> &str {
        &self.describe
    }

    fn path(tenant: &str, digest: &str) -> ObjPath {
        ObjPath::from(format!("{tenant}/sha256/{digest}"))
    }

    pub async fn exists(&self, tenant: &str, digest: &str) -> Result<bool, BlobError> {
        match self.store.head(&Self::path(tenant, digest)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Streams `len` bytes of `file` from `offset` into the blob `digest`
    /// (multipart for large blobs), never holding the whole blob in memory.
    pub async fn put_range(
        &self,
        tenant: &str,
        digest: &str,
        file: &Path,
        offset: u64,
        len: u64,
    ) -> Result<(), BlobError> {
        let mut f = tokio::fs::File::open(file).await?;
        f.seek(std::io::SeekFrom::Start(offset)).await?;
        let mut src = f.take(len);
        let mut w = BufWriter::new(self.store.clone(), Self::path(tenant, digest));
        let copied = match tokio::io::copy(&mut src, &mut w).await {
            Ok(n) => n,
            Err(e) => {
                let _ = w.abort().await;
                return Err(e.into());
            }
        };
        if copied != len {
            let _ = w.abort().await;
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("upload file ended after {copied} of {len} bytes"),
            )
            .into());
        }
        w.shutdown().await?;
        Ok(())
    }

    /// The blob's bytes as a stream.
    pub async fn get(
        &self,
        tenant: &str,
        digest: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, std::io::Error>>, BlobError> {
        let r = self.store.get(&Self::path(tenant, digest)).await?;
        Ok(r.into_stream().map_err(std::io::Error::other).boxed())
    }

    /// Bytes `range` of the blob `digest`: one ranged read (an HTTP range
    /// GET on S3, a seek and read on disk), never the whole blob. A range
    /// past the blob's end is an error.
    pub async fn get_range(
        &self,
        tenant: &str,
        digest: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, BlobError> {
        let want = range.end.saturating_sub(range.start);
        let got = self
            .store
            .get_range(&Self::path(tenant, digest), range)
            .await?;
        if got.len() as u64 != want {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("blob {digest} gave {} of {want} bytes asked for", got.len()),
            )
            .into());
        }
        Ok(got)
    }

    pub async fn delete(&self, tenant: &str, digest: &str) -> Result<(), BlobError> {
        match self.store.delete(&Self::path(tenant, digest)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ranges_of_a_local_blob_are_read_without_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let blobs = Blobs::local(&d.path().join("artifacts")).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let file = d.path().join("upload");
        std::fs::write(&file, &data).unwrap();
        blobs
            .put_range("t", "abc", &file, 0, data.len() as u64)
            .await
            .unwrap();
        let got = blobs.get_range("t", "abc", 1000..71_000).await.unwrap();
        assert_eq!(&got[..], &data[1000..71_000]);
        let tail = blobs.get_range("t", "abc", 99_990..100_000).await.unwrap();
        assert_eq!(&tail[..], &data[99_990..]);
        // Past the end: an error, never a short read taken for the whole.
        assert!(blobs.get_range("t", "abc", 99_990..100_010).await.is_err());
        assert!(blobs.get_range("t", "missing", 0..10).await.is_err());
    }
}
