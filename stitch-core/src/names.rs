//! Human names of the protocol's enumerations, shared by both agents' output and
//! configuration ("4E", "client", "fin").

use agent_proto::{EndKind, Side, Teardown};

/// "4B".."4E", or "unknown(N)".
pub fn variant(v: Teardown) -> String {
    match v {
        Teardown::B => "4B".into(),
        Teardown::C => "4C".into(),
        Teardown::D => "4D".into(),
        Teardown::E => "4E".into(),
        Teardown::Unknown(n) => format!("unknown({n})"),
    }
}

/// Parses "4B".."4E" (also "B".."E", any case).
pub fn parse_variant(s: &str) -> Option<Teardown> {
    let s = s.trim().to_ascii_uppercase();
    match s.strip_prefix('4').unwrap_or(&s) {
        "B" => Some(Teardown::B),
        "C" => Some(Teardown::C),
        "D" => Some(Teardown::D),
        "E" => Some(Teardown::E),
        _ => None,
    }
}

/// "client", "shell", "core", or "unknown(N)".
pub fn side(s: Side) -> String {
    match s {
        Side::Client => "client".into(),
        Side::Shell => "shell".into(),
        Side::Core => "core".into(),
        Side::Unknown(n) => format!("unknown({n})"),
    }
}

/// "fin", "rst", "idle", "deleted", or "unknown(N)".
pub fn end_kind(k: EndKind) -> String {
    match k {
        EndKind::Fin => "fin".into(),
        EndKind::Rst => "rst".into(),
        EndKind::Idle => "idle".into(),
        EndKind::Deleted => "deleted".into(),
        EndKind::Unknown(n) => format!("unknown({n})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_round_trip_through_their_names() {
        for v in [Teardown::B, Teardown::C, Teardown::D, Teardown::E] {
            assert_eq!(parse_variant(&variant(v)), Some(v));
        }
        assert_eq!(parse_variant("e"), Some(Teardown::E));
        assert_eq!(parse_variant("4F"), None);
    }
}
