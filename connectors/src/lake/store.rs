//! Where a lake lives: a local directory or an S3 bucket (any S3-compatible
//! endpoint), as an `object_store` plus the prefix the lake's paths go under.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::ObjectStore;

use crate::error::{ConnectorError, Result};
use crate::options::{parse_bool, Options};

/// A lake's location.
#[derive(Debug, Clone)]
pub enum LakeLocation {
    Local(PathBuf),
    S3 { bucket: String, prefix: String, settings: S3Settings },
}

/// `s3.*` options; anything absent comes from the usual `AWS_*` environment variables.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub allow_http: bool,
}

impl LakeLocation {
    /// Parses `path` (a local path, `file://...` or `s3://bucket/prefix`) and the `s3.*` options.
    pub fn parse(path: &str, o: &mut Options) -> Result<Self> {
        let bad = |reason: String| ConnectorError::Option { connector: "lake".into(), key: "path".into(), reason };
        let settings = S3Settings {
            endpoint: o.take_opt("s3.endpoint"),
            region: o.take_opt("s3.region"),
            access_key_id: o.take_opt("s3.access-key-id"),
            secret_access_key: o.take_opt("s3.secret-access-key"),
            allow_http: parse_bool("lake", "s3.allow-http", o.take_opt("s3.allow-http"), false)?,
        };
        match path.split_once("://") {
            None => Ok(LakeLocation::Local(PathBuf::from(path))),
            Some(("file", rest)) => Ok(LakeLocation::Local(PathBuf::from(rest))),
            Some(("s3", rest)) => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad(format!("'{path}' names no bucket")));
                }
                Ok(LakeLocation::S3 { bucket: bucket.to_string(), prefix: prefix.trim_matches('/').to_string(), settings })
            }
            Some((scheme, _)) => Err(bad(format!("'{scheme}://' is not supported; use a local path, file:// or s3://"))),
        }
    }

    /// The object store and the prefix of the lake inside it.
    pub fn open(&self) -> Result<(Arc<dyn ObjectStore>, StorePath)> {
        let err = |e: &dyn std::fmt::Display| ConnectorError::External { connector: "lake".into(), message: e.to_string() };
        match self {
            LakeLocation::Local(root) => {
                std::fs::create_dir_all(root).map_err(|e| err(&format!("{}: {e}", root.display())))?;
                let store = LocalFileSystem::new_with_prefix(root).map_err(|e| err(&e))?;
                Ok((Arc::new(store), StorePath::default()))
            }
            LakeLocation::S3 { bucket, prefix, settings } => {
                let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
                // Without 's3.allow-http', AWS_ALLOW_HTTP still counts.
                if settings.allow_http {
                    b = b.with_allow_http(true);
                }
                if let Some(v) = &settings.endpoint {
                    b = b.with_endpoint(v);
                }
                // Without 's3.region', AWS_REGION (or us-east-1) counts.
                if let Some(region) = &settings.region {
                    b = b.with_region(region);
                }
                if let Some(v) = &settings.access_key_id {
                    b = b.with_access_key_id(v);
                }
                if let Some(v) = &settings.secret_access_key {
                    b = b.with_secret_access_key(v);
                }
                let store = b.build().map_err(|e| err(&e))?;
                Ok((Arc::new(store), StorePath::from(prefix.as_str())))
            }
        }
    }
}

impl std::fmt::Display for LakeLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LakeLocation::Local(p) => write!(f, "{}", p.display()),
            LakeLocation::S3 { bucket, prefix, .. } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// `prefix/relative` as a store path (`relative` may end with `/`-separated directories).
pub fn join(prefix: &StorePath, relative: &str) -> StorePath {
    if prefix.as_ref().is_empty() {
        StorePath::from(relative)
    } else {
        StorePath::from(format!("{}/{relative}", prefix.as_ref()))
    }
}
