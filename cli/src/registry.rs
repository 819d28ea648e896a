//! Push and pull over the OCI distribution API (oci-client: the auth challenges,
//! chunked uploads, token cache), with the digest checks and the messages a
//! user needs when something goes wrong.

use std::io::Write;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use crate::image::{self, Layout};
use crate::CliError;

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Plain HTTP (a local registry without TLS).
    pub insecure: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
}

impl Access {
    fn auth(&self) -> RegistryAuth {
        if let Some(t) = &self.token {
            return RegistryAuth::Bearer(t.clone());
        }
        match (&self.username, &self.password) {
            (Some(u), Some(p)) => RegistryAuth::Basic(u.clone(), p.clone()),
            _ => RegistryAuth::Anonymous,
        }
    }

    fn client(&self, reference: &Reference) -> Client {
        // The TLS stack is rustls with the ring provider (see Cargo.toml); it
        // must be installed before the first HTTP client is built.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let protocol = if self.insecure {
            ClientProtocol::HttpsExcept(vec![reference.resolve_registry().to_string()])
        } else {
            ClientProtocol::Https
        };
        Client::new(ClientConfig {
            protocol,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        })
    }
}

/// `oci://host/repo:tag` or `host/repo@sha256:...` → a reference.
pub fn parse_reference(s: &str) -> Result<Reference, CliError> {
    let s = s.strip_prefix("oci://").unwrap_or(s);
    s.parse::<Reference>()
        .map_err(|e| CliError::Usage(format!("invalid image reference {s:?}: {e}")))
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Internal(format!("tokio runtime: {e}")))
}

/// Turns the client's errors into the ones users should see.
fn classify(reference: &Reference, e: OciDistributionError) -> CliError {
    let registry = reference.resolve_registry().to_string();
    match e {
        OciDistributionError::RequestError(ref re) if re.is_connect() || re.is_timeout() => {
            let mut detail = re.to_string();
            let mut src = std::error::Error::source(re);
            while let Some(s) = src {
                detail = format!("{detail}: {s}");
                src = s.source();
            }
            CliError::Unreachable { registry, detail }
        }
        OciDistributionError::RequestError(ref re)
            if matches!(re.status().map(|s| s.as_u16()), Some(401 | 403)) =>
        {
            CliError::Unauthorized {
                registry,
                detail: e.to_string(),
            }
        }
        OciDistributionError::RequestError(ref re)
            if re.status().map(|s| s.as_u16()) == Some(404) =>
        {
            CliError::NotFound {
                reference: reference.whole(),
            }
        }
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => CliError::Unauthorized {
            registry,
            detail: e.to_string(),
        },
        OciDistributionError::ServerError { code: 401, .. }
        | OciDistributionError::ServerError { code: 403, .. } => CliError::Unauthorized {
            registry,
            detail: e.to_string(),
        },
        OciDistributionError::RegistryError { ref envelope, .. } => {
            let codes: Vec<String> = envelope
                .errors
                .iter()
                .map(|x| format!("{:?}", x.code))
                .collect();
            let joined = codes.join(",");
            if joined.contains("Unauthorized") || joined.contains("Denied") {
                CliError::Unauthorized {
                    registry,
                    detail: e.to_string(),
                }
            } else if joined.contains("ManifestUnknown") || joined.contains("NameUnknown") {
                CliError::NotFound {
                    reference: reference.whole(),
                }
            } else {
                CliError::Registry(e.to_string())
            }
        }
        OciDistributionError::ImageManifestNotFoundError(_) => CliError::NotFound {
            reference: reference.whole(),
        },
        OciDistributionError::ServerError { code: 404, .. } => CliError::NotFound {
            reference: reference.whole(),
        },
        OciDistributionError::DigestError(oci_client::errors::DigestError::VerificationError {
            expected,
            actual,
        }) => CliError::DigestMismatch {
            what: format!("a blob of {}", reference.whole()),
            expected,
            actual,
        },
        other => CliError::Registry(other.to_string()),
    }
}

fn human(n: usize) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / f64::from(1 << 20))
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}

/// Pushes a layout's blobs and its manifest (the exact bytes, so the digest
/// is the layout's); returns the manifest digest the registry stored.
pub fn push(layout: &Layout, reference_str: &str, access: &Access) -> Result<String, CliError> {
    let reference = parse_reference(reference_str)?;
    if reference.digest().is_some() && reference.tag().is_none() {
        return Err(CliError::Usage(
            "push to a tag (host/repo:tag), not to a digest".into(),
        ));
    }
    let client = access.client(&reference);
    let auth = access.auth();
    let rt = runtime()?;
    let err = |e| classify(&reference, e);
    rt.block_on(async {
        client
            .auth(&reference, &auth, RegistryOperation::Push)
            .await
            .map_err(err)?;
        let total: usize = layout.blobs.iter().map(|b| b.2.len()).sum();
        let mut sent = 0usize;
        let mut stderr = std::io::stderr();
        for (digest, media_type, bytes) in &layout.blobs {
            let short = &digest[..digest.len().min(19)];
            if client.blob_exists(&reference, digest).await.map_err(err)? {
                sent += bytes.len();
                let _ = writeln!(
                    stderr,
                    "{short}  {media_type}  {}  already there [{}/{}]",
                    human(bytes.len()),
                    human(sent),
                    human(total)
                );
                continue;
            }
            client
                .push_blob(&reference, bytes.clone(), digest)
                .await
                .map_err(err)?;
            sent += bytes.len();
            let _ = writeln!(
                stderr,
                "{short}  {media_type}  {}  pushed [{}/{}]",
                human(bytes.len()),
                human(sent),
                human(total)
            );
        }
        let content_type = layout.manifest_media_type.parse().map_err(|_| {
            CliError::BadImage(format!("bad media type {:?}", layout.manifest_media_type))
        })?;
        client
            .push_manifest_raw(&reference, layout.manifest.clone(), content_type)
            .await
            .map_err(err)?;
        // The registry's own view of what the tag now points at.
        let stored = client
            .fetch_manifest_digest(&reference, &auth)
            .await
            .map_err(err)?;
        if stored != layout.manifest_digest {
            return Err(CliError::DigestMismatch {
                what: format!("{} after push", reference.whole()),
                expected: layout.manifest_digest.clone(),
                actual: stored,
            });
        }
        Ok(stored)
    })
}

/// What a pull got: the manifest digest and the module.
pub struct Pulled {
    pub digest: String,
    pub wasm: Vec<u8>,
}

const ACCEPTED: [&str; 2] = [
    image::MANIFEST_MEDIA_TYPE,
    image::DOCKER_MANIFEST_MEDIA_TYPE,
];

/// Pulls an image's module the way Istio's agent picks it (§F.3), verifying the
/// manifest digest (against the reference's `@sha256:` when given) and the layer digest.
pub fn pull(reference_str: &str, access: &Access) -> Result<Pulled, CliError> {
    let reference = parse_reference(reference_str)?;
    let client = access.client(&reference);
    let auth = access.auth();
    let rt = runtime()?;
    let err = |e| classify(&reference, e);
    rt.block_on(async {
        client
            .auth(&reference, &auth, RegistryOperation::Pull)
            .await
            .map_err(err)?;
        let (bytes, header_digest) = client
            .pull_manifest_raw(&reference, &auth, &ACCEPTED)
            .await
            .map_err(err)?;
        let digest = image::sha256_digest(&bytes);
        if let Some(pinned) = reference.digest() {
            if pinned != digest {
                return Err(CliError::DigestMismatch {
                    what: format!("the manifest of {}", reference.whole()),
                    expected: pinned.to_string(),
                    actual: digest,
                });
            }
        }
        if !header_digest.is_empty() && header_digest != digest {
            return Err(CliError::DigestMismatch {
                what: format!(
                    "the manifest of {} (Docker-Content-Digest)",
                    reference.whole()
                ),
                expected: header_digest,
                actual: digest,
            });
        }
        let manifest: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| CliError::BadImage(format!("manifest of {}: {e}", reference.whole())))?;
        let media_type = manifest
            .get("mediaType")
            .and_then(serde_json::Value::as_str)
            .unwrap_or(image::MANIFEST_MEDIA_TYPE)
            .to_string();
        if !ACCEPTED.contains(&media_type.as_str()) {
            return Err(CliError::BadImage(format!(
                "{} is a {media_type}, not an image manifest Istio reads",
                reference.whole()
            )));
        }
        let layers = manifest
            .get("layers")
            .and_then(serde_json::Value::as_array)
            .cloned()
            .unwrap_or_default();
        let types: Vec<String> = layers
            .iter()
            .map(|l| {
                l.get("mediaType")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        let (i, tgz) = image::select_layer(&media_type, &types)?;
        let desc: oci_client::manifest::OciDescriptor =
            serde_json::from_value(layers[i].clone())
                .map_err(|e| CliError::BadImage(format!("layer descriptor: {e}")))?;
        let mut blob = Vec::new();
        // pull_blob checks the bytes against the descriptor's digest.
        client
            .pull_blob(&reference, &desc, &mut blob)
            .await
            .map_err(err)?;
        let wasm = if tgz {
            image::wasm_from_tar_gz(&blob)?
        } else {
            blob
        };
        image::check_wasm(&wasm, &format!("the module in {}", reference.whole()))?;
        Ok(Pulled { digest, wasm })
    })
}
