//! opsrun over TLS to Postgres: a server that accepts TLS connections only,
//! with a certificate from a test CA. With `sslmode=verify-full` and the CA
//! as `sslrootcert`, migrations, a start and its run go end to end over TLS;
//! another CA, a name the certificate does not hold, and plain text where
//! the server requires TLS are each refused by every binary with exit 7.

mod support;

use devstack::{Postgres, PostgresOptions, TestCa};
use support::{TestEnv, Worker, json_stdout};

#[tokio::test]
async fn postgres_over_verified_tls_and_every_refusal_is_exit_7() {
    let dir = std::env::temp_dir().join(format!("opsrun-pg-tls-{}", std::process::id()));
    // The certificate names 127.0.0.1 only, so `localhost` is a wrong name.
    let ca = TestCa::create(&dir.join("good"), &["127.0.0.1"]).unwrap();
    let pg = tokio::task::spawn_blocking({
        let ca = ca.clone();
        move || Postgres::start_tls(PostgresOptions::fast(), &ca).unwrap()
    })
    .await
    .unwrap();
    let url = |host: &str, query: String| {
        format!("postgres://opsrun@{host}:{}/postgres?{query}", pg.port())
    };
    let verify = |ca: &TestCa| format!("sslmode=verify-full&sslrootcert={}", ca.ca_file.display());
    let env = TestEnv::on_database(&url("127.0.0.1", verify(&ca))).await;
    let tls: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(tls, "the test's own connection is TLS");

    let _worker = Worker::spawn_with_registry(&env, "", env.command("worker"));
    let out = env
        .command("producer")
        .args(["enqueue", "--tenant", "1", "--type", "demo.succeed"])
        .output()
        .unwrap();
    support::assert_exit(&out, 0);
    let run_id = json_stdout(&out)["run_id"].as_i64().unwrap();
    support::assert_succeeds(&env, 1, run_id).await;

    let other = TestCa::create(&dir.join("other"), &["127.0.0.1"]).unwrap();
    for (database_url, what) in [
        (url("127.0.0.1", verify(&other)), "another CA"),
        (
            url("localhost", verify(&ca)),
            "a name the certificate does not hold",
        ),
        (url("127.0.0.1", "sslmode=disable".into()), "plain text"),
    ] {
        for args in [
            &["enqueue", "--tenant", "2", "--type", "demo.succeed"][..],
            &["--startup-timeout", "10s"][..],
            &["--once"][..],
        ] {
            let binary = match args[0] {
                "enqueue" => "producer",
                "--once" => "reaper",
                _ => "worker",
            };
            let out = env
                .command(binary)
                .env("DATABASE_URL", &database_url)
                .args(args)
                .output()
                .unwrap();
            let stderr = support::assert_exit(&out, 7);
            assert!(
                stderr.contains("certificate") || stderr.contains("encryption"),
                "{binary}, {what}: {stderr}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
