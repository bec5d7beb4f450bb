//! The library's one error type. A job's outcome is not an error: handlers
//! return a [`crate::lifecycle::JobResult`]; this enum is for the machinery around them.

/// Errors raised by the ledger, the transport and request validation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A run request or configuration value was rejected before any I/O.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field that was rejected (`tenant_id`, `type`, `inputs`, ...).
        field: &'static str,
        /// What is wrong with it, without echoing secrets.
        reason: String,
    },
    /// Postgres could not be reached or a statement failed.
    #[error("{operation}: {source}")]
    Database {
        /// The ledger operation that failed.
        operation: &'static str,
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },
    /// Postgres lost or mixed up this connection's prepared statements: the
    /// connection goes through a transaction-mode pooler that the ledger was
    /// not told about (see [`crate::Pooler`]). A configuration problem.
    #[error(
        "{operation}: {source} (the Postgres connection goes through a transaction-mode pooler \
         such as PgBouncer with pool_mode = transaction: connect with the transaction pooler \
         setting, OPSRUN_DATABASE_POOLER=transaction)"
    )]
    TransactionPooler {
        /// The ledger operation that failed.
        operation: &'static str,
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },
    /// Redis could not be reached or a stream command failed.
    #[error("{operation}: {source}")]
    Redis {
        /// The transport operation that failed.
        operation: String,
        /// The client error.
        #[source]
        source: redis::RedisError,
    },
    /// A Redis connection could not be taken from the pool.
    #[error("{operation}: {source}")]
    RedisPool {
        /// The transport operation that needed a connection.
        operation: String,
        /// The pool error.
        #[source]
        source: deadpool::managed::PoolError<redis::RedisError>,
    },
    /// A Redis command did not answer within its time limit.
    #[error("{operation}: timed out after {after:?}")]
    RedisTimeout {
        /// The transport operation that timed out.
        operation: String,
        /// How long it waited.
        after: std::time::Duration,
    },
    /// A grouped write (several runs in one statement) failed; every run in
    /// the group gets this copy of the driver's message.
    #[error("{message}")]
    BatchFailed {
        /// The driver error, as text.
        message: String,
        /// Whether trying again may succeed (see [`Error::is_retryable`]).
        retryable: bool,
    },
    /// Concurrent starts of one identity kept racing completions; try again.
    #[error("ensuring run: the active run for this identity kept changing; try again")]
    DedupeContention,
    /// The migrations could not be applied.
    #[error("applying migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl Error {
    /// Shorthand for a validation error on `field`.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field,
            reason: reason.into(),
        }
    }

    /// True when the error means Postgres could not be reached at all (as
    /// opposed to a statement being rejected), so callers can retry or exit
    /// with the "unavailable" code.
    pub fn is_database_unavailable(&self) -> bool {
        use sqlx::migrate::MigrateError;
        match self {
            Error::Database { source, .. }
            | Error::Migrate(
                MigrateError::Execute(source) | MigrateError::ExecuteMigration(source, _),
            ) => unreachable_postgres(source),
            _ => false,
        }
    }
}

impl Error {
    /// True when TLS could not be set up as configured, with Redis or
    /// Postgres: the server's certificate is not trusted (signed by a CA the
    /// client does not trust, for a name other than the one connected to,
    /// expired), or one side requires TLS and the other does not use it. A
    /// configuration problem, not an unreachable server.
    pub fn is_tls_refused(&self) -> bool {
        tls_refused(&self.to_string())
    }

    /// True when Redis refused the credentials or the ACL user's rights:
    /// a wrong user or password (`WRONGPASS`), none given where one is
    /// needed (`NOAUTH`), or a command or key the user may not use
    /// (`NOPERM`). A configuration problem, not an unreachable server.
    pub fn is_refused_credentials(&self) -> bool {
        // redis-rs words them in several ways ("NoPerm: …", "WRONGPASS …",
        // "Password authentication failed"), through the pool's errors too.
        let text = self.to_string().to_lowercase();
        ["wrongpass", "noauth", "noperm", "authentication failed"]
            .iter()
            .any(|word| text.contains(word))
    }
}

/// Whether an error's text says TLS was refused: a server's certificate
/// (rustls words it "invalid peer certificate: …"), a server without TLS
/// where the URL requires it (sqlx: "server does not support TLS"), or a
/// Postgres that accepts only TLS refusing a plain connection (its
/// `pg_hba.conf` has no entry "… no encryption").
pub fn tls_refused(text: &str) -> bool {
    text.contains("invalid peer certificate")
        || text.contains("server does not support TLS")
        || (text.contains("pg_hba.conf") && text.contains("no encryption"))
}

/// True when `source` says Postgres could not be reached or is going away.
fn unreachable_postgres(source: &sqlx::Error) -> bool {
    match source {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // The server answered, but is going away or not ready:
        // connection exceptions (class 08), shutdown and crash
        // recovery (57P01-57P03), and a full connection table.
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

impl Error {
    /// A copy of this error for each member of a group whose shared
    /// statement failed; each decides for itself whether to try again.
    pub(crate) fn for_batch_member(&self) -> Error {
        Error::BatchFailed {
            message: self.to_string(),
            retryable: self.is_retryable(),
        }
    }

    /// True when trying the same statement again may succeed: Postgres was
    /// unreachable, or the statement lost a deadlock or a serialization
    /// conflict (SQLSTATE 40P01, 40001) and was rolled back.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::BatchFailed { retryable, .. } => *retryable,
            Error::Database {
                source: sqlx::Error::Database(db),
                ..
            } if db
                .code()
                .is_some_and(|c| matches!(c.as_ref(), "40P01" | "40001")) =>
            {
                true
            }
            e => e.is_database_unavailable(),
        }
    }
}

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attach the operation name to a sqlx error.
pub(crate) fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| {
        if statement_mixup(&source) {
            Error::TransactionPooler { operation, source }
        } else {
            Error::Database { operation, source }
        }
    }
}

/// Whether Postgres says this connection's prepared statements are gone or
/// are not the ones it prepared: a named statement missing (26000) or
/// already there (42P05), or parameters that do not fit it (08P01 "bind
/// message supplies …"). sqlx names statements per connection, so only a
/// pooler moving the connection between server backends does this.
fn statement_mixup(source: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = source else {
        return false;
    };
    match db.code().as_deref() {
        Some("26000" | "42P05") => true,
        Some("08P01") => db.message().contains("bind message supplies"),
        _ => false,
    }
}
