//! Branch stores end to end, with a real PostgreSQL server: a branch whose plan isolates a store
//! (it declares a migration) gets a schema of its own on the baseline's server before its
//! instance starts, and the instance receives the connection string to it; deleting the branch
//! stops the instance and drops the schema.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../exec/tests/pg/mod.rs"]
mod pg;

use common::*;
use std::path::Path;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);

/// Answers every GET with the DATABASE_URL it was started with.
const CHILD: &str = r#"
import http.server, os, sys
port = int(sys.argv[1])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("db=%s" % os.environ.get("DATABASE_URL", "-")).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

fn write_config(dir: &Path, base: &str, db_url: &str) {
    std::fs::create_dir_all(dir.join("branches")).unwrap();
    std::fs::write(dir.join("child.py"), CHILD).unwrap();
    let org = format!(
        "kind: org\nlifecycle: {{grace_ms: 200}}\nstores:\n  orders-db: {{url: \"{db_url}\", mode: schema}}\nservices:\n  orders:\n    hosts: [orders]\n    endpoints: [\"{base}\"]\n    stores: [{{name: orders-db, kind: postgres}}]\n    run: {{command: python3, args: [\"{}\", \"{{port}}\"]}}\n",
        dir.join("child.py").display()
    );
    std::fs::write(dir.join("org.yaml"), org).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrating_branch_gets_its_own_schema_and_gives_it_back() {
    let server = pg::PgServer::start(&[]).await;
    let admin_db = server.client("postgres").await;
    admin_db
        .batch_execute("CREATE DATABASE orders")
        .await
        .unwrap();
    let base = Upstream::start("base").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg");
    write_config(&cfg, &base.addr.to_string(), &server.url("orders"));
    let state = dir.path().join("state");
    let (child, proxy, admin) = spawn_run_processes(&cfg, &state).await;

    // the branch declares a migration of orders-db: the plan isolates it (a per-branch schema)
    // and forks orders, which writes it
    std::fs::write(
        cfg.join("branches/.mig.tmp"),
        "parent: baseline\nservices:\n  orders:\n    migrations: [{store: orders-db, name: \"0042-add-column\"}]\n",
    )
    .unwrap();
    std::fs::rename(cfg.join("branches/.mig.tmp"), cfg.join("branches/mig.yaml")).unwrap();

    let c = h1_client();
    let headers = [("host", "orders"), ("x-microstax-branch", "mig")];
    let body = wait_for(DEADLINE, "mig served by its own instance", || async {
        let r = get(&c, proxy, "/", &headers).await;
        (r.status == 200 && r.text().starts_with("db=postgres://")).then(|| r.text())
    })
    .await;
    let url = body.trim_start_matches("db=").to_string();
    // `orders-db` is sanitised to `orders_db`, so the name carries a hash suffix
    assert!(url.contains("search_path%3Dmsx_orders_db_mig__"), "{url}");
    // the schema exists, and the handed-out string reaches it
    let schemas = server.psql(
        &server.url("orders"),
        "select schema_name from information_schema.schemata where schema_name like 'msx_%'",
    );
    assert!(schemas.starts_with("msx_orders_db_mig__"), "{schemas}");
    assert_eq!(server.psql(&url, "select current_schema()"), schemas);
    let v = get(&c, admin, "/instances", &[]).await.json();
    assert_eq!(v["stores"][0]["store"], "orders-db", "{v}");
    // the baseline keeps its own endpoint and database
    let r = get(&c, proxy, "/", &[("host", "orders")]).await;
    assert!(r.text().contains("\"base\""), "{}", r.text());

    // the branch goes: its instance is stopped and its schema dropped after the grace
    std::fs::remove_file(cfg.join("branches/mig.yaml")).unwrap();
    wait_for(DEADLINE, "the branch schema dropped", || async {
        let s = server.psql(
            &server.url("orders"),
            "select count(*) from information_schema.schemata where schema_name like 'msx_%'",
        );
        (s == "0").then_some(())
    })
    .await;
    wait_for(DEADLINE, "the instance given back", || async {
        let v = get(&c, admin, "/instances", &[]).await.json();
        v["instances"]
            .as_array()
            .is_some_and(Vec::is_empty)
            .then_some(())
    })
    .await;
    stop_bin(child).await;
}
