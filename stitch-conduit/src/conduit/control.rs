//! The conduit's control socket: one JSON object a line in, one answer a line out.
//!
//! Commands ([`Request`]): `list` (connections, their descriptions, phases, stitches,
//! reasons and counters, and the scopes this conduit belongs to, without keys),
//! `stitch` (by publishing now, or straight to a given peer), `refuse`, `scope_add`,
//! `scope_remove` (matching scopes are policy: configured, and changed here). A bad request
//! gets `{"ok":false,"error":...}` and changes nothing.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use serde::Deserialize;

use super::{Ev, Shared, Slot};
use crate::config::Matching;
use crate::msg::Reason;
use crate::scope::Scope;

/// A control request (one JSON object a line).
#[derive(Debug, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// List connections and their stitches.
    List,
    /// Stitch connection `id`: to `peer` (a stitch address) directly, or by publishing.
    Stitch {
        /// Connection id from `list`.
        id: u64,
        /// The peer conduit's stitch address; absent: publish now.
        #[serde(default)]
        peer: Option<SocketAddr>,
    },
    /// Refuse stitching connection `id` (incoming hellos refused, no publishing).
    Refuse {
        /// Connection id from `list`.
        id: u64,
    },
    /// Add (or replace) a matching scope: policy set at run time. The key is 64 hex
    /// digits and is never shown again.
    ScopeAdd {
        /// Name (ports name their scope by it).
        name: String,
        /// Key id: the scope's name on the wire.
        key_id: u32,
        /// 64 hex digits.
        key: String,
        /// Member global ids; empty: any key holder.
        #[serde(default)]
        members: Vec<u64>,
    },
    /// Remove a matching scope: its messages are refused from now on.
    ScopeRemove {
        /// Name.
        name: String,
    },
}

fn answer(sh: &Shared, line: &str) -> serde_json::Value {
    let err = |e: String| serde_json::json!({ "ok": false, "error": e });
    let req: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return err(format!("bad request: {e}")),
    };
    let get = |id: u64| sh.conns().get(&id).cloned();
    match req {
        Request::List => {
            let scopes: Vec<serde_json::Value> = sh
                .scopes()
                .iter()
                .map(|s| serde_json::json!({ "name": s.name, "key_id": s.key_id, "members": s.members }))
                .collect();
            serde_json::json!({
                "ok": true,
                "global_id": sh.cfg.global_id,
                "scopes": scopes,
                "connections": sh.status(),
            })
        }
        Request::Stitch { id, peer } => {
            let Some(conn) = get(id) else {
                return err(format!("no connection {id}"));
            };
            let mut st = conn.st();
            if st.ended.is_some() {
                return err(format!("connection {id} has ended"));
            }
            if st.refused {
                return err(Reason::RefusedByApplication.to_string());
            }
            if st.slot != Slot::Free {
                let why = Reason::AlreadyStitched.to_string();
                st.last_reason = Some(why.clone());
                return err(why);
            }
            match peer {
                Some(p) => {
                    st.matched_at = Some(Instant::now());
                    drop(st);
                    let _ = conn.tx.send(Ev::Initiate(p));
                    serde_json::json!({ "ok": true, "action": "stitching", "peer": p.to_string() })
                }
                None if matches!(sh.cfg.matching, Matching::None) => {
                    err("no matching configured: give \"peer\"".into())
                }
                None => {
                    st.publish_requested = true;
                    drop(st);
                    let _ = conn.tx.send(Ev::Publish);
                    serde_json::json!({ "ok": true, "action": "published" })
                }
            }
        }
        Request::ScopeAdd {
            name,
            key_id,
            key,
            members,
        } => match Scope::from_hex(&name, key_id, &key, members) {
            Ok(scope) => {
                let replaced = sh.set_scopes(|s| s.insert(scope));
                serde_json::json!({ "ok": true, "replaced": replaced })
            }
            Err(e) => err(format!("scope {name}: {e}")),
        },
        Request::ScopeRemove { name } => {
            if sh.set_scopes(|s| s.remove_by_name(&name)) {
                serde_json::json!({ "ok": true })
            } else {
                err(format!("no scope {name:?}"))
            }
        }
        Request::Refuse { id } => {
            let Some(conn) = get(id) else {
                return err(format!("no connection {id}"));
            };
            conn.st().refused = true;
            serde_json::json!({ "ok": true })
        }
    }
}

/// Serves one control connection until it closes.
pub(super) fn serve(sh: &Shared, c: UnixStream) {
    let Ok(w) = c.try_clone() else { return };
    let mut w = w;
    for line in BufReader::new(c).lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let mut out = answer(sh, &line).to_string();
        out.push('\n');
        if w.write_all(out.as_bytes()).is_err() {
            return;
        }
    }
}
