use super::*;
use crate::host::SplitMix64;
use serde_json::json;

fn canary(v: serde_json::Value) -> Canary {
    Canary::from_json(v.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

fn err(v: serde_json::Value) -> ConfigError {
    match Canary::from_json(v.to_string().as_bytes()) {
        Ok(_) => panic!("accepted {v}"),
        Err(e) => e,
    }
}

fn req(path: &str, authority: &str, extra: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    let mut h = vec![
        (":method".to_string(), b"GET".to_vec()),
        (":path".to_string(), path.as_bytes().to_vec()),
        (":authority".to_string(), authority.as_bytes().to_vec()),
        (":scheme".to_string(), b"http".to_vec()),
    ];
    for (k, v) in extra {
        h.push((k.to_string(), v.as_bytes().to_vec()));
    }
    h
}

fn reviews() -> serde_json::Value {
    json!({
        "hosts": ["reviews.example.com", "*.shop.example"],
        "http": [
            {"name": "jason", "match": [{"headers": {"end-user": {"exact": "jason"}}}],
             "route": [{"destination": {"host": "reviews", "subset": "v2", "port": {"number": 9080}}}]},
            {"name": "api", "match": [{"uri": {"prefix": "/API"}, "ignoreUriCase": true},
                                      {"uri": {"regex": "/v[0-9]+/items"}}],
             "route": [{"destination": {"host": "reviews", "subset": "v2", "port": {"number": 9080}}}]},
            {"name": "split",
             "route": [
                {"destination": {"host": "reviews", "subset": "v1", "port": {"number": 9080}}, "weight": 90},
                {"destination": {"host": "reviews", "subset": "v3", "port": {"number": 9080}}, "weight": 0},
                {"destination": {"host": "reviews", "subset": "v2", "port": {"number": 9080}}, "weight": 10}]}
        ],
        "routing": {"subsetHeader": "x-canary-subset", "clusterHeader": "x-canary-cluster",
                    "stickyBy": {"header": "x-user"}, "responseHeader": "x-served-by"}
    })
}

fn routed<'a>(c: &'a Canary, h: &[(String, Vec<u8>)], rng: &mut SplitMix64) -> Routed<'a> {
    match c.decide(&RequestView::new(h), None, rng) {
        Decision::Routed(r) => r,
        other => panic!("not routed: {other:?}"),
    }
}

#[test]
fn first_match_wins_and_header_match_goes_to_v2() {
    let c = canary(reviews());
    let mut rng = SplitMix64::new(1);
    for i in 0..500 {
        let h = req(
            &format!("/p/{i}"),
            "reviews.example.com",
            &[("end-user", "jason")],
        );
        let r = routed(&c, &h, &mut rng);
        assert_eq!((r.route_index, r.label), (0, "v2"));
        assert_eq!(r.cluster, "outbound|9080|v2|reviews");
        assert!(!r.sticky, "single-destination routes need no draw");
    }
    // Not jason: the split route.
    let h = req("/p", "reviews.example.com", &[("end-user", "json")]);
    assert_eq!(routed(&c, &h, &mut rng).route_index, 2);
}

#[test]
fn ignore_uri_case_and_regex() {
    let c = canary(reviews());
    let mut rng = SplitMix64::new(1);
    for (path, want) in [
        ("/api/x", 1),
        ("/Api", 1),
        ("/APIs", 1),
        ("/v12/items", 1),
        ("/v12/items?x=1", 1),
        ("/V12/items", 2),   // regex is case-sensitive even with ignoreUriCase
        ("/v12/items/1", 2), // full match
        ("/ap", 2),
    ] {
        let h = req(path, "reviews.example.com", &[]);
        assert_eq!(routed(&c, &h, &mut rng).route_index, want, "{path}");
    }
}

#[test]
fn hosts_decide_whose_traffic_it_is() {
    let c = canary(reviews());
    let mut rng = SplitMix64::new(1);
    for a in [
        "reviews.example.com",
        "REVIEWS.example.com:8080",
        "a.shop.example",
        "a.b.shop.example:1",
    ] {
        assert!(
            matches!(
                c.decide(&RequestView::new(&req("/", a, &[])), None, &mut rng),
                Decision::Routed(_)
            ),
            "{a}"
        );
    }
    for a in [
        "shop.example",
        "reviews.example.org",
        "",
        "x.reviews.example.com",
    ] {
        assert!(
            matches!(
                c.decide(&RequestView::new(&req("/", a, &[])), None, &mut rng),
                Decision::OtherHost
            ),
            "{a}"
        );
    }
    let any =
        canary(json!({"hosts": ["*"], "http": [{"route": [{"destination": {"host": "a"}}]}]}));
    assert!(any.host_matches(b"whatever:1"));
    let v6 =
        canary(json!({"hosts": ["::1"], "http": [{"route": [{"destination": {"host": "a"}}]}]}));
    assert!(v6.host_matches(b"[::1]:8080"));
}

#[test]
fn no_match_when_no_route_holds() {
    let c = canary(json!({
        "hosts": ["*"],
        "http": [{"match": [{"uri": {"exact": "/only"}}], "route": [{"destination": {"host": "a", "subset": "v1"}}]}]
    }));
    let mut rng = SplitMix64::new(1);
    assert!(matches!(
        c.decide(&RequestView::new(&req("/other", "x", &[])), None, &mut rng),
        Decision::NoMatch
    ));
    assert!(matches!(
        c.decide(&RequestView::new(&req("/only?q", "x", &[])), None, &mut rng),
        Decision::Routed(_)
    ));
}

#[test]
fn weighted_split_never_picks_weight_zero_and_follows_weights() {
    let c = canary(reviews());
    let mut rng = SplitMix64::new(99);
    let mut v2 = 0u32;
    let n = 20_000;
    for _ in 0..n {
        let h = req("/p", "reviews.example.com", &[]);
        let r = routed(&c, &h, &mut rng);
        assert_ne!(r.label, "v3");
        assert!(!r.sticky);
        if r.label == "v2" {
            v2 += 1;
        }
    }
    // Binomial(20000, 0.1): mean 2000, sd 42.4; 99.9 % two-sided ±3.29 sd.
    assert!((1860..=2140).contains(&v2), "v2 got {v2}");
}

#[test]
fn sticky_users_keep_their_subset_and_split_follows_weights() {
    let c = canary(reviews());
    let mut rng = SplitMix64::new(5);
    let mut v2_users = 0;
    let users = 10_000;
    for u in 0..users {
        let user = format!("user-{u}");
        let h = req("/p", "reviews.example.com", &[("x-user", &user)]);
        let first = routed(&c, &h, &mut rng).label;
        for _ in 0..3 {
            let r = routed(&c, &h, &mut rng);
            assert!(r.sticky);
            assert_eq!(r.label, first, "{user} moved");
        }
        if first == "v2" {
            v2_users += 1;
        }
    }
    // Binomial(10000, 0.1): mean 1000, sd 30; 99.9 % ±99.
    assert!((901..=1099).contains(&v2_users), "{v2_users}");
    // An empty key is no key.
    let h = req("/p", "reviews.example.com", &[("x-user", "")]);
    assert!(!routed(&c, &h, &mut rng).sticky);
}

#[test]
fn sticky_by_cookie() {
    let mut spec = reviews();
    spec["routing"]["stickyBy"] = json!({"cookie": "uid"});
    let c = canary(spec);
    let mut rng = SplitMix64::new(5);
    for u in 0..500 {
        let a = format!("theme=dark; uid={u}; z=1");
        let b = format!("uid=\"{u}\"");
        let ra = routed(
            &c,
            &req("/", "reviews.example.com", &[("cookie", &a)]),
            &mut rng,
        );
        let rb = routed(
            &c,
            &req(
                "/",
                "reviews.example.com",
                &[("cookie", "x=1"), ("cookie", &b)],
            ),
            &mut rng,
        );
        assert!(ra.sticky && rb.sticky);
        assert_eq!(ra.label, rb.label);
    }
    let r = routed(
        &c,
        &req("/", "reviews.example.com", &[("cookie", "uidx=1; xuid=2")]),
        &mut rng,
    );
    assert!(!r.sticky);
}

#[test]
fn cluster_names() {
    let c = canary(json!({
        "hosts": ["*"],
        "http": [{"route": [
            {"destination": {"host": "reviews.default.svc.cluster.local", "subset": "v1"}, "weight": 1},
            {"destination": {"host": "ratings", "port": {"number": 8080}}, "weight": 1}]}],
        "routing": {"clusterHeader": "x-cluster"}
    }));
    assert_eq!(c.routing.subset_header, None);
    let mut rng = SplitMix64::new(3);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        if let Decision::Routed(r) =
            c.decide(&RequestView::new(&req("/", "h", &[])), Some(8443), &mut rng)
        {
            seen.insert((r.label.to_string(), r.cluster.into_owned()));
        }
    }
    let want: std::collections::BTreeSet<_> = [
        (
            "v1".to_string(),
            "outbound|8443|v1|reviews.default.svc.cluster.local".to_string(),
        ),
        ("ratings".to_string(), "outbound|8080||ratings".to_string()),
    ]
    .into_iter()
    .collect();
    assert_eq!(seen, want);

    let c = canary(json!({
        "hosts": ["*"],
        "http": [{"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}],
        "routing": {"clusterHeader": "x-cluster", "clusterName": "{host}-{subset}"}
    }));
    let mut rng = SplitMix64::new(3);
    let Decision::Routed(r) = c.decide(&RequestView::new(&req("/", "h", &[])), None, &mut rng)
    else {
        panic!()
    };
    assert_eq!(r.cluster, "reviews-v1");
}

#[test]
fn header_operations_order_single_vs_weighted() {
    let route_headers = json!({"request": {"set": {"x-who": "route"}, "add": {"x-list": "r"}, "remove": ["x-drop"]},
                               "response": {"set": {"x-resp": "route"}}});
    let dest_headers = json!({"request": {"set": {"x-who": "dest", "host": "dest.example"}, "add": {"x-list": "d"}},
                              "response": {"set": {"x-resp": "dest"}, "remove": ["server"]}});
    let single = canary(json!({"hosts": ["*"], "http": [{
        "headers": route_headers,
        "route": [{"destination": {"host": "a", "subset": "v1"}, "headers": dest_headers}]}]}));
    let weighted = canary(json!({"hosts": ["*"], "http": [{
        "headers": route_headers,
        "route": [{"destination": {"host": "a", "subset": "v1"}, "weight": 1, "headers": dest_headers},
                  {"destination": {"host": "a", "subset": "v2"}, "weight": 0}]}]}));
    let mut rng = SplitMix64::new(1);
    let apply = |r: &Routed<'_>| {
        let mut h: Vec<(String, String)> = vec![
            ("x-drop".into(), "1".into()),
            ("x-who".into(), "client".into()),
        ];
        for p in r.request {
            p.apply(&mut h);
        }
        let mut resp: Vec<(String, String)> = vec![("server".into(), "up".into())];
        for p in r.response {
            p.apply(&mut resp);
        }
        (h, resp, r.authority.map(str::to_string))
    };
    let hs = req("/", "x", &[]);
    let s = apply(&routed(&single, &hs, &mut rng));
    let w = apply(&routed(&weighted, &hs, &mut rng));
    let pairs = |v: &[(&str, &str)]| {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    };
    // One parser, destination appended: its set wins; removes then sets then adds.
    assert_eq!(
        s.0,
        pairs(&[("x-who", "dest"), ("x-list", "r"), ("x-list", "d")])
    );
    assert_eq!(s.1, pairs(&[("x-resp", "dest")]));
    // Destination parser first, then the route's: the route's set wins.
    assert_eq!(
        w.0,
        pairs(&[("x-who", "route"), ("x-list", "d"), ("x-list", "r")])
    );
    assert_eq!(w.1, pairs(&[("x-resp", "route")]));
    assert_eq!(s.2.as_deref(), Some("dest.example"));
    assert_eq!(w.2.as_deref(), Some("dest.example"));

    // Route-level authority wins over the destination's.
    let both = canary(json!({"hosts": ["*"], "http": [{
        "headers": {"request": {"set": {":authority": "route.example"}}},
        "route": [{"destination": {"host": "a"}, "headers": {"request": {"set": {"host": "dest.example"}}}}]}]}));
    assert_eq!(
        routed(&both, &hs, &mut rng).authority,
        Some("route.example")
    );
}

#[test]
fn metrics_labels_are_distinct() {
    let c = canary(reviews());
    assert_eq!(c.labels, vec!["v2".to_string(), "v1".into(), "v3".into()]);
    let c = canary(
        json!({"hosts": ["*"], "http": [{"route": [{"destination": {"host": "ratings"}}]}]}),
    );
    assert_eq!(c.labels, vec!["ratings".to_string()]);
    assert_eq!(
        c.routing.subset_header.as_deref(),
        Some(DEFAULT_SUBSET_HEADER)
    );
}

#[test]
fn validation_errors_name_the_field() {
    let base =
        || json!({"hosts": ["a.example"], "http": [{"route": [{"destination": {"host": "a"}}]}]});
    let cases: Vec<(serde_json::Value, &str, &str)> = vec![
        (
            json!({"hosts": [], "http": []}),
            "hosts",
            "at least one host",
        ),
        (
            json!({"hosts": ["a"], "http": []}),
            "http",
            "at least one http route",
        ),
        (
            json!({"hosts": ["bad host"], "http": []}),
            "hosts[0]",
            "invalid",
        ),
        (
            json!({"hosts": ["a"], "http": [{"route": []}]}),
            "http[0].route",
            "required",
        ),
        (
            json!({"hosts": ["a"], "http": [{"route": [
            {"destination": {"host": "a", "subset": "v1"}, "weight": 0},
            {"destination": {"host": "a", "subset": "v2"}}]}]}),
            "http[0].route",
            "total destination weight = 0",
        ),
        (
            json!({"hosts": ["a"], "http": [{"route": [{"destination": {"host": "a"}, "weight": -1}]}]}),
            "http[0].route[0].weight",
            "weight -1 < 0",
        ),
        (
            json!({"hosts": ["a"], "http": [{"route": [{"destination": {"host": "a", "subset": "V_1"}}]}]}),
            "http[0].route[0].destination.subset",
            "subset name is invalid",
        ),
        (
            json!({"hosts": ["a"], "http": [{"route": [{"destination": {"host": "*"}}]}]}),
            "http[0].route[0].destination.host",
            "invalid destination host",
        ),
        (
            json!({"hosts": ["a"], "http": [{"route": [{"destination": {"host": "a", "port": {"number": 0}}}]}]}),
            "http[0].route[0].destination.port.number",
            "1..65535",
        ),
        (
            json!({"hosts": ["a"], "http": [{"route": [{"destination": {"host": "a", "prot": 1}}]}]}),
            "http[0].route[0].destination.prot",
            "unknown field",
        ),
        (
            json!({"hosts": ["a"], "http": [{"timeout": "1s", "route": [{"destination": {"host": "a"}}]}]}),
            "http[0].timeout",
            "unknown field",
        ),
        (json!({"hosts": ["a"], "tcp": []}), "tcp", "unknown field"),
        (
            json!({"hosts": ["a"], "http": [{"match": [{"uri": {"regex": "("}}], "route": [{"destination": {"host": "a"}}]}]}),
            "http[0].match[0].uri",
            "",
        ),
        (
            json!({"hosts": ["a"], "http": [{"route": [{"destination": {"host": "a"},
            "headers": {"request": {"set": {":path": "/"}}}}]}]}),
            "http[0].route[0].headers.request.set[:path]",
            "prefix",
        ),
        (
            json!({"hosts": ["a"], "http": [{"headers": {"response": {"add": {"x": "5%"}}},
            "route": [{"destination": {"host": "a"}}]}]}),
            "http[0].headers.response.add[x]",
            "%",
        ),
    ];
    for (v, path, reason) in cases {
        let e = err(v.clone());
        assert!(e.path.as_str().starts_with(path), "{v}: got {e}");
        assert!(e.reason.contains(reason), "{v}: got {e}");
    }
    let routing_cases: Vec<(serde_json::Value, &str)> = vec![
        (json!({"stickyBy": {}}), "routing.stickyBy"),
        (
            json!({"stickyBy": {"header": "a", "cookie": "b"}}),
            "routing.stickyBy",
        ),
        (
            json!({"subsetHeader": "bad header"}),
            "routing.subsetHeader",
        ),
        (json!({"clusterName": "x"}), "routing.clusterName"),
        (
            json!({"clusterHeader": "x-c", "clusterName": "{cluster}"}),
            "routing.clusterName",
        ),
        (
            json!({"clusterHeader": "x-c", "clusterName": "{port"}),
            "routing.clusterName",
        ),
        (
            json!({"subsetHeader": "x", "clusterHeader": "X"}),
            "routing.clusterHeader",
        ),
        (json!({"stikyBy": {}}), "routing.stikyBy"),
    ];
    for (r, path) in routing_cases {
        let mut v = base();
        v["routing"] = r.clone();
        let e = err(v);
        assert_eq!(e.path.as_str(), path, "{r}: got {e}");
    }
}

#[test]
fn one_destination_ignores_weight_and_zero_weight_single_is_fine() {
    let c = canary(
        json!({"hosts": ["*"], "http": [{"route": [{"destination": {"host": "a", "subset": "v9"}, "weight": 0}]}]}),
    );
    let mut rng = SplitMix64::new(1);
    assert_eq!(routed(&c, &req("/", "h", &[]), &mut rng).label, "v9");
}
