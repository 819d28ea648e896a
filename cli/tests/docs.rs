//! The documentation says only what exists: every relative link in README.md,
//! BENCHMARKS.md and docs/*.md resolves (a `#anchor` to a heading of the file it
//! names), every `make <target>` the docs show exists (`make -n <target>`), and
//! every `meshwasm <subcommand>` they show is accepted (`meshwasm <subcommand> --help`).
//! Commands count where the docs show them as code: in code spans and fenced blocks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{meshwasm, repo_root};

/// The documents checked, relative to the repository root.
fn documents() -> Vec<PathBuf> {
    let root = repo_root();
    let mut files = vec![root.join("README.md"), root.join("BENCHMARKS.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    assert!(!docs.is_empty(), "no docs/*.md");
    files.extend(docs);
    files
}

/// A markdown text split into prose lines and code (fenced blocks, code spans).
struct Parsed {
    /// Lines outside fenced blocks.
    prose: Vec<String>,
    /// Every fenced block line and every code span.
    code: Vec<String>,
    /// Heading anchors, as GitHub makes them.
    anchors: BTreeSet<String>,
}

fn parse(text: &str) -> Parsed {
    let mut p = Parsed {
        prose: Vec::new(),
        code: Vec::new(),
        anchors: BTreeSet::new(),
    };
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            // A shell comment is prose: only its code spans are commands.
            let (command, comment) = match line.find('#') {
                Some(i) if i == 0 || line[..i].ends_with(' ') => line.split_at(i),
                _ => (line, ""),
            };
            p.code.push(command.to_string());
            p.code.extend(code_spans(comment));
            continue;
        }
        if let Some(h) = line.strip_prefix('#') {
            let title = h.trim_start_matches('#').trim();
            let base = slug(title);
            let mut anchor = base.clone();
            let mut n = 1;
            while !p.anchors.insert(anchor.clone()) {
                anchor = format!("{base}-{n}");
                n += 1;
            }
        }
        p.code.extend(code_spans(line));
        p.prose.push(line.to_string());
    }
    p
}

fn code_spans(line: &str) -> Vec<String> {
    line.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens.
fn slug(title: &str) -> String {
    title
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// `[text](target)` link targets in prose lines (code spans left out).
fn links(prose: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose {
        let outside_code: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, s)| s)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = outside_code.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let Some(end) = rest.find(')') else { break };
            out.push(rest[..end].trim().to_string());
            rest = &rest[end..];
        }
    }
    out
}

/// The problems with one link from `doc`, if any.
fn check_link(doc: &Path, own: &Parsed, target: &str) -> Option<String> {
    if target.contains("://") || target.starts_with("mailto:") {
        return None;
    }
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target, None),
    };
    let anchors = if path.is_empty() {
        own.anchors.clone()
    } else {
        let file = doc.parent().unwrap().join(path);
        if !file.exists() {
            return Some(format!("{target}: {} does not exist", file.display()));
        }
        // A file link without an anchor needs no more than the file.
        anchor?;
        parse(&std::fs::read_to_string(&file).unwrap_or_default()).anchors
    };
    match anchor {
        Some(a) if !anchors.contains(a) => Some(format!("{target}: no heading #{a}")),
        _ => None,
    }
}

/// The words after `command` in code: `make a b VAR=x` gives [a, b].
fn invocations(code: &[String], command: &str) -> BTreeSet<Vec<String>> {
    let word = |t: &str| {
        !t.is_empty()
            && t.starts_with(|c: char| c.is_ascii_lowercase())
            && t.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    };
    let mut out = BTreeSet::new();
    for text in code {
        let tokens: Vec<&str> = text
            .split_whitespace()
            .map(|t| t.trim_matches(|c| matches!(c, '`' | '(' | ')' | ',' | ';')))
            .collect();
        for (i, t) in tokens.iter().enumerate() {
            if *t != command {
                continue;
            }
            let words: Vec<String> = tokens[i + 1..]
                .iter()
                .take_while(|t| word(t))
                .map(|t| t.to_string())
                .collect();
            if !words.is_empty() {
                out.insert(words);
            }
        }
    }
    out
}

fn make_n(target: &str) -> bool {
    Command::new("make")
        .args(["-n", target])
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn meshwasm_help(words: &[String]) -> Result<(), String> {
    let out = meshwasm().args(words).arg("--help").output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

struct Mentions {
    links: Vec<(PathBuf, String)>,
    targets: BTreeSet<String>,
    subcommands: BTreeSet<Vec<String>>,
}

fn mentions() -> Mentions {
    let mut m = Mentions {
        links: Vec::new(),
        targets: BTreeSet::new(),
        subcommands: BTreeSet::new(),
    };
    for doc in documents() {
        let p = parse(&std::fs::read_to_string(&doc).unwrap());
        for l in links(&p.prose) {
            m.links.push((doc.clone(), l));
        }
        for words in invocations(&p.code, "make") {
            m.targets.extend(words);
        }
        m.subcommands.extend(invocations(&p.code, "meshwasm"));
    }
    m
}

#[test]
fn every_relative_link_resolves() {
    let m = mentions();
    let relative = m.links.iter().filter(|(_, l)| !l.contains("://")).count();
    assert!(relative >= 20, "only {relative} relative links found");
    let mut broken = Vec::new();
    for (doc, link) in &m.links {
        let own = parse(&std::fs::read_to_string(doc).unwrap());
        if let Some(problem) = check_link(doc, &own, link) {
            broken.push(format!("{}: {problem}", doc.display()));
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_make_target_named_exists() {
    let m = mentions();
    for expected in ["demo", "test", "build", "bench", "images", "push"] {
        assert!(
            m.targets.contains(expected),
            "{expected} not found in {:?}",
            m.targets
        );
    }
    eprintln!("make targets named: {:?}", m.targets);
    let missing: Vec<_> = m.targets.iter().filter(|t| !make_n(t)).collect();
    assert!(missing.is_empty(), "`make -n` fails for {missing:?}");
}

#[test]
fn every_meshwasm_subcommand_named_exists() {
    let m = mentions();
    let firsts: BTreeSet<&str> = m.subcommands.iter().map(|w| w[0].as_str()).collect();
    for expected in ["check", "wasmplugin", "envoyfilter", "image"] {
        assert!(
            firsts.contains(expected),
            "{expected} not found in {firsts:?}"
        );
    }
    eprintln!("meshwasm invocations named: {:?}", m.subcommands);
    let failures: Vec<String> = m
        .subcommands
        .iter()
        .filter_map(|w| {
            meshwasm_help(w)
                .err()
                .map(|e| format!("meshwasm {} --help: {e}", w.join(" ")))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The checks above can fail: a broken link, a missing target or subcommand is caught.
#[test]
fn the_checks_catch_what_does_not_exist() {
    let doc = repo_root().join("docs/architecture.md");
    let text =
        "# A title, with `code`\n\nSee [x](no-such-file.md), [y](deploy.md#no-such-heading), \
                [z](#a-title-with-code), `[not](a-link.md)`.\n\n```sh\nmake nonexistent-target\n\
                meshwasm no-such-command --flag\n```\n";
    let p = parse(text);
    let found = links(&p.prose);
    assert_eq!(
        found,
        [
            "no-such-file.md",
            "deploy.md#no-such-heading",
            "#a-title-with-code"
        ]
    );
    assert!(check_link(&doc, &p, &found[0]).is_some());
    assert!(check_link(&doc, &p, &found[1]).is_some());
    assert_eq!(check_link(&doc, &p, &found[2]), None);
    assert_eq!(check_link(&doc, &p, "deploy.md#istio"), None);
    let targets = invocations(&p.code, "make");
    assert_eq!(
        targets.into_iter().collect::<Vec<_>>(),
        [["nonexistent-target"]]
    );
    assert!(!make_n("nonexistent-target"));
    assert!(make_n("build"));
    let commands = invocations(&p.code, "meshwasm");
    let words = commands.iter().next().unwrap();
    assert_eq!(words, &["no-such-command"]);
    assert!(meshwasm_help(words).is_err());
    assert!(meshwasm_help(&["image".into(), "bogus".into()]).is_err());
    assert!(meshwasm_help(&["image".into(), "pull".into()]).is_ok());
}
