//! Push and pull against a real registry (Debian's `docker-registry`, the CNCF
//! distribution server, started here on a free loopback port), checked by a
//! third-party client (skopeo), and the pulled module run in real Envoy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::process::Stdio;

use common::{
    envoy_yaml, plugin_config_of, run, run_ok, skopeo, wasm, Auth, Registry, Scratch, TokenIssuer,
    PASSWORD, USER,
};
use host_tests::envoy::Envoy;
use host_tests::http::Request;
use host_tests::upstream::{Reply, Upstream};
use serde_json::Value;

fn build(filter: &str, dir: &Scratch, name: &str) -> String {
    run_ok(&[
        "image",
        "build",
        filter,
        "-o",
        &dir.s(name),
        "--wasm",
        wasm(filter).to_str().unwrap(),
    ])
    .trim()
    .to_string()
}

#[test]
fn push_inspect_copy_pull_and_enforce_in_envoy() {
    let reg = Registry::start(false);
    let dir = Scratch::new("push");
    let built = build("authz", &dir, "img");
    let reference = format!("{}/meshwasm/authz:0.1.0", reg.host());

    // Push: prints the manifest digest (= the layout's), with a progress line per blob.
    let (code, out, err) = run(&["image", "push", &dir.s("img"), &reference, "--insecure"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), built, "{err}");
    assert!(
        err.contains("application/vnd.oci.image.layer.v1.tar+gzip") && err.contains("pushed ["),
        "{err}"
    );
    // Pushing again finds the blobs already there and keeps the digest.
    let (code, out, err) = run(&["image", "push", &dir.s("img"), &reference, "--insecure"]);
    assert_eq!((code, out.trim()), (0, built.as_str()), "{err}");
    assert!(err.contains("already there"), "{err}");

    // A third-party client sees the compat image: media types, annotations, one layer.
    let (code, raw, err) = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ]);
    assert_eq!(code, 0, "{err}");
    let manifest: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["annotations"]["module.wasm.image/variant"],
        "compat"
    );
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.title"],
        "meshwasm-authz"
    );
    assert!(manifest["annotations"]["org.opencontainers.image.created"].is_string());
    let (code, info, err) = skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ]);
    assert_eq!(code, 0, "{err}");
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["Digest"], built);
    // skopeo 1.9 (Debian bookworm) lists layer digests in `Layers`.
    let layers = info["Layers"]
        .as_array()
        .unwrap_or_else(|| panic!("{info}"));
    assert_eq!(layers.len(), 1, "{info}");
    assert_eq!(layers[0], manifest["layers"][0]["digest"]);
    assert_eq!(info["Architecture"], "wasm", "{info}");
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(
        manifest["layers"][0]["annotations"]["org.opencontainers.image.title"],
        "plugin.wasm"
    );

    // skopeo copies it to an OCI layout and back under another name, digest intact.
    let oci = format!("oci:{}:copied", dir.s("skopeo-layout"));
    let (code, _, err) = skopeo(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        &format!("docker://{reference}"),
        &oci,
    ]);
    assert_eq!(code, 0, "{err}");
    let copy_ref = format!("{}/meshwasm/authz-copy:v1", reg.host());
    let (code, _, err) = skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &oci,
        &format!("docker://{copy_ref}"),
    ]);
    assert_eq!(code, 0, "{err}");
    // The CLI reads the layout skopeo wrote and pushes the same digest.
    let third = format!("{}/meshwasm/authz-third:v1", reg.host());
    let out = run_ok(&[
        "image",
        "push",
        &dir.s("skopeo-layout"),
        &third,
        "--insecure",
    ]);
    assert_eq!(out.trim(), built);

    // Pull (by tag, and by digest) gives the module byte for byte.
    let module = std::fs::read(wasm("authz")).unwrap();
    for r in [
        copy_ref.clone(),
        format!("{}/meshwasm/authz@{built}", reg.host()),
        format!("oci://{reference}"),
    ] {
        let out = run_ok(&[
            "image",
            "pull",
            &r,
            "-o",
            &dir.s("pulled.wasm"),
            "--insecure",
        ]);
        assert_eq!(out.trim(), built, "{r}");
        assert_eq!(
            std::fs::read(dir.path("pulled.wasm")).unwrap(),
            module,
            "{r}"
        );
    }

    // The pulled module, configured with the seed WasmPlugin's pluginConfig, runs in
    // Envoy and enforces the frontend-only policy.
    let wp = run_ok(&[
        "wasmplugin",
        "authz",
        "-f",
        "envoy-configs/istio/policies/authz.yaml",
        "--image",
        &format!("{}/meshwasm/authz@{built}", reg.host()),
    ]);
    let config = plugin_config_of(&wp);
    let up = Upstream::echo("backend");
    let pulled = dir.path("pulled.wasm");
    let envoy = Envoy::from_yaml(&envoy_yaml(&[(&pulled, "authz", &config)]))
        .upstream("UPSTREAM", &up)
        .start();
    let denied = envoy.send("meshwasm", &Request::get("/api/orders"));
    assert_eq!(denied.status, 403, "{}", denied.text());
    assert_eq!(denied.text(), "RBAC: access denied");
    let ok = envoy.send("meshwasm", &Request::get("/healthz"));
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.upstream().as_deref(), Some("backend"));
    let post = envoy.send("meshwasm", &Request::new("POST", "/healthz"));
    assert_eq!(post.status, 403);
}

#[test]
fn basic_auth_registry() {
    let reg = Registry::start(true);
    let dir = Scratch::new("auth");
    let built = build("fault", &dir, "img");
    let reference = format!("{}/team/fault:1", reg.host());

    // Anonymous: 401, said plainly.
    let (code, out, err) = run(&["image", "push", &dir.s("img"), &reference, "--insecure"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("401 unauthorized"), "{err}");
    // Wrong password: 401 as well.
    let (code, _, err) = run(&[
        "image",
        "push",
        &dir.s("img"),
        &reference,
        "--insecure",
        "-u",
        USER,
        "-p",
        "wrong",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("401 unauthorized"), "{err}");

    // The password on stdin.
    let mut child = common::meshwasm()
        .args([
            "image",
            "push",
            &dir.s("img"),
            &reference,
            "--insecure",
            "--username",
            USER,
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), built);

    // Pull: anonymous is refused; credentials from the environment work.
    let (code, _, err) = run(&[
        "image",
        "pull",
        &reference,
        "-o",
        &dir.s("x.wasm"),
        "--insecure",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("401 unauthorized"), "{err}");
    let o = common::meshwasm()
        .args([
            "image",
            "pull",
            &reference,
            "-o",
            &dir.s("x.wasm"),
            "--insecure",
        ])
        .env("MESHWASM_REGISTRY_USERNAME", USER)
        .env("MESHWASM_REGISTRY_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), built);
    assert_eq!(
        std::fs::read(dir.path("x.wasm")).unwrap(),
        std::fs::read(wasm("fault")).unwrap()
    );

    // skopeo with the same credentials sees what the CLI pushed.
    let creds = format!("{USER}:{PASSWORD}");
    let (code, info, err) = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        &creds,
        &format!("docker://{reference}"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&info).unwrap()["Digest"],
        built
    );
}

/// A layout whose only layer holds a `plugin.wasm` that is not a module (made by
/// hand, pushed with skopeo: the CLI itself refuses to push it).
fn bogus_layout(dir: &std::path::Path) {
    use sha2::{Digest, Sha256};
    let sha = |b: &[u8]| {
        format!(
            "sha256:{}",
            Sha256::digest(b)
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect::<String>()
        )
    };
    let content = b"#!/bin/sh\necho definitely not wasm\n";
    let mut tar_bytes = Vec::new();
    {
        let mut b = tar::Builder::new(&mut tar_bytes);
        let mut h = tar::Header::new_ustar();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_path("plugin.wasm").unwrap();
        h.set_cksum();
        b.append(&h, &content[..]).unwrap();
        b.finish().unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar_bytes).unwrap();
    let layer = gz.finish().unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "wasm", "os": "wasip1", "rootfs": {"type": "layers", "diff_ids": [sha(&tar_bytes)]}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(&layer), "size": layer.len()}],
    }))
    .unwrap();
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    for b in [&layer, &config, &manifest] {
        std::fs::write(blobs.join(&sha(b)[7..]), b).unwrap();
    }
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(&manifest), "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": "bogus"}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn clear_errors_for_the_usual_failures() {
    let dir = Scratch::new("errors");

    // Unreachable: nothing listens on that port.
    let port = host_tests::paths::free_port();
    let (code, _, err) = run(&[
        "image",
        "pull",
        &format!("127.0.0.1:{port}/x/y:1"),
        "-o",
        &dir.s("o.wasm"),
        "--insecure",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("registry 127.0.0.1:{port} unreachable")),
        "{err}"
    );

    let reg = Registry::start(false);
    let built = build("canary", &dir, "img");
    let reference = format!("{}/meshwasm/canary:1", reg.host());
    run_ok(&["image", "push", &dir.s("img"), &reference, "--insecure"]);

    // Missing tag, missing repository.
    for missing in [
        format!("{}/meshwasm/canary:nope", reg.host()),
        format!("{}/meshwasm/nothing:1", reg.host()),
    ] {
        let (code, _, err) = run(&[
            "image",
            "pull",
            &missing,
            "-o",
            &dir.s("o.wasm"),
            "--insecure",
        ]);
        assert_eq!(code, 1, "{missing}");
        assert!(err.contains("no such image"), "{missing}: {err}");
    }

    // Not a wasm module: the CLI refuses to push it; when pushed by another tool,
    // pull refuses it (and writes nothing).
    let bogus = dir.path("bogus");
    bogus_layout(&bogus);
    let bogus_ref = format!("{}/meshwasm/bogus:1", reg.host());
    let (code, _, err) = run(&[
        "image",
        "push",
        bogus.to_str().unwrap(),
        &bogus_ref,
        "--insecure",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("not a wasm module"), "{err}");
    let (code, _, err) = skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:bogus", bogus.display()),
        &format!("docker://{bogus_ref}"),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&[
        "image",
        "pull",
        &bogus_ref,
        "-o",
        &dir.s("bogus.wasm"),
        "--insecure",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("not a wasm module"), "{err}");
    assert!(!dir.path("bogus.wasm").exists());

    // Digest mismatch: the registry's stored layer no longer matches its digest.
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(dir.path("img/blobs/sha256").join(&built[7..])).unwrap(),
    )
    .unwrap();
    let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap();
    let stored = reg.blob_data(layer_digest);
    let mut bytes = std::fs::read(&stored).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&stored, bytes).unwrap();
    let (code, _, err) = run(&[
        "image",
        "pull",
        &reference,
        "-o",
        &dir.s("o.wasm"),
        "--insecure",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("digest mismatch"), "{err}");
    assert!(err.contains(layer_digest), "{err}");
    assert!(!dir.path("o.wasm").exists());
}

/// `repository:team/x:pull,push` out of the token request's query.
fn scope_repository(path: &str) -> Option<String> {
    let q = path.split_once('?')?.1;
    let scope = q.split('&').find_map(|kv| kv.strip_prefix("scope="))?;
    let scope = scope
        .replace("%3A", ":")
        .replace("%3a", ":")
        .replace("%2F", "/")
        .replace("%2f", "/");
    let scope = scope.replace("%2C", ",").replace("%2c", ",");
    let rest = scope.strip_prefix("repository:")?;
    Some(rest.rsplit_once(':')?.0.to_string())
}

#[test]
fn bearer_token_registry() {
    let issuer = std::sync::Arc::new(TokenIssuer::new());
    let basic = format!(
        "Basic {}",
        String::from_utf8(common::openssl(
            &["base64", "-A"],
            Some(format!("{USER}:{PASSWORD}").as_bytes())
        ))
        .unwrap()
    );
    // The token service: tokens for the repository asked for, to USER:PASSWORD only.
    let iss = issuer.clone();
    let token_server = Upstream::start("token", move |seen| {
        match (seen.header("authorization"), scope_repository(&seen.path)) {
            (Some(a), Some(repo)) if a == basic => Reply::json(
                200,
                &serde_json::json!({ "token": iss.token(&repo, &["pull", "push"]) }),
            ),
            _ => Reply::new(401).body("unauthorized"),
        }
    });
    let realm = format!("http://127.0.0.1:{}/token", token_server.port());
    let reg = Registry::start_with(Auth::Token {
        realm,
        cert: issuer.cert.clone(),
    });
    let dir = Scratch::new("bearer");
    let built = build("jwt_authn", &dir, "img");
    let reference = format!("{}/team/jwt_authn:1", reg.host());

    // Anonymous: the token service refuses, and so the push.
    let (code, _, err) = run(&["image", "push", &dir.s("img"), &reference, "--insecure"]);
    assert_eq!(code, 1);
    assert!(err.contains("401 unauthorized"), "{err}");
    // Basic credentials are exchanged for a bearer token at the realm.
    let (code, out, err) = run(&[
        "image",
        "push",
        &dir.s("img"),
        &reference,
        "--insecure",
        "-u",
        USER,
        "-p",
        PASSWORD,
    ]);
    assert_eq!(code, 0, "{err}\n{}", reg.log_text());
    assert_eq!(out.trim(), built);
    assert!(token_server
        .seen()
        .iter()
        .any(|s| s.path.contains("scope=repository")));

    // A token given directly (--token), for this repository: pull works.
    let token = issuer.token("team/jwt_authn", &["pull"]);
    let out = run_ok(&[
        "image",
        "pull",
        &reference,
        "-o",
        &dir.s("p.wasm"),
        "--insecure",
        "--token",
        &token,
    ]);
    assert_eq!(out.trim(), built);
    assert_eq!(
        std::fs::read(dir.path("p.wasm")).unwrap(),
        std::fs::read(wasm("jwt_authn")).unwrap()
    );
    // A token for another repository is refused by the registry.
    let other = issuer.token("team/other", &["pull"]);
    let (code, _, err) = run(&[
        "image",
        "pull",
        &reference,
        "-o",
        &dir.s("q.wasm"),
        "--insecure",
        "--token",
        &other,
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("401 unauthorized"), "{err}");
}
