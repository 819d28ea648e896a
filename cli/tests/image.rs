//! `meshwasm image build`: an OCI image layout in Istio's Wasm compat format,
//! reproducible (same module, same commit → same manifest digest).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{run, run_ok, wasm, Scratch};
use serde_json::Value;

fn read_json(p: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn blob(dir: &std::path::Path, digest: &str) -> Vec<u8> {
    std::fs::read(
        dir.join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap()),
    )
    .unwrap()
}

#[test]
fn layout_is_the_compat_variant_with_plugin_wasm() {
    let dir = Scratch::new("image");
    let module = wasm("authz");
    let digest = run_ok(&[
        "image",
        "build",
        "authz",
        "-o",
        &dir.s("img"),
        "--wasm",
        module.to_str().unwrap(),
    ]);
    let digest = digest.trim();
    let img = dir.path("img");
    assert_eq!(
        read_json(&img.join("oci-layout"))["imageLayoutVersion"],
        "1.0.0"
    );
    let index = read_json(&img.join("index.json"));
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(index["manifests"][0]["digest"], digest);
    assert_eq!(
        index["manifests"][0]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );

    let manifest_bytes = blob(&img, digest);
    let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let a = &manifest["annotations"];
    assert_eq!(a["module.wasm.image/variant"], "compat");
    assert_eq!(a["org.opencontainers.image.title"], "meshwasm-authz");
    assert_eq!(
        a["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert!(a["org.opencontainers.image.source"]
        .as_str()
        .unwrap()
        .starts_with("https://"));
    let created = a["org.opencontainers.image.created"].as_str().unwrap();
    assert!(created.len() == 20 && created.ends_with('Z'), "{created}");
    let revision = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(common::repo_root())
        .output()
        .unwrap();
    if revision.status.success() {
        assert_eq!(
            a["org.opencontainers.image.revision"],
            String::from_utf8_lossy(&revision.stdout).trim()
        );
    }

    // The layer: a gzip'd tar with exactly plugin.wasm, byte-equal to the module,
    // with fixed ownership and time (what reproducibility needs).
    let layer = blob(&img, layers[0]["digest"].as_str().unwrap());
    assert_eq!(layers[0]["size"].as_u64().unwrap() as usize, layer.len());
    assert_eq!(&layer[4..8], &[0, 0, 0, 0], "gzip mtime must be 0");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&layer[..]));
    let mut names = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        names.push(e.path().unwrap().display().to_string());
        assert_eq!(
            (
                h.uid().unwrap(),
                h.gid().unwrap(),
                h.mtime().unwrap(),
                h.mode().unwrap()
            ),
            (0, 0, 0, 0o644)
        );
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
        assert_eq!(bytes, std::fs::read(&module).unwrap());
    }
    assert_eq!(names, ["plugin.wasm"]);

    // The config's diff_id is the uncompressed tar's digest.
    let config: Value =
        serde_json::from_slice(&blob(&img, manifest["config"]["digest"].as_str().unwrap()))
            .unwrap();
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);
    assert_eq!(config["created"], created);
}

#[test]
fn building_twice_gives_the_same_digest() {
    let dir = Scratch::new("repro");
    let module = wasm("fault");
    let m = module.to_str().unwrap();
    let a = run_ok(&["image", "build", "fault", "-o", &dir.s("a"), "--wasm", m]);
    std::thread::sleep(std::time::Duration::from_millis(1100)); // a clock-dependent build would differ now
    let b = run_ok(&["image", "build", "fault", "-o", &dir.s("b"), "--wasm", m]);
    assert_eq!(a, b);
    // Every file of the two layouts is byte-identical.
    for f in ["oci-layout", "index.json"] {
        assert_eq!(
            std::fs::read(dir.path("a").join(f)).unwrap(),
            std::fs::read(dir.path("b").join(f)).unwrap(),
            "{f}"
        );
    }
    let list = |d: &str| {
        let mut v: Vec<_> = std::fs::read_dir(dir.path(d).join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(list("a"), list("b"));
    assert_eq!(list("a").len(), 3, "manifest, config, layer");
    // SOURCE_DATE_EPOCH pins `created` (and so the digest) independently of git.
    let with_epoch = |out: &str| {
        let o = common::meshwasm()
            .args(["image", "build", "fault", "-o", &dir.s(out), "--wasm", m])
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap();
        assert!(o.status.success());
        String::from_utf8(o.stdout).unwrap()
    };
    let c = with_epoch("c");
    assert_eq!(c, with_epoch("d"));
    let idx = read_json(&dir.path("c/index.json"));
    let manifest: Value = serde_json::from_slice(&blob(
        &dir.path("c"),
        idx["manifests"][0]["digest"].as_str().unwrap(),
    ))
    .unwrap();
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.created"],
        "2023-11-14T22:13:20Z"
    );
    // A different module gives a different digest.
    let other = run_ok(&[
        "image",
        "build",
        "fault",
        "-o",
        &dir.s("e"),
        "--wasm",
        wasm("canary").to_str().unwrap(),
    ]);
    assert_ne!(a, other);
}

#[test]
fn a_file_that_is_not_wasm_is_refused() {
    let dir = Scratch::new("notwasm");
    std::fs::write(dir.path("x.wasm"), b"<html>not a module</html>").unwrap();
    let (code, out, err) = run(&[
        "image",
        "build",
        "authz",
        "-o",
        &dir.s("img"),
        "--wasm",
        &dir.s("x.wasm"),
    ]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("not a wasm module"), "{err}");
    assert!(err.contains("00 61 73 6d"), "{err}");
    assert!(!dir.path("img/index.json").exists());
}
