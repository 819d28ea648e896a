//! `meshwasm prune-callbacks`: removes from a filter module's exports the
//! proxy-wasm callbacks it does not implement, so Envoy never enters the VM for
//! them.
//!
//! The Rust SDK exports every `proxy_on_*` callback whether the filter uses it or
//! not, and Envoy calls each one it finds: for a plain GET that is response
//! headers, response body, `on_done` and `on_log`, each a VM entry that costs
//! as much as a cheap host call. Envoy skips a callback
//! the module does not export (proxy-wasm-cpp-host: a missing export means
//! "continue"). Each filter names the callbacks it implements in a
//! `meshwasm.callbacks` custom section (`meshwasm_glue::callbacks!`); this keeps
//! those, the ones every module needs (memory allocation, context creation, VM
//! start, configure), and drops the other `proxy_on_*` exports. A module without
//! the section is left as it is.

use wasm_encoder::{ExportKind, ExportSection, Module, RawSection};
use wasmparser::{ExternalKind, Parser, Payload};

/// The custom section a filter declares its callbacks in (space-separated names
/// without the `proxy_on_` prefix).
pub const SECTION: &str = "meshwasm.callbacks";

/// Callbacks no module can do without.
const ALWAYS: [&str; 4] = [
    "proxy_on_memory_allocate",
    "proxy_on_context_create",
    "proxy_on_vm_start",
    "proxy_on_configure",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PruneError {
    #[error("not a wasm module: {0}")]
    Parse(String),
    #[error("{SECTION} names {0:?}, which the module does not export as proxy_on_{0}")]
    UnknownCallback(String),
    #[error("{SECTION} is not UTF-8")]
    BadSection,
}

/// What pruning did: the module, and the exports removed (empty when the
/// module declares no callbacks).
pub struct Pruned {
    pub module: Vec<u8>,
    pub removed: Vec<String>,
}

fn parse_err(e: wasmparser::BinaryReaderError) -> PruneError {
    PruneError::Parse(e.to_string())
}

pub fn prune_callbacks(wasm: &[u8]) -> Result<Pruned, PruneError> {
    let mut declared: Option<Vec<String>> = None;
    let mut exports: Vec<(String, ExternalKind, u32)> = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(parse_err)? {
            Payload::CustomSection(c) if c.name() == SECTION => {
                let text = std::str::from_utf8(c.data()).map_err(|_| PruneError::BadSection)?;
                declared = Some(text.split_whitespace().map(str::to_string).collect());
            }
            Payload::ExportSection(s) => {
                for e in s {
                    let e = e.map_err(parse_err)?;
                    exports.push((e.name.to_string(), e.kind, e.index));
                }
            }
            _ => {}
        }
    }
    let Some(declared) = declared else {
        return Ok(Pruned {
            module: wasm.to_vec(),
            removed: Vec::new(),
        });
    };
    let keep: Vec<String> = declared.iter().map(|c| format!("proxy_on_{c}")).collect();
    for (c, k) in declared.iter().zip(&keep) {
        if !exports.iter().any(|(n, _, _)| n == k) {
            return Err(PruneError::UnknownCallback(c.clone()));
        }
    }
    let prunable = |n: &str| n.starts_with("proxy_on_") && !ALWAYS.contains(&n);
    let removed: Vec<String> = exports
        .iter()
        .filter(|(n, _, _)| prunable(n) && !keep.contains(n))
        .map(|(n, _, _)| n.clone())
        .collect();

    let mut out = Module::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(parse_err)?;
        match &payload {
            Payload::ExportSection(_) => {
                let mut section = ExportSection::new();
                for (name, kind, index) in &exports {
                    if !removed.contains(name) {
                        section.export(name, export_kind(*kind), *index);
                    }
                }
                out.section(&section);
            }
            // The declaration is for this step only.
            Payload::CustomSection(c) if c.name() == SECTION => {}
            _ => {
                if let Some((id, range)) = payload.as_section() {
                    out.section(&RawSection {
                        id,
                        data: &wasm[range],
                    });
                }
            }
        }
    }
    Ok(Pruned {
        module: out.finish(),
        removed,
    })
}

fn export_kind(k: ExternalKind) -> ExportKind {
    match k {
        ExternalKind::Func => ExportKind::Func,
        ExternalKind::Table => ExportKind::Table,
        ExternalKind::Memory => ExportKind::Memory,
        ExternalKind::Global => ExportKind::Global,
        ExternalKind::Tag => ExportKind::Tag,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_encoder::{
        CodeSection, CustomSection, Function, FunctionSection, Instruction, MemorySection,
        MemoryType, TypeSection,
    };

    /// A module exporting `names` (each a function returning nothing) and
    /// `memory`, with an optional callbacks declaration.
    fn module(names: &[&str], declared: Option<&str>) -> Vec<u8> {
        let mut m = Module::new();
        let mut types = TypeSection::new();
        types.ty().function([], []);
        m.section(&types);
        let mut funcs = FunctionSection::new();
        for _ in names {
            funcs.function(0);
        }
        m.section(&funcs);
        let mut mem = MemorySection::new();
        mem.memory(MemoryType {
            minimum: 1,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        m.section(&mem);
        let mut exports = ExportSection::new();
        for (i, n) in names.iter().enumerate() {
            exports.export(n, ExportKind::Func, i as u32);
        }
        exports.export("memory", ExportKind::Memory, 0);
        m.section(&exports);
        let mut code = CodeSection::new();
        for _ in names {
            let mut f = Function::new([]);
            f.instruction(&Instruction::End);
            code.function(&f);
        }
        m.section(&code);
        if let Some(d) = declared {
            m.section(&CustomSection {
                name: SECTION.into(),
                data: d.as_bytes().into(),
            });
        }
        m.finish()
    }

    fn exports(wasm: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for p in Parser::new(0).parse_all(wasm) {
            if let Payload::ExportSection(s) = p.unwrap() {
                out.extend(s.into_iter().map(|e| e.unwrap().name.to_string()));
            }
        }
        out
    }

    fn has_section(wasm: &[u8]) -> bool {
        Parser::new(0)
            .parse_all(wasm)
            .any(|p| matches!(p.unwrap(), Payload::CustomSection(c) if c.name() == SECTION))
    }

    const SDK: [&str; 8] = [
        "proxy_on_memory_allocate",
        "proxy_on_context_create",
        "proxy_on_configure",
        "proxy_on_request_headers",
        "proxy_on_response_headers",
        "proxy_on_log",
        "proxy_on_delete",
        "proxy_abi_version_0_2_1",
    ];

    #[test]
    fn keeps_declared_and_required_callbacks_only() {
        let wasm = module(&SDK, Some("request_headers delete"));
        let pruned = prune_callbacks(&wasm).unwrap();
        assert_eq!(
            pruned.removed,
            ["proxy_on_response_headers", "proxy_on_log"]
        );
        assert_eq!(
            exports(&pruned.module),
            [
                "proxy_on_memory_allocate",
                "proxy_on_context_create",
                "proxy_on_configure",
                "proxy_on_request_headers",
                "proxy_on_delete",
                "proxy_abi_version_0_2_1",
                "memory"
            ]
        );
        assert!(!has_section(&pruned.module));
        // Still a valid module.
        wasmparser::Validator::new()
            .validate_all(&pruned.module)
            .unwrap();
    }

    #[test]
    fn a_module_without_a_declaration_is_unchanged() {
        let wasm = module(&SDK, None);
        let pruned = prune_callbacks(&wasm).unwrap();
        assert!(pruned.removed.is_empty());
        assert_eq!(pruned.module, wasm);
    }

    #[test]
    fn a_declared_callback_the_module_lacks_is_an_error() {
        let wasm = module(&SDK, Some("request_headers tick"));
        assert_eq!(
            prune_callbacks(&wasm).err(),
            Some(PruneError::UnknownCallback("tick".into()))
        );
    }

    #[test]
    fn garbage_is_not_a_module() {
        assert!(matches!(
            prune_callbacks(b"not wasm"),
            Err(PruneError::Parse(_))
        ));
    }
}
