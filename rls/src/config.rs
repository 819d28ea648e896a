//! envoyproxy/ratelimit's configuration (the ConfigMap of Istio's global rate
//! limit sample): a `domain` and a tree of `descriptors`, each a `key`, an
//! optional `value` and optionally a `rate_limit`, `shadow_mode` and nested
//! `descriptors`. Looked up as envoyproxy/ratelimit's `GetLimit`: each request
//! entry descends by `key_value`, else by `key` alone (any value, one counter
//! per value); the limit is the one on the node the last entry reaches.

use std::collections::HashMap;

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainYaml {
    domain: String,
    #[serde(default)]
    descriptors: Vec<DescriptorYaml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DescriptorYaml {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    rate_limit: Option<RateLimitYaml>,
    #[serde(default)]
    descriptors: Vec<DescriptorYaml>,
    #[serde(default)]
    shadow_mode: bool,
    #[serde(default)]
    detailed_metric: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitYaml {
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    requests_per_unit: u32,
    #[serde(default)]
    unlimited: bool,
    #[serde(default)]
    name: Option<String>,
}

/// `RateLimitResponse.RateLimit.Unit` with its length in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    /// The proto enum number (SECOND 1, MINUTE 2, HOUR 3, DAY 4, MONTH 5,
    /// YEAR 6, WEEK 7).
    pub proto: i32,
    pub seconds: u64,
}

fn unit(name: &str) -> Option<Unit> {
    let (proto, seconds) = match name.to_ascii_uppercase().as_str() {
        "SECOND" => (1, 1),
        "MINUTE" => (2, 60),
        "HOUR" => (3, 3600),
        "DAY" => (4, 86400),
        "WEEK" => (7, 604_800),
        "MONTH" => (5, 2_592_000),
        "YEAR" => (6, 31_536_000),
        _ => return None,
    };
    Some(Unit { proto, seconds })
}

/// A limit on a node of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// Stable across restarts (the node's place in the tree): what a counter
    /// in Redis is found by again.
    pub id: String,
    pub requests_per_unit: u32,
    pub unit: Unit,
    pub name: String,
    pub shadow_mode: bool,
    /// `unlimited: true`: matched, never counted.
    pub unlimited: bool,
}

#[derive(Debug, Default)]
struct Node {
    limit: Option<Limit>,
    children: HashMap<String, Node>,
}

/// Every domain's descriptor tree.
#[derive(Debug, Default)]
pub struct Config {
    domains: HashMap<String, Node>,
}

impl Config {
    /// Parses one configuration document per file (as envoyproxy/ratelimit
    /// reads each file of its config directory); a domain may appear once.
    pub fn parse(docs: &[(String, String)]) -> Result<Config> {
        let mut cfg = Config::default();
        for (origin, text) in docs {
            let d: DomainYaml =
                serde_yaml_ng::from_str(text).with_context(|| format!("{origin}: invalid"))?;
            if d.domain.is_empty() {
                bail!("{origin}: domain: must not be empty");
            }
            if cfg.domains.contains_key(&d.domain) {
                bail!("{origin}: duplicate domain {:?}", d.domain);
            }
            let mut root = Node::default();
            add(&mut root, &d.descriptors, &d.domain, "descriptors", origin)?;
            cfg.domains.insert(d.domain, root);
        }
        Ok(cfg)
    }

    /// Every limit, for registering with the counter engine.
    pub fn limits(&self) -> Vec<(&str, &Limit)> {
        fn walk<'a>(domain: &'a str, n: &'a Node, out: &mut Vec<(&'a str, &'a Limit)>) {
            if let Some(l) = &n.limit {
                out.push((domain, l));
            }
            for c in n.children.values() {
                walk(domain, c, out);
            }
        }
        let mut out = Vec::new();
        for (d, n) in &self.domains {
            walk(d, n, &mut out);
        }
        out
    }

    /// The limit a request descriptor falls under, if any.
    pub fn lookup(&self, domain: &str, entries: &[(String, String)]) -> Option<&Limit> {
        let mut node = self.domains.get(domain)?;
        for (i, (k, v)) in entries.iter().enumerate() {
            let next = node
                .children
                .get(&format!("{k}_{v}"))
                .or_else(|| node.children.get(k.as_str()))?;
            if i == entries.len() - 1 {
                return next.limit.as_ref();
            }
            node = next;
        }
        None
    }
}

fn add(
    parent: &mut Node,
    descriptors: &[DescriptorYaml],
    id: &str,
    path: &str,
    origin: &str,
) -> Result<()> {
    for (i, d) in descriptors.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if d.key.is_empty() {
            bail!("{origin}: {p}.key: must not be empty");
        }
        let map_key = match &d.value {
            Some(v) if !v.is_empty() => format!("{}_{v}", d.key),
            _ => d.key.clone(),
        };
        let node_id = format!("{id}\u{1f}{map_key}");
        if parent.children.contains_key(&map_key) {
            bail!("{origin}: {p}: duplicate descriptor {map_key:?}");
        }
        let limit = match &d.rate_limit {
            None => None,
            Some(r) => {
                let unit = if r.unlimited {
                    unit(r.unit.as_deref().unwrap_or("SECOND"))
                } else {
                    r.unit.as_deref().and_then(unit)
                };
                let Some(unit) = unit else {
                    bail!("{origin}: {p}.rate_limit.unit: expected second, minute, hour, day, week, month or year");
                };
                Some(Limit {
                    id: node_id.clone(),
                    requests_per_unit: r.requests_per_unit,
                    unit,
                    name: r.name.clone().unwrap_or_default(),
                    shadow_mode: d.shadow_mode,
                    unlimited: r.unlimited,
                })
            }
        };
        let _ = d.detailed_metric;
        let mut node = Node {
            limit,
            children: HashMap::new(),
        };
        add(
            &mut node,
            &d.descriptors,
            &node_id,
            &format!("{p}.descriptors"),
            origin,
        )?;
        parent.children.insert(map_key, node);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ISTIO_SAMPLE: &str = r#"
domain: ratelimit
descriptors:
  - key: PATH
    value: "/productpage"
    rate_limit:
      unit: minute
      requests_per_unit: 1
  - key: PATH
    rate_limit:
      unit: minute
      requests_per_unit: 100
  - key: user
    descriptors:
      - key: tier
        value: gold
        rate_limit: {unit: second, requests_per_unit: 50}
        shadow_mode: true
"#;

    fn e(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn lookup_like_envoyproxy_ratelimit() {
        let c = Config::parse(&[("sample".into(), ISTIO_SAMPLE.into())]).unwrap();
        let l = c
            .lookup("ratelimit", &e(&[("PATH", "/productpage")]))
            .unwrap();
        assert_eq!((l.requests_per_unit, l.unit.seconds), (1, 60));
        let l = c.lookup("ratelimit", &e(&[("PATH", "/other")])).unwrap();
        assert_eq!(l.requests_per_unit, 100);
        assert!(
            c.lookup("ratelimit", &e(&[("user", "a")])).is_none(),
            "no limit on the parent"
        );
        let l = c
            .lookup("ratelimit", &e(&[("user", "a"), ("tier", "gold")]))
            .unwrap();
        assert!(l.shadow_mode);
        assert!(c
            .lookup("ratelimit", &e(&[("user", "a"), ("tier", "silver")]))
            .is_none());
        assert!(c.lookup("other", &e(&[("PATH", "/")])).is_none());
        assert_eq!(c.limits().len(), 3);
    }

    #[test]
    fn bad_configs() {
        let bad = |y: &str| {
            Config::parse(&[("f".into(), y.into())])
                .unwrap_err()
                .to_string()
        };
        assert!(bad("domain: d\ndescriptors: [{key: a, rate_limit: {unit: fortnight, requests_per_unit: 1}}]")
            .contains("descriptors[0].rate_limit.unit"));
        assert!(bad("domain: d\ndescriptors: [{key: a}, {key: a}]").contains("duplicate"));
        assert!(bad("domain: d\ndescriptors: [{kee: a}]").contains("invalid"));
        assert!(bad("domain: ''").contains("domain"));
    }
}
