//! Who may use Monitoring → Operations: bearer tokens bound to one tenant
//! and a role. A token is 256 random bits shown once; only its SHA-256 is
//! stored. The ledger looks tokens up; the monitor enforces the roles.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// View runs and the user's own notifications.
    Readonly,
    /// Also start runs.
    Operator,
    /// Bound to no tenant: queue health and aggregate counts across
    /// tenants, never a run's contents.
    Platform,
}

impl Role {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Readonly => "readonly",
            Role::Operator => "operator",
            Role::Platform => "platform",
        }
    }

    /// Whether the role may start runs.
    pub fn may_start_runs(self) -> bool {
        self == Role::Operator
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "readonly" => Ok(Role::Readonly),
            "operator" => Ok(Role::Operator),
            "platform" => Ok(Role::Platform),
            _ => Err(format!(
                "{s:?} is not a role: use readonly, operator or platform"
            )),
        }
    }
}

/// A stored token (never its secret).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Token {
    /// Row id, for listing and revoking.
    pub id: i64,
    /// The only tenant it sees; `None` for a platform token.
    pub tenant_id: Option<i64>,
    /// What it may do.
    pub role: Role,
    /// The person it acts for; `None` for a service token.
    pub user_id: Option<i64>,
    /// That person's name, the initiator name of runs it starts.
    pub user_name: Option<String>,
    /// A note saying what the token is for.
    pub label: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was revoked; a revoked token authenticates nothing.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Queues it may start runs on besides each type's own queue.
    pub queues: Vec<String>,
}

impl Token {
    /// Whether this token may start a run on `queue` when the run's type
    /// goes to `type_queue`.
    pub fn may_use_queue(&self, queue: &str, type_queue: &str) -> bool {
        queue == type_queue || self.queues.iter().any(|q| q == queue)
    }
}

/// Prefix of every token, so secret scanners and the sanitizer recognise one.
pub const TOKEN_PREFIX: &str = "opsrun_";

/// A new random token: the secret to hand out once, and the hash to store.
pub fn generate_token() -> (String, String) {
    let secret = format!(
        "{TOKEN_PREFIX}{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    );
    let hash = token_hash(&secret);
    (secret, hash)
}

/// The stored form of a token: lowercase hex SHA-256 of its text.
pub fn token_hash(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_stored_hashed() {
        let (a, hash) = generate_token();
        let (b, _) = generate_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        assert_eq!(hash, token_hash(&a));
        assert_eq!(hash.len(), 64);
        assert!(!hash.contains(&a[TOKEN_PREFIX.len()..]));
    }

    #[test]
    fn tokens_never_survive_the_sanitizer() {
        let (secret, _) = generate_token();
        let text = crate::sanitize::redact(&format!("login with {secret} failed"));
        assert!(!text.contains(&secret[TOKEN_PREFIX.len()..]), "{text}");
    }

    #[test]
    fn only_operators_start_runs() {
        assert!(Role::Operator.may_start_runs());
        assert!(!Role::Readonly.may_start_runs());
        assert!(!Role::Platform.may_start_runs());
        assert_eq!("operator".parse::<Role>(), Ok(Role::Operator));
        assert_eq!("platform".parse::<Role>(), Ok(Role::Platform));
        assert!(
            "admin"
                .parse::<Role>()
                .unwrap_err()
                .contains("readonly, operator or platform")
        );
    }
}
