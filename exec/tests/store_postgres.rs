//! The postgres store plugin against a real PostgreSQL server: one server for the cases that
//! need it, driven by one test function (so the server is stopped when it ends), cases running
//! concurrently on their own databases; and cases that need no server.

#![allow(clippy::unwrap_used)]

mod pg;

use microstax_exec::store::name::store_resource_name;
use microstax_exec::store::postgres::{PostgresOptions, PostgresStores};
use microstax_exec::{StoreError, StoreHandle, StoreMode, StorePlugin, StoreRequest};
use pg::PgServer;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The branch store that the server's `pg_hba.conf` refuses sessions to, so a create succeeds
/// and the connection check after it fails.
const REJECTED: (&str, &str) = ("rollback", "probe");

fn request(store: &str, branch: &str, mode: StoreMode, baseline: String) -> StoreRequest {
    StoreRequest {
        store: store.into(),
        kind: "postgres".into(),
        branch: branch.into(),
        mode,
        baseline,
    }
}

struct Ctx {
    pg: PgServer,
    plugin: PostgresStores,
}

impl Ctx {
    /// Makes a baseline database `db` with a table `items` of `rows` rows; no session stays.
    async fn baseline(&self, db: &str, rows: i32) -> String {
        let admin = self.pg.client("postgres").await;
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
        let c = self.pg.client(db).await;
        c.batch_execute("CREATE TABLE items (id int PRIMARY KEY)")
            .await
            .unwrap();
        c.execute("INSERT INTO items SELECT generate_series(1, $1)", &[&rows])
            .await
            .unwrap();
        self.pg.url(db)
    }

    async fn database_exists(&self, name: &str) -> bool {
        let admin = self.pg.client("postgres").await;
        admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await
            .unwrap()
            .is_some()
    }

    async fn schema_exists(&self, db: &str, name: &str) -> bool {
        let c = self.pg.client(db).await;
        c.query_opt(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .is_some()
    }
}

async fn count_items(connection: &str) -> i64 {
    let c = pg::connect(connection).await.unwrap();
    c.query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0)
}

type Case = fn(Arc<Ctx>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_plugin_against_a_real_server() {
    let hba_reject = format!(
        "host {} all 127.0.0.1/32 reject",
        store_resource_name(REJECTED.0, REJECTED.1)
    );
    let pg = PgServer::start(&[&hba_reject]).await;
    let ctx = Arc::new(Ctx {
        pg,
        plugin: PostgresStores::new(PostgresOptions::default()),
    });
    let cases: [(&str, Case); 7] = [
        ("schema_mode", |c| Box::pin(schema_mode(c))),
        ("database_from_template", |c| {
            Box::pin(database_from_template(c))
        }),
        ("empty_database", |c| Box::pin(empty_database(c))),
        ("two_branches_two_names", |c| {
            Box::pin(two_branches_two_names(c))
        }),
        ("template_in_use", |c| Box::pin(template_in_use(c))),
        ("concurrent_creates_share_one", |c| {
            Box::pin(concurrent_creates_share_one(c))
        }),
        ("failed_check_undoes_create", |c| {
            Box::pin(failed_check_undoes_create(c))
        }),
    ];
    let started = Instant::now();
    let tasks: Vec<_> = cases
        .into_iter()
        .map(|(name, case)| (name, tokio::spawn(case(ctx.clone()))))
        .collect();
    let mut failed = Vec::new();
    for (name, task) in tasks {
        match task.await {
            Ok(()) => eprintln!("case {name}: ok"),
            Err(e) => {
                eprintln!("case {name}: FAILED: {e}");
                failed.push(name);
            }
        }
    }
    eprintln!("cases took {:?}", started.elapsed());
    // The server stops here, by pid, when the last reference goes.
    let pid = ctx.pg.pid();
    drop(ctx);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z ")),
        "postgres {pid} still runs"
    );
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}

async fn schema_mode(ctx: Arc<Ctx>) {
    let baseline = ctx.baseline("base_schema", 2).await;
    let req = request("orders", "feature/a", StoreMode::Schema, baseline);
    let handle = ctx.plugin.create(&req).await.unwrap();
    let name = store_resource_name("orders", "feature/a");
    assert_eq!(handle.resource, name);
    assert!(
        handle.connection.contains("options=-csearch_path%3D"),
        "{}",
        handle.connection
    );
    assert!(ctx.schema_exists("base_schema", &name).await);

    // The handed-out string works for the driver and for libpq, with the schema first.
    let c = pg::connect(&handle.connection).await.unwrap();
    let schema: String = c
        .query_one("SELECT current_schema()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(schema, name);
    c.batch_execute("CREATE TABLE branch_only (x int)")
        .await
        .unwrap();
    let table_schema: String = c
        .query_one(
            "SELECT table_schema::text FROM information_schema.tables \
             WHERE table_name = 'branch_only'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(table_schema, name);
    drop(c);
    assert_eq!(
        ctx.pg.psql(&handle.connection, "SELECT current_schema()"),
        name
    );

    // Idempotent: the second create reuses the schema (and its table).
    let again = ctx.plugin.create(&req).await.unwrap();
    assert_eq!(again, handle);
    assert!(ctx.schema_exists("base_schema", &name).await);

    ctx.plugin.drop_store(&handle).await.unwrap();
    assert!(!ctx.schema_exists("base_schema", &name).await);
    ctx.plugin.drop_store(&handle).await.unwrap();
    // The baseline's own table is untouched.
    assert_eq!(count_items(&ctx.pg.url("base_schema")).await, 2);
}

async fn database_from_template(ctx: Arc<Ctx>) {
    let baseline = ctx.baseline("base_tmpl", 3).await;
    let req = request(
        "orders",
        "feature_b",
        StoreMode::DatabaseFromTemplate,
        baseline,
    );
    let handle = ctx.plugin.create(&req).await.unwrap();
    assert_eq!(handle.resource, "msx_orders_feature_b");
    assert_eq!(
        handle.connection,
        ctx.pg.url("msx_orders_feature_b"),
        "the baseline URL on the branch's database"
    );
    assert!(ctx.database_exists(&handle.resource).await);
    assert_eq!(count_items(&handle.connection).await, 3);

    // The copy is the branch's own: a write there does not reach the baseline.
    let c = pg::connect(&handle.connection).await.unwrap();
    c.batch_execute("INSERT INTO items VALUES (100)")
        .await
        .unwrap();
    drop(c);
    assert_eq!(count_items(&ctx.pg.url("base_tmpl")).await, 3);

    let again = ctx.plugin.create(&req).await.unwrap();
    assert_eq!(again, handle);
    assert_eq!(
        count_items(&handle.connection).await,
        4,
        "reused, not recopied"
    );

    // A session of the branch's instance does not stop the drop (WITH (FORCE)).
    let held = pg::connect(&handle.connection).await.unwrap();
    ctx.plugin.drop_store(&handle).await.unwrap();
    assert!(!ctx.database_exists(&handle.resource).await);
    drop(held);
    ctx.plugin.drop_store(&handle).await.unwrap();
}

async fn empty_database(ctx: Arc<Ctx>) {
    let baseline = ctx.baseline("base_empty", 1).await;
    let req = request("orders", "feature_c", StoreMode::Database, baseline);
    let handle = ctx.plugin.create(&req).await.unwrap();
    assert!(ctx.database_exists(&handle.resource).await);
    let c = pg::connect(&handle.connection).await.unwrap();
    let tables: i64 = c
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'items'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "an empty database, not a copy");
    drop(c);
    assert_eq!(ctx.plugin.create(&req).await.unwrap(), handle);
    ctx.plugin.drop_store(&handle).await.unwrap();
    assert!(!ctx.database_exists(&handle.resource).await);
    ctx.plugin.drop_store(&handle).await.unwrap();
}

async fn two_branches_two_names(ctx: Arc<Ctx>) {
    let baseline = ctx.pg.url("postgres");
    let a = request("orders", "feature/x", StoreMode::Database, baseline.clone());
    let b = request("orders", "feature-x", StoreMode::Database, baseline);
    let ha = ctx.plugin.create(&a).await.unwrap();
    let hb = ctx.plugin.create(&b).await.unwrap();
    assert_ne!(ha.resource, hb.resource);
    assert_ne!(ha.connection, hb.connection);
    assert!(ctx.database_exists(&ha.resource).await);
    assert!(ctx.database_exists(&hb.resource).await);
    ctx.plugin.drop_store(&ha).await.unwrap();
    assert!(!ctx.database_exists(&ha.resource).await);
    assert!(
        ctx.database_exists(&hb.resource).await,
        "dropping one leaves the other"
    );
    ctx.plugin.drop_store(&hb).await.unwrap();
}

async fn template_in_use(ctx: Arc<Ctx>) {
    let baseline = ctx.baseline("base_busy", 2).await;
    let session = pg::connect(&baseline).await.unwrap();
    let req = request(
        "orders",
        "feature_d",
        StoreMode::DatabaseFromTemplate,
        baseline,
    );
    let err = ctx.plugin.create(&req).await.unwrap_err();
    assert!(err.retryable(), "{err}");
    assert!(matches!(err, StoreError::Backend { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("\"base_busy\" is being accessed by other sessions"),
        "{text}"
    );
    assert!(
        !ctx.database_exists(&store_resource_name("orders", "feature_d"))
            .await
    );
    // Once the session is gone, the same request succeeds.
    drop(session);
    let handle = ctx.plugin.create(&req).await.unwrap();
    assert_eq!(count_items(&handle.connection).await, 2);
    ctx.plugin.drop_store(&handle).await.unwrap();
}

async fn concurrent_creates_share_one(ctx: Arc<Ctx>) {
    let baseline = ctx.baseline("base_race", 1).await;
    for mode in [StoreMode::Schema, StoreMode::Database] {
        let req = request("orders", "feature_race", mode, baseline.clone());
        let (a, b, c, d) = tokio::join!(
            ctx.plugin.create(&req),
            ctx.plugin.create(&req),
            ctx.plugin.create(&req),
            ctx.plugin.create(&req),
        );
        let a = a.unwrap();
        assert_eq!(a, b.unwrap());
        assert_eq!(a, c.unwrap());
        assert_eq!(a, d.unwrap());
        ctx.plugin.drop_store(&a).await.unwrap();
    }
}

async fn failed_check_undoes_create(ctx: Arc<Ctx>) {
    let (store, branch) = REJECTED;
    let req = request(store, branch, StoreMode::Database, ctx.pg.url("postgres"));
    let err = ctx.plugin.create(&req).await.unwrap_err();
    let text = err.to_string();
    eprintln!("{text}");
    assert!(text.contains("pg_hba.conf rejects"), "{text}");
    assert!(text.contains("dropped again"), "{text}");
    assert!(!err.retryable(), "{err}");
    assert!(
        !ctx.database_exists(&store_resource_name(store, branch))
            .await
    );
}

#[tokio::test]
async fn refused_connection_is_retryable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let plugin = PostgresStores::default();
    let req = request(
        "orders",
        "feature_e",
        StoreMode::Database,
        format!("postgres://postgres@127.0.0.1:{port}/base"),
    );
    let err = plugin.create(&req).await.unwrap_err();
    eprintln!("{err}");
    assert!(err.retryable(), "{err}");
    assert!(err.to_string().contains("connecting to database"), "{err}");
}

#[tokio::test]
async fn silent_server_times_out_retryably() {
    // Accepts TCP connections (the kernel does, from the backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let plugin = PostgresStores::new(PostgresOptions {
        connect_timeout: Duration::from_millis(300),
        ..PostgresOptions::default()
    });
    let req = request(
        "orders",
        "feature_f",
        StoreMode::Schema,
        format!("postgres://postgres@127.0.0.1:{port}/base"),
    );
    let started = Instant::now();
    let err = plugin.create(&req).await.unwrap_err();
    let took = started.elapsed();
    eprintln!("{err} ({took:?})");
    assert!(err.retryable(), "{err}");
    assert!(err.to_string().contains("no answer within"), "{err}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    drop(silent);
}

#[tokio::test]
async fn invalid_requests_are_refused_before_connecting() {
    let plugin = PostgresStores::default();
    let mut req = request(
        "orders",
        "b",
        StoreMode::Schema,
        "host=127.0.0.1 dbname=x".to_owned(),
    );
    let err = plugin.create(&req).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
    assert!(
        !err.to_string().contains("dbname=x"),
        "no baseline echo: {err}"
    );

    req.baseline = "postgres://u:secret@127.0.0.1:1/x?sslmode=require".to_owned();
    let err = plugin.create(&req).await.unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
    assert!(!err.to_string().contains("secret"), "{err}");

    req.baseline = "postgres://u@127.0.0.1:1/x".to_owned();
    req.kind = "mysql".into();
    let err = plugin.create(&req).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");

    // A handle that does not match its request is never dropped.
    req.kind = "postgres".into();
    let forged = StoreHandle {
        request: req,
        connection: String::new(),
        resource: "x".to_owned(),
    };
    let err = plugin.drop_store(&forged).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
}
