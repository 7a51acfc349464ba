//! Matching scopes: named sets of members allowed to be switched to each other.
//!
//! A scope has a name (configuration and logs), a key id (its name on the wire), a
//! 32-byte HMAC key shared by its members, and the global ids of its members. Several
//! scopes may exist on one host. Holding the key proves membership of the scope; the
//! member list additionally pins which global ids may publish in it, so one member
//! cannot publish on behalf of an id the policy did not list.

use std::collections::HashMap;
use std::fmt;

use agent_proto::{parse_hex_key, KeyError, KEY_LEN};

/// One matching scope.
#[derive(Clone)]
pub struct Scope {
    /// Name used in configuration and logs.
    pub name: String,
    /// The scope's name on the wire: the key id of every datagram signed with its key.
    pub key_id: u32,
    /// Global ids allowed to publish in this scope; empty: any key holder.
    pub members: Vec<u64>,
    pub(crate) key: [u8; KEY_LEN],
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope")
            .field("name", &self.name)
            .field("key_id", &self.key_id)
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

impl Scope {
    /// A scope from its key as 64 hex digits (either case).
    ///
    /// # Errors
    /// [`KeyError`] when the key is not exactly 64 hex digits.
    pub fn from_hex(
        name: &str,
        key_id: u32,
        key_hex: &str,
        members: Vec<u64>,
    ) -> Result<Scope, KeyError> {
        Ok(Scope {
            name: name.to_string(),
            key_id,
            members,
            key: parse_hex_key(key_hex)?,
        })
    }

    /// Whether `global_id` may publish in this scope.
    pub fn admits(&self, global_id: u64) -> bool {
        self.members.is_empty() || self.members.contains(&global_id)
    }
}

/// The scopes this process belongs to, by key id. Keys are never printed.
#[derive(Debug, Clone, Default)]
pub struct Scopes {
    by_id: HashMap<u32, Scope>,
}

impl Scopes {
    /// The given scopes; a later scope with the same key id replaces an earlier one.
    pub fn new(scopes: impl IntoIterator<Item = Scope>) -> Scopes {
        Scopes {
            by_id: scopes.into_iter().map(|s| (s.key_id, s)).collect(),
        }
    }

    /// The scope with this key id.
    pub fn get(&self, key_id: u32) -> Option<&Scope> {
        self.by_id.get(&key_id)
    }

    /// The scope with this name.
    pub fn by_name(&self, name: &str) -> Option<&Scope> {
        self.by_id.values().find(|s| s.name == name)
    }

    /// Adds or replaces a scope (by key id); a scope with the same name and another key
    /// id is removed first. Returns whether one was replaced.
    pub fn insert(&mut self, scope: Scope) -> bool {
        let name = scope.name.clone();
        let other_ids: Vec<u32> = self
            .by_id
            .values()
            .filter(|s| s.name == name && s.key_id != scope.key_id)
            .map(|s| s.key_id)
            .collect();
        let mut replaced = !other_ids.is_empty();
        for id in other_ids {
            self.by_id.remove(&id);
        }
        replaced |= self.by_id.insert(scope.key_id, scope).is_some();
        replaced
    }

    /// Removes the scope with this name; returns whether there was one.
    pub fn remove_by_name(&mut self, name: &str) -> bool {
        let before = self.by_id.len();
        self.by_id.retain(|_, s| s.name != name);
        self.by_id.len() != before
    }

    /// Every scope, by key id.
    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        let mut v: Vec<&Scope> = self.by_id.values().collect();
        v.sort_by_key(|s| s.key_id);
        v.into_iter()
    }

    /// The name of the scope with this key id, or `key<id>` when unknown.
    pub fn name_of(&self, key_id: u32) -> String {
        self.get(key_id)
            .map_or_else(|| format!("key{key_id}"), |s| s.name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_must_be_64_hex_digits_and_are_not_printed() {
        assert_eq!(
            Scope::from_hex("a", 1, "00", vec![]).err(),
            Some(KeyError::BadLength(2))
        );
        let bad = "g".repeat(64);
        assert_eq!(
            Scope::from_hex("a", 1, &bad, vec![]).err(),
            Some(KeyError::BadHexDigit)
        );
        let s = Scope::from_hex("blue", 7, &"Ab".repeat(32), vec![1, 2]).unwrap();
        assert!(s.admits(1) && !s.admits(3));
        assert!(!format!("{s:?}").to_lowercase().contains("abab"));
        let mut all = Scopes::new([s]);
        assert_eq!(all.by_name("blue").map(|s| s.key_id), Some(7));
        assert_eq!(all.name_of(9), "key9");
        // Re-keying a scope under a new key id replaces it; removing forgets it.
        let rekeyed = Scope::from_hex("blue", 8, &"00".repeat(32), vec![]).unwrap();
        assert!(all.insert(rekeyed));
        assert!(all.get(7).is_none() && all.get(8).is_some());
        assert!(all.remove_by_name("blue"));
        assert!(!all.remove_by_name("blue"));
        assert_eq!(all.iter().count(), 0);
    }
}
