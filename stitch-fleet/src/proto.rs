//! The fleet's messages: what travels over XMPP between the upstream manager,
//! the downstream managers and the agents, and what the REST API takes.
//!
//! This is a leaf module: it imports nothing of its users. Every message is a
//! typed Rust value; on the wire it is one `<fleet xmlns="urn:stitchd:fleet:1"/>`
//! payload element inside a `<message type="normal"/>` stanza whose text is the
//! JSON form of [`FleetMessage`] (schema in `docs/fleet.md`). Decoding is strict:
//! unknown fields, wrong types, bad names and oversized payloads are refused with
//! a reason, and a refused message changes nothing.

use serde::{Deserialize, Serialize};

/// XML namespace of the fleet payload element.
pub const NS: &str = "urn:stitchd:fleet:1";
/// Name of the fleet payload element.
pub const ELEMENT: &str = "fleet";
/// Largest payload text accepted (bytes). Far above any real message (a
/// template command is at most [`MAX_COMMAND_LEN`]), far below what would let a
/// peer make a component allocate without bound.
pub const MAX_PAYLOAD_LEN: usize = 16 * 1024;
/// Longest template command accepted.
pub const MAX_COMMAND_LEN: usize = 4096;
/// Longest name (customer, cluster, VM, policy, template).
pub const MAX_NAME_LEN: usize = 48;

/// Why a message or a REST body was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The payload is larger than [`MAX_PAYLOAD_LEN`].
    #[error("payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Size received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The stanza carries no `<fleet xmlns="urn:stitchd:fleet:1"/>` element.
    #[error("no <fleet xmlns=\"urn:stitchd:fleet:1\"/> payload in the stanza")]
    NoPayload,
    /// The JSON does not match the schema (the serde message names the field).
    #[error("invalid message: {0}")]
    Schema(String),
    /// A field has the right type but a value that is not allowed.
    #[error("invalid value: {0}")]
    Invalid(String),
}

/// A request id, chosen by the upstream manager: `r` followed by decimal digits.
/// It is the idempotency key on every hop.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub String);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl RequestId {
    /// The id of the `n`th request.
    pub fn from_seq(n: i64) -> RequestId {
        RequestId(format!("r{n}"))
    }

    /// Checks the form `r<digits>`.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Invalid`] when it has another form.
    pub fn validate(&self) -> Result<(), DecodeError> {
        let digits = self.0.strip_prefix('r').unwrap_or("");
        if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DecodeError::Invalid(format!(
                "request id '{}' is not of the form r<digits>",
                truncate(&self.0)
            )));
        }
        Ok(())
    }
}

/// Checks a name: 1 to [`MAX_NAME_LEN`] of `[a-z0-9-]`, starting with a letter
/// or digit. Names end up in namespace names, log lines and SQL rows, so they
/// are kept boring.
///
/// # Errors
///
/// [`DecodeError::Invalid`] naming `what` and why.
pub fn validate_name(what: &str, name: &str) -> Result<(), DecodeError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(DecodeError::Invalid(format!(
            "{what} '{}' must be 1 to {MAX_NAME_LEN} characters of a-z, 0-9 and '-', not starting with '-'",
            truncate(name)
        )))
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= 64 {
        s.to_owned()
    } else {
        let mut end = 64;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    }
}

/// A backend template: what a "virtual machine" runs. The upstream keeps the
/// repository of templates and sends the template with each request, so the
/// agents' copy is always the one the request was accepted with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Template name.
    pub name: String,
    /// Shell command run inside the VM's network namespace (`sh -c`).
    pub command: String,
    /// When set, the VM counts as started only once its standard output
    /// prints this line; otherwise as soon as the process runs.
    #[serde(default)]
    pub ready_line: Option<String>,
}

impl Template {
    /// Checks the name and the command's size.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Invalid`].
    pub fn validate(&self) -> Result<(), DecodeError> {
        validate_name("template name", &self.name)?;
        if self.command.is_empty() || self.command.len() > MAX_COMMAND_LEN {
            return Err(DecodeError::Invalid(format!(
                "template command must be 1 to {MAX_COMMAND_LEN} bytes"
            )));
        }
        if self.command.contains('\0') {
            return Err(DecodeError::Invalid(
                "template command contains a NUL byte".to_owned(),
            ));
        }
        if let Some(line) = &self.ready_line {
            if line.is_empty() || line.len() > 256 || line.contains('\n') {
                return Err(DecodeError::Invalid(
                    "ready_line must be 1 to 256 bytes on one line".to_owned(),
                ));
            }
        }
        Ok(())
    }
}

/// A stitch policy, applied to the stitchd of the agent that hosts `vm`,
/// through stitchd's control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Policy {
    /// A static MAC entry (`mac.add`).
    MacStatic {
        /// MAC address, `aa:bb:cc:dd:ee:ff`.
        mac: String,
        /// Switch port.
        port: u16,
    },
    /// Port security (`port.security.set`): only these source MACs on `port`.
    PortSecurity {
        /// Switch port.
        port: u16,
        /// Allowed source MACs.
        allow: Vec<String>,
    },
}

impl Policy {
    fn validate(&self) -> Result<(), DecodeError> {
        let macs: &[String] = match self {
            Policy::MacStatic { mac, .. } => std::slice::from_ref(mac),
            Policy::PortSecurity { allow, .. } => allow,
        };
        if macs.len() > 64 {
            return Err(DecodeError::Invalid("at most 64 MACs".to_owned()));
        }
        for mac in macs {
            let parts: Vec<&str> = mac.split(':').collect();
            let ok = parts.len() == 6
                && parts
                    .iter()
                    .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
            if !ok {
                return Err(DecodeError::Invalid(format!(
                    "'{}' is not a MAC address (aa:bb:cc:dd:ee:ff)",
                    truncate(mac)
                )));
            }
        }
        Ok(())
    }
}

/// What a provisioning request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Define (create and start) a backend "virtual machine" from a template.
    DefineVm {
        /// VM name, unique per customer.
        name: String,
        /// The template, resolved by the upstream from its repository.
        template: Template,
    },
    /// Stop and remove a VM.
    RemoveVm {
        /// VM name.
        name: String,
    },
    /// Define a stitch policy for a VM's switch port.
    DefinePolicy {
        /// Policy name, unique per customer.
        name: String,
        /// The VM whose agent's stitchd gets the policy.
        vm: String,
        /// What to apply.
        policy: Policy,
    },
    /// Remove a policy.
    RemovePolicy {
        /// Policy name.
        name: String,
    },
    /// Define a load-balanced service (refused until stitchd has a load balancer).
    DefineService {
        /// Service name.
        name: String,
        /// Virtual address `ip:port`.
        vip: String,
        /// Backend VM names.
        backends: Vec<String>,
    },
}

impl Action {
    /// Checks every name and value.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Invalid`].
    pub fn validate(&self) -> Result<(), DecodeError> {
        match self {
            Action::DefineVm { name, template } => {
                validate_name("VM name", name)?;
                template.validate()
            }
            Action::RemoveVm { name } => validate_name("VM name", name),
            Action::DefinePolicy { name, vm, policy } => {
                validate_name("policy name", name)?;
                validate_name("VM name", vm)?;
                policy.validate()
            }
            Action::RemovePolicy { name } => validate_name("policy name", name),
            Action::DefineService { name, backends, .. } => {
                validate_name("service name", name)?;
                if backends.len() > 64 {
                    return Err(DecodeError::Invalid("at most 64 backends".to_owned()));
                }
                backends
                    .iter()
                    .try_for_each(|b| validate_name("VM name", b))
            }
        }
    }

    /// The kind of resource the action is about.
    pub fn resource(&self) -> (ResourceKind, &str) {
        match self {
            Action::DefineVm { name, .. } | Action::RemoveVm { name } => (ResourceKind::Vm, name),
            Action::DefinePolicy { name, .. } | Action::RemovePolicy { name } => {
                (ResourceKind::Policy, name)
            }
            Action::DefineService { name, .. } => (ResourceKind::Service, name),
        }
    }

    /// Whether the action creates (true) or removes (false) its resource.
    pub fn defines(&self) -> bool {
        !matches!(self, Action::RemoveVm { .. } | Action::RemovePolicy { .. })
    }

    /// The operation's name as on the wire (`define_vm`, ...).
    pub fn op(&self) -> &'static str {
        match self {
            Action::DefineVm { .. } => "define_vm",
            Action::RemoveVm { .. } => "remove_vm",
            Action::DefinePolicy { .. } => "define_policy",
            Action::RemovePolicy { .. } => "remove_policy",
            Action::DefineService { .. } => "define_service",
        }
    }
}

/// Kinds of resources a customer holds in a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    /// A backend VM (uses one VM slot).
    Vm,
    /// A stitch policy.
    Policy,
    /// A load-balanced service.
    Service,
}

impl ResourceKind {
    /// Name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Vm => "vm",
            ResourceKind::Policy => "policy",
            ResourceKind::Service => "service",
        }
    }
}

/// The result of a request, as the user sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    /// Accepted by the upstream, on its way or being applied.
    Accepted,
    /// Declined (quota, capacity, not supported, unknown name) with the reason;
    /// nothing was applied.
    Refused {
        /// Why.
        reason: String,
        /// Who declined: `upstream`, `downstream` or `agent`.
        by: String,
    },
    /// Applied.
    Succeeded {
        /// What was done, where.
        detail: String,
    },
    /// Tried and failed; nothing is left behind.
    Failed {
        /// Why.
        reason: String,
    },
}

impl Outcome {
    /// Whether this is a final result.
    pub fn is_final(&self) -> bool {
        !matches!(self, Outcome::Accepted)
    }

    /// A refusal by `by`.
    pub fn refused(by: &str, reason: impl Into<String>) -> Outcome {
        Outcome::Refused {
            reason: reason.into(),
            by: by.to_owned(),
        }
    }

    /// The status word (`accepted`, `refused`, `succeeded`, `failed`).
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Refused { .. } => "refused",
            Outcome::Succeeded { .. } => "succeeded",
            Outcome::Failed { .. } => "failed",
        }
    }
}

/// Health of a node (an agent, or a whole cluster as the upstream sees it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Everything it runs is up.
    Ok,
    /// Up, but something it runs has failed (a VM exited, stitchd unreachable,
    /// an agent of the cluster silent).
    Degraded,
}

/// Capacity and health of a node. For a cluster it is the sum over its agents:
/// the upstream sees one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeState {
    /// VM slots in total.
    pub vm_slots: u32,
    /// VM slots in use.
    pub vms_used: u32,
    /// Health.
    pub health: Health,
}

/// One fleet message. The JSON text of the `<fleet/>` element.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FleetMessage {
    /// Apply `action` for `customer` (upstream -> downstream -> agent).
    /// Re-sent until a final result comes back; applied at most once per id.
    Request {
        /// Idempotency key.
        id: RequestId,
        /// Customer the resource belongs to.
        customer: String,
        /// What to do.
        action: Action,
    },
    /// The result of a request (agent -> downstream -> upstream).
    Result {
        /// The request's id.
        id: RequestId,
        /// Its final outcome.
        outcome: Outcome,
    },
    /// Capacity and health (agent -> downstream, downstream -> upstream), sent
    /// when it changes and when the link comes (back) up.
    State {
        /// The state.
        state: NodeState,
    },
    /// Asks the peer to send its state now (after a link comes back).
    /// (A struct variant with no fields, so unknown fields are refused.)
    StateQuery {},
    /// The receiver refused a message it could not accept (bad input, unknown
    /// sender); nothing was applied.
    Error {
        /// The request id it was about, when it could be read.
        #[serde(default)]
        id: Option<RequestId>,
        /// Why.
        reason: String,
    },
}

impl FleetMessage {
    /// JSON text for the payload element.
    pub fn to_json(&self) -> String {
        // A closed set of types with string keys: serialisation cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!("{{\"type\":\"error\",\"reason\":\"cannot encode message: {e}\"}}")
        })
    }

    /// Parses and validates a payload's text.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] with the reason; nothing may be applied then.
    pub fn from_json(text: &str) -> Result<FleetMessage, DecodeError> {
        if text.len() > MAX_PAYLOAD_LEN {
            return Err(DecodeError::TooLarge {
                len: text.len(),
                max: MAX_PAYLOAD_LEN,
            });
        }
        let msg: FleetMessage =
            serde_json::from_str(text).map_err(|e| DecodeError::Schema(e.to_string()))?;
        msg.validate()?;
        Ok(msg)
    }

    /// Checks the values the schema alone cannot.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Invalid`].
    pub fn validate(&self) -> Result<(), DecodeError> {
        match self {
            FleetMessage::Request {
                id,
                customer,
                action,
            } => {
                id.validate()?;
                validate_name("customer", customer)?;
                action.validate()
            }
            FleetMessage::Result { id, .. } => id.validate(),
            FleetMessage::State { state } => {
                if state.vms_used > state.vm_slots.saturating_add(1_000_000) {
                    return Err(DecodeError::Invalid("vms_used is absurd".to_owned()));
                }
                Ok(())
            }
            FleetMessage::StateQuery {} | FleetMessage::Error { .. } => Ok(()),
        }
    }

    /// The message's `type` as on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            FleetMessage::Request { .. } => "request",
            FleetMessage::Result { .. } => "result",
            FleetMessage::State { .. } => "state",
            FleetMessage::StateQuery {} => "state_query",
            FleetMessage::Error { .. } => "error",
        }
    }

    /// The request id the message is about, if any.
    pub fn request_id(&self) -> Option<&RequestId> {
        match self {
            FleetMessage::Request { id, .. } | FleetMessage::Result { id, .. } => Some(id),
            FleetMessage::Error { id, .. } => id.as_ref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm_request() -> FleetMessage {
        FleetMessage::Request {
            id: RequestId::from_seq(7),
            customer: "acme".to_owned(),
            action: Action::DefineVm {
                name: "web-1".to_owned(),
                template: Template {
                    name: "sleeper".to_owned(),
                    command: "sleep 1000".to_owned(),
                    ready_line: None,
                },
            },
        }
    }

    #[test]
    fn request_round_trips_through_json() {
        let msg = vm_request();
        assert_eq!(FleetMessage::from_json(&msg.to_json()), Ok(msg));
    }

    #[test]
    fn kind_is_the_wire_type() {
        let msgs = [
            vm_request(),
            FleetMessage::StateQuery {},
            FleetMessage::Error {
                id: None,
                reason: "x".to_owned(),
            },
        ];
        for m in msgs {
            assert!(m
                .to_json()
                .starts_with(&format!("{{\"type\":\"{}\"", m.kind())));
        }
    }

    #[test]
    fn unknown_field_is_refused_and_named() {
        let text = r#"{"type":"state_query","colour":"red"}"#;
        let err = FleetMessage::from_json(text).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn wrong_type_is_refused() {
        let text = r#"{"type":"state","state":{"vm_slots":"four","vms_used":0,"health":"ok"}}"#;
        assert!(matches!(
            FleetMessage::from_json(text),
            Err(DecodeError::Schema(_))
        ));
    }

    #[test]
    fn oversized_payload_is_refused_before_parsing() {
        let text = "x".repeat(MAX_PAYLOAD_LEN + 1);
        assert_eq!(
            FleetMessage::from_json(&text),
            Err(DecodeError::TooLarge {
                len: MAX_PAYLOAD_LEN + 1,
                max: MAX_PAYLOAD_LEN
            })
        );
    }

    #[test]
    fn bad_names_and_ids_are_refused() {
        assert!(validate_name("VM name", "Web").is_err());
        assert!(validate_name("VM name", "").is_err());
        assert!(validate_name("VM name", "-a").is_err());
        assert!(validate_name("VM name", &"a".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(validate_name("VM name", "web-1").is_ok());
        assert!(RequestId("x1".to_owned()).validate().is_err());
        assert!(RequestId("r".to_owned()).validate().is_err());
        assert!(RequestId("r12".to_owned()).validate().is_ok());
    }

    #[test]
    fn bad_mac_in_policy_is_refused() {
        let action = Action::DefinePolicy {
            name: "p".to_owned(),
            vm: "web-1".to_owned(),
            policy: Policy::MacStatic {
                mac: "02:00:00:00:00".to_owned(),
                port: 1,
            },
        };
        assert!(action.validate().is_err());
    }
}
