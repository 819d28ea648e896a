//! OCI image layouts in the Wasm "compat" variant Istio's agent accepts
//! (istio-agent's `pkg/wasm` image fetcher): one `application/vnd.oci.image.layer.v1.tar+gzip`
//! layer whose tar holds `plugin.wasm`, annotated `module.wasm.image/variant=compat`.
//!
//! Reproducible by construction: the tar entry has fixed mode/uid/gid/mtime and no
//! user names, gzip carries no timestamp or file name, JSON is written with a fixed
//! key order, and every date comes from the commit (or SOURCE_DATE_EPOCH), so the
//! same `.wasm` at the same commit gives the same manifest digest.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::CliError;

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LAYER_MEDIA_TYPE: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// solo-io "oci" variant: the module as a raw layer.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
pub const VARIANT_ANNOTATION: &str = "module.wasm.image/variant";
pub const WASM_FILE: &str = "plugin.wasm";
const WASM_MAGIC: [u8; 4] = [0x00, 0x61, 0x73, 0x6d];

pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in hash {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Istio's validity check (pkg/wasm): at least 8 bytes and the `\0asm` magic.
pub fn check_wasm(bytes: &[u8], what: &str) -> Result<(), CliError> {
    if bytes.len() < 8 || bytes[..4] != WASM_MAGIC {
        let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        return Err(CliError::NotWasm {
            what: what.to_string(),
            detail: format!(
                "{} bytes starting with [{}], expected the magic 00 61 73 6d (\\0asm)",
                bytes.len(),
                head.join(" ")
            ),
        });
    }
    Ok(())
}

/// What goes into the image's annotations.
#[derive(Debug, Clone)]
pub struct Metadata {
    pub title: String,
    pub version: String,
    pub revision: Option<String>,
    pub source: String,
    /// RFC 3339, UTC.
    pub created: String,
    pub description: String,
    pub licenses: String,
}

/// The built image: the layout's blobs and the manifest digest.
pub struct Built {
    pub manifest_digest: String,
    pub manifest_size: usize,
}

/// A deterministic `tar.gz` holding `plugin.wasm`.
pub fn layer_tar_gz(wasm: &[u8]) -> Result<(Vec<u8>, Vec<u8>), CliError> {
    let mut tar_bytes = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut tar_bytes);
        let mut header = tar::Header::new_ustar();
        header.set_size(wasm.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        header
            .set_path(WASM_FILE)
            .map_err(|e| CliError::Internal(format!("tar header: {e}")))?;
        header.set_cksum();
        builder
            .append(&header, wasm)
            .map_err(|e| CliError::Internal(format!("tar: {e}")))?;
        builder
            .finish()
            .map_err(|e| CliError::Internal(format!("tar: {e}")))?;
    }
    // flate2's GzBuilder writes mtime 0 and no file name unless asked to.
    let mut gz = flate2::GzBuilder::new()
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar_bytes)
        .map_err(|e| CliError::Internal(format!("gzip: {e}")))?;
    let gz_bytes = gz
        .finish()
        .map_err(|e| CliError::Internal(format!("gzip: {e}")))?;
    Ok((tar_bytes, gz_bytes))
}

/// Extracts `plugin.wasm` from a tar.gz layer as Istio does: gunzip, untar, the
/// first entry whose base name is `plugin.wasm`.
pub fn wasm_from_tar_gz(layer: &[u8]) -> Result<Vec<u8>, CliError> {
    let gz = flate2::read::GzDecoder::new(layer);
    let mut archive = tar::Archive::new(gz);
    let entries = archive
        .entries()
        .map_err(|e| CliError::BadImage(format!("layer is not a tar.gz: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| CliError::BadImage(format!("layer is not a tar.gz: {e}")))?;
        let is_wasm = entry
            .path()
            .ok()
            .and_then(|p| p.file_name().map(|n| n == WASM_FILE))
            .unwrap_or(false);
        if is_wasm {
            let mut out = Vec::new();
            entry
                .read_to_end(&mut out)
                .map_err(|e| CliError::BadImage(format!("reading {WASM_FILE}: {e}")))?;
            return Ok(out);
        }
    }
    Err(CliError::BadImage(format!(
        "the layer holds no {WASM_FILE}"
    )))
}

/// Writes JSON with a stable layout (serde_json keeps insertion order here).
fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn write_blob(dir: &Path, bytes: &[u8]) -> Result<String, CliError> {
    let digest = sha256_digest(bytes);
    let hex = &digest["sha256:".len()..];
    let path = dir.join("blobs").join("sha256").join(hex);
    std::fs::write(&path, bytes).map_err(|e| CliError::io(&path, e))?;
    Ok(digest)
}

/// Builds an OCI image layout in `dir` (created; an existing layout is replaced).
pub fn build_layout(dir: &Path, wasm: &[u8], meta: &Metadata) -> Result<Built, CliError> {
    check_wasm(wasm, "the input module")?;
    let blobs = dir.join("blobs").join("sha256");
    if blobs.exists() {
        std::fs::remove_dir_all(&blobs).map_err(|e| CliError::io(&blobs, e))?;
    }
    std::fs::create_dir_all(&blobs).map_err(|e| CliError::io(&blobs, e))?;

    let (tar_bytes, layer) = layer_tar_gz(wasm)?;
    let layer_digest = write_blob(dir, &layer)?;
    let diff_id = sha256_digest(&tar_bytes);

    let config = json!({
        "created": meta.created,
        "architecture": "wasm",
        "os": "wasip1",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created": meta.created, "created_by": "meshwasm image build" }],
    });
    let config_bytes = to_bytes(&config);
    let config_digest = write_blob(dir, &config_bytes)?;

    let mut annotations = serde_json::Map::new();
    let mut put = |k: &str, v: &str| {
        annotations.insert(k.to_string(), Value::String(v.to_string()));
    };
    put(VARIANT_ANNOTATION, "compat");
    put("org.opencontainers.image.title", &meta.title);
    put("org.opencontainers.image.description", &meta.description);
    put("org.opencontainers.image.version", &meta.version);
    if let Some(rev) = &meta.revision {
        put("org.opencontainers.image.revision", rev);
    }
    put("org.opencontainers.image.source", &meta.source);
    put("org.opencontainers.image.created", &meta.created);
    put("org.opencontainers.image.licenses", &meta.licenses);

    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": { "mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config_bytes.len() },
        "layers": [{
            "mediaType": LAYER_MEDIA_TYPE,
            "digest": layer_digest,
            "size": layer.len(),
            "annotations": { "org.opencontainers.image.title": WASM_FILE },
        }],
        "annotations": annotations,
    });
    let manifest_bytes = to_bytes(&manifest);
    let manifest_digest = write_blob(dir, &manifest_bytes)?;

    let index = json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [{
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": manifest_digest,
            "size": manifest_bytes.len(),
            "annotations": { "org.opencontainers.image.ref.name": meta.version },
        }],
    });
    let write = |name: &str, bytes: &[u8]| -> Result<(), CliError> {
        let p = dir.join(name);
        std::fs::write(&p, bytes).map_err(|e| CliError::io(&p, e))
    };
    write("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    write("index.json", &to_bytes(&index))?;
    Ok(Built {
        manifest_digest,
        manifest_size: manifest_bytes.len(),
    })
}

/// An image read back from a layout: the manifest (raw bytes, as pushed) and its blobs.
pub struct Layout {
    pub dir: PathBuf,
    pub manifest: Vec<u8>,
    pub manifest_media_type: String,
    pub manifest_digest: String,
    /// (digest, media type, bytes): the config first, then the layers.
    pub blobs: Vec<(String, String, Vec<u8>)>,
}

fn read_json(path: &Path) -> Result<Value, CliError> {
    let bytes = std::fs::read(path).map_err(|e| CliError::io(path, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| CliError::BadImage(format!("{}: {e}", path.display())))
}

/// Reads a blob and checks it against its digest (a layout is content-addressed).
pub fn read_blob(dir: &Path, digest: &str) -> Result<Vec<u8>, CliError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| CliError::BadImage(format!("unsupported digest {digest:?}")))?;
    let path = dir.join("blobs").join("sha256").join(hex);
    let bytes = std::fs::read(&path).map_err(|e| CliError::io(&path, e))?;
    let actual = sha256_digest(&bytes);
    if actual != digest {
        return Err(CliError::DigestMismatch {
            what: path.display().to_string(),
            expected: digest.to_string(),
            actual,
        });
    }
    Ok(bytes)
}

/// Opens an OCI image layout holding one image manifest.
pub fn open_layout(dir: &Path) -> Result<Layout, CliError> {
    let layout = read_json(&dir.join("oci-layout"))?;
    if layout.get("imageLayoutVersion").and_then(Value::as_str) != Some("1.0.0") {
        return Err(CliError::BadImage(format!(
            "{}: not an OCI image layout 1.0.0",
            dir.display()
        )));
    }
    let index = read_json(&dir.join("index.json"))?;
    let manifests = index
        .get("manifests")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let [desc] = manifests.as_slice() else {
        return Err(CliError::BadImage(format!(
            "{}: index.json lists {} manifests, expected one",
            dir.display(),
            manifests.len()
        )));
    };
    let digest = desc
        .get("digest")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let manifest = read_blob(dir, &digest)?;
    let parsed: Value = serde_json::from_slice(&manifest)
        .map_err(|e| CliError::BadImage(format!("manifest {digest}: {e}")))?;
    let media_type = parsed
        .get("mediaType")
        .or_else(|| desc.get("mediaType"))
        .and_then(Value::as_str)
        .unwrap_or(MANIFEST_MEDIA_TYPE)
        .to_string();
    let mut blobs = Vec::new();
    let config = parsed.get("config").cloned().unwrap_or(Value::Null);
    let layers = parsed
        .get("layers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for d in std::iter::once(&config).chain(layers.iter()) {
        let digest = d
            .get("digest")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mt = d
            .get("mediaType")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let bytes = read_blob(dir, &digest)?;
        blobs.push((digest, mt, bytes));
    }
    Ok(Layout {
        dir: dir.to_path_buf(),
        manifest,
        manifest_media_type: media_type,
        manifest_digest: digest,
        blobs,
    })
}

/// Finds the module in a manifest's layers as Istio's image fetcher does
/// (§F.3): Docker manifest → last layer must be a rootfs tar.gz; OCI manifest →
/// last layer tar+gzip (compat), else exactly two layers with a raw wasm layer.
/// Returns the index of the layer to read and whether it is a tar.gz.
pub fn select_layer(
    manifest_media_type: &str,
    layer_types: &[String],
) -> Result<(usize, bool), CliError> {
    let Some(last) = layer_types.len().checked_sub(1) else {
        return Err(CliError::BadImage("the image has no layers".to_string()));
    };
    if manifest_media_type == DOCKER_MANIFEST_MEDIA_TYPE {
        if layer_types[last] == DOCKER_LAYER_MEDIA_TYPE {
            return Ok((last, true));
        }
        return Err(CliError::BadImage(format!(
            "Docker manifest: the last layer is {}, expected {DOCKER_LAYER_MEDIA_TYPE}",
            layer_types[last]
        )));
    }
    if layer_types[last] == LAYER_MEDIA_TYPE {
        return Ok((last, true));
    }
    if layer_types.len() == 2 {
        if let Some(i) = layer_types.iter().position(|t| t == WASM_LAYER_MEDIA_TYPE) {
            return Ok((i, false));
        }
    }
    Err(CliError::BadImage(format!(
        "not a Wasm image Istio accepts: layers {layer_types:?} (expected a last layer {LAYER_MEDIA_TYPE}, or two layers with {WASM_LAYER_MEDIA_TYPE})"
    )))
}

/// Reads the module from a layout (as a pull would), checking the magic.
pub fn wasm_from_layout(l: &Layout) -> Result<Vec<u8>, CliError> {
    let layers = &l.blobs[1..];
    let types: Vec<String> = layers.iter().map(|b| b.1.clone()).collect();
    let (i, tgz) = select_layer(&l.manifest_media_type, &types)?;
    let wasm = if tgz {
        wasm_from_tar_gz(&layers[i].2)?
    } else {
        layers[i].2.clone()
    };
    check_wasm(&wasm, &format!("{}", l.dir.display()))?;
    Ok(wasm)
}

/// The commit time of `HEAD` in `dir`'s repository, or SOURCE_DATE_EPOCH.
pub fn created_time(repo_dir: &Path) -> String {
    if let Some(epoch) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
    {
        return rfc3339_utc(epoch);
    }
    git(repo_dir, &["log", "-1", "--format=%ct"])
        .and_then(|s| s.parse::<i64>().ok())
        .map(rfc3339_utc)
        .unwrap_or_else(|| rfc3339_utc(0))
}

pub fn git_revision(repo_dir: &Path) -> Option<String> {
    git(repo_dir, &["rev-parse", "HEAD"])
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Seconds since the epoch → `2026-11-21T11:14:16Z` (civil-from-days, H. Hinnant).
pub fn rfc3339_utc(epoch: i64) -> String {
    let days = epoch.div_euclid(86_400);
    let secs = epoch.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_795_260_856), "2026-11-21T11:34:16Z");
    }

    #[test]
    fn layer_round_trip_and_determinism() {
        let wasm = b"\0asm\x01\0\0\0rest".to_vec();
        let (t1, g1) = layer_tar_gz(&wasm).unwrap();
        let (t2, g2) = layer_tar_gz(&wasm).unwrap();
        assert_eq!((t1, g1.clone()), (t2, g2));
        assert_eq!(wasm_from_tar_gz(&g1).unwrap(), wasm);
    }

    #[test]
    fn magic() {
        assert!(check_wasm(b"\0asm\x01\0\0\0", "x").is_ok());
        assert!(check_wasm(b"\0asm", "x").is_err());
        assert!(check_wasm(b"<html>..", "x").is_err());
    }

    #[test]
    fn layer_selection_follows_istio() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            select_layer(MANIFEST_MEDIA_TYPE, &s(&[LAYER_MEDIA_TYPE])).unwrap(),
            (0, true)
        );
        assert!(select_layer(
            MANIFEST_MEDIA_TYPE,
            &s(&["application/vnd.oci.image.layer.v1.tar"])
        )
        .is_err());
        assert_eq!(
            select_layer(
                MANIFEST_MEDIA_TYPE,
                &s(&[
                    "application/vnd.module.wasm.config.v1+json",
                    WASM_LAYER_MEDIA_TYPE
                ])
            )
            .unwrap(),
            (1, false)
        );
        assert!(select_layer(DOCKER_MANIFEST_MEDIA_TYPE, &s(&[LAYER_MEDIA_TYPE])).is_err());
        assert!(select_layer(
            MANIFEST_MEDIA_TYPE,
            &s(&["application/vnd.wasm.content.layer.v1+wasm"])
        )
        .is_err());
    }
}
