//! The canary filter in stock Envoy 1.40, against its native twin in the same Envoy
//! (`envoy-configs/canary.yaml`): the VirtualService below on listener `meshwasm`
//! (subset header + header-matching routes) and `meshwasm_cluster` (cluster header +
//! `cluster_header` route), and as istiod translates it on listener `native`.
//! Upstreams v1 and v2 say who answered.

use std::collections::BTreeMap;
use std::fmt;

use host_tests::envoy::Envoy;
use host_tests::http::{self, Request, Response};
use host_tests::twin::{self, Case};
use host_tests::upstream::Upstream;
use serde_json::{json, Value};

fn dest(subset: &str) -> Value {
    json!({"host": "reviews", "subset": subset, "port": {"number": 9080}})
}

fn route_headers() -> Value {
    json!({
        "request": {"set": {"x-who": "route", "x-route-only": "r"}, "add": {"x-list": "r"}, "remove": ["x-drop"]},
        "response": {"set": {"x-resp": "route"}, "add": {"x-resp-list": "r"}, "remove": ["content-type"]}
    })
}

fn dest_headers() -> Value {
    json!({
        "request": {"set": {"x-who": "dest", "host": "rewritten.example"}, "add": {"x-list": "d"}, "remove": ["x-drop2"]},
        "response": {"set": {"x-resp": "dest"}, "add": {"x-resp-list": "d"}}
    })
}

/// The VirtualService of `envoy-configs/canary.yaml`'s native listener.
fn virtual_service(routing: Value) -> Value {
    json!({
        "hosts": ["reviews.example.com", "*.shop.example"],
        "http": [
            {"name": "jason", "match": [{"headers": {"end-user": {"exact": "jason"}}}],
             "route": [{"destination": dest("v2")}]},
            {"name": "api", "match": [{"uri": {"prefix": "/API"}, "ignoreUriCase": true}],
             "route": [{"destination": dest("v2")}]},
            {"name": "items", "match": [{"uri": {"regex": "/items/[0-9]+"}}],
             "route": [{"destination": dest("v2")}]},
            {"name": "post-canary", "match": [{"method": {"exact": "POST"}, "queryParams": {"canary": {"exact": "1"}}}],
             "route": [{"destination": dest("v2")}]},
            {"name": "beta", "match": [{"headers": {"x-beta": {}}, "withoutHeaders": {"x-stable": {}}}],
             "route": [{"destination": dest("v2")}]},
            {"name": "hdr-single", "match": [{"uri": {"prefix": "/hdr-single"}}], "headers": route_headers(),
             "route": [{"destination": dest("v1"), "headers": dest_headers()}]},
            {"name": "hdr-weighted", "match": [{"uri": {"prefix": "/hdr-weighted"}}], "headers": route_headers(),
             "route": [{"destination": dest("v1"), "weight": 100, "headers": dest_headers()},
                       {"destination": dest("v2"), "weight": 0}]},
            {"name": "split", "match": [{"uri": {"prefix": "/split"}}],
             "route": [{"destination": dest("v1"), "weight": 90},
                       {"destination": dest("v3"), "weight": 0},
                       {"destination": dest("v2"), "weight": 10}]},
            {"name": "default",
             "route": [{"destination": dest("v1"), "weight": 100}, {"destination": dest("v2"), "weight": 0}]}
        ],
        "routing": routing
    })
}

struct Setup {
    envoy: Envoy,
    _v1: Upstream,
    _v2: Upstream,
}

fn start() -> Setup {
    let v1 = Upstream::echo("v1");
    let v2 = Upstream::echo("v2");
    let envoy = Envoy::from_file("canary.yaml")
        .plugin_config(
            "PLUGIN_CONFIG",
            &virtual_service(json!({
                "subsetHeader": "x-canary-subset",
                "stickyBy": {"header": "x-user"},
                "responseHeader": "x-served-by"
            })),
        )
        .plugin_config(
            "PLUGIN_CONFIG_CLUSTER",
            &virtual_service(
                json!({"clusterHeader": "x-canary-cluster", "stickyBy": {"cookie": "uid"}}),
            ),
        )
        .upstream("V1_PORT", &v1)
        .upstream("V2_PORT", &v2)
        .concurrency(2)
        .start();
    Setup {
        envoy,
        _v1: v1,
        _v2: v2,
    }
}

fn get(path: &str) -> Request {
    Request::get(path).header("host", "reviews.example.com")
}

/// Every case is deterministic (no weighted draw between v1 and v2 is involved).
fn header_cases() -> Vec<Case> {
    let h = |name: &str, req: Request| Case::new(name, req);
    vec![
        h("jason → v2", get("/p").header("end-user", "jason")),
        h("Jason (case) → v1", get("/p").header("end-user", "Jason")),
        h("jason2 → v1", get("/p").header("end-user", "jason2")),
        h("uri prefix /api any case → v2", get("/api/x")),
        h("/Api → v2", get("/Api")),
        h("/APIs → v2", get("/APIs?x=1")),
        h("/ap → v1", get("/ap")),
        h("regex /items/12 → v2", get("/items/12")),
        h("regex ignores query", get("/items/12?x=1")),
        h("regex is a full match", get("/items/12/x")),
        h("regex no digits", get("/items/ab")),
        h("regex is case-sensitive", get("/ITEMS/12")),
        h(
            "POST ?canary=1 → v2",
            Request::new("POST", "/x?canary=1").header("host", "reviews.example.com"),
        ),
        h("GET ?canary=1 → v1", get("/x?canary=1")),
        h(
            "POST ?canary=2 → v1",
            Request::new("POST", "/x?canary=2").header("host", "reviews.example.com"),
        ),
        h(
            "POST ?canary → v1",
            Request::new("POST", "/x?canary").header("host", "reviews.example.com"),
        ),
        h(
            "x-beta without x-stable → v2",
            get("/b").header("x-beta", ""),
        ),
        h(
            "x-beta with x-stable → v1",
            get("/b").header("x-beta", "1").header("x-stable", "1"),
        ),
        h(
            "client-sent subset header is ignored",
            get("/p").header("x-canary-subset", "v2"),
        ),
        h(
            "client-sent cluster header is ignored",
            get("/p").header("x-canary-cluster", "outbound|9080|v2|reviews"),
        ),
        h(
            "wildcard host",
            Request::get("/p")
                .header("host", "a.shop.example")
                .header("end-user", "jason"),
        ),
        h(
            "host with port",
            Request::get("/p")
                .header("host", "reviews.example.com:8080")
                .header("end-user", "jason"),
        ),
        h(
            "host case",
            Request::get("/p").header("host", "REVIEWS.example.com"),
        ),
        h("weight-0 default never v2", get("/anything")),
    ]
}

#[test]
fn header_routes_match_native_twin_in_both_routing_modes() {
    let s = start();
    let cases = header_cases();
    twin::assert_same(&s.envoy, "meshwasm", "native", &cases);
    twin::assert_same(&s.envoy, "meshwasm_cluster", "native", &cases);

    // Another VirtualService host's traffic: not ours, no route on either side.
    let other = [Case::new(
        "other host",
        Request::get("/p")
            .header("host", "other.example")
            .header("end-user", "jason"),
    )];
    twin::assert_same(&s.envoy, "meshwasm", "native", &other);
    assert_eq!(s.envoy.send("native", &other[0].request).status, 404);

    // A header match always lands on v2, and the client is told who served it.
    for _ in 0..50 {
        let r = s
            .envoy
            .send("meshwasm", &get("/p").header("end-user", "jason"));
        assert_eq!(r.upstream().as_deref(), Some("v2"), "{}", r.text());
        assert_eq!(r.header("x-served-by"), Some("v2"));
        assert_eq!(r.upstream_header("x-canary-subset").as_deref(), Some("v2"));
        let r = s
            .envoy
            .send("meshwasm_cluster", &get("/p").header("end-user", "jason"));
        assert_eq!(r.upstream().as_deref(), Some("v2"));
        assert_eq!(
            r.upstream_header("x-canary-cluster").as_deref(),
            Some("outbound|9080|v2|reviews")
        );
    }
    let stats = s.envoy.stats();
    assert!(
        stats["wasmcustom.meshwasm.canary.subset.v2"] >= 100,
        "{stats:?}"
    );
    assert!(stats["wasmcustom.meshwasm.canary.other_host"] >= 1);
}

#[test]
fn no_match_counts_and_falls_through_to_envoy() {
    // A VirtualService with no catch-all: an unmatched request gets no subset header,
    // so Envoy's own route table decides (here: 404, as the native twin).
    let v1 = Upstream::echo("v1");
    let v2 = Upstream::echo("v2");
    let vs = json!({
        "hosts": ["reviews.example.com"],
        "http": [{"match": [{"uri": {"prefix": "/only"}}], "route": [{"destination": dest("v2")}]}],
        "routing": {"subsetHeader": "x-canary-subset"}
    });
    let envoy = Envoy::from_file("canary.yaml")
        .plugin_config("PLUGIN_CONFIG", &vs)
        .plugin_config("PLUGIN_CONFIG_CLUSTER", &json!({"hosts": ["*"], "http": [{"route": [{"destination": dest("v1")}]}], "routing": {"clusterHeader": "x-canary-cluster"}}))
        .upstream("V1_PORT", &v1)
        .upstream("V2_PORT", &v2)
        .start();
    assert_eq!(
        envoy
            .send("meshwasm", &get("/only/x"))
            .upstream()
            .as_deref(),
        Some("v2")
    );
    let r = envoy.send("meshwasm", &get("/elsewhere"));
    assert_eq!(r.status, 404);
    // Even a client that sends the subset header itself gets nothing for it.
    let r = envoy.send(
        "meshwasm",
        &get("/elsewhere").header("x-canary-subset", "v1"),
    );
    assert_eq!(r.status, 404);
    assert_eq!(envoy.stat("wasmcustom.meshwasm.canary.no_match"), 2);
    assert_eq!(envoy.stat("wasmcustom.meshwasm.canary.subset.v2"), 1);
}

/// Sends `n` copies of `req` to `listener` over a few threads; counts answers by
/// upstream (`"<status>"` for a reply no upstream gave).
fn tally(envoy: &Envoy, listener: &str, req: &Request, n: usize) -> BTreeMap<String, usize> {
    let port = envoy.port(listener);
    let threads = 4;
    let results: Vec<BTreeMap<String, usize>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let req = req.clone();
                sc.spawn(move || {
                    let mut m = BTreeMap::new();
                    for _ in (t..n).step_by(threads) {
                        let r =
                            http::send(port, &req).unwrap_or_else(|e| panic!("{listener}: {e}"));
                        let k = match (r.status, r.upstream()) {
                            (200, Some(u)) => u,
                            (s, _) => s.to_string(),
                        };
                        *m.entry(k).or_insert(0) += 1;
                    }
                    m
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut total = BTreeMap::new();
    for m in results {
        for (k, v) in m {
            *total.entry(k).or_insert(0) += v;
        }
    }
    total
}

#[test]
fn split_90_10_follows_weights_and_matches_native_distribution() {
    let s = start();
    let n = 4000;
    let ours = tally(&s.envoy, "meshwasm", &get("/split"), n);
    let native = tally(&s.envoy, "native", &get("/split"), n);
    let v2 = ours.get("v2").copied().unwrap_or(0);
    let v1 = ours.get("v1").copied().unwrap_or(0);
    // Only v1 and v2 answer: the weight-0 v3 is never chosen (it would be a 404 here).
    assert_eq!(v1 + v2, n, "meshwasm: {ours:?}");
    // Binomial(4000, 0.1): mean 400, sd 18.97; 99.9 % two-sided: ±3.29 sd → [338, 462].
    assert!(
        (338..=462).contains(&v2),
        "meshwasm v2 = {v2} of {n}: {ours:?}"
    );
    let nv2 = native.get("v2").copied().unwrap_or(0);
    let nv1 = native.get("v1").copied().unwrap_or(0);
    assert_eq!(nv1 + nv2, n, "native: {native:?}");
    // Same distribution as Envoy's weighted_clusters: 2×2 chi-square test of
    // homogeneity, df = 1, critical value at 99.9 % = 10.828.
    let chi = chi_square_2x2([v1 as f64, v2 as f64], [nv1 as f64, nv2 as f64]);
    assert!(
        chi < 10.828,
        "chi-square {chi:.2}: meshwasm {ours:?} vs native {native:?}"
    );

    // The cluster-header listener splits the same way.
    let m = 1000;
    let cl = tally(&s.envoy, "meshwasm_cluster", &get("/split"), m);
    let cv2 = cl.get("v2").copied().unwrap_or(0);
    assert_eq!(cl.get("v1").copied().unwrap_or(0) + cv2, m, "{cl:?}");
    // Binomial(1000, 0.1): mean 100, sd 9.49 → 99.9 % [69, 131].
    assert!((69..=131).contains(&cv2), "cluster mode v2 = {cv2}: {cl:?}");

    // Metrics: one count per chosen subset.
    let stats = s.envoy.stats();
    let c = |k: &str| {
        stats
            .get(&format!("wasmcustom.meshwasm.canary.{k}"))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(c("subset.v1") as usize, v1 + (m - cv2), "{stats:?}");
    assert_eq!(c("subset.v2") as usize, v2 + cv2);
    assert_eq!(c("subset.v3"), 0);
    // Every request is counted once, by its outcome (there is no total counter).
    let outcomes: u64 = stats
        .iter()
        .filter(|(k, _)| {
            k.starts_with("wasmcustom.meshwasm.canary.subset.")
                || k.ends_with("canary.no_match")
                || k.ends_with("canary.other_host")
        })
        .map(|(_, v)| *v)
        .sum();
    assert_eq!(outcomes as usize, n + m, "{stats:?}");
}

fn chi_square_2x2(a: [f64; 2], b: [f64; 2]) -> f64 {
    let n = a[0] + a[1] + b[0] + b[1];
    let mut chi = 0.0;
    for (row, total) in [(a, a[0] + a[1]), (b, b[0] + b[1])] {
        for j in 0..2 {
            let col = a[j] + b[j];
            let e = total * col / n;
            chi += (row[j] - e).powi(2) / e;
        }
    }
    chi
}

#[test]
fn sticky_users_never_change_subset() {
    let s = start();
    let users = 300;
    let mut on_v2 = 0;
    for u in 0..users {
        let user = format!("user-{u}");
        let mut seen = Vec::new();
        for _ in 0..4 {
            let r = s
                .envoy
                .send("meshwasm", &get("/split").header("x-user", &user));
            seen.push(
                r.upstream()
                    .unwrap_or_else(|| format!("{} {}", r.status, r.text())),
            );
        }
        // The cookie-sticky listener: same property.
        let mut seen_c = Vec::new();
        for _ in 0..2 {
            let r = s.envoy.send(
                "meshwasm_cluster",
                &get("/split").header("cookie", &format!("a=b; uid={user}")),
            );
            seen_c.push(r.upstream().unwrap_or_default());
        }
        assert!(seen.iter().all(|x| *x == seen[0]), "{user} moved: {seen:?}");
        assert!(
            seen_c.iter().all(|x| *x == seen_c[0]),
            "{user} (cookie) moved: {seen_c:?}"
        );
        // Both listeners hash the key the same way.
        assert_eq!(seen[0], seen_c[0], "{user}");
        if seen[0] == "v2" {
            on_v2 += 1;
        }
    }
    // Binomial(300, 0.1): mean 30, sd 5.2 → 99.9 % [13, 47].
    assert!((13..=47).contains(&on_v2), "{on_v2} of {users} users on v2");
    assert_eq!(
        s.envoy.stat("wasmcustom.meshwasm.canary.sticky"),
        (users * 6) as u64
    );
}

/// What reaches the upstream and the client, for the header-operation routes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HeaderOutcome {
    status: u16,
    upstream: Option<String>,
    request: BTreeMap<String, Option<String>>,
    response: BTreeMap<String, Vec<String>>,
}

impl fmt::Display for HeaderOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

fn header_outcome(r: &Response) -> HeaderOutcome {
    let request = [
        "x-who",
        "x-route-only",
        "x-list",
        "x-drop",
        "x-drop2",
        "x-keep",
        "host",
    ]
    .iter()
    .map(|h| (h.to_string(), r.upstream_header(h)))
    .collect();
    let response = ["x-resp", "x-resp-list", "content-type"]
        .iter()
        .map(|h| {
            (
                h.to_string(),
                r.header_all(h).into_iter().map(String::from).collect(),
            )
        })
        .collect();
    HeaderOutcome {
        status: r.status,
        upstream: r.upstream(),
        request,
        response,
    }
}

#[test]
fn header_operations_reach_upstream_and_client_as_native() {
    let s = start();
    let req = |path: &str| {
        get(path)
            .header("x-who", "client")
            .header("x-list", "c")
            .header("x-drop", "1")
            .header("x-drop2", "1")
            .header("x-keep", "k")
    };
    let cases = vec![
        Case::new("single destination", req("/hdr-single")),
        Case::new("weighted destination", req("/hdr-weighted")),
    ];
    twin::assert_same_by(&s.envoy, "meshwasm", "native", &cases, header_outcome);
    twin::assert_same_by(
        &s.envoy,
        "meshwasm_cluster",
        "native",
        &cases,
        header_outcome,
    );

    // And what that is, spelled out (Istio: one destination's set wins over the
    // route's; on a weighted route the route's set wins).
    let single = header_outcome(&s.envoy.send("meshwasm", &cases[0].request));
    let weighted = header_outcome(&s.envoy.send("meshwasm", &cases[1].request));
    let q = |o: &HeaderOutcome, h: &str| o.request[h].clone();
    assert_eq!(q(&single, "x-who").as_deref(), Some("dest"));
    assert_eq!(q(&weighted, "x-who").as_deref(), Some("route"));
    assert_eq!(q(&single, "x-list").as_deref(), Some("c,r,d"));
    assert_eq!(q(&weighted, "x-list").as_deref(), Some("c,d,r"));
    for o in [&single, &weighted] {
        assert_eq!(o.upstream.as_deref(), Some("v1"));
        assert_eq!(q(o, "x-route-only").as_deref(), Some("r"));
        assert_eq!(q(o, "x-drop"), None);
        assert_eq!(q(o, "x-drop2"), None);
        assert_eq!(q(o, "x-keep").as_deref(), Some("k"));
        assert_eq!(q(o, "host").as_deref(), Some("rewritten.example"));
        assert!(o.response["content-type"].is_empty(), "{o}");
    }
    assert_eq!(single.response["x-resp"], vec!["dest".to_string()]);
    assert_eq!(weighted.response["x-resp"], vec!["route".to_string()]);
    assert_eq!(
        single.response["x-resp-list"],
        vec!["r".to_string(), "d".to_string()]
    );
    assert_eq!(
        weighted.response["x-resp-list"],
        vec!["d".to_string(), "r".to_string()]
    );
}

#[test]
fn invalid_config_is_refused_with_its_field_path() {
    let v1 = Upstream::echo("v1");
    let mut vs = virtual_service(json!({"subsetHeader": "x-canary-subset"}));
    vs["http"][7]["route"][1]["weight"] = json!(-5);
    let r = Envoy::from_file("canary.yaml")
        .plugin_config("PLUGIN_CONFIG", &vs)
        .plugin_config(
            "PLUGIN_CONFIG_CLUSTER",
            &virtual_service(json!({"clusterHeader": "x-canary-cluster"})),
        )
        .upstream("V1_PORT", &v1)
        .upstream("V2_PORT", &v1)
        .try_start();
    let log = match r {
        Ok(envoy) => {
            // Envoy may start and refuse the filter per request; either way the
            // configuration must not be silently accepted.
            let resp = envoy.send("meshwasm", &get("/p"));
            assert_ne!(resp.status, 200, "an invalid configuration served traffic");
            envoy.log()
        }
        Err(log) => log,
    };
    assert!(
        log.contains("canary: http[7].route[1].weight: weight -5 < 0"),
        "{log}"
    );
}

/// The benchmark listeners (envoy-configs/bench/canary.yaml) really do what their
/// rows are read as: canary_10 routes the bench request by the subset it sets,
/// and canary_required (the `crossings` module making canary's request-side
/// crossings, canary's floor) sets its header and is routed by it.
#[test]
fn bench_listeners_route_by_the_header_they_set() {
    let upstream = Upstream::echo("bench");
    let envoy = Envoy::bench_fragment("canary")
        .upstream("UPSTREAM_PORT", &upstream)
        .start();
    let bench = || Request::get("/bench").header("end-user", "someone");
    for _ in 0..20 {
        let r = envoy.send("canary_10", &bench());
        assert_eq!(r.status, 200, "{}", r.text());
        let subset = r.upstream_header("x-canary-subset");
        assert!(matches!(subset.as_deref(), Some("v1" | "v2")), "{subset:?}");
        let r = envoy.send("canary_required", &bench());
        // Its routes match only x-crossings, which the client did not send.
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.upstream_header("x-crossings").as_deref(), Some("1"));
    }
}
