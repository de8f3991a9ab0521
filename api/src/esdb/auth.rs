//! Who may call the endpoint. The official clients send a user name and password with
//! every call (`authorization: Basic …`); they are checked against the users given with
//! `--esdb-user NAME:PASSWORD:ROLE` (or `COMMERCE_ESDB_USERS`, the same entries
//! separated by commas).
//!
//! Roles:
//! - `admin`: reads everything, writes, deletes and sets metadata on every stream that
//!   is not a commerce stream;
//! - `auditor`: reads everything, writes nothing;
//! - `integrator`: reads everything, and writes only its own streams: those of the
//!   category named like the user (`acme-orders-sync` for the user `acme`), with their
//!   metadata streams (`$$acme-…`).
//!
//! Commerce streams are written by the command handlers only, whatever the role.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use base64::Engine;
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;
use tonic::Status;

use super::errors;
use super::streams_rules::{is_commerce_stream, original_stream};

/// Longest user name or password accepted, in bytes.
pub const CREDENTIAL_MAX_BYTES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Auditor,
    Integrator,
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "auditor" => Ok(Role::Auditor),
            "integrator" => Ok(Role::Integrator),
            other => Err(format!(
                "unknown role {other:?}: expected admin, auditor or integrator"
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Admin => "admin",
            Role::Auditor => "auditor",
            Role::Integrator => "integrator",
        })
    }
}

/// One configured user, as given on the command line: `NAME:PASSWORD:ROLE`.
#[derive(Clone, PartialEq, Eq)]
pub struct UserEntry {
    pub name: String,
    password_digest: [u8; 32],
    pub role: Role,
}

impl fmt::Debug for UserEntry {
    // The password digest stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserEntry")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl FromStr for UserEntry {
    type Err = String;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        // The name may not contain ':' (Basic credentials split on the first one); the
        // role is after the last ':', so a password may contain ':'.
        let (name, rest) = entry
            .split_once(':')
            .ok_or("a user is NAME:PASSWORD:ROLE")?;
        let (password, role) = rest
            .rsplit_once(':')
            .ok_or("a user is NAME:PASSWORD:ROLE")?;
        if name.is_empty() || name.len() > CREDENTIAL_MAX_BYTES {
            return Err(format!("a user name is 1 to {CREDENTIAL_MAX_BYTES} bytes"));
        }
        if name.chars().any(|c| c.is_whitespace() || c == '-') {
            return Err(format!(
                "user name {name:?} may not contain white space or '-' (it names the user's stream category)"
            ));
        }
        if password.is_empty() || password.len() > CREDENTIAL_MAX_BYTES {
            return Err(format!(
                "the password of {name} must be 1 to {CREDENTIAL_MAX_BYTES} bytes"
            ));
        }
        Ok(UserEntry {
            name: name.to_owned(),
            password_digest: Sha256::digest(password.as_bytes()).into(),
            role: role.parse()?,
        })
    }
}

/// A caller whose credentials checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

impl Principal {
    /// The actor recorded in the metadata of the events this caller appends.
    pub fn actor(&self) -> String {
        format!("esdb:{}", self.name)
    }

    /// Whether this caller may append to, delete, tombstone or set the metadata of
    /// `stream` (a metadata stream `$$s` counts as `s`).
    pub fn may_write(&self, stream: &str) -> Result<(), Status> {
        let target = original_stream(stream);
        if is_commerce_stream(target) {
            return Err(errors::access_denied(format!(
                "{stream} is a commerce stream: only the engine's commands write it"
            )));
        }
        match self.role {
            Role::Admin => Ok(()),
            Role::Auditor => Err(errors::access_denied(format!(
                "{} is an auditor: read only",
                self.name
            ))),
            Role::Integrator => {
                if eventstore::category_of(target) == self.name {
                    Ok(())
                } else {
                    Err(errors::access_denied(format!(
                        "integrator {} writes only streams of the category {}",
                        self.name, self.name
                    )))
                }
            }
        }
    }
}

/// The configured users, by name.
#[derive(Debug, Clone, Default)]
pub struct Users {
    by_name: HashMap<String, UserEntry>,
}

impl Users {
    pub fn new(entries: impl IntoIterator<Item = UserEntry>) -> Result<Self, String> {
        let mut by_name = HashMap::new();
        for entry in entries {
            let name = entry.name.clone();
            if by_name.insert(name.clone(), entry).is_some() {
                return Err(format!("user {name} is given twice"));
            }
        }
        Ok(Users { by_name })
    }

    /// Parses a comma-separated list of `NAME:PASSWORD:ROLE` entries.
    pub fn parse_list(list: &str) -> Result<Vec<UserEntry>, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Checks the Basic credentials of a call.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Principal, Status> {
        let header = metadata
            .get("authorization")
            .ok_or_else(|| errors::not_authenticated("no credentials"))?
            .to_str()
            .map_err(|_| errors::not_authenticated("malformed credentials"))?;
        let encoded = header
            .strip_prefix("Basic ")
            .ok_or_else(|| errors::not_authenticated("credentials must be Basic"))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| errors::not_authenticated("malformed credentials"))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| errors::not_authenticated("malformed credentials"))?;
        let (name, password) = decoded
            .split_once(':')
            .ok_or_else(|| errors::not_authenticated("malformed credentials"))?;
        let digest: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        match self.by_name.get(name) {
            // Digests are compared, so the comparison's time says nothing about how
            // much of the password was right.
            Some(user) if user.password_digest == digest => Ok(Principal {
                name: user.name.clone(),
                role: user.role,
            }),
            _ => Err(errors::not_authenticated("wrong user name or password")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_entry_parses_name_password_and_role() {
        let user: UserEntry = "ops:s3cr:et:admin".parse().unwrap();
        assert_eq!(user.name, "ops");
        assert_eq!(user.role, Role::Admin);
        assert_eq!(
            user.password_digest,
            <[u8; 32]>::from(Sha256::digest(b"s3cr:et"))
        );
    }

    #[test]
    fn malformed_user_entries_are_refused() {
        for entry in [
            "ops",
            "ops:secret",
            ":pw:admin",
            "ops::admin",
            "ops:pw:root",
            "a-b:pw:admin",
        ] {
            assert!(entry.parse::<UserEntry>().is_err(), "{entry}");
        }
    }

    #[test]
    fn integrators_write_their_own_category_only() {
        let acme = Principal {
            name: "acme".into(),
            role: Role::Integrator,
        };
        assert!(acme.may_write("acme-sync").is_ok());
        assert!(acme.may_write("$$acme-sync").is_ok());
        assert!(acme.may_write("other-sync").is_err());
        assert!(acme.may_write("order-1").is_err());
    }

    #[test]
    fn nobody_writes_commerce_streams() {
        let admin = Principal {
            name: "ops".into(),
            role: Role::Admin,
        };
        assert!(admin.may_write("inventory-SKU1").is_err());
        assert!(admin.may_write("$$order-1").is_err());
        assert!(admin.may_write("integration-1").is_ok());
    }
}
