//! The REST API's bodies (upstream manager), shared by the server and the
//! `stitch-fleet` CLI. Strict like the XMPP messages: unknown fields and wrong
//! types are refused with the serde reason, which names the field.

use serde::{Deserialize, Serialize};

use crate::proto::{validate_name, DecodeError, NodeState, Outcome, Policy};

/// `POST /v1/customers`, `PUT /v1/customers/{name}/quota` (without `name`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerIn {
    /// Customer name.
    pub name: String,
    /// Its quota.
    pub quota: Quota,
}

/// What a customer may hold across all clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Backend VMs.
    pub vms: u32,
    /// Stitch policies.
    pub policies: u32,
}

/// A customer with its quota and what it uses (defined plus in flight).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerView {
    /// Name.
    pub name: String,
    /// Quota.
    pub quota: Quota,
    /// Usage, counted like the quota.
    pub used: Quota,
}

/// `POST /v1/clusters`: a federated cluster, reached through its downstream
/// manager's XMPP account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterIn {
    /// Cluster name.
    pub name: String,
    /// The downstream manager's bare JID on the upstream XMPP domain.
    pub jid: String,
}

/// A cluster as the upstream sees it: one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterView {
    /// Name.
    pub name: String,
    /// Downstream manager's JID.
    pub jid: String,
    /// Last state the cluster reported since the upstream's link came up;
    /// `None`: not heard from (offline or unknown).
    pub state: Option<NodeState>,
    /// When that state arrived (Unix ms).
    pub updated_ms: Option<i64>,
}

/// `POST /v1/templates`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateIn {
    /// Name.
    pub name: String,
    /// Command run in the VM's namespace.
    pub command: String,
    /// Line the VM prints when it is ready.
    #[serde(default)]
    pub ready_line: Option<String>,
}

/// What a user asks for. Like the wire `Action`, but a VM names its template.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ApiAction {
    /// Define a VM from a template of the repository.
    DefineVm {
        /// VM name.
        name: String,
        /// Template name.
        template: String,
    },
    /// Remove a VM.
    RemoveVm {
        /// VM name.
        name: String,
    },
    /// Define a stitch policy for one of the customer's VMs.
    DefinePolicy {
        /// Policy name.
        name: String,
        /// VM.
        vm: String,
        /// The policy.
        policy: Policy,
    },
    /// Remove a policy.
    RemovePolicy {
        /// Policy name.
        name: String,
    },
    /// Define a load-balanced service.
    DefineService {
        /// Service name.
        name: String,
        /// Virtual address.
        vip: String,
        /// Backend VM names.
        backends: Vec<String>,
    },
}

/// `POST /v1/requests`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestIn {
    /// Customer.
    pub customer: String,
    /// Cluster to use; when absent the upstream picks the one with the most
    /// free capacity (for removals and policies: where the resource lives).
    #[serde(default)]
    pub cluster: Option<String>,
    /// What to do.
    pub action: ApiAction,
    /// May the upstream move the request to another cluster when its
    /// cluster goes away before answering (only `define_vm`)?
    #[serde(default)]
    pub relocatable: bool,
}

impl RequestIn {
    /// Checks names.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Invalid`].
    pub fn validate(&self) -> Result<(), DecodeError> {
        validate_name("customer", &self.customer)?;
        if let Some(c) = &self.cluster {
            validate_name("cluster", c)?;
        }
        match &self.action {
            ApiAction::DefineVm { name, template } => {
                validate_name("VM name", name)?;
                validate_name("template name", template)
            }
            ApiAction::RemoveVm { name } => validate_name("VM name", name),
            ApiAction::DefinePolicy { name, vm, .. } => {
                validate_name("policy name", name)?;
                validate_name("VM name", vm)
            }
            ApiAction::RemovePolicy { name } => validate_name("policy name", name),
            ApiAction::DefineService { name, backends, .. } => {
                validate_name("service name", name)?;
                backends
                    .iter()
                    .try_for_each(|b| validate_name("VM name", b))
            }
        }
    }
}

/// A request and its result.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestView {
    /// Id (`r<n>`).
    pub id: String,
    /// Customer.
    pub customer: String,
    /// Cluster it went to (none when refused before one was chosen).
    pub cluster: Option<String>,
    /// Operation (`define_vm`, ...).
    pub op: String,
    /// Resource name.
    pub name: String,
    /// Result so far.
    pub outcome: Outcome,
    /// The cluster it was moved away from (it went away before answering).
    #[serde(default)]
    pub moved_from: Option<String>,
    /// Created (Unix ms).
    pub created_ms: i64,
    /// Last change (Unix ms).
    pub updated_ms: i64,
}

/// Error body of every 4xx/5xx answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// What was wrong.
    pub error: String,
}
