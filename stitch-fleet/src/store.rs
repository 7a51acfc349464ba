//! The upstream manager's state in SQLite: customers and quotas, clusters (one
//! row per cluster, never per agent), the template repository, requests and
//! their results, and the resources each customer holds in each cluster.
//!
//! Every decision (accept or decline) is made and recorded in one transaction,
//! so a restart finds exactly what users were told. Time is passed in.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::api::{
    ApiAction, ClusterIn, ClusterView, CustomerIn, CustomerView, Quota, RequestIn, RequestView,
    TemplateIn,
};
use crate::proto::{
    validate_name, Action, DecodeError, FleetMessage, NodeState, Outcome, RequestId, ResourceKind,
    Template,
};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The input was invalid.
    #[error("{0}")]
    Invalid(#[from] DecodeError),
    /// The thing already exists.
    #[error("{0} already exists")]
    Exists(String),
    /// The thing does not exist.
    #[error("{0} does not exist")]
    NotFound(String),
    /// A stored row could not be read back (JSON column).
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// Who declines in the upstream.
const UPSTREAM: &str = "upstream";

/// The upstream manager's database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

/// What recording a cluster's result did.
#[derive(Debug, Clone)]
pub enum Finish {
    /// The request is final now.
    Applied(RequestView),
    /// Not pending in that cluster (a duplicate, or from the wrong cluster):
    /// nothing changed.
    Ignored,
    /// A cluster the request was moved away from applied it after all: a
    /// `remove_vm` to undo it there was recorded under this id, to be sent.
    Compensate(RequestId),
}

/// A request to (re-)send to a cluster.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The cluster's downstream manager JID.
    pub jid: String,
    /// The message.
    pub msg: FleetMessage,
}

impl Store {
    /// Opens (creating when needed) the database at `path`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS customers(
                name TEXT PRIMARY KEY, quota_vms INTEGER NOT NULL, quota_policies INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS clusters(
                name TEXT PRIMARY KEY, jid TEXT NOT NULL UNIQUE, state TEXT, updated_ms INTEGER);
             CREATE TABLE IF NOT EXISTS templates(
                name TEXT PRIMARY KEY, command TEXT NOT NULL, ready_line TEXT);
             CREATE TABLE IF NOT EXISTS requests(
                seq INTEGER PRIMARY KEY AUTOINCREMENT, customer TEXT NOT NULL, cluster TEXT,
                op TEXT NOT NULL, name TEXT NOT NULL, action TEXT, outcome TEXT NOT NULL,
                created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
                relocatable INTEGER NOT NULL DEFAULT 0, moved_from TEXT);
             CREATE TABLE IF NOT EXISTS resources(
                customer TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, cluster TEXT NOT NULL,
                PRIMARY KEY(customer, kind, name));",
        )?;
        Ok(Store { conn })
    }

    /// Adds a customer.
    ///
    /// # Errors
    ///
    /// [`StoreError::Exists`], [`StoreError::Invalid`].
    pub fn add_customer(&self, c: &CustomerIn) -> Result<CustomerView, StoreError> {
        validate_name("customer", &c.name)?;
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO customers(name, quota_vms, quota_policies) VALUES (?1, ?2, ?3)",
            params![c.name, c.quota.vms, c.quota.policies],
        )?;
        if n == 0 {
            return Err(StoreError::Exists(format!("customer '{}'", c.name)));
        }
        self.customer(&c.name)
    }

    /// Replaces a customer's quota (lowering it below usage refuses new
    /// definitions, removes nothing).
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`].
    pub fn set_quota(&self, name: &str, q: Quota) -> Result<CustomerView, StoreError> {
        let n = self.conn.execute(
            "UPDATE customers SET quota_vms = ?2, quota_policies = ?3 WHERE name = ?1",
            params![name, q.vms, q.policies],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("customer '{name}'")));
        }
        self.customer(name)
    }

    /// One customer with its usage.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`].
    pub fn customer(&self, name: &str) -> Result<CustomerView, StoreError> {
        let quota = self
            .conn
            .query_row(
                "SELECT quota_vms, quota_policies FROM customers WHERE name = ?1",
                [name],
                |r| {
                    Ok(Quota {
                        vms: r.get(0)?,
                        policies: r.get(1)?,
                    })
                },
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("customer '{name}'")))?;
        let used = Quota {
            vms: self.usage(name, ResourceKind::Vm)?,
            policies: self.usage(name, ResourceKind::Policy)?,
        };
        Ok(CustomerView {
            name: name.to_owned(),
            quota,
            used,
        })
    }

    /// Every customer.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub fn customers(&self) -> Result<Vec<CustomerView>, StoreError> {
        let names: Vec<String> = self
            .conn
            .prepare("SELECT name FROM customers ORDER BY name")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        names.iter().map(|n| self.customer(n)).collect()
    }

    /// Held resources of `kind` plus definitions of that kind still in flight.
    fn usage(&self, customer: &str, kind: ResourceKind) -> Result<u32, StoreError> {
        let held: u32 = self.conn.query_row(
            "SELECT COUNT(*) FROM resources WHERE customer = ?1 AND kind = ?2",
            params![customer, kind.as_str()],
            |r| r.get(0),
        )?;
        let op = match kind {
            ResourceKind::Vm => "define_vm",
            ResourceKind::Policy => "define_policy",
            ResourceKind::Service => "define_service",
        };
        let pending: u32 = self.conn.query_row(
            "SELECT COUNT(*) FROM requests WHERE customer = ?1 AND op = ?2
             AND json_extract(outcome, '$.status') = 'accepted'",
            params![customer, op],
            |r| r.get(0),
        )?;
        Ok(held + pending)
    }

    /// Registers a cluster.
    ///
    /// # Errors
    ///
    /// [`StoreError::Exists`], [`StoreError::Invalid`].
    pub fn add_cluster(&self, c: &ClusterIn) -> Result<ClusterView, StoreError> {
        validate_name("cluster", &c.name)?;
        let jid: tokio_xmpp::jid::BareJid = c.jid.parse().map_err(|e| {
            StoreError::Invalid(DecodeError::Invalid(format!(
                "jid '{}' is not a bare JID: {e}",
                c.jid
            )))
        })?;
        if jid.node().is_none() {
            return Err(StoreError::Invalid(DecodeError::Invalid(format!(
                "jid '{jid}' has no user part"
            ))));
        }
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO clusters(name, jid) VALUES (?1, ?2)",
            params![c.name, jid.to_string()],
        )?;
        if n == 0 {
            return Err(StoreError::Exists(format!(
                "cluster '{}' (or its jid)",
                c.name
            )));
        }
        self.cluster(&c.name)
    }

    fn cluster_row(
        r: &rusqlite::Row<'_>,
    ) -> rusqlite::Result<(String, String, Option<String>, Option<i64>)> {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    }

    fn cluster_view(
        row: (String, String, Option<String>, Option<i64>),
    ) -> Result<ClusterView, StoreError> {
        let state = row
            .2
            .map(|s| serde_json::from_str::<NodeState>(&s))
            .transpose()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(ClusterView {
            name: row.0,
            jid: row.1,
            state,
            updated_ms: row.3,
        })
    }

    /// One cluster.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`].
    pub fn cluster(&self, name: &str) -> Result<ClusterView, StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT name, jid, state, updated_ms FROM clusters WHERE name = ?1",
                [name],
                Self::cluster_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("cluster '{name}'")))?;
        Self::cluster_view(row)
    }

    /// Every cluster.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub fn clusters(&self) -> Result<Vec<ClusterView>, StoreError> {
        let rows: Vec<_> = self
            .conn
            .prepare("SELECT name, jid, state, updated_ms FROM clusters ORDER BY name")?
            .query_map([], Self::cluster_row)?
            .collect::<Result<_, _>>()?;
        rows.into_iter().map(Self::cluster_view).collect()
    }

    /// The cluster whose downstream manager is `jid`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub fn cluster_by_jid(&self, jid: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT name FROM clusters WHERE jid = ?1", [jid], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Records a cluster's reported state (`None`: not heard from since our
    /// link came up).
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub fn set_cluster_state(
        &self,
        name: &str,
        state: Option<NodeState>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let json = state.map(|s| serde_json::to_string(&s).unwrap_or_default());
        self.conn.execute(
            "UPDATE clusters SET state = ?2, updated_ms = ?3 WHERE name = ?1",
            params![name, json, now_ms],
        )?;
        Ok(())
    }

    /// Forgets every cluster's state (our link went down: we no longer know).
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub fn forget_cluster_states(&self) -> Result<(), StoreError> {
        self.conn.execute("UPDATE clusters SET state = NULL", [])?;
        Ok(())
    }

    /// Adds a template to the repository.
    ///
    /// # Errors
    ///
    /// [`StoreError::Exists`], [`StoreError::Invalid`].
    pub fn add_template(&self, t: &TemplateIn) -> Result<Template, StoreError> {
        let template = Template {
            name: t.name.clone(),
            command: t.command.clone(),
            ready_line: t.ready_line.clone(),
        };
        template.validate()?;
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO templates(name, command, ready_line) VALUES (?1, ?2, ?3)",
            params![template.name, template.command, template.ready_line],
        )?;
        if n == 0 {
            return Err(StoreError::Exists(format!("template '{}'", t.name)));
        }
        Ok(template)
    }

    /// The template repository.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub fn templates(&self) -> Result<Vec<Template>, StoreError> {
        Ok(self
            .conn
            .prepare("SELECT name, command, ready_line FROM templates ORDER BY name")?
            .query_map([], |r| {
                Ok(Template {
                    name: r.get(0)?,
                    command: r.get(1)?,
                    ready_line: r.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?)
    }

    fn template(&self, name: &str) -> Result<Option<Template>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT name, command, ready_line FROM templates WHERE name = ?1",
                [name],
                |r| {
                    Ok(Template {
                        name: r.get(0)?,
                        command: r.get(1)?,
                        ready_line: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    fn resource_cluster(
        &self,
        customer: &str,
        kind: ResourceKind,
        name: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT cluster FROM resources WHERE customer = ?1 AND kind = ?2 AND name = ?3",
                params![customer, kind.as_str(), name],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn pending_define(&self, customer: &str, op: &str, name: &str) -> Result<bool, StoreError> {
        let n: u32 = self.conn.query_row(
            "SELECT COUNT(*) FROM requests WHERE customer = ?1 AND op = ?2 AND name = ?3
             AND json_extract(outcome, '$.status') = 'accepted'",
            params![customer, op, name],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    /// Free VM slots of a cluster as the upstream knows them: reported free
    /// minus VM definitions in flight there. `None` when not heard from.
    fn free_slots(&self, cluster: &ClusterView) -> Result<Option<i64>, StoreError> {
        let Some(state) = cluster.state else {
            return Ok(None);
        };
        let pending: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM requests WHERE cluster = ?1 AND op = 'define_vm'
             AND json_extract(outcome, '$.status') = 'accepted'",
            [&cluster.name],
            |r| r.get(0),
        )?;
        Ok(Some(
            i64::from(state.vm_slots) - i64::from(state.vms_used) - pending,
        ))
    }

    /// Decides a user's request: accepted (to be sent to its cluster) or
    /// refused with the reason; records it either way.
    ///
    /// # Errors
    ///
    /// [`StoreError::Invalid`] for input that is not a request at all (bad
    /// names); [`StoreError::Db`].
    pub fn submit(&mut self, req: &RequestIn, now_ms: i64) -> Result<RequestView, StoreError> {
        req.validate()?;
        let decision = self.decide(req)?;
        let (op, name) = api_op_name(&req.action);
        let (cluster, action, outcome) = match decision {
            Ok((cluster, action)) => (Some(cluster), Some(action), Outcome::Accepted),
            Err((cluster, reason)) => (cluster, None, Outcome::refused(UPSTREAM, reason)),
        };
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO requests(customer, cluster, op, name, action, outcome, created_ms, updated_ms, relocatable)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8)",
            params![
                req.customer,
                cluster,
                op,
                name,
                action.map(|a| serde_json::to_string(&a).unwrap_or_default()),
                serde_json::to_string(&outcome).unwrap_or_default(),
                now_ms,
                req.relocatable && op == "define_vm"
            ],
        )?;
        let seq = tx.last_insert_rowid();
        tx.commit()?;
        self.request(&RequestId::from_seq(seq))?
            .ok_or_else(|| StoreError::Corrupt("request vanished".to_owned()))
    }

    /// `Ok((cluster, wire action))` or `Err((cluster if known, reason))`.
    #[allow(clippy::type_complexity)]
    fn decide(
        &self,
        req: &RequestIn,
    ) -> Result<Result<(String, Action), (Option<String>, String)>, StoreError> {
        let customer = match self.customer(&req.customer) {
            Ok(c) => c,
            Err(StoreError::NotFound(what)) => {
                return Ok(Err((None, format!("{what} does not exist"))))
            }
            Err(e) => return Err(e),
        };
        if let Some(c) = &req.cluster {
            if let Err(StoreError::NotFound(what)) = self.cluster(c) {
                return Ok(Err((None, format!("{what} does not exist"))));
            }
        }
        let given = req.cluster.clone();
        // Where an existing resource lives decides the cluster of removals
        // and of policies.
        let located =
            |kind, name: &str| -> Result<Result<String, (Option<String>, String)>, StoreError> {
                match self.resource_cluster(&req.customer, kind, name)? {
                    None => Ok(Err((
                        given.clone(),
                        format!(
                            "customer '{}' has no {} named '{name}'",
                            req.customer,
                            kind_word(kind)
                        ),
                    ))),
                    Some(cl) => match &given {
                        Some(g) if *g != cl => Ok(Err((
                            given.clone(),
                            format!(
                                "{} '{name}' lives in cluster '{cl}', not '{g}'",
                                kind_word(kind)
                            ),
                        ))),
                        _ => Ok(Ok(cl)),
                    },
                }
            };
        Ok(match &req.action {
            ApiAction::DefineVm { name, template } => {
                if self
                    .resource_cluster(&req.customer, ResourceKind::Vm, name)?
                    .is_some()
                    || self.pending_define(&req.customer, "define_vm", name)?
                {
                    return Ok(Err((given, format!("VM '{name}' already exists"))));
                }
                if customer.used.vms >= customer.quota.vms {
                    return Ok(Err((
                        given,
                        format!(
                            "customer '{}' is at its quota of {} VMs ({} defined or in flight)",
                            req.customer, customer.quota.vms, customer.used.vms
                        ),
                    )));
                }
                let Some(template) = self.template(template)? else {
                    return Ok(Err((
                        given,
                        format!("template '{template}' does not exist"),
                    )));
                };
                let cluster = match self.pick_cluster(given.as_deref())? {
                    Ok(c) => c,
                    Err(reason) => return Ok(Err((given, reason))),
                };
                Ok((
                    cluster,
                    Action::DefineVm {
                        name: name.clone(),
                        template,
                    },
                ))
            }
            ApiAction::RemoveVm { name } => located(ResourceKind::Vm, name)?
                .map(|c| (c, Action::RemoveVm { name: name.clone() })),
            ApiAction::DefinePolicy { name, vm, policy } => {
                if self
                    .resource_cluster(&req.customer, ResourceKind::Policy, name)?
                    .is_some()
                    || self.pending_define(&req.customer, "define_policy", name)?
                {
                    return Ok(Err((given, format!("policy '{name}' already exists"))));
                }
                if customer.used.policies >= customer.quota.policies {
                    return Ok(Err((
                        given,
                        format!(
                            "customer '{}' is at its quota of {} policies",
                            req.customer, customer.quota.policies
                        ),
                    )));
                }
                located(ResourceKind::Vm, vm)?.map(|c| {
                    (
                        c,
                        Action::DefinePolicy {
                            name: name.clone(),
                            vm: vm.clone(),
                            policy: policy.clone(),
                        },
                    )
                })
            }
            ApiAction::RemovePolicy { name } => located(ResourceKind::Policy, name)?
                .map(|c| (c, Action::RemovePolicy { name: name.clone() })),
            ApiAction::DefineService {
                name,
                vip,
                backends,
            } => {
                let cluster = match self.pick_cluster(given.as_deref())? {
                    Ok(c) => c,
                    Err(reason) => return Ok(Err((given, reason))),
                };
                Ok((
                    cluster,
                    Action::DefineService {
                        name: name.clone(),
                        vip: vip.clone(),
                        backends: backends.clone(),
                    },
                ))
            }
        })
    }

    /// The given cluster if it has a free slot, or the one with the most.
    fn pick_cluster(&self, given: Option<&str>) -> Result<Result<String, String>, StoreError> {
        let clusters = match given {
            Some(name) => vec![self.cluster(name)?],
            None => self.clusters()?,
        };
        let mut best: Option<(i64, String)> = None;
        let mut heard = 0;
        for c in &clusters {
            if let Some(free) = self.free_slots(c)? {
                heard += 1;
                if free > 0 && best.as_ref().is_none_or(|(f, _)| free > *f) {
                    best = Some((free, c.name.clone()));
                }
            }
        }
        Ok(match (best, given) {
            (Some((_, name)), _) => Ok(name),
            (None, Some(name)) if heard == 0 => Err(format!(
                "cluster '{name}' has not reported its state (offline or unreachable)"
            )),
            (None, Some(name)) => Err(format!("cluster '{name}' has no free VM capacity")),
            (None, None) if heard == 0 => {
                Err("no cluster has reported its state (none online)".to_owned())
            }
            (None, None) => Err("no cluster has free VM capacity".to_owned()),
        })
    }

    /// Requests accepted and not yet answered, with where they go.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`], [`StoreError::Corrupt`].
    pub fn pending(&self) -> Result<Vec<Pending>, StoreError> {
        let rows: Vec<(i64, String, String, String)> = self
            .conn
            .prepare(
                "SELECT r.seq, r.customer, c.jid, r.action FROM requests r JOIN clusters c
                 ON c.name = r.cluster WHERE json_extract(r.outcome, '$.status') = 'accepted'
                 ORDER BY r.seq",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(seq, customer, jid, action)| {
                let action: Action = serde_json::from_str(&action)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok(Pending {
                    jid,
                    msg: FleetMessage::Request {
                        id: RequestId::from_seq(seq),
                        customer,
                        action,
                    },
                })
            })
            .collect()
    }

    /// Moves the relocatable VM definitions still pending in `cluster` (which
    /// went away) to the cluster with the most free capacity. Returns the
    /// moved ids and where they went.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub fn relocate_from(
        &mut self,
        cluster: &str,
        now_ms: i64,
    ) -> Result<Vec<(RequestId, String)>, StoreError> {
        let seqs: Vec<i64> = self
            .conn
            .prepare(
                "SELECT seq FROM requests WHERE cluster = ?1 AND relocatable = 1 AND op = 'define_vm'
                 AND json_extract(outcome, '$.status') = 'accepted' ORDER BY seq",
            )?
            .query_map([cluster], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut moved = Vec::new();
        for seq in seqs {
            let Ok(to) = self.pick_cluster(None)? else {
                break;
            };
            if to == cluster {
                break;
            }
            self.conn.execute(
                "UPDATE requests SET cluster = ?2, moved_from = ?3, updated_ms = ?4 WHERE seq = ?1",
                params![seq, to, cluster, now_ms],
            )?;
            moved.push((RequestId::from_seq(seq), to));
        }
        Ok(moved)
    }

    /// Records a cluster's final result for a request. Only the first final
    /// result from the cluster the request is pending in counts; anything
    /// else changes nothing, except a success from a cluster the request was
    /// moved away from, which is undone there (see [`Finish::Compensate`]).
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`], [`StoreError::Corrupt`].
    pub fn finish(
        &mut self,
        id: &RequestId,
        cluster: &str,
        outcome: &Outcome,
        now_ms: i64,
    ) -> Result<Finish, StoreError> {
        if !outcome.is_final() {
            return Ok(Finish::Ignored);
        }
        let Some(seq) = id.0.strip_prefix('r').and_then(|d| d.parse::<i64>().ok()) else {
            return Ok(Finish::Ignored);
        };
        let tx = self.conn.transaction()?;
        let row: Option<(String, String, String, bool, bool)> = tx
            .query_row(
                "SELECT customer, op, name,
                        cluster = ?2 AND json_extract(outcome, '$.status') = 'accepted',
                        moved_from = ?2 AND cluster != ?2 AND NOT EXISTS (
                            SELECT 1 FROM requests u WHERE u.seq > requests.seq AND u.op = 'remove_vm'
                            AND u.customer = requests.customer AND u.name = requests.name AND u.cluster = ?2)
                 FROM requests WHERE seq = ?1 AND (cluster = ?2 OR moved_from = ?2)",
                params![seq, cluster],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        let Some((customer, op, name, pending_here, moved_away)) = row else {
            return Ok(Finish::Ignored);
        };
        if !pending_here {
            // Moved away from `cluster`; if it applied the VM anyway, undo it
            // there (once).
            if moved_away && op == "define_vm" && matches!(outcome, Outcome::Succeeded { .. }) {
                let action = Action::RemoveVm { name: name.clone() };
                tx.execute(
                    "INSERT INTO requests(customer, cluster, op, name, action, outcome, created_ms, updated_ms)
                     VALUES (?1, ?2, 'remove_vm', ?3, ?4, ?5, ?6, ?6)",
                    params![
                        customer,
                        cluster,
                        name,
                        serde_json::to_string(&action).unwrap_or_default(),
                        serde_json::to_string(&Outcome::Accepted).unwrap_or_default(),
                        now_ms
                    ],
                )?;
                let seq = tx.last_insert_rowid();
                tx.commit()?;
                return Ok(Finish::Compensate(RequestId::from_seq(seq)));
            }
            return Ok(Finish::Ignored);
        }
        tx.execute(
            "UPDATE requests SET outcome = ?2, updated_ms = ?3 WHERE seq = ?1",
            params![
                seq,
                serde_json::to_string(outcome).unwrap_or_default(),
                now_ms
            ],
        )?;
        if matches!(outcome, Outcome::Succeeded { .. }) {
            let kind = match op.as_str() {
                "define_vm" | "remove_vm" => Some(ResourceKind::Vm),
                "define_policy" | "remove_policy" => Some(ResourceKind::Policy),
                "define_service" => Some(ResourceKind::Service),
                _ => None,
            };
            if let Some(kind) = kind {
                if op.starts_with("define") {
                    tx.execute(
                        "INSERT OR REPLACE INTO resources(customer, kind, name, cluster) VALUES (?1, ?2, ?3, ?4)",
                        params![customer, kind.as_str(), name, cluster],
                    )?;
                } else {
                    // Only where it was removed: a compensating removal in a
                    // cluster the VM was moved away from leaves the real one.
                    tx.execute(
                        "DELETE FROM resources WHERE customer = ?1 AND kind = ?2 AND name = ?3 AND cluster = ?4",
                        params![customer, kind.as_str(), name, cluster],
                    )?;
                }
            }
        }
        tx.commit()?;
        Ok(match self.request(id)? {
            Some(v) => Finish::Applied(v),
            None => Finish::Ignored,
        })
    }

    /// One request.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`], [`StoreError::Corrupt`].
    pub fn request(&self, id: &RequestId) -> Result<Option<RequestView>, StoreError> {
        let Some(seq) = id.0.strip_prefix('r').and_then(|d| d.parse::<i64>().ok()) else {
            return Ok(None);
        };
        let mut v = self.requests_where("WHERE seq = ?1", params![seq])?;
        Ok(v.pop())
    }

    /// Requests, newest last, optionally of one customer.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`], [`StoreError::Corrupt`].
    pub fn requests(&self, customer: Option<&str>) -> Result<Vec<RequestView>, StoreError> {
        match customer {
            Some(c) => self.requests_where("WHERE customer = ?1", params![c]),
            None => self.requests_where("", params![]),
        }
    }

    fn requests_where(
        &self,
        clause: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<RequestView>, StoreError> {
        let sql = format!(
            "SELECT seq, customer, cluster, op, name, outcome, created_ms, updated_ms, moved_from FROM requests {clause} ORDER BY seq"
        );
        let rows: Vec<RequestRow> = self
            .conn
            .prepare(&sql)?
            .query_map(args, |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(
                |(
                    seq,
                    customer,
                    cluster,
                    op,
                    name,
                    outcome,
                    created_ms,
                    updated_ms,
                    moved_from,
                )| {
                    Ok(RequestView {
                        id: RequestId::from_seq(seq).0,
                        customer,
                        cluster,
                        op,
                        name,
                        outcome: serde_json::from_str(&outcome)
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                        created_ms,
                        updated_ms,
                        moved_from,
                    })
                },
            )
            .collect()
    }
}

/// seq, customer, cluster, op, name, outcome, created, updated, moved_from.
type RequestRow = (
    i64,
    String,
    Option<String>,
    String,
    String,
    String,
    i64,
    i64,
    Option<String>,
);

fn kind_word(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Vm => "VM",
        ResourceKind::Policy => "policy",
        ResourceKind::Service => "service",
    }
}

fn api_op_name(a: &ApiAction) -> (&'static str, &str) {
    match a {
        ApiAction::DefineVm { name, .. } => ("define_vm", name),
        ApiAction::RemoveVm { name } => ("remove_vm", name),
        ApiAction::DefinePolicy { name, .. } => ("define_policy", name),
        ApiAction::RemovePolicy { name } => ("remove_policy", name),
        ApiAction::DefineService { name, .. } => ("define_service", name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Health;

    fn store() -> Store {
        let mut s = Store::open(Path::new(":memory:")).unwrap();
        s.add_customer(&CustomerIn {
            name: "acme".into(),
            quota: Quota {
                vms: 1,
                policies: 1,
            },
        })
        .unwrap();
        s.add_cluster(&ClusterIn {
            name: "a".into(),
            jid: "ds-a@up.test".into(),
        })
        .unwrap();
        s.add_template(&TemplateIn {
            name: "sleeper".into(),
            command: "sleep 100".into(),
            ready_line: None,
        })
        .unwrap();
        s.set_cluster_state(
            "a",
            Some(NodeState {
                vm_slots: 4,
                vms_used: 0,
                health: Health::Ok,
            }),
            1,
        )
        .unwrap();
        let _ = &mut s;
        s
    }

    fn define(name: &str) -> RequestIn {
        RequestIn {
            customer: "acme".into(),
            cluster: None,
            action: ApiAction::DefineVm {
                name: name.into(),
                template: "sleeper".into(),
            },
            relocatable: true,
        }
    }

    #[test]
    fn second_vm_over_quota_is_refused_by_upstream_and_recorded() {
        let mut s = store();
        let r1 = s.submit(&define("web-1"), 10).unwrap();
        assert_eq!(r1.outcome, Outcome::Accepted);
        assert_eq!(r1.cluster.as_deref(), Some("a"));
        let r2 = s.submit(&define("web-2"), 11).unwrap();
        match r2.outcome {
            Outcome::Refused { reason, by } => {
                assert_eq!(by, "upstream");
                assert!(reason.contains("quota of 1 VMs"), "{reason}");
            }
            other => panic!("expected refusal, got {other:?}"),
        }
        assert_eq!(s.pending().unwrap().len(), 1);
    }

    #[test]
    fn result_applies_once_and_duplicates_change_nothing() {
        let mut s = store();
        let r1 = s.submit(&define("web-1"), 10).unwrap();
        let id = RequestId(r1.id.clone());
        let ok = Outcome::Succeeded { detail: "x".into() };
        assert!(matches!(
            s.finish(&id, "a", &ok, 20).unwrap(),
            Finish::Applied(_)
        ));
        assert!(matches!(
            s.finish(&id, "a", &ok, 21).unwrap(),
            Finish::Ignored
        ));
        assert_eq!(s.customer("acme").unwrap().used.vms, 1);
        assert!(s.pending().unwrap().is_empty());
    }

    #[test]
    fn result_from_the_wrong_cluster_is_ignored() {
        let mut s = store();
        let r1 = s.submit(&define("web-1"), 10).unwrap();
        let id = RequestId(r1.id.clone());
        let ok = Outcome::Succeeded { detail: "x".into() };
        assert!(matches!(
            s.finish(&id, "b", &ok, 20).unwrap(),
            Finish::Ignored
        ));
        assert_eq!(s.pending().unwrap().len(), 1);
    }

    #[test]
    fn a_gone_clusters_pending_vm_moves_and_a_late_success_there_is_undone() {
        let mut s = store();
        s.add_cluster(&ClusterIn {
            name: "b".into(),
            jid: "ds-b@up.test".into(),
        })
        .unwrap();
        s.set_cluster_state(
            "b",
            Some(NodeState {
                vm_slots: 2,
                vms_used: 0,
                health: Health::Ok,
            }),
            1,
        )
        .unwrap();
        let mut req = define("web-1");
        req.cluster = Some("a".into());
        let r1 = RequestId(s.submit(&req, 10).unwrap().id);
        s.set_cluster_state("a", None, 11).unwrap();
        assert_eq!(
            s.relocate_from("a", 12).unwrap(),
            vec![(r1.clone(), "b".to_owned())]
        );
        assert_eq!(
            s.request(&r1).unwrap().unwrap().moved_from.as_deref(),
            Some("a")
        );
        let ok = Outcome::Succeeded { detail: "x".into() };
        let Finish::Compensate(undo) = s.finish(&r1, "a", &ok, 13).unwrap() else {
            panic!("a late success in the old cluster must be undone");
        };
        // Once: a duplicate of that late result changes nothing.
        assert!(matches!(
            s.finish(&r1, "a", &ok, 13).unwrap(),
            Finish::Ignored
        ));
        assert!(matches!(
            s.finish(&r1, "b", &ok, 14).unwrap(),
            Finish::Applied(_)
        ));
        let pending = s.pending().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].jid, "ds-a@up.test");
        assert!(matches!(
            &pending[0].msg,
            FleetMessage::Request { action: Action::RemoveVm { name }, .. } if name == "web-1"
        ));
        assert!(matches!(
            s.finish(&undo, "a", &ok, 15).unwrap(),
            Finish::Applied(_)
        ));
        // The VM still counts once, in cluster b.
        assert_eq!(s.customer("acme").unwrap().used.vms, 1);
        assert_eq!(
            s.resource_cluster("acme", ResourceKind::Vm, "web-1")
                .unwrap()
                .as_deref(),
            Some("b")
        );
    }
}
