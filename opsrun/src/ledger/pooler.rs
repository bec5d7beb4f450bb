//! How the ledger's statements reach Postgres: straight to a server (or a
//! session pooler), or through a transaction-mode pooler such as PgBouncer
//! with `pool_mode = transaction`.
//!
//! sqlx prepares a statement in one round trip (Parse, Describe, Sync) and
//! executes it in another (Bind, Execute, Sync), and caches it by name on the
//! connection. A transaction pooler hands the client's next transaction to
//! any server connection, and every Sync outside a transaction ends one: a
//! named statement is then missing, or another client's statement of the same
//! name runs with our parameters. Behind such a pooler each statement is
//! therefore sent unnamed inside its own `BEGIN … COMMIT`, which keeps one
//! server connection from the parse to the commit. The worker's two hot
//! calls, the claim and the completion, go instead as one simple query with
//! their values written in (one round trip, see [`super::literal`]), and
//! run as functions whose plans Postgres keeps per server connection
//! (migration 000024), so they are not planned on every call. Nothing else the ledger
//! does keeps session state: every statement stands alone (settings such as
//! `synchronous_commit` are set for the statement's own transaction).
//! Migrations take a session-level advisory lock, so they are refused here
//! and run over a direct URL instead.

use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use sqlx::postgres::{PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::{Acquire, Describe, Either, Execute, Executor, PgConnection, PgPool, Postgres, SqlStr};

/// What sits between opsrun and Postgres.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Pooler {
    /// Nothing, or a pooler that gives each client a server connection for
    /// the whole session: statements are prepared once per connection and
    /// cached (one round trip each).
    #[default]
    Direct,
    /// A transaction-mode pooler (PgBouncer `pool_mode = transaction`):
    /// each statement is sent unnamed in its own transaction (four round
    /// trips: begin, parse, execute, commit), but for the worker's claim and
    /// completion, sent as one simple query each (one round trip).
    Transaction,
}

impl std::str::FromStr for Pooler {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "direct" => Ok(Pooler::Direct),
            "transaction" => Ok(Pooler::Transaction),
            other => Err(format!(
                "unknown pooler {other:?}: expected \"direct\" (also for a session pooler) or \"transaction\""
            )),
        }
    }
}

/// A Postgres pool and what sits between it and the server; statements are
/// executed on `&Db` as on `&PgPool`.
#[derive(Debug, Clone)]
pub(crate) struct Db {
    pub(crate) pool: PgPool,
    pub(crate) pooler: Pooler,
}

/// A connection held across statements (a [`Session`](super::Session)'s),
/// executed on as on `&mut PgConnection`.
#[derive(Debug)]
pub(crate) struct Held<'a> {
    pub(crate) connection: &'a mut PgConnection,
    pub(crate) pooler: Pooler,
}

/// A query sent unnamed: prepared for this execution only, never cached.
struct Unnamed<E>(E);

impl<'q, E: Execute<'q, Postgres>> Execute<'q, Postgres> for Unnamed<E> {
    fn sql(self) -> SqlStr {
        self.0.sql()
    }

    fn statement(&self) -> Option<&PgStatement> {
        // A statement prepared earlier may be on another server connection.
        None
    }

    fn take_arguments(
        &mut self,
    ) -> Result<Option<sqlx::postgres::PgArguments>, sqlx::error::BoxDynError> {
        self.0.take_arguments()
    }

    fn persistent(&self) -> bool {
        false
    }
}

type Item = Either<PgQueryResult, PgRow>;

/// Run `query` unnamed in its own transaction on `connection`, collecting
/// what it returns (the transaction must end before anything is handed on).
async fn in_transaction<'q, E>(connection: &mut PgConnection, query: E) -> sqlx::Result<Vec<Item>>
where
    E: 'q + Execute<'q, Postgres>,
{
    let mut transaction = connection.begin().await?;
    let items = transaction
        .fetch_many(Unnamed(query))
        .try_collect::<Vec<_>>()
        .await?;
    transaction.commit().await?;
    Ok(items)
}

fn first_row(items: Vec<Item>) -> Option<PgRow> {
    items.into_iter().find_map(|item| match item {
        Either::Right(row) => Some(row),
        Either::Left(_) => None,
    })
}

fn flatten<'e>(
    collected: impl std::future::Future<Output = sqlx::Result<Vec<Item>>> + Send + 'e,
) -> BoxStream<'e, sqlx::Result<Item>> {
    stream::once(collected)
        .map_ok(|items| stream::iter(items.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
}

impl<'p> Executor<'p> for &'_ Db {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, sqlx::Result<Item>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let pool = self.pool.clone();
        match self.pooler {
            Pooler::Direct => (&pool).fetch_many(query),
            Pooler::Transaction => flatten(async move {
                let mut connection = pool.acquire().await?;
                in_transaction(&mut connection, query).await
            }),
        }
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, sqlx::Result<Option<PgRow>>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let pool = self.pool.clone();
        match self.pooler {
            Pooler::Direct => (&pool).fetch_optional(query),
            Pooler::Transaction => Box::pin(async move {
                let mut connection = pool.acquire().await?;
                Ok(first_row(in_transaction(&mut connection, query).await?))
            }),
        }
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, sqlx::Result<PgStatement>>
    where
        'p: 'e,
    {
        let pool = self.pool.clone();
        Box::pin(async move { (&pool).prepare_with(sql, parameters).await })
    }

    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, sqlx::Result<Describe<Postgres>>>
    where
        'p: 'e,
    {
        let pool = self.pool.clone();
        Box::pin(async move { (&pool).describe(sql).await })
    }
}

impl<'c> Executor<'c> for Held<'c> {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, sqlx::Result<Item>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        match self.pooler {
            Pooler::Direct => self.connection.fetch_many(query),
            Pooler::Transaction => flatten(in_transaction(self.connection, query)),
        }
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, sqlx::Result<Option<PgRow>>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        match self.pooler {
            Pooler::Direct => self.connection.fetch_optional(query),
            Pooler::Transaction => {
                Box::pin(
                    async move { Ok(first_row(in_transaction(self.connection, query).await?)) },
                )
            }
        }
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, sqlx::Result<PgStatement>>
    where
        'c: 'e,
    {
        self.connection.prepare_with(sql, parameters)
    }

    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, sqlx::Result<Describe<Postgres>>>
    where
        'c: 'e,
    {
        self.connection.describe(sql)
    }
}

/// Whether connections made with `options` go through a transaction-mode
/// pooler, found by whether a connection keeps its server backend.
/// Two connections are opened outside any pool: the first asks for its
/// backend's pid; the second opens a transaction and asks for its own; the
/// first asks again. Straight to Postgres (or through a session pooler) the
/// first always has the same backend and the second another one. Through a
/// transaction pooler the first gave its backend back after its statement,
/// and the second gets it (PgBouncer reuses the last-freed server first), or
/// the first later gets a different one. Either is proof; a pooler that
/// happens to hand both back unchanged goes unnoticed, and then its
/// statement mix-ups are reported as [`Error::TransactionPooler`].
pub async fn behind_transaction_pooler(
    options: &sqlx::postgres::PgConnectOptions,
    timeout: std::time::Duration,
) -> crate::Result<bool> {
    use sqlx::{Connection, Row};
    async fn backend(connection: &mut PgConnection, statement: &'static str) -> sqlx::Result<i32> {
        sqlx::raw_sql(statement)
            .fetch_one(connection)
            .await?
            .try_get(0)
    }
    let probe = async {
        let mut first = PgConnection::connect_with(options).await?;
        let mut second = PgConnection::connect_with(options).await?;
        let before = backend(&mut first, "SELECT pg_backend_pid()").await?;
        let other = backend(&mut second, "BEGIN; SELECT pg_backend_pid()").await?;
        if other == before {
            return Ok(true);
        }
        // Only a pooler makes a trivial statement wait for another
        // connection's open transaction (holding its last server connection).
        let after =
            tokio::time::timeout(timeout, backend(&mut first, "SELECT pg_backend_pid()")).await;
        let _ = second.close().await;
        let _ = first.close().await;
        match after {
            Err(_) => Ok(true),
            Ok(after) => Ok(after? != before),
        }
    };
    probe
        .await
        .map_err(crate::error::db("checking for a transaction pooler"))
}
