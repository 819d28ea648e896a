//! The keys of every `jwksUri` provider on one worker, and the requests
//! waiting for them: when to fetch, adopting keys another worker fetched
//! (shared data), refreshing after the cache duration with stale keys kept
//! when the refresh fails, retrying a failed first fetch after 1 s, an early
//! refetch for an unknown `kid` at most every 30 s, and the deadline of each
//! waiting request. The host's shared data and callouts come through
//! [`KeyHost`]; the filter turns [`KeyEvent`]s into metrics and log lines.

use std::rc::Rc;

use super::config::RemoteJwks;
use super::jwks::Jwks;
use super::{JwtAuthn, KeyState, RemoteKeys};

/// A first fetch that failed is retried by a request (or tick) this much later.
pub const RETRY_AFTER_FAILURE_NS: u64 = 1_000_000_000;
/// An unknown `kid` refetches the keys at most this often.
pub const KID_REFETCH_INTERVAL_NS: u64 = 30_000_000_000;
/// A request waits for keys up to the fetch timeout plus this.
const WAIT_GRACE_NS: u64 = 1_000_000_000;
/// A callout that has not answered in its timeout plus this is forgotten (its
/// context went away), so a new one may start.
const FORGET_CALLOUT_NS: u64 = 2_000_000_000;

/// What the store needs from the host.
pub trait KeyHost {
    /// The value stored across workers under `key`.
    fn shared(&self, key: &str) -> Option<Vec<u8>>;
    fn set_shared(&mut self, key: &str, value: &[u8]);
    /// Starts the GET of `remote`'s JWKS; the callout's token.
    fn fetch(&mut self, remote: &RemoteJwks) -> Result<u32, String>;
}

/// Something the filter counts or logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyEvent {
    /// A fetch of `provider` returned usable keys.
    Fetched { provider: usize },
    /// Keys another worker fetched were taken over.
    Adopted { provider: usize },
    /// A fetch returned no usable keys (`status` None: reset or no answer).
    FetchFailed {
        provider: usize,
        status: Option<String>,
        stale_kept: bool,
    },
    /// The callout could not be started.
    NotStarted { provider: usize, error: String },
}

impl KeyEvent {
    /// The keys in use changed: tokens verified with the old ones must be
    /// checked again.
    pub fn keys_changed(&self) -> bool {
        matches!(self, KeyEvent::Fetched { .. } | KeyEvent::Adopted { .. })
    }
}

#[derive(Debug, Default)]
struct ProviderKeys {
    jwks: Option<Rc<Jwks>>,
    /// When the keys were fetched (by any worker), ns since the epoch.
    fetched_at: u64,
    /// The last fetch failed at this time.
    failed_at: Option<u64>,
    /// A callout of this worker is under way: (token, started at).
    inflight: Option<(u32, u64)>,
    last_kid_refetch: u64,
}

#[derive(Debug)]
struct Waiter {
    context_id: u32,
    deadline: u64,
}

/// Remote keys of one worker, per provider index of [`JwtAuthn::providers`].
#[derive(Debug)]
pub struct KeyStore {
    providers: Vec<ProviderKeys>,
    waiters: Vec<Waiter>,
}

/// The store seen at one instant, for [`JwtAuthn::evaluate`].
pub struct KeysAt<'a> {
    store: &'a KeyStore,
    now: u64,
}

impl RemoteKeys for KeysAt<'_> {
    fn keys(&self, provider: usize) -> KeyState<'_> {
        let Some(p) = self.store.providers.get(provider) else {
            return KeyState::Failed;
        };
        match (&p.jwks, p.failed_at) {
            // Stale keys are still used while a refresh runs or after it failed.
            (Some(jwks), _) => KeyState::Ready {
                jwks,
                can_refetch: self.now.saturating_sub(p.last_kid_refetch) >= KID_REFETCH_INTERVAL_NS,
            },
            (None, Some(at)) if self.now.saturating_sub(at) < RETRY_AFTER_FAILURE_NS => {
                KeyState::Failed
            }
            _ => KeyState::Pending,
        }
    }
}

/// The shared-data key of a provider's keys: one per (cluster, uri), so
/// workers and rules fetching the same URI share them.
pub fn shared_key(remote: &RemoteJwks) -> String {
    format!("meshwasm.jwt_authn.jwks|{}|{}", remote.cluster, remote.uri)
}

/// Shared-data value: the fetch time (ns, 8 bytes little-endian), then the JWKS.
fn shared_value(fetched_at: u64, body: &[u8]) -> Vec<u8> {
    let mut value = fetched_at.to_le_bytes().to_vec();
    value.extend_from_slice(body);
    value
}

fn parse_shared(value: &[u8]) -> Option<(u64, &[u8])> {
    let at: [u8; 8] = value.get(..8)?.try_into().ok()?;
    Some((u64::from_le_bytes(at), &value[8..]))
}

fn parse_jwks(body: &[u8]) -> Option<Jwks> {
    std::str::from_utf8(body)
        .ok()
        .and_then(|s| Jwks::parse(s).ok())
}

impl KeyStore {
    pub fn new(authn: &JwtAuthn) -> KeyStore {
        KeyStore {
            providers: (0..authn.providers.len())
                .map(|_| ProviderKeys::default())
                .collect(),
            waiters: Vec::new(),
        }
    }

    pub fn at(&self, now: u64) -> KeysAt<'_> {
        KeysAt { store: self, now }
    }

    /// Whether `token` is a callout of this store.
    pub fn is_ours(&self, token: u32) -> bool {
        self.providers
            .iter()
            .any(|p| p.inflight.is_some_and(|(t, _)| t == token))
    }

    /// The request `context_id` needs the keys of `provider`
    /// ([`super::Decision::FetchJwks`]). True: it must wait (Pause) for the
    /// fetch now under way. False: evaluate it again now (keys were adopted,
    /// or the fetch could not start and the provider counts as failed).
    #[allow(clippy::too_many_arguments)]
    pub fn need(
        &mut self,
        authn: &JwtAuthn,
        provider: usize,
        refetch: bool,
        context_id: u32,
        now: u64,
        host: &mut dyn KeyHost,
        events: &mut Vec<KeyEvent>,
    ) -> bool {
        if !refetch && self.adopt_shared(authn, provider, host, events) {
            return false;
        }
        let Some(remote) = authn.remote(provider) else {
            return false;
        };
        if refetch {
            if let Some(p) = self.providers.get_mut(provider) {
                p.last_kid_refetch = now;
            }
        }
        self.start_fetch(remote, provider, now, host, events);
        if self
            .providers
            .get(provider)
            .is_some_and(|p| p.inflight.is_some())
        {
            let wait = remote.timeout.as_nanos() as u64 + WAIT_GRACE_NS;
            self.waiters.push(Waiter {
                context_id,
                deadline: now.saturating_add(wait),
            });
            return true;
        }
        false
    }

    /// A callout answered: `status` is its `:status` (None when it was reset),
    /// `body` its body. Returns the waiting requests, to be decided again, or
    /// None when the token is not one of ours.
    #[allow(clippy::too_many_arguments)]
    pub fn on_response(
        &mut self,
        authn: &JwtAuthn,
        token: u32,
        status: Option<&str>,
        body: &[u8],
        now: u64,
        host: &mut dyn KeyHost,
        events: &mut Vec<KeyEvent>,
    ) -> Option<Vec<u32>> {
        let provider = self
            .providers
            .iter()
            .position(|p| p.inflight.is_some_and(|(t, _)| t == token))?;
        let jwks = (status == Some("200")).then(|| parse_jwks(body)).flatten();
        let p = &mut self.providers[provider];
        p.inflight = None;
        match jwks {
            Some(jwks) => {
                p.jwks = Some(Rc::new(jwks));
                p.fetched_at = now;
                p.failed_at = None;
                if let Some(remote) = authn.remote(provider) {
                    host.set_shared(&shared_key(remote), &shared_value(now, body));
                }
                events.push(KeyEvent::Fetched { provider });
            }
            None => {
                // Keys never fetched: the waiters learn it now. Stale keys stay
                // in use (stale-on-failure).
                p.failed_at = Some(now);
                events.push(KeyEvent::FetchFailed {
                    provider,
                    status: status.map(str::to_string),
                    stale_kept: p.jwks.is_some(),
                });
            }
        }
        Some(self.waiters.drain(..).map(|w| w.context_id).collect())
    }

    /// Periodic work: keys past their cache duration are refreshed in the
    /// background (adopted from another worker's fetch, or fetched; stale keys
    /// serve meanwhile), and requests waiting past their deadline are
    /// returned, to be decided again (their fetch now counts as failed).
    pub fn on_tick(
        &mut self,
        authn: &JwtAuthn,
        now: u64,
        host: &mut dyn KeyHost,
        events: &mut Vec<KeyEvent>,
    ) -> Vec<u32> {
        for provider in 0..self.providers.len() {
            let Some(remote) = authn.remote(provider) else {
                continue;
            };
            let p = &self.providers[provider];
            let stale = p.jwks.is_some()
                && now.saturating_sub(p.fetched_at) >= remote.cache_duration.as_nanos() as u64;
            if stale && !self.adopt_shared(authn, provider, host, events) {
                let retry_ok = self.providers[provider]
                    .failed_at
                    .is_none_or(|at| now.saturating_sub(at) >= RETRY_AFTER_FAILURE_NS);
                if retry_ok {
                    self.start_fetch(remote, provider, now, host, events);
                }
            }
        }
        let mut expired = Vec::new();
        self.waiters.retain(|w| {
            if w.deadline <= now {
                expired.push(w.context_id);
                false
            } else {
                true
            }
        });
        if !expired.is_empty() {
            // Their fetch never answered: count it as failed.
            for p in self.providers.iter_mut() {
                if p.inflight.is_some() && p.jwks.is_none() {
                    p.inflight = None;
                    p.failed_at = Some(now);
                }
            }
        }
        expired
    }

    /// Adopts keys another worker fetched if they are newer than ours.
    fn adopt_shared(
        &mut self,
        authn: &JwtAuthn,
        provider: usize,
        host: &mut dyn KeyHost,
        events: &mut Vec<KeyEvent>,
    ) -> bool {
        let Some(remote) = authn.remote(provider) else {
            return false;
        };
        let Some(value) = host.shared(&shared_key(remote)) else {
            return false;
        };
        let Some((at, body)) = parse_shared(&value) else {
            return false;
        };
        let Some(p) = self.providers.get_mut(provider) else {
            return false;
        };
        if at <= p.fetched_at {
            return false;
        }
        let Some(jwks) = parse_jwks(body) else {
            return false;
        };
        p.jwks = Some(Rc::new(jwks));
        p.fetched_at = at;
        p.failed_at = None;
        events.push(KeyEvent::Adopted { provider });
        true
    }

    /// Starts a callout for `provider` unless one of this worker is under way.
    fn start_fetch(
        &mut self,
        remote: &RemoteJwks,
        provider: usize,
        now: u64,
        host: &mut dyn KeyHost,
        events: &mut Vec<KeyEvent>,
    ) {
        let Some(p) = self.providers.get_mut(provider) else {
            return;
        };
        if let Some((_, started)) = p.inflight {
            let forget = remote.timeout.as_nanos() as u64 + FORGET_CALLOUT_NS;
            if now.saturating_sub(started) < forget {
                return;
            }
        }
        match host.fetch(remote) {
            Ok(token) => p.inflight = Some((token, now)),
            Err(error) => {
                p.failed_at = Some(now);
                events.push(KeyEvent::NotStarted { provider, error });
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;
    use crate::jwt::testing::{jwks_json, DEFAULT_KEYS};

    const S: u64 = 1_000_000_000;
    const T0: u64 = 1_800_000_000 * S;

    #[derive(Default)]
    struct FakeHost {
        shared: HashMap<String, Vec<u8>>,
        fetches: u32,
        refuse: bool,
    }

    impl KeyHost for FakeHost {
        fn shared(&self, key: &str) -> Option<Vec<u8>> {
            self.shared.get(key).cloned()
        }
        fn set_shared(&mut self, key: &str, value: &[u8]) {
            self.shared.insert(key.to_string(), value.to_vec());
        }
        fn fetch(&mut self, _remote: &RemoteJwks) -> Result<u32, String> {
            if self.refuse {
                return Err("no cluster".into());
            }
            self.fetches += 1;
            Ok(100 + self.fetches)
        }
    }

    fn authn() -> JwtAuthn {
        let rule = json!({"issuer": "https://issuer.example", "jwksUri": "https://keys.example/jwks.json",
                          "jwksCluster": "keys", "timeout": "2s", "jwksCacheDuration": "60s"});
        JwtAuthn::from_json(json!({"jwtRules": [rule]}).to_string().as_bytes()).unwrap()
    }

    fn state(store: &KeyStore, now: u64) -> &'static str {
        match store.at(now).keys(0) {
            KeyState::Ready { .. } => "ready",
            KeyState::Pending => "pending",
            KeyState::Failed => "failed",
        }
    }

    fn can_refetch(store: &KeyStore, now: u64) -> bool {
        matches!(
            store.at(now).keys(0),
            KeyState::Ready {
                can_refetch: true,
                ..
            }
        )
    }

    /// A store whose first fetch, at `T0`, succeeded.
    fn fetched(a: &JwtAuthn, host: &mut FakeHost) -> KeyStore {
        let mut store = KeyStore::new(a);
        let mut ev = Vec::new();
        assert!(store.need(a, 0, false, 1, T0, host, &mut ev));
        let body = jwks_json(DEFAULT_KEYS);
        let token = 100 + host.fetches;
        store.on_response(a, token, Some("200"), body.as_bytes(), T0, host, &mut ev);
        store
    }

    #[test]
    fn the_first_requests_wait_for_one_fetch_then_all_go_on() {
        let (a, mut host, mut ev) = (authn(), FakeHost::default(), Vec::new());
        let mut store = KeyStore::new(&a);
        assert_eq!(state(&store, T0), "pending");
        assert!(store.need(&a, 0, false, 1, T0, &mut host, &mut ev));
        assert!(store.need(&a, 0, false, 2, T0, &mut host, &mut ev));
        assert_eq!(host.fetches, 1, "one callout for both");
        assert!(store.is_ours(101) && !store.is_ours(7));
        let body = jwks_json(DEFAULT_KEYS);
        assert_eq!(
            store.on_response(&a, 7, Some("200"), b"", T0, &mut host, &mut ev),
            None
        );
        let resumed = store.on_response(
            &a,
            101,
            Some("200"),
            body.as_bytes(),
            T0,
            &mut host,
            &mut ev,
        );
        assert_eq!(resumed, Some(vec![1, 2]));
        assert_eq!(ev, [KeyEvent::Fetched { provider: 0 }]);
        assert!(ev[0].keys_changed());
        assert_eq!(state(&store, T0), "ready");
        // Shared with the other workers: fetch time, then the body.
        let shared = &host.shared[&shared_key(a.remote(0).unwrap())];
        assert_eq!(shared[..8], T0.to_le_bytes());
        assert_eq!(&shared[8..], body.as_bytes());
    }

    #[test]
    fn a_failed_first_fetch_fails_requests_for_a_second_then_is_retried() {
        let (a, mut host, mut ev) = (authn(), FakeHost::default(), Vec::new());
        let mut store = KeyStore::new(&a);
        store.need(&a, 0, false, 1, T0, &mut host, &mut ev);
        let resumed = store.on_response(&a, 101, Some("503"), b"down", T0, &mut host, &mut ev);
        assert_eq!(resumed, Some(vec![1]));
        assert_eq!(
            ev,
            [KeyEvent::FetchFailed {
                provider: 0,
                status: Some("503".into()),
                stale_kept: false
            }]
        );
        assert_eq!(state(&store, T0 + S - 1), "failed");
        assert_eq!(state(&store, T0 + S), "pending");
        assert!(store.need(&a, 0, false, 2, T0 + S, &mut host, &mut ev));
        assert_eq!(host.fetches, 2);
        // A 200 whose body is no JWKS is a failure too; so is a reset (no status).
        store.on_response(&a, 102, Some("200"), b"<html>", T0 + S, &mut host, &mut ev);
        assert_eq!(state(&store, T0 + S), "failed");
        store.need(&a, 0, false, 3, T0 + 2 * S, &mut host, &mut ev);
        store.on_response(&a, 103, None, b"", T0 + 2 * S, &mut host, &mut ev);
        assert_eq!(state(&store, T0 + 2 * S), "failed");
    }

    #[test]
    fn keys_are_refreshed_after_the_cache_duration_and_kept_when_that_fails() {
        let (a, mut host, mut ev) = (authn(), FakeHost::default(), Vec::new());
        let mut store = fetched(&a, &mut host);
        assert!(store
            .on_tick(&a, T0 + 59 * S, &mut host, &mut ev)
            .is_empty());
        assert_eq!(host.fetches, 1);
        store.on_tick(&a, T0 + 60 * S, &mut host, &mut ev);
        assert_eq!(host.fetches, 2, "refresh");
        store.on_tick(&a, T0 + 60 * S + 1, &mut host, &mut ev);
        assert_eq!(host.fetches, 2, "one refresh under way at a time");
        ev.clear();
        store.on_response(&a, 102, Some("500"), b"", T0 + 60 * S, &mut host, &mut ev);
        assert_eq!(
            ev,
            [KeyEvent::FetchFailed {
                provider: 0,
                status: Some("500".into()),
                stale_kept: true
            }]
        );
        assert_eq!(state(&store, T0 + 60 * S), "ready", "stale keys serve");
        store.on_tick(&a, T0 + 60 * S + S / 2, &mut host, &mut ev);
        assert_eq!(host.fetches, 2, "retried 1 s after the failure, not before");
        store.on_tick(&a, T0 + 61 * S, &mut host, &mut ev);
        assert_eq!(host.fetches, 3);
    }

    #[test]
    fn keys_another_worker_fetched_are_adopted_instead_of_fetching() {
        let (a, mut host, mut ev) = (authn(), FakeHost::default(), Vec::new());
        let key = shared_key(a.remote(0).unwrap());
        let body = jwks_json(DEFAULT_KEYS);
        host.shared
            .insert(key.clone(), shared_value(T0, body.as_bytes()));
        let mut store = KeyStore::new(&a);
        assert!(
            !store.need(&a, 0, false, 1, T0, &mut host, &mut ev),
            "evaluate again"
        );
        assert_eq!(ev, [KeyEvent::Adopted { provider: 0 }]);
        assert_eq!((host.fetches, state(&store, T0)), (0, "ready"));
        // At refresh time the same shared copy is not adopted: a fetch is.
        ev.clear();
        store.on_tick(&a, T0 + 60 * S, &mut host, &mut ev);
        assert_eq!(host.fetches, 1, "the shared copy is as old as ours: fetch");
        store.on_response(&a, 101, Some("500"), b"", T0 + 60 * S, &mut host, &mut ev);
        // Another worker's newer fetch is adopted by the next retry instead.
        host.shared
            .insert(key, shared_value(T0 + 61 * S, body.as_bytes()));
        ev.clear();
        store.on_tick(&a, T0 + 61 * S, &mut host, &mut ev);
        assert_eq!(ev, [KeyEvent::Adopted { provider: 0 }]);
        store.on_tick(&a, T0 + 120 * S, &mut host, &mut ev);
        assert_eq!(host.fetches, 1, "fresh until 60 s after the adopted fetch");
        let mut ev2 = Vec::new();
        // Unreadable shared data is ignored.
        let mut host3 = FakeHost::default();
        host3
            .shared
            .insert(shared_key(a.remote(0).unwrap()), b"short".to_vec());
        assert!(KeyStore::new(&a).need(&a, 0, false, 3, T0, &mut host3, &mut ev2));
        assert_eq!(host3.fetches, 1);
    }

    #[test]
    fn an_unknown_kid_refetches_at_most_every_30_seconds() {
        let (a, mut host, mut ev) = (authn(), FakeHost::default(), Vec::new());
        let mut store = fetched(&a, &mut host);
        assert!(can_refetch(&store, T0));
        assert!(
            store.need(&a, 0, true, 5, T0, &mut host, &mut ev),
            "waits for the refetch"
        );
        assert_eq!(host.fetches, 2, "even with keys (and shared data) in hand");
        assert!(!can_refetch(&store, T0 + 30 * S - 1));
        assert!(can_refetch(&store, T0 + 30 * S));
    }

    #[test]
    fn waiters_past_their_deadline_go_on_and_the_fetch_counts_as_failed() {
        let (a, mut host, mut ev) = (authn(), FakeHost::default(), Vec::new());
        let mut store = KeyStore::new(&a);
        store.need(&a, 0, false, 9, T0, &mut host, &mut ev);
        // timeout 2 s + 1 s grace
        assert!(store
            .on_tick(&a, T0 + 3 * S - 1, &mut host, &mut ev)
            .is_empty());
        assert_eq!(store.on_tick(&a, T0 + 3 * S, &mut host, &mut ev), [9]);
        assert_eq!(state(&store, T0 + 3 * S), "failed");
        assert!(!store.is_ours(101), "the silent callout is forgotten");
    }

    #[test]
    fn a_fetch_that_cannot_start_fails_at_once() {
        let (a, mut ev) = (authn(), Vec::new());
        let mut host = FakeHost {
            refuse: true,
            ..FakeHost::default()
        };
        let mut store = KeyStore::new(&a);
        assert!(!store.need(&a, 0, false, 1, T0, &mut host, &mut ev));
        assert_eq!(
            ev,
            [KeyEvent::NotStarted {
                provider: 0,
                error: "no cluster".into()
            }]
        );
        assert_eq!(state(&store, T0), "failed");
    }
}
