//! The postgres store plugin: a branch's schema or database on the baseline's PostgreSQL server.
//!
//! - [`StoreMode::Schema`]: `CREATE SCHEMA IF NOT EXISTS` in the baseline database; the branch's
//!   connection string is the baseline URL with `options=-csearch_path=<name>`, so the branch's
//!   instances see (and create their tables in) their own schema.
//! - [`StoreMode::DatabaseFromTemplate`]: `CREATE DATABASE <name> TEMPLATE <baseline db>`, a copy
//!   of the baseline's schema and rows. PostgreSQL refuses while any other session is connected to
//!   the template, so this plugin connects to the maintenance database (`postgres`), never to the
//!   template, and reports a template in use as a retryable error.
//! - [`StoreMode::Database`]: an empty database, `CREATE DATABASE <name> TEMPLATE template0`
//!   (`template0` accepts no sessions, so nothing can block the copy; `template1`, the default,
//!   fails while anyone is connected to it, and may hold objects added for other uses).
//!
//! The name is [`store_resource_name`], always quoted as an identifier. Create and drop are
//! idempotent. After a create, the handed-out connection string is tried once (for a schema:
//! `current_schema()` must be the branch's); if that or anything else after the create fails, what
//! this call made is dropped again before the error is returned. Every connection has a bounded
//! connect-and-startup time, and every statement a server-side `statement_timeout` plus a
//! client-side bound. The baseline URL is never echoed in errors (it may hold a password).
//!
//! Only plain TCP or Unix-socket connections (`NoTls`): the plugin talks to a loopback server;
//! a baseline with `sslmode=require` is rejected as invalid.

use crate::error::StoreError;
use crate::executor::BoxFuture;
use crate::spec::{StoreMode, StoreRequest};
use crate::store::name::store_resource_name;
use crate::store::{StoreHandle, StorePlugin};
use std::future::Future;
use std::time::Duration;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config, NoTls};

/// Options of [`PostgresStores`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// Longest time to connect and finish the startup handshake (default 5 s). A server that
    /// accepts the TCP connection but never answers counts as unreachable after this.
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout` of every statement (default 120 s: a large template can
    /// take a while to copy). The client gives up `connect_timeout` after it.
    pub statement_timeout: Duration,
    /// The database the plugin connects to for `CREATE`/`DROP DATABASE` (default `postgres`).
    /// When the baseline copied as a template is this database, `template1` is used instead, so
    /// the plugin's own session never blocks the copy.
    pub maintenance_db: String,
    /// Try the handed-out connection string after a create (default true); a failure undoes
    /// the create.
    pub verify: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(120),
            maintenance_db: "postgres".to_owned(),
            verify: true,
        }
    }
}

/// Creates and drops branch schemas and databases on a PostgreSQL server (kinds `postgres` and
/// `postgresql`).
#[derive(Debug, Clone, Default)]
pub struct PostgresStores {
    opts: PostgresOptions,
}

impl PostgresStores {
    /// A plugin with these options.
    pub fn new(opts: PostgresOptions) -> Self {
        PostgresStores { opts }
    }

    /// Its options.
    pub fn options(&self) -> &PostgresOptions {
        &self.opts
    }
}

impl StorePlugin for PostgresStores {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn create<'a>(
        &'a self,
        req: &'a StoreRequest,
    ) -> BoxFuture<'a, Result<StoreHandle, StoreError>> {
        Box::pin(self.create_store(req))
    }

    fn drop_store<'a>(&'a self, handle: &'a StoreHandle) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.drop_existing(handle))
    }
}

/// What one create or drop works from: the parsed baseline and the derived name.
struct Target<'r> {
    req: &'r StoreRequest,
    url: BaselineUrl<'r>,
    config: Config,
    /// The baseline's database (libpq's default: the user name, when the URL names none).
    baseline_db: String,
    name: String,
}

impl PostgresStores {
    async fn create_store(&self, req: &StoreRequest) -> Result<StoreHandle, StoreError> {
        let t = self.target(req)?;
        let (connection, fresh) = match req.mode {
            StoreMode::Schema => self.create_schema(&t).await?,
            StoreMode::DatabaseFromTemplate | StoreMode::Database => {
                self.create_database(&t).await?
            }
        };
        if self.opts.verify {
            if let Err(e) = self.verify(&t, &connection).await {
                return Err(self.undo(&t, fresh, e).await);
            }
        }
        Ok(StoreHandle {
            request: req.clone(),
            connection,
            resource: t.name,
        })
    }

    async fn drop_existing(&self, handle: &StoreHandle) -> Result<(), StoreError> {
        let t = self.target(&handle.request)?;
        if handle.resource != t.name {
            // Never drop something this plugin would not have made for this request.
            return Err(invalid(
                &handle.request,
                format!(
                    "handle names {:?}, but this store and branch map to {:?}",
                    handle.resource, t.name
                ),
            ));
        }
        self.drop_made(&t).await
    }

    fn target<'r>(&self, req: &'r StoreRequest) -> Result<Target<'r>, StoreError> {
        if !matches!(&*req.kind, "postgres" | "postgresql") {
            return Err(invalid(
                req,
                format!("the postgres plugin does not handle kind {:?}", req.kind),
            ));
        }
        if req.store.is_empty() || req.branch.is_empty() {
            return Err(invalid(
                req,
                "store and branch must not be empty".to_owned(),
            ));
        }
        let url = BaselineUrl::parse(&req.baseline).ok_or_else(|| {
            invalid(
                req,
                "baseline is not a postgres:// or postgresql:// URL".to_owned(),
            )
        })?;
        let mut config: Config = req
            .baseline
            .parse()
            .map_err(|e| invalid(req, format!("baseline URL does not parse: {e}")))?;
        if config.get_ssl_mode() == SslMode::Require {
            return Err(invalid(
                req,
                "baseline requires TLS, which the postgres plugin does not speak".to_owned(),
            ));
        }
        config.connect_timeout(self.opts.connect_timeout);
        config.application_name("microstax-stores");
        let baseline_db = config
            .get_dbname()
            .or(config.get_user())
            .map(str::to_owned)
            .ok_or_else(|| invalid(req, "baseline URL names no database and no user".to_owned()))?;
        let name = store_resource_name(&req.store, &req.branch);
        if name == baseline_db {
            return Err(invalid(
                req,
                format!("branch store name {name:?} is the baseline database itself"),
            ));
        }
        Ok(Target {
            req,
            url,
            config,
            baseline_db,
            name,
        })
    }

    /// Creates the schema; returns the connection string and whether this call made it.
    async fn create_schema(&self, t: &Target<'_>) -> Result<(String, bool), StoreError> {
        let connection = t.url.with_option(&format!("-csearch_path={}", t.name));
        let client = self.connect(t.req, &t.config, &t.baseline_db).await?;
        let existed = self
            .exists(
                t,
                &client,
                "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1",
            )
            .await?;
        let sql = format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&t.name));
        let what = "creating the schema";
        match self.bounded(t.req, client.batch_execute(&sql), what).await {
            Ok(()) => Ok((connection, !existed)),
            // A concurrent create of the same schema got there first (IF NOT EXISTS does not
            // cover the race): reuse it.
            Err(Failure::Pg(e)) if matches!(sqlstate(&e), Some("42P06" | "23505")) => {
                Ok((connection, false))
            }
            Err(Failure::Pg(e)) => Err(pg_error(t.req, what, &e)),
            // The outcome is unknown: undo what may have been made.
            Err(Failure::Timeout(e)) if !existed => Err(self.undo(t, true, e).await),
            Err(Failure::Timeout(e)) => Err(e),
        }
    }

    /// Creates the database; returns the connection string and whether this call made it.
    async fn create_database(&self, t: &Target<'_>) -> Result<(String, bool), StoreError> {
        let connection = t.url.with_db(&t.name);
        let client = self.maintenance(t).await?;
        let existed = self
            .exists(
                t,
                &client,
                "SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1",
            )
            .await?;
        if existed {
            return Ok((connection, false));
        }
        // An empty database comes from `template0`, which accepts no sessions, so nobody can
        // block the copy (a plain CREATE DATABASE copies `template1`, and fails while anyone
        // is connected to it).
        let template = match t.req.mode {
            StoreMode::DatabaseFromTemplate => t.baseline_db.as_str(),
            _ => "template0",
        };
        let sql = format!(
            "CREATE DATABASE {} TEMPLATE {}",
            quote_ident(&t.name),
            quote_ident(template)
        );
        let fut = client.batch_execute(&sql);
        match self.bounded(t.req, fut, "creating the database").await {
            Ok(()) => Ok((connection, true)),
            // Another create of the same branch store won the race: reuse it. PostgreSQL says
            // so as a duplicate database, or, when both passed its own check, as a unique
            // violation on pg_database.
            Err(Failure::Pg(e)) if matches!(sqlstate(&e), Some("42P04" | "23505")) => {
                Ok((connection, false))
            }
            Err(Failure::Pg(e)) if sqlstate(&e) == Some("55006") => Err(backend(
                t.req,
                format!(
                    "template database {template:?} is being accessed by other sessions, and \
                     PostgreSQL copies a template only when nobody else is connected to it; close \
                     them (stop the baseline's instances or point them at another database) and \
                     retry"
                ),
                true,
            )),
            Err(Failure::Pg(e)) => Err(pg_error(t.req, "creating the database", &e)),
            Err(Failure::Timeout(e)) => Err(self.undo(t, true, e).await),
        }
    }

    /// Connects with the handed-out connection string, as the branch's instances will.
    async fn verify(&self, t: &Target<'_>, connection: &str) -> Result<(), StoreError> {
        let mut config: Config = connection.parse().map_err(|e| {
            backend(
                t.req,
                format!("the handed-out connection string does not parse: {e}"),
                false,
            )
        })?;
        config.connect_timeout(self.opts.connect_timeout);
        let expected_db = match t.req.mode {
            StoreMode::Schema => &t.baseline_db,
            StoreMode::DatabaseFromTemplate | StoreMode::Database => &t.name,
        };
        let client = self.connect(t.req, &config, expected_db).await?;
        let what = "checking the handed-out connection string";
        let fut = client.query_one(
            "SELECT current_database()::text, current_schema()::text",
            &[],
        );
        let row = self
            .bounded(t.req, fut, what)
            .await
            .map_err(|f| f.into_store(t.req, what))?;
        let db: String = row.get(0);
        let schema: Option<String> = row.get(1);
        if &db != expected_db {
            return Err(backend(
                t.req,
                format!(
                    "the handed-out connection string reaches database {db:?}, not {expected_db:?}"
                ),
                false,
            ));
        }
        if t.req.mode == StoreMode::Schema && schema.as_deref() != Some(&*t.name) {
            return Err(backend(
                t.req,
                format!(
                    "the handed-out connection string does not put schema {:?} first \
                     (current_schema() is {schema:?}); does a pooler drop the options parameter?",
                    t.name
                ),
                false,
            ));
        }
        Ok(())
    }

    /// Drops what this call made (when `fresh`) and returns `cause`, told what happened.
    async fn undo(&self, t: &Target<'_>, fresh: bool, cause: StoreError) -> StoreError {
        if !fresh {
            return cause;
        }
        let (reason, retryable) = match cause {
            StoreError::Backend {
                reason, retryable, ..
            } => (reason, retryable),
            StoreError::Invalid { reason, .. } => (reason, false),
        };
        let note = match self.drop_made(t).await {
            Ok(()) => format!("{reason}; what this create made was dropped again"),
            Err(e) => format!("{reason}; dropping what this create made failed too: {e}"),
        };
        backend(t.req, note, retryable)
    }

    async fn drop_made(&self, t: &Target<'_>) -> Result<(), StoreError> {
        match t.req.mode {
            StoreMode::Schema => {
                let client = self.connect(t.req, &t.config, &t.baseline_db).await?;
                let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(&t.name));
                self.run(t.req, &client, &sql, "dropping the schema").await
            }
            StoreMode::DatabaseFromTemplate | StoreMode::Database => {
                let client = self.maintenance(t).await?;
                let fut =
                    client.query_one("SELECT current_setting('server_version_num')::int", &[]);
                let version: i32 = self
                    .bounded(t.req, fut, "reading the server version")
                    .await
                    .map_err(|f| f.into_store(t.req, "reading the server version"))?
                    .get(0);
                let mut sql = format!("DROP DATABASE IF EXISTS {}", quote_ident(&t.name));
                if version >= 130_000 {
                    // Ends the branch's own sessions rather than failing on them.
                    sql.push_str(" WITH (FORCE)");
                }
                self.run(t.req, &client, &sql, "dropping the database")
                    .await
            }
        }
    }

    async fn maintenance(&self, t: &Target<'_>) -> Result<Client, StoreError> {
        let copies_it = t.req.mode == StoreMode::DatabaseFromTemplate;
        let db = if copies_it && t.baseline_db == self.opts.maintenance_db {
            "template1"
        } else {
            &self.opts.maintenance_db
        };
        let mut config = t.config.clone();
        config.dbname(db);
        self.connect(t.req, &config, db).await
    }

    async fn connect(
        &self,
        req: &StoreRequest,
        config: &Config,
        db: &str,
    ) -> Result<Client, StoreError> {
        let what = format!("connecting to database {db:?}");
        let (client, conn) =
            match tokio::time::timeout(self.opts.connect_timeout, config.connect(NoTls)).await {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => return Err(pg_error(req, &what, &e)),
                Err(_) => {
                    return Err(backend(
                        req,
                        format!("{what}: no answer within {:?}", self.opts.connect_timeout),
                        true,
                    ))
                }
            };
        // The connection task ends when the client is dropped.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "postgres store connection ended");
            }
        });
        let ms = self.opts.statement_timeout.as_millis();
        let sql = format!("SET statement_timeout = {ms}");
        self.run(req, &client, &sql, "setting statement_timeout")
            .await?;
        Ok(client)
    }

    async fn exists(&self, t: &Target<'_>, client: &Client, sql: &str) -> Result<bool, StoreError> {
        let name: &(dyn tokio_postgres::types::ToSql + Sync) = &t.name;
        let fut = client.query_opt(sql, std::slice::from_ref(&name));
        let row = self
            .bounded(t.req, fut, "looking for an existing store")
            .await
            .map_err(|f| f.into_store(t.req, "looking for an existing store"))?;
        Ok(row.is_some())
    }

    async fn run(
        &self,
        req: &StoreRequest,
        client: &Client,
        sql: &str,
        what: &str,
    ) -> Result<(), StoreError> {
        self.bounded(req, client.batch_execute(sql), what)
            .await
            .map_err(|f| f.into_store(req, what))
    }

    /// Runs one statement with the client-side bound (the server's `statement_timeout` plus
    /// `connect_timeout` of slack for the answer to arrive).
    async fn bounded<T>(
        &self,
        req: &StoreRequest,
        fut: impl Future<Output = Result<T, tokio_postgres::Error>>,
        what: &str,
    ) -> Result<T, Failure> {
        let limit = self.opts.statement_timeout + self.opts.connect_timeout;
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Failure::Pg(e)),
            Err(_) => Err(Failure::Timeout(backend(
                req,
                format!("{what}: no answer within {limit:?}"),
                true,
            ))),
        }
    }
}

/// A statement that failed on the server or did not answer in time.
enum Failure {
    Pg(tokio_postgres::Error),
    Timeout(StoreError),
}

impl Failure {
    fn into_store(self, req: &StoreRequest, what: &str) -> StoreError {
        match self {
            Failure::Pg(e) => pg_error(req, what, &e),
            Failure::Timeout(e) => e,
        }
    }
}

/// `"name"`, with inner quotes doubled: the one way any text becomes an identifier here.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn invalid(req: &StoreRequest, reason: String) -> StoreError {
    StoreError::Invalid {
        store: req.store.to_string(),
        branch: req.branch.to_string(),
        reason,
    }
}

fn backend(req: &StoreRequest, reason: String, retryable: bool) -> StoreError {
    StoreError::Backend {
        store: req.store.to_string(),
        branch: req.branch.to_string(),
        reason,
        retryable,
    }
}

fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

/// Maps a driver error: what the server said (with its SQLSTATE) and whether a retry may help.
fn pg_error(req: &StoreRequest, what: &str, e: &tokio_postgres::Error) -> StoreError {
    let Some(db) = e.as_db_error() else {
        // No answer from the server at all: refused, reset, closed. Those pass.
        let mut reason = format!("{what}: {e}");
        if let Some(src) = std::error::Error::source(e) {
            reason.push_str(&format!(": {src}"));
        }
        return backend(req, reason, true);
    };
    let code = db.code().code();
    let mut reason = format!("{what}: {} (SQLSTATE {code})", db.message());
    if let Some(detail) = db.detail() {
        reason.push_str(&format!("; {detail}"));
    }
    backend(req, reason, retryable_sqlstate(code))
}

/// Classes that pass with time: connection exceptions (08), transaction rollbacks such as
/// deadlocks (40), insufficient resources (53), an object in use (55006), a cancelled statement
/// (57014), operator intervention such as a server starting up or shutting down (57P), system
/// errors (58). Everything else (syntax, privileges, a missing template) needs a change first.
fn retryable_sqlstate(code: &str) -> bool {
    ["08", "40", "53", "57P", "58"]
        .iter()
        .any(|p| code.starts_with(p))
        || matches!(code, "55006" | "57014")
}

/// The parts of a baseline libpq URL needed to hand out a variant of it: everything up to the
/// path, the path (the database), and the query.
#[derive(Debug, Clone, Copy)]
struct BaselineUrl<'a> {
    /// `postgres://user@host:port`.
    head: &'a str,
    /// `/dbname` (still percent-encoded) or empty.
    path: &'a str,
    query: Option<&'a str>,
}

impl<'a> BaselineUrl<'a> {
    fn parse(url: &'a str) -> Option<Self> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))?;
        let scheme_len = url.len() - rest.len();
        let authority = rest.find(['/', '?']).unwrap_or(rest.len());
        let head = &url[..scheme_len + authority];
        let after = &rest[authority..];
        let (path, query) = match after.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (after, None),
        };
        Some(BaselineUrl { head, path, query })
    }

    /// The same URL on another database (a `dbname` parameter, which would win over the path,
    /// is left out).
    fn with_db(&self, db: &str) -> String {
        let mut out = format!("{}/{}", self.head, percent_encode(db));
        let params: Vec<&str> = self
            .query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|p| !p.is_empty() && !p.starts_with("dbname="))
            .collect();
        if !params.is_empty() {
            out.push('?');
            out.push_str(&params.join("&"));
        }
        out
    }

    /// The same URL with one more server option (appended to an `options` parameter already
    /// there, space-separated as libpq expects).
    fn with_option(&self, option: &str) -> String {
        let encoded = percent_encode(option);
        let mut params: Vec<String> = self
            .query
            .filter(|q| !q.is_empty())
            .map(|q| q.split('&').map(str::to_owned).collect())
            .unwrap_or_default();
        match params.iter_mut().find(|p| p.starts_with("options=")) {
            Some(p) => {
                p.push_str("%20");
                p.push_str(&encoded);
            }
            None => params.push(format!("options={encoded}")),
        }
        format!("{}{}?{}", self.head, self.path, params.join("&"))
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_rewritten_with_encoding() {
        let u = BaselineUrl::parse("postgres://app@127.0.0.1:5432/orders").unwrap();
        assert_eq!(
            u.with_db("msx_a_b"),
            "postgres://app@127.0.0.1:5432/msx_a_b"
        );
        assert_eq!(
            u.with_option("-csearch_path=msx_a_b"),
            "postgres://app@127.0.0.1:5432/orders?options=-csearch_path%3Dmsx_a_b"
        );
        let q = BaselineUrl::parse("postgresql://h/db?sslmode=disable&options=-cwork_mem%3D4MB")
            .unwrap();
        assert_eq!(
            q.with_option("-csearch_path=s"),
            "postgresql://h/db?sslmode=disable&options=-cwork_mem%3D4MB%20-csearch_path%3Ds"
        );
        assert_eq!(
            q.with_db("n"),
            "postgresql://h/n?sslmode=disable&options=-cwork_mem%3D4MB"
        );
        let param = BaselineUrl::parse("postgres://h/?dbname=base&user=u").unwrap();
        assert_eq!(param.with_db("n"), "postgres://h/n?user=u");
        let bare = BaselineUrl::parse("postgres://h:1").unwrap();
        assert_eq!(bare.with_db("n"), "postgres://h:1/n");
        assert!(BaselineUrl::parse("host=h dbname=d").is_none());
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
    }

    #[test]
    fn sqlstates_are_classified() {
        assert!(retryable_sqlstate("55006"));
        assert!(retryable_sqlstate("57P03"));
        assert!(retryable_sqlstate("08006"));
        assert!(!retryable_sqlstate("42501"));
        assert!(!retryable_sqlstate("3D000"));
        assert!(!retryable_sqlstate("28P01"));
    }
}
