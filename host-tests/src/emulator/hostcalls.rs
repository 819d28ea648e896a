//! The host functions a proxy-wasm module imports (`env.proxy_*`) and the WASI
//! preview1 subset a `wasm32-wasip1` Rust module needs, bound into a wasmtime linker.
//! Every import the module declares is bound: the ones not implemented here trap with
//! a message naming them when called.

use std::time::Duration;

use anyhow::bail;
use wasmtime::{Caller, ExternType, Linker, Module, Store, Val};

use super::abi::{buffer_type, decode_pairs, encode_pairs, split_path, stream_type, Guest, Status};
use super::shared::MetricKind;
use super::state::{Deferred, GrpcCall, Host, HttpCall, LocalReply};

type C<'a> = Caller<'a, Host>;
type R = anyhow::Result<i32>;

fn guest(c: &C<'_>) -> anyhow::Result<Guest> {
    match &c.data().guest {
        Some(g) => Ok(g.clone()),
        None => bail!("hostcall before the module's memory/allocator were bound"),
    }
}

/// `try_status!(expr)`: the `Ok` value, or return the status code to the guest.
macro_rules! st {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(s) => return Ok(Status::code(s)),
        }
    };
}

fn ok() -> R {
    Ok(Status::Ok.code())
}

fn code(s: Status) -> R {
    Ok(s.code())
}

/// Binds every import of `module` into a fresh linker.
pub(crate) fn linker(store: &mut Store<Host>, module: &Module) -> anyhow::Result<Linker<Host>> {
    let mut l: Linker<Host> = Linker::new(store.engine());
    proxy(&mut l)?;
    wasi(&mut l)?;
    // Status-only stubs for what the emulator does not implement (documented in mod.rs):
    // a gRPC stream answers InternalFailure (an error the SDK returns as `Err`, where
    // Unimplemented would make it panic), the other gRPC calls NotFound (no such token).
    for import in module.imports() {
        let ExternType::Func(ty) = import.ty() else {
            continue;
        };
        if l.get_by_import(&mut *store, &import).is_some() {
            continue;
        }
        let (m, n) = (import.module().to_string(), import.name().to_string());
        let fixed = match n.as_str() {
            "proxy_grpc_stream" => Some(Status::InternalFailure),
            "proxy_grpc_send" | "proxy_grpc_cancel" | "proxy_grpc_close" => Some(Status::NotFound),
            _ => None,
        };
        let results_i32 = ty.results().len() == 1 && ty.results().all(|r| r.is_i32());
        l.func_new(
            &m.clone(),
            &n.clone(),
            ty,
            move |_c, _args, results| match fixed {
                Some(s) if results_i32 => {
                    results[0] = Val::I32(s.code());
                    Ok(())
                }
                _ => bail!("the emulator does not implement import {m}.{n} (called by the module)"),
            },
        )?;
    }
    counting(store, module, &l)
}

/// A linker whose every import counts its calls in `Host::hostcalls`, then runs the
/// binding of `inner`.
fn counting(
    store: &mut Store<Host>,
    module: &Module,
    inner: &Linker<Host>,
) -> anyhow::Result<Linker<Host>> {
    let mut l: Linker<Host> = Linker::new(store.engine());
    for import in module.imports() {
        let ExternType::Func(ty) = import.ty() else {
            continue;
        };
        let Some(f) = inner
            .get_by_import(&mut *store, &import)
            .and_then(|e| e.into_func())
        else {
            continue;
        };
        let name = import.name().to_string();
        l.func_new(
            import.module(),
            import.name(),
            ty,
            move |mut c, args, results| {
                *c.data_mut().hostcalls.entry(name.clone()).or_default() += 1;
                // Attributing a filter's wasm operators: the fuel used so far at
                // each host call (differences are the work between crossings).
                if std::env::var_os("MESHWASM_EMULATOR_FUEL_TRACE").is_some() {
                    let used = super::vm::FUEL.saturating_sub(c.get_fuel().unwrap_or(0));
                    eprintln!("fuel {used} at {name}");
                }
                f.call(&mut c, args, results)
            },
        )?;
    }
    Ok(l)
}

fn proxy(l: &mut Linker<Host>) -> anyhow::Result<()> {
    let env = "env";

    l.func_wrap(
        env,
        "proxy_log",
        |mut c: C<'_>, level: i32, ptr: i32, len: i32| -> R {
            let msg = st!(guest(&c)?.read_string(&c, ptr, len));
            c.data_mut().log(level as u32, msg);
            ok()
        },
    )?;
    l.func_wrap(env, "proxy_get_log_level", |mut c: C<'_>, out: i32| -> R {
        let level = c.data().cfg.log_level;
        st!(guest(&c)?.write_u32(&mut c, out, level));
        ok()
    })?;
    l.func_wrap(
        env,
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, out: i32| -> R {
            let now = c.data().world.realtime_nanos();
            st!(guest(&c)?.write_u64(&mut c, out, now));
            ok()
        },
    )?;
    l.func_wrap(
        env,
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, period: i32| -> R {
            let h = c.data_mut();
            let period = period as u32;
            if period == 0 {
                h.tick_period = None;
                h.next_tick_at = None;
            } else {
                let p = Duration::from_millis(period as u64);
                h.tick_period = Some(p);
                h.next_tick_at = Some(h.world.elapsed() + p);
            }
            ok()
        },
    )?;
    l.func_wrap(env, "proxy_done", |_c: C<'_>| -> R { ok() })?;

    // ---- buffers ----
    l.func_wrap(
        env,
        "proxy_get_buffer_bytes",
        |mut c: C<'_>, t: i32, start: i32, max: i32, ptr_out: i32, len_out: i32| -> R {
            let h = c.data();
            let t = t as u32;
            let buf: Vec<u8> = match t {
                buffer_type::REQUEST_BODY | buffer_type::RESPONSE_BODY => {
                    let s = st!(h.stream().ok_or(Status::NotFound));
                    let d = if t == buffer_type::REQUEST_BODY {
                        &s.req
                    } else {
                        &s.resp
                    };
                    if !d.body_visible {
                        return code(Status::NotFound);
                    }
                    d.body_buf.clone()
                }
                buffer_type::GRPC_RECEIVE_BUFFER => {
                    st!(h.grpc_message.as_ref().ok_or(Status::NotFound)).clone()
                }
                buffer_type::HTTP_CALL_RESPONSE_BODY => {
                    st!(h.call_response.as_ref().ok_or(Status::NotFound))
                        .body
                        .clone()
                }
                buffer_type::VM_CONFIGURATION => h.cfg.vm_config.clone().unwrap_or_default(),
                buffer_type::PLUGIN_CONFIGURATION if h.in_configure => h.cfg.plugin_config.clone(),
                _ => return code(Status::NotFound),
            };
            let (start, max) = (start as u32 as usize, max as u32 as usize);
            let avail = buf.len().saturating_sub(start);
            let n = avail.min(max);
            let slice = if n == 0 {
                &[][..]
            } else {
                &buf[start..start + n]
            };
            let g = guest(&c)?;
            Ok(g.return_bytes(&mut c, slice, ptr_out, len_out)?.code())
        },
    )?;
    l.func_wrap(
        env,
        "proxy_set_buffer_bytes",
        |mut c: C<'_>, t: i32, start: i32, size: i32, ptr: i32, len: i32| -> R {
            let data = st!(guest(&c)?.read(&c, ptr, len));
            let t = t as u32;
            let s = st!(c.data_mut().stream_mut().ok_or(Status::NotFound));
            let d = match t {
                buffer_type::REQUEST_BODY => &mut s.req,
                buffer_type::RESPONSE_BODY => &mut s.resp,
                _ => return code(Status::NotFound),
            };
            if !d.body_visible {
                return code(Status::NotFound);
            }
            // Envoy's Buffer::copyFrom: start 0 drains `size` bytes then prepends;
            // start at/after the end appends; anything else is BadArgument.
            let (start, size) = (start as u32 as usize, size as u32 as usize);
            if start == 0 {
                let drain = size.min(d.body_buf.len());
                d.body_buf.drain(..drain);
                d.body_buf.splice(0..0, data);
            } else if start >= d.body_buf.len() {
                d.body_buf.extend_from_slice(&data);
            } else {
                return code(Status::BadArgument);
            }
            ok()
        },
    )?;

    // ---- header maps ----
    l.func_wrap(
        env,
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, t: i32, ptr_out: i32, len_out: i32| -> R {
            let bytes = encode_pairs(st!(c.data().map(t as u32)));
            let g = guest(&c)?;
            Ok(g.return_bytes(&mut c, &bytes, ptr_out, len_out)?.code())
        },
    )?;
    l.func_wrap(
        env,
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, t: i32, ptr: i32, len: i32| -> R {
            let raw = st!(guest(&c)?.read(&c, ptr, len));
            let pairs = st!(decode_pairs(&raw).ok_or(Status::BadArgument));
            let m = st!(c.data_mut().map_mut(t as u32));
            *m = pairs
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            ok()
        },
    )?;
    l.func_wrap(
        env,
        "proxy_get_header_map_value",
        |mut c: C<'_>, t: i32, kp: i32, kl: i32, ptr_out: i32, len_out: i32| -> R {
            let key = st!(guest(&c)?.read_string(&c, kp, kl)).to_ascii_lowercase();
            let m = st!(c.data().map(t as u32));
            let v = st!(m
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone())
                .ok_or(Status::NotFound));
            let g = guest(&c)?;
            Ok(g.return_bytes(&mut c, &v, ptr_out, len_out)?.code())
        },
    )?;
    l.func_wrap(
        env,
        "proxy_add_header_map_value",
        |mut c: C<'_>, t: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> R {
            let g = guest(&c)?;
            let key = st!(g.read_string(&c, kp, kl)).to_ascii_lowercase();
            let val = st!(g.read(&c, vp, vl));
            st!(c.data_mut().map_mut(t as u32)).push((key, val));
            ok()
        },
    )?;
    l.func_wrap(
        env,
        "proxy_replace_header_map_value",
        |mut c: C<'_>, t: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> R {
            let g = guest(&c)?;
            let key = st!(g.read_string(&c, kp, kl)).to_ascii_lowercase();
            let val = st!(g.read(&c, vp, vl));
            let m = st!(c.data_mut().map_mut(t as u32));
            // setCopy: the first entry takes the value in place, the others go.
            match m.iter().position(|(k, _)| *k == key) {
                Some(i) => {
                    m[i].1 = val;
                    let mut seen = 0;
                    m.retain(|(k, _)| {
                        if *k == key {
                            seen += 1;
                            seen == 1
                        } else {
                            true
                        }
                    });
                }
                None => m.push((key, val)),
            }
            ok()
        },
    )?;
    l.func_wrap(
        env,
        "proxy_remove_header_map_value",
        |mut c: C<'_>, t: i32, kp: i32, kl: i32| -> R {
            let key = st!(guest(&c)?.read_string(&c, kp, kl)).to_ascii_lowercase();
            st!(c.data_mut().map_mut(t as u32)).retain(|(k, _)| *k != key);
            ok()
        },
    )?;

    // ---- properties ----
    l.func_wrap(
        env,
        "proxy_get_property",
        |mut c: C<'_>, pp: i32, pl: i32, ptr_out: i32, len_out: i32| -> R {
            let path = split_path(&st!(guest(&c)?.read(&c, pp, pl)));
            let v = st!(c.data().property(&path));
            let g = guest(&c)?;
            Ok(g.return_bytes(&mut c, &v, ptr_out, len_out)?.code())
        },
    )?;
    l.func_wrap(
        env,
        "proxy_set_property",
        |mut c: C<'_>, pp: i32, pl: i32, vp: i32, vl: i32| -> R {
            let g = guest(&c)?;
            let raw = st!(g.read(&c, pp, pl));
            let raw = raw.strip_suffix(&[0]).unwrap_or(&raw).to_vec();
            let val = st!(g.read(&c, vp, vl));
            // No stream info in a root context: NotFound (the SDK panics on it).
            let s = st!(c.data_mut().stream_mut().ok_or(Status::NotFound));
            s.filter_state
                .insert(format!("wasm.{}", String::from_utf8_lossy(&raw)), val);
            ok()
        },
    )?;

    // ---- shared data ----
    l.func_wrap(
        env,
        "proxy_get_shared_data",
        |mut c: C<'_>, kp: i32, kl: i32, ptr_out: i32, len_out: i32, cas_out: i32| -> R {
            let key = st!(guest(&c)?.read_string(&c, kp, kl));
            let vm_id = c.data().cfg.vm_id.clone();
            let found = {
                let mut w = c.data().world.lock();
                let found = w.shared.get_in(&vm_id, &key);
                if let Some(hooks) = w.after_get.remove(&key) {
                    for hook in hooks {
                        hook(&mut w.shared);
                    }
                }
                found
            };
            let (value, cas) = st!(found.ok_or(Status::NotFound));
            let g = guest(&c)?;
            let s = g.return_bytes(&mut c, &value, ptr_out, len_out)?;
            if s != Status::Ok {
                return code(s);
            }
            st!(g.write_u32(&mut c, cas_out, cas));
            ok()
        },
    )?;
    l.func_wrap(
        env,
        "proxy_set_shared_data",
        |c: C<'_>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| -> R {
            let g = guest(&c)?;
            let key = st!(g.read_string(&c, kp, kl));
            let val = st!(g.read(&c, vp, vl));
            let vm_id = c.data().cfg.vm_id.clone();
            let r = c
                .data()
                .world
                .lock()
                .shared
                .set_in(&vm_id, &key, &val, cas as u32);
            st!(r);
            ok()
        },
    )?;

    // ---- shared queues ----
    l.func_wrap(
        env,
        "proxy_register_shared_queue",
        |mut c: C<'_>, np: i32, nl: i32, id_out: i32| -> R {
            let name = st!(guest(&c)?.read_string(&c, np, nl));
            let vm_id = c.data().cfg.vm_id.clone();
            let id = c.data().world.lock().queues.register(&vm_id, &name);
            st!(guest(&c)?.write_u32(&mut c, id_out, id));
            ok()
        },
    )?;
    l.func_wrap(
        env,
        "proxy_resolve_shared_queue",
        |mut c: C<'_>, vp: i32, vl: i32, np: i32, nl: i32, id_out: i32| -> R {
            let g = guest(&c)?;
            let mut vm_id = st!(g.read_string(&c, vp, vl));
            let name = st!(g.read_string(&c, np, nl));
            if vm_id.is_empty() {
                vm_id = c.data().cfg.vm_id.clone();
            }
            let id = st!(c
                .data()
                .world
                .lock()
                .queues
                .resolve(&vm_id, &name)
                .ok_or(Status::NotFound));
            st!(g.write_u32(&mut c, id_out, id));
            ok()
        },
    )?;
    l.func_wrap(
        env,
        "proxy_enqueue_shared_queue",
        |c: C<'_>, id: i32, vp: i32, vl: i32| -> R {
            let val = st!(guest(&c)?.read(&c, vp, vl));
            let s = c.data().world.lock().queues.enqueue(id as u32, val);
            code(s)
        },
    )?;
    l.func_wrap(
        env,
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, id: i32, ptr_out: i32, len_out: i32| -> R {
            let r = c.data().world.lock().queues.dequeue(id as u32);
            let v = st!(r);
            let g = guest(&c)?;
            Ok(g.return_bytes(&mut c, &v, ptr_out, len_out)?.code())
        },
    )?;

    // ---- stream control (deferred until the callback returns) ----
    l.func_wrap(env, "proxy_continue_stream", |mut c: C<'_>, t: i32| -> R {
        let h = c.data_mut();
        let t = t as u32;
        if t > stream_type::HTTP_RESPONSE {
            return code(Status::BadArgument);
        }
        if h.stream().is_some() {
            let id = h.effective;
            h.deferred.push(Deferred::Continue(id, t));
        }
        ok()
    })?;
    l.func_wrap(env, "proxy_close_stream", |mut c: C<'_>, t: i32| -> R {
        let h = c.data_mut();
        let t = t as u32;
        if t > stream_type::HTTP_RESPONSE {
            return code(Status::BadArgument);
        }
        if h.stream().is_some() {
            let id = h.effective;
            h.deferred.push(Deferred::Close(id));
        }
        ok()
    })?;
    l.func_wrap(
        env,
        "proxy_send_local_response",
        |mut c: C<'_>,
         status: i32,
         dp: i32,
         dl: i32,
         bp: i32,
         bl: i32,
         hp: i32,
         hl: i32,
         grpc: i32|
         -> R {
            let g = guest(&c)?;
            let details = st!(g.read_string(&c, dp, dl));
            let body = st!(g.read(&c, bp, bl));
            let headers = st!(decode_pairs(&st!(g.read(&c, hp, hl))).ok_or(Status::BadArgument));
            let h = c.data_mut();
            // Only an HTTP stream context can answer; in a root context it is a silent Ok.
            if h.stream().is_some() {
                let reply = LocalReply {
                    status: status as u32,
                    headers: headers
                        .into_iter()
                        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                        .collect(),
                    body,
                    grpc_status: if grpc < 0 { None } else { Some(grpc) },
                    details,
                };
                let id = h.effective;
                h.deferred.push(Deferred::LocalReply(id, reply));
            }
            ok()
        },
    )?;
    l.func_wrap(
        env,
        "proxy_set_effective_context",
        |mut c: C<'_>, id: i32| -> R {
            let h = c.data_mut();
            let id = id as u32;
            let alive = id == h.root_id || h.streams.get(&id).is_some_and(|s| s.alive);
            if !alive {
                return code(Status::BadArgument);
            }
            h.effective = id;
            ok()
        },
    )?;

    // ---- HTTP callouts ----
    l.func_wrap(
        env,
        "proxy_http_call",
        |mut c: C<'_>,
         up: i32,
         ul: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         tp: i32,
         tl: i32,
         timeout: i32,
         token_out: i32|
         -> R {
            let g = guest(&c)?;
            let cluster = st!(g.read_string(&c, up, ul));
            let headers = st!(decode_pairs(&st!(g.read(&c, hp, hl))).ok_or(Status::BadArgument));
            let body = st!(g.read(&c, bp, bl));
            let trailers = st!(decode_pairs(&st!(g.read(&c, tp, tl))).ok_or(Status::BadArgument));
            let h = c.data_mut();
            if !h.cfg.clusters.contains(&cluster) {
                return code(Status::BadArgument);
            }
            let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
            if !has(":method") || !has(":path") || !(has(":authority") || has("host")) {
                return code(Status::BadArgument);
            }
            let text = |m: Vec<(String, Vec<u8>)>| -> Vec<(String, String)> {
                m.into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                    .collect()
            };
            let (token, context_id) = h.new_callout();
            h.http_calls.insert(
                token,
                HttpCall {
                    token,
                    cluster,
                    headers: text(headers),
                    body,
                    trailers: text(trailers),
                    timeout: Duration::from_millis(timeout as u32 as u64),
                    context_id,
                },
            );
            st!(g.write_u32(&mut c, token_out, token));
            ok()
        },
    )?;
    l.func_wrap(
        env,
        "proxy_grpc_call",
        |mut c: C<'_>,
         up: i32,
         ul: i32,
         sp: i32,
         sl: i32,
         mp: i32,
         ml: i32,
         _metadata_ptr: i32,
         _metadata_len: i32,
         msg_ptr: i32,
         msg_len: i32,
         timeout: i32,
         token_out: i32|
         -> R {
            let g = guest(&c)?;
            let upstream = st!(g.read(&c, up, ul));
            let service = st!(g.read_string(&c, sp, sl));
            let method = st!(g.read_string(&c, mp, ml));
            let message = st!(g.read(&c, msg_ptr, msg_len));
            let h = c.data_mut();
            // Envoy takes a cluster name, or a serialized GrpcService naming one.
            let names_cluster = h.cfg.clusters.iter().any(|cl| {
                upstream == cl.as_bytes() || upstream.windows(cl.len()).any(|w| w == cl.as_bytes())
            });
            if !names_cluster {
                return code(Status::ParseFailure);
            }
            let (token, context_id) = h.new_callout();
            h.grpc_calls.insert(
                token,
                GrpcCall {
                    token,
                    upstream,
                    service,
                    method,
                    message,
                    timeout: Duration::from_millis(timeout as u32 as u64),
                    context_id,
                },
            );
            st!(g.write_u32(&mut c, token_out, token));
            ok()
        },
    )?;
    l.func_wrap(
        env,
        "proxy_get_status",
        |mut c: C<'_>, code_out: i32, ptr_out: i32, len_out: i32| -> R {
            let (st_code, msg) = c.data().status.clone();
            let g = guest(&c)?;
            st!(g.write_u32(&mut c, code_out, st_code));
            Ok(g.return_bytes(&mut c, &msg, ptr_out, len_out)?.code())
        },
    )?;

    // ---- foreign functions ----
    l.func_wrap(
        env,
        "proxy_call_foreign_function",
        |mut c: C<'_>, np: i32, nl: i32, _ap: i32, _al: i32, _ptr_out: i32, _len_out: i32| -> R {
            let name = st!(guest(&c)?.read_string(&c, np, nl));
            let h = c.data_mut();
            match name.as_str() {
                // Uses the real current context, not the effective one (reference §3.1).
                "clear_route_cache" => {
                    let cur = h.current;
                    if let Some(s) = h.streams.get_mut(&cur).filter(|s| s.alive) {
                        s.route_cache_clears += 1;
                    }
                    ok()
                }
                "declare_property" => ok(),
                _ => code(Status::NotFound),
            }
        },
    )?;

    // ---- metrics ----
    l.func_wrap(
        env,
        "proxy_define_metric",
        |mut c: C<'_>, kind: i32, np: i32, nl: i32, id_out: i32| -> R {
            let kind = st!(MetricKind::from_raw(kind as u32).ok_or(Status::BadArgument));
            let name = st!(guest(&c)?.read_string(&c, np, nl));
            let h = c.data_mut();
            // A new id per call, like Envoy (defining per request grows memory).
            let id = (h.next_metric << 2) | kind as u32;
            h.next_metric += 1;
            h.metric_ids.insert(id, (name.clone(), kind));
            h.world.lock().metrics.define(&name, kind);
            st!(guest(&c)?.write_u32(&mut c, id_out, id));
            ok()
        },
    )?;
    l.func_wrap(
        env,
        "proxy_increment_metric",
        |c: C<'_>, id: i32, delta: i64| -> R {
            let (name, kind) = st!(c
                .data()
                .metric_ids
                .get(&(id as u32))
                .cloned()
                .ok_or(Status::NotFound));
            let s = c.data().world.lock().metrics.increment(&name, kind, delta);
            code(s)
        },
    )?;
    l.func_wrap(
        env,
        "proxy_record_metric",
        |c: C<'_>, id: i32, value: i64| -> R {
            let (name, kind) = st!(c
                .data()
                .metric_ids
                .get(&(id as u32))
                .cloned()
                .ok_or(Status::NotFound));
            let s = c
                .data()
                .world
                .lock()
                .metrics
                .record(&name, kind, value as u64);
            code(s)
        },
    )?;
    l.func_wrap(
        env,
        "proxy_get_metric",
        |mut c: C<'_>, id: i32, out: i32| -> R {
            let (name, kind) = st!(c
                .data()
                .metric_ids
                .get(&(id as u32))
                .cloned()
                .ok_or(Status::NotFound));
            let r = c.data().world.lock().metrics.get(&name, kind);
            let v = st!(r);
            st!(guest(&c)?.write_u64(&mut c, out, v as u64));
            ok()
        },
    )?;
    Ok(())
}

/// WASI errno values used here.
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;
const ERRNO_BADF: i32 = 8;

fn wasi(l: &mut Linker<Host>) -> anyhow::Result<()> {
    let w = "wasi_snapshot_preview1";
    for name in ["environ_sizes_get", "args_sizes_get"] {
        l.func_wrap(
            w,
            name,
            |mut c: C<'_>, count_out: i32, size_out: i32| -> R {
                let g = guest(&c)?;
                if g.write_u32(&mut c, count_out, 0).is_err()
                    || g.write_u32(&mut c, size_out, 0).is_err()
                {
                    return Ok(ERRNO_FAULT);
                }
                Ok(ERRNO_SUCCESS)
            },
        )?;
    }
    for name in ["environ_get", "args_get"] {
        l.func_wrap(w, name, |_c: C<'_>, _a: i32, _b: i32| -> R {
            Ok(ERRNO_SUCCESS)
        })?;
    }
    l.func_wrap(
        w,
        "fd_write",
        |mut c: C<'_>, fd: i32, iovs: i32, n: i32, written_out: i32| -> R {
            if !(1..=2).contains(&fd) {
                return Ok(ERRNO_BADF);
            }
            let g = guest(&c)?;
            let mut total = 0u32;
            for i in 0..n {
                let iov = match g.read(&c, iovs + i * 8, 8) {
                    Ok(b) => b,
                    Err(_) => return Ok(ERRNO_FAULT),
                };
                let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                let Ok(data) = g.read(&c, ptr, len) else {
                    return Ok(ERRNO_FAULT);
                };
                total += data.len() as u32;
                let h = c.data_mut();
                h.fd_lines[fd as usize].extend_from_slice(&data);
                while let Some(nl) = h.fd_lines[fd as usize].iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = h.fd_lines[fd as usize].drain(..=nl).collect();
                    let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                    h.log(if fd == 1 { 2 } else { 4 }, format!("[fd{fd}] {text}"));
                }
            }
            if g.write_u32(&mut c, written_out, total).is_err() {
                return Ok(ERRNO_FAULT);
            }
            Ok(ERRNO_SUCCESS)
        },
    )?;
    l.func_wrap(
        w,
        "proc_exit",
        |_c: C<'_>, code: i32| -> anyhow::Result<()> {
            bail!("the module called proc_exit({code})")
        },
    )?;
    l.func_wrap(w, "sched_yield", |_c: C<'_>| -> R { Ok(ERRNO_SUCCESS) })?;
    l.func_wrap(w, "random_get", |mut c: C<'_>, ptr: i32, len: i32| -> R {
        let mut bytes = Vec::with_capacity(len as u32 as usize + 8);
        while bytes.len() < len as u32 as usize {
            let r = c.data_mut().next_random();
            bytes.extend_from_slice(&r.to_le_bytes());
        }
        bytes.truncate(len as u32 as usize);
        if guest(&c)?.write(&mut c, ptr, &bytes).is_err() {
            return Ok(ERRNO_FAULT);
        }
        Ok(ERRNO_SUCCESS)
    })?;
    l.func_wrap(
        w,
        "clock_time_get",
        |mut c: C<'_>, id: i32, _precision: i64, out: i32| -> R {
            // 0 realtime; 1 monotonic; 2/3 cpu-time clocks read the monotonic clock.
            let now = {
                let world = c.data().world.lock();
                match id {
                    0 => world.realtime_nanos(),
                    1..=3 => world.monotonic_nanos(),
                    _ => return Ok(ERRNO_INVAL),
                }
            };
            if guest(&c)?.write_u64(&mut c, out, now).is_err() {
                return Ok(ERRNO_FAULT);
            }
            Ok(ERRNO_SUCCESS)
        },
    )?;
    l.func_wrap(
        w,
        "clock_res_get",
        |mut c: C<'_>, _id: i32, out: i32| -> R {
            if guest(&c)?.write_u64(&mut c, out, 1).is_err() {
                return Ok(ERRNO_FAULT);
            }
            Ok(ERRNO_SUCCESS)
        },
    )?;
    Ok(())
}
