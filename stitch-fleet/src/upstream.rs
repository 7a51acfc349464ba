//! The upstream manager: the user-facing REST API, the SQLite store, and one
//! XMPP link to the upstream domain where every cluster's downstream manager
//! has an account.
//!
//! Each cluster is one node: the upstream stores the cluster's reported
//! capacity and health, never anything per agent. A request is decided (quota,
//! capacity) and recorded in one transaction, then sent to its cluster and
//! re-sent (on every link-up and every `retransmit` period) until a final
//! result arrives; duplicate results change nothing.
//!
//! Threads: the REST server is a blocking `tiny_http` loop on its own thread;
//! the XMPP side is one tokio task. They share the store behind a mutex and the
//! REST side tells the XMPP side about new requests through a channel.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_xmpp::jid::{BareJid, Jid};

use crate::api::{ClusterIn, CustomerIn, ErrorBody, Quota, RequestIn, TemplateIn};
use crate::log;
use crate::proto::{FleetMessage, Outcome, RequestId};
use crate::store::{Finish, Store, StoreError};
use crate::xmpp::{self, LinkConfig, LinkEvent, LinkHandle};

const WHO: &str = "upstream";
/// Largest REST body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// Errors that stop the upstream manager.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The database could not be opened.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The REST listener could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The XMPP link could not be started.
    #[error("{0}")]
    Link(#[from] xmpp::LinkError),
}

/// The upstream manager's configuration.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// SQLite database file.
    pub db: PathBuf,
    /// REST listen address.
    pub listen: SocketAddr,
    /// The XMPP link to the upstream domain.
    pub link: LinkConfig,
    /// How often unanswered requests are re-sent.
    pub retransmit: Duration,
    /// How long a cluster may be away (its downstream manager's presence
    /// gone) before its relocatable pending requests move elsewhere.
    pub relocate_after: Duration,
}

/// What the REST side tells the XMPP side.
#[derive(Debug)]
enum Notice {
    /// A request was accepted: send it.
    Request(RequestId),
    /// A cluster was registered: watch its presence, ask its state.
    Cluster(BareJid),
}

type Shared = Arc<Mutex<Store>>;

fn lock(s: &Shared) -> MutexGuard<'_, Store> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> i64 {
    i64::try_from(log::unix_ms()).unwrap_or(i64::MAX)
}

/// Runs the upstream manager until the process ends.
///
/// # Errors
///
/// [`UpstreamError`] when it cannot start.
pub async fn run(cfg: UpstreamConfig) -> Result<(), UpstreamError> {
    let store: Shared = Arc::new(Mutex::new(Store::open(&cfg.db)?));
    // We have not heard from any cluster in this life.
    lock(&store).forget_cluster_states()?;
    let server = tiny_http::Server::http(cfg.listen).map_err(|e| UpstreamError::Listen {
        addr: cfg.listen,
        reason: e.to_string(),
    })?;
    let bound = server
        .server_addr()
        .to_ip()
        .map_or_else(|| cfg.listen.to_string(), |a| a.to_string());
    let (notify_tx, mut notify_rx) = mpsc::unbounded_channel::<Notice>();
    let rest_store = store.clone();
    std::thread::spawn(move || rest_loop(&server, &rest_store, &notify_tx));
    log::line(WHO, &format!("rest listening on {bound}"));

    let (link, mut events) = xmpp::spawn(cfg.link)?;
    let mut tick = tokio::time::interval(cfg.retransmit.min(cfg.relocate_after));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_resend = tokio::time::Instant::now();
    // Clusters whose downstream manager's presence is gone, since when.
    let mut away: HashMap<String, tokio::time::Instant> = HashMap::new();
    // Clusters seen available since our link came up: only their going
    // unavailable means they left (a server answers a fresh subscription
    // with "unavailable" before it knows).
    let mut present: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else { return Ok(()) };
                match ev {
                    LinkEvent::Up => {
                        present.clear();
                        query_states(&store, &link);
                        resend(&store, &link, None);
                    }
                    LinkEvent::Message { from, reply_to, msg } => on_message(&store, &link, &from, &reply_to, *msg),
                    LinkEvent::Presence { from, available } => {
                        on_presence(&store, &link, (&mut away, &mut present), &from, available);
                    }
                    LinkEvent::SubscribeRequest { from } => {
                        log::line(WHO, &format!("presence subscription from {from} ignored"));
                    }
                }
            }
            n = notify_rx.recv() => match n {
                Some(Notice::Request(id)) => resend(&store, &link, Some(&id)),
                Some(Notice::Cluster(jid)) => {
                    link.subscribe(&jid);
                    link.send(&jid, FleetMessage::StateQuery {});
                }
                None => {}
            },
            _ = tick.tick() => {
                if last_resend.elapsed() >= cfg.retransmit {
                    last_resend = tokio::time::Instant::now();
                    resend(&store, &link, None);
                }
                relocate(&store, &link, &mut away, cfg.relocate_after);
            }
        }
    }
}

fn on_presence(
    store: &Shared,
    link: &LinkHandle,
    (away, present): (
        &mut HashMap<String, tokio::time::Instant>,
        &mut HashSet<String>,
    ),
    from: &BareJid,
    available: bool,
) {
    let st = lock(store);
    let Ok(Some(cluster)) = st.cluster_by_jid(&from.to_string()) else {
        return;
    };
    if available {
        away.remove(&cluster);
        if present.insert(cluster.clone()) {
            log::line(WHO, &format!("cluster {cluster} online"));
            link.send(from, FleetMessage::StateQuery {});
        }
    } else if present.remove(&cluster) {
        log::line(WHO, &format!("cluster {cluster} offline"));
        away.entry(cluster.clone())
            .or_insert_with(tokio::time::Instant::now);
        if let Err(e) = st.set_cluster_state(&cluster, None, now_ms()) {
            log::line(WHO, &format!("error: {e}"));
        }
    }
}

/// Moves relocatable work of clusters away longer than `after`.
fn relocate(
    store: &Shared,
    link: &LinkHandle,
    away: &mut HashMap<String, tokio::time::Instant>,
    after: Duration,
) {
    for (cluster, since) in away.iter() {
        if since.elapsed() < after {
            continue;
        }
        let moved = match lock(store).relocate_from(cluster, now_ms()) {
            Ok(m) => m,
            Err(e) => return log::line(WHO, &format!("error: {e}")),
        };
        for (id, to) in moved {
            log::line(
                WHO,
                &format!("request {id} moved from cluster {cluster} to {to} (cluster away)"),
            );
            resend(store, link, Some(&id));
        }
    }
}

fn query_states(store: &Shared, link: &LinkHandle) {
    let clusters = match lock(store).clusters() {
        Ok(c) => c,
        Err(e) => return log::line(WHO, &format!("error: {e}")),
    };
    for c in clusters {
        if let Ok(jid) = c.jid.parse::<BareJid>() {
            link.subscribe(&jid);
            link.send(&jid, FleetMessage::StateQuery {});
        }
    }
}

fn resend(store: &Shared, link: &LinkHandle, only: Option<&RequestId>) {
    let pending = match lock(store).pending() {
        Ok(p) => p,
        Err(e) => return log::line(WHO, &format!("error: {e}")),
    };
    for p in pending {
        if only.is_some_and(|id| p.msg.request_id() != Some(id)) {
            continue;
        }
        if let (Ok(jid), Some(id)) = (p.jid.parse::<BareJid>(), p.msg.request_id()) {
            log::line(WHO, &format!("send request {id} to {jid}"));
            link.send(&jid, p.msg);
        }
    }
}

fn on_message(
    store: &Shared,
    link: &LinkHandle,
    from: &BareJid,
    reply_to: &Jid,
    msg: Result<FleetMessage, crate::proto::DecodeError>,
) {
    let mut st = lock(store);
    let cluster = match st.cluster_by_jid(&from.to_string()) {
        Ok(Some(c)) => c,
        Ok(None) => {
            let reason = format!("sender {from} is not a registered cluster");
            log::line(WHO, &format!("refused message from {from}: {reason}"));
            link.reply(reply_to, FleetMessage::Error { id: None, reason });
            return;
        }
        Err(e) => return log::line(WHO, &format!("error: {e}")),
    };
    let msg = match msg {
        Ok(m) => m,
        Err(e) => {
            log::line(WHO, &format!("refused message from {from}: {e}"));
            link.reply(
                reply_to,
                FleetMessage::Error {
                    id: None,
                    reason: e.to_string(),
                },
            );
            return;
        }
    };
    let now = now_ms();
    let result = match msg {
        FleetMessage::State { state } => {
            log::line(
                WHO,
                &format!(
                    "state from cluster {cluster}: {} of {} VM slots used, {:?}",
                    state.vms_used, state.vm_slots, state.health
                ),
            );
            st.set_cluster_state(&cluster, Some(state), now)
        }
        FleetMessage::Result { id, outcome } => {
            match st.finish(&id, &cluster, &outcome, now) {
                Ok(Finish::Applied(view)) => {
                    log::line(
                        WHO,
                        &format!(
                            "result {id} from cluster {cluster}: {}",
                            view.outcome.status()
                        ),
                    );
                    Ok(())
                }
                Ok(Finish::Ignored) => {
                    log::line(
                        WHO,
                        &format!("duplicate or unknown result {id} from cluster {cluster} ignored"),
                    );
                    Ok(())
                }
                Ok(Finish::Compensate(undo)) => {
                    log::line(
                    WHO,
                    &format!("cluster {cluster} applied moved request {id} after all: undone by {undo}"),
                );
                    drop(st);
                    resend(store, link, Some(&undo));
                    return;
                }
                Err(e) => Err(e),
            }
        }
        FleetMessage::Error { id, reason } => {
            log::line(
                WHO,
                &format!("cluster {cluster} refused a message ({id:?}): {reason}"),
            );
            match id {
                Some(id) => {
                    let outcome = Outcome::Failed {
                        reason: format!("cluster {cluster} refused the request: {reason}"),
                    };
                    st.finish(&id, &cluster, &outcome, now).map(|_| ())
                }
                None => Ok(()),
            }
        }
        other @ (FleetMessage::Request { .. } | FleetMessage::StateQuery {}) => {
            let reason = format!("the upstream manager takes no '{}' messages", other.kind());
            link.reply(
                reply_to,
                FleetMessage::Error {
                    id: other.request_id().cloned(),
                    reason,
                },
            );
            Ok(())
        }
    };
    if let Err(e) = result {
        log::line(WHO, &format!("error: {e}"));
    }
}

/// One REST answer.
struct Reply {
    status: u16,
    body: String,
}

fn json<T: Serialize>(status: u16, v: &T) -> Reply {
    Reply {
        status,
        body: serde_json::to_string_pretty(v).unwrap_or_default(),
    }
}

fn error(status: u16, msg: impl Into<String>) -> Reply {
    json(status, &ErrorBody { error: msg.into() })
}

fn store_error(e: StoreError) -> Reply {
    match e {
        StoreError::Invalid(e) => error(400, e.to_string()),
        StoreError::Exists(_) => error(409, e.to_string()),
        StoreError::NotFound(_) => error(404, e.to_string()),
        StoreError::Db(_) | StoreError::Corrupt(_) => error(500, e.to_string()),
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|e| error(400, format!("invalid body: {e}")))
}

fn rest_loop(server: &tiny_http::Server, store: &Shared, notify: &mpsc::UnboundedSender<Notice>) {
    for mut req in server.incoming_requests() {
        let mut body = Vec::new();
        let too_big = req.body_length().is_some_and(|n| n > MAX_BODY);
        let reply = if too_big {
            error(413, format!("body larger than {MAX_BODY} bytes"))
        } else {
            use std::io::Read;
            match req
                .as_reader()
                .take(MAX_BODY as u64 + 1)
                .read_to_end(&mut body)
            {
                Err(e) => error(400, format!("cannot read body: {e}")),
                Ok(n) if n > MAX_BODY => error(413, format!("body larger than {MAX_BODY} bytes")),
                Ok(_) => route(req.method(), req.url(), &body, store, notify),
            }
        };
        let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]);
        let mut resp = tiny_http::Response::from_string(reply.body)
            .with_status_code(reply.status)
            // Always a Content-Length: clients need no chunked decoding.
            .with_chunked_threshold(usize::MAX);
        if let Ok(h) = header {
            resp = resp.with_header(h);
        }
        let _ = req.respond(resp);
    }
}

fn route(
    method: &tiny_http::Method,
    url: &str,
    body: &[u8],
    store: &Shared,
    notify: &mpsc::UnboundedSender<Notice>,
) -> Reply {
    use tiny_http::Method::{Get, Post, Put};
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let result: Result<Reply, Reply> = (|| {
        Ok(match (method, parts.as_slice()) {
            (Get, ["v1", "health"]) => json(200, &serde_json::json!({"ok": true})),
            (Get, ["v1", "customers"]) => json(200, &lock(store).customers().map_err(store_error)?),
            (Post, ["v1", "customers"]) => {
                let c: CustomerIn = parse(body)?;
                json(201, &lock(store).add_customer(&c).map_err(store_error)?)
            }
            (Get, ["v1", "customers", name]) => {
                json(200, &lock(store).customer(name).map_err(store_error)?)
            }
            (Put, ["v1", "customers", name, "quota"]) => {
                let q: Quota = parse(body)?;
                json(200, &lock(store).set_quota(name, q).map_err(store_error)?)
            }
            (Get, ["v1", "clusters"]) => json(200, &lock(store).clusters().map_err(store_error)?),
            (Post, ["v1", "clusters"]) => {
                let c: ClusterIn = parse(body)?;
                let view = lock(store).add_cluster(&c).map_err(store_error)?;
                if let Ok(jid) = view.jid.parse() {
                    let _ = notify.send(Notice::Cluster(jid));
                }
                json(201, &view)
            }
            (Get, ["v1", "clusters", name]) => {
                json(200, &lock(store).cluster(name).map_err(store_error)?)
            }
            (Get, ["v1", "templates"]) => json(200, &lock(store).templates().map_err(store_error)?),
            (Post, ["v1", "templates"]) => {
                let t: TemplateIn = parse(body)?;
                json(201, &lock(store).add_template(&t).map_err(store_error)?)
            }
            (Get, ["v1", "requests"]) => {
                let customer = query.split('&').find_map(|kv| kv.strip_prefix("customer="));
                json(200, &lock(store).requests(customer).map_err(store_error)?)
            }
            (Post, ["v1", "requests"]) => {
                let r: RequestIn = parse(body)?;
                let view = lock(store).submit(&r, now_ms()).map_err(store_error)?;
                log::line(
                    WHO,
                    &format!(
                        "request {} {} '{}' for {}: {}",
                        view.id,
                        view.op,
                        view.name,
                        view.customer,
                        view.outcome.status()
                    ),
                );
                if view.outcome == Outcome::Accepted {
                    let _ = notify.send(Notice::Request(RequestId(view.id.clone())));
                    json(202, &view)
                } else {
                    json(409, &view)
                }
            }
            (Get, ["v1", "requests", id]) => {
                match lock(store)
                    .request(&RequestId((*id).to_owned()))
                    .map_err(store_error)?
                {
                    Some(v) => json(200, &v),
                    None => error(404, format!("request '{id}' does not exist")),
                }
            }
            _ => error(404, format!("no route {method} {path}")),
        })
    })();
    result.unwrap_or_else(|e| e)
}
