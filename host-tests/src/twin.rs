//! The native twin as the oracle: one list of request cases sent to the meshwasm
//! listener and to the native filter's listener of the same Envoy, every case
//! whose outcome differs reported at once.

use std::fmt;

use crate::envoy::Envoy;
use crate::http::{Request, Response};

#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub request: Request,
}

impl Case {
    pub fn new(name: &str, request: Request) -> Case {
        Case {
            name: name.to_string(),
            request,
        }
    }
}

/// What is compared by default: the status; for a local reply (no upstream
/// answered) the body too; for a proxied answer, which upstream answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: u16,
    pub body: Option<String>,
    pub upstream: Option<String>,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.status)?;
        if let Some(u) = &self.upstream {
            write!(f, " from upstream {u}")?;
        }
        if let Some(b) = &self.body {
            write!(f, " body {b:?}")?;
        }
        Ok(())
    }
}

/// The default outcome of a response.
pub fn outcome(resp: &Response) -> Outcome {
    let upstream = resp.header("x-upstream").map(String::from);
    Outcome {
        status: resp.status,
        body: if upstream.is_none() {
            Some(resp.text())
        } else {
            None
        },
        upstream,
    }
}

#[derive(Debug, Clone)]
pub struct Mismatch<O> {
    pub case: String,
    pub request: Request,
    pub ours: O,
    pub native: O,
}

/// Sends every case to both listeners; returns the cases whose outcomes differ.
pub fn compare<O: PartialEq + Clone>(
    envoy: &Envoy,
    ours: &str,
    native: &str,
    cases: &[Case],
    outcome_of: impl Fn(&Response) -> O,
) -> Vec<Mismatch<O>> {
    cases
        .iter()
        .filter_map(|c| {
            let a = outcome_of(&envoy.send(ours, &c.request));
            let b = outcome_of(&envoy.send(native, &c.request));
            (a != b).then(|| Mismatch {
                case: c.name.clone(),
                request: c.request.clone(),
                ours: a,
                native: b,
            })
        })
        .collect()
}

/// Panics listing every case where the two listeners disagree.
pub fn assert_same(envoy: &Envoy, ours: &str, native: &str, cases: &[Case]) {
    assert_same_by(envoy, ours, native, cases, outcome);
}

/// As [`assert_same`] with a custom outcome.
pub fn assert_same_by<O: PartialEq + Clone + fmt::Display>(
    envoy: &Envoy,
    ours: &str,
    native: &str,
    cases: &[Case],
    outcome_of: impl Fn(&Response) -> O,
) {
    let diffs = compare(envoy, ours, native, cases, outcome_of);
    if !diffs.is_empty() {
        let mut report = format!(
            "{} of {} cases differ between {ours} and {native}:\n",
            diffs.len(),
            cases.len()
        );
        for d in &diffs {
            report.push_str(&format!(
                "  - {}: {} {}\n      {ours}: {}\n      {native}: {}\n",
                d.case, d.request.method, d.request.path, d.ours, d.native
            ));
        }
        panic!("{report}");
    }
}
