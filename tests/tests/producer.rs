//! The `producer` binary as other services run it: stdout JSON, exit codes,
//! nothing written for bad input.

mod support;

use support::{TestEnv, json_stdout};

#[tokio::test]
async fn enqueue_creates_then_deduplicates_and_prints_the_run() {
    let env = TestEnv::new().await;
    let args = [
        "enqueue",
        "--tenant",
        "42",
        "--type",
        "inventory.sync",
        "--inputs",
        r#"{"site":"paris"}"#,
        "--user-id",
        "7",
        "--initiator-name",
        "Ada",
        "--context",
        r#"{"target_scope":"eu"}"#,
    ];
    let out = env.producer(&args);
    support::assert_exit(&out, 0);
    let first = json_stdout(&out);
    assert_eq!(first["tenant_id"], 42);
    assert_eq!(first["type"], "inventory.sync");
    assert_eq!(first["status"], "queued");
    assert_eq!(first["outcome"], "pending");
    assert_eq!(first["deduplicated"], false);
    assert_eq!(first["initiator_name"], "Ada");
    let run_id = first["run_id"].as_i64().unwrap();
    assert_eq!(
        first["view_url"],
        format!("http://127.0.0.1:8080/tenants/42/operations/{run_id}")
    );

    // Same identity from another user: the active run, its initiator unchanged.
    let mut again_args = args.to_vec();
    again_args[8] = "8";
    again_args[10] = "Bob";
    let again = env.producer(&again_args);
    assert_eq!(again.status.code(), Some(0));
    let again = json_stdout(&again);
    assert_eq!(again["deduplicated"], true);
    assert_eq!(again["run_id"], run_id);
    assert_eq!(again["initiator_name"], "Ada");
    assert_eq!(env.count_runs().await, 1);
    assert_eq!(env.xlen("default").await, 1);

    let base = env
        .command("producer")
        .env("OPSRUN_MONITOR_URL", "https://ops.example/")
        .args(args)
        .output()
        .unwrap();
    assert_eq!(
        json_stdout(&base)["view_url"],
        format!("https://ops.example/tenants/42/operations/{run_id}")
    );
}

#[tokio::test]
async fn bad_input_exits_2_and_writes_nothing() {
    let env = TestEnv::new().await;
    let deep = format!("{}1{}", "{\"a\":".repeat(40), "}".repeat(40));
    let big = format!(r#"{{"a":"{}"}}"#, "x".repeat(70 * 1024));
    let ok = ["--tenant", "1", "--type", "a.b"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--tenant", "0", "--type", "a.b"], "tenant"),
        (vec!["--tenant", "-1", "--type", "a.b"], "tenant"),
        (vec!["--tenant", "01", "--type", "a.b"], "tenant"),
        (vec!["--tenant", "abc", "--type", "a.b"], "tenant"),
        (
            vec!["--tenant", "99999999999999999999", "--type", "a.b"],
            "tenant",
        ),
        (vec!["--tenant", "1", "--type", "Inventory.Sync"], "type"),
        (vec!["--tenant", "1", "--type", "inventory"], "type"),
        (
            vec!["--tenant", "1", "--type", "a.b", "--inputs", "[1]"],
            "inputs",
        ),
        (
            vec!["--tenant", "1", "--type", "a.b", "--inputs", "{bad"],
            "inputs",
        ),
        (
            vec!["--tenant", "1", "--type", "a.b", "--inputs", &deep],
            "inputs",
        ),
        (
            vec!["--tenant", "1", "--type", "a.b", "--inputs", &big],
            "inputs",
        ),
        (
            vec![
                "--tenant",
                "1",
                "--type",
                "a.b",
                "--inputs",
                r#"{"a":"x\u0000y"}"#,
            ],
            "inputs",
        ),
        (
            vec!["--tenant", "1", "--type", "a.b", "--context", "\"x\""],
            "context",
        ),
        (
            vec!["--tenant", "1", "--type", "a.b", "--queue", "Bad Queue"],
            "queue",
        ),
        (
            vec!["--tenant", "1", "--type", "a.b", "--user-id", "5"],
            "initiator-name",
        ),
        (
            vec![
                "--tenant",
                "1",
                "--type",
                "a.b",
                "--user-id",
                "0",
                "--initiator-name",
                "x",
            ],
            "user_id",
        ),
        (
            vec![
                "--tenant",
                "1",
                "--type",
                "a.b",
                "--inputs",
                "{}",
                "--inputs-file",
                "/dev/null",
            ],
            "inputs",
        ),
        (
            vec![
                "--tenant",
                "1",
                "--type",
                "a.b",
                "--inputs-file",
                "/nonexistent/inputs.json",
            ],
            "inputs-file",
        ),
        (vec!["--type", "a.b"], "tenant"),
        (
            vec!["--tenant", "1", "--type", "a.b", "--in", "300000years"],
            "--in",
        ),
        (
            vec!["--tenant", "1", "--type", "a.b", "--in", "20years"],
            "at",
        ),
        (
            vec![
                "--tenant",
                "1",
                "--type",
                "a.b",
                "--at",
                "9999-01-01T00:00:00Z",
            ],
            "at",
        ),
    ];
    for (args, field) in &cases {
        let mut all = vec!["enqueue"];
        all.extend(args);
        let out = env.producer(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: stderr {stderr}");
        assert!(
            stderr.contains(field),
            "{args:?}: stderr should name {field}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?} printed a result");
    }
    // Configuration problems are exit 2 as well, before anything is contacted.
    let no_db = env
        .command("producer")
        .env_remove("DATABASE_URL")
        .arg("enqueue")
        .args(ok)
        .output()
        .unwrap();
    assert_eq!(no_db.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_db.stderr).contains("database_url"));
    let bad_url = env
        .command("producer")
        .env("DATABASE_URL", "mysql://nope")
        .arg("enqueue")
        .args(ok)
        .output()
        .unwrap();
    support::assert_exit(&bad_url, 2);

    assert_eq!(env.count_runs().await, 0, "nothing was written");
    assert_eq!(env.xlen("default").await, 0, "nothing was dispatched");
}

#[tokio::test]
async fn redis_unreachable_exits_3_with_a_failed_run_then_a_new_enqueue_creates_a_run() {
    let env = TestEnv::new().await;
    let closed = format!("redis://127.0.0.1:{}/", devstack::free_port().unwrap());
    let args = [
        "enqueue",
        "--tenant",
        "9",
        "--type",
        "backup.run",
        "--inputs",
        r#"{"scope":"all"}"#,
    ];
    let out = env
        .command("producer")
        .env("REDIS_URL", &closed)
        .env("OPSRUN_DISPATCH_TIMEOUT", "500ms")
        .args(args)
        .output()
        .unwrap();
    support::assert_exit(&out, 3);
    let failed = json_stdout(&out);
    assert_eq!(failed["status"], "completed");
    assert_eq!(failed["outcome"], "failed");
    assert_eq!(failed["failure"]["code"], "queue.dispatch_failed");
    let stored: serde_json::Value =
        sqlx::query_scalar("SELECT failure_summary FROM operation_runs WHERE id = $1")
            .bind(failed["run_id"].as_i64().unwrap())
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(stored[0]["code"], "queue.dispatch_failed");
    assert_eq!(stored[0]["count"], 1);

    let out = env.producer(&args);
    assert_eq!(out.status.code(), Some(0));
    let fresh = json_stdout(&out);
    assert_eq!(fresh["deduplicated"], false);
    assert_ne!(fresh["run_id"], failed["run_id"]);
    assert_eq!(fresh["status"], "queued");
}

#[tokio::test]
async fn postgres_unreachable_exits_4_and_dispatches_nothing() {
    let env = TestEnv::new().await;
    let closed = support::unreachable_postgres_url();
    let out = env
        .command("producer")
        .env("DATABASE_URL", &closed)
        .args(["enqueue", "--tenant", "1", "--type", "a.b"])
        .output()
        .unwrap();
    support::assert_exit(&out, 4);
    assert!(out.stdout.is_empty());
    assert_eq!(env.xlen("default").await, 0);
}

#[tokio::test]
async fn migrate_is_idempotent_and_help_documents_exit_codes() {
    let env = TestEnv::new().await;
    let out = env.producer(&["migrate"]);
    support::assert_exit(&out, 0);
    let help = env.producer(&["enqueue", "--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    for code in [
        "0  run created",
        "2  invalid input",
        "3  dispatch to Redis failed",
        "4  Postgres unreachable",
    ] {
        assert!(text.contains(code), "--help lacks {code:?}");
    }
}

#[tokio::test]
async fn inputs_from_stdin_and_secrets_from_files() {
    let env = TestEnv::new().await;
    let dir = std::env::temp_dir().join(format!("opsrun-producer-{}", env.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let db_file = dir.join("database_url");
    let redis_file = dir.join("redis_url");
    std::fs::write(&db_file, format!("{}\n", env.database_url)).unwrap();
    std::fs::write(&redis_file, &env.redis_url).unwrap();
    let out = support::run_with_stdin(
        env.command("producer")
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env("DATABASE_URL_FILE", &db_file)
            .env("REDIS_URL_FILE", &redis_file)
            .args([
                "enqueue",
                "--tenant",
                "3",
                "--type",
                "backup.run",
                "--inputs-file",
                "-",
            ]),
        br#"{"scope":"mailboxes"}"#,
    );
    support::assert_exit(&out, 0);
    let run = json_stdout(&out);
    let inputs: serde_json::Value =
        sqlx::query_scalar("SELECT inputs FROM operation_runs WHERE id = $1")
            .bind(run["run_id"].as_i64().unwrap())
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(inputs["scope"], "mailboxes");
    assert_eq!(
        run["run_identity_hash"],
        opsrun::identity::identity_hash(3, "backup.run", &inputs)
    );

    // The same secret both in the environment and in a file is ambiguous: refused.
    let both = env
        .command("producer")
        .env("DATABASE_URL_FILE", &db_file)
        .args(["enqueue", "--tenant", "3", "--type", "a.b"])
        .output()
        .unwrap();
    assert_eq!(both.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&both.stderr).contains("database_url"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn batch_enqueue_prints_a_result_per_line_and_refuses_a_bad_batch_whole() {
    let env = TestEnv::new().await;
    let batch = [
        r#"{"tenant_id": 1, "type": "inventory.sync", "inputs": {"site": "paris"}, "user_id": 7, "initiator_name": "Ada"}"#,
        r#"{"tenant_id": 1, "type": "inventory.sync", "inputs": {"site": "lyon"}}"#,
        "",
        r#"{"tenant_id": 1, "type": "inventory.sync", "inputs": {"site": "paris"}}"#,
        r#"{"tenant_id": 2, "type": "backup.run", "at": "2030-01-01T00:00:00Z"}"#,
    ]
    .join("\n");
    let out = support::run_with_stdin(
        env.command("producer").args(["enqueue", "--batch", "-"]),
        batch.as_bytes(),
    );
    support::assert_exit(&out, 0);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(
        lines
            .iter()
            .map(|l| l["line"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 4, 5]
    );
    assert_eq!(lines[0]["deduplicated"], false);
    assert_eq!(lines[2]["deduplicated"], true);
    assert_eq!(lines[2]["run_id"], lines[0]["run_id"]);
    assert_eq!(lines[0]["initiator_name"], "Ada");
    assert_eq!(lines[3]["not_before"], "2030-01-01T00:00:00Z");
    assert_eq!(env.count_runs().await, 3);
    assert_eq!(
        env.xlen("default").await,
        2,
        "the scheduled run waits for its time"
    );

    let dir = env.job_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.ndjson");
    std::fs::write(
        &bad,
        [
            r#"{"tenant_id": 3, "type": "inventory.sync"}"#,
            r#"{"tenant_id": 0, "type": "inventory.sync"}"#,
            r#"{"tenant_id": 3, "type": "inventory.sync", "inputs": [1]}"#,
            r#"{"tenant_id": 3, "tpye": "inventory.sync"}"#,
            "not json",
        ]
        .join("\n"),
    )
    .unwrap();
    let out = env.producer(&["enqueue", "--batch", bad.to_str().unwrap()]);
    let stderr = support::assert_exit(&out, 2);
    for expected in [
        "line 2: invalid tenant_id",
        "line 3: invalid inputs",
        "line 4: unknown field `tpye`",
        "line 5:",
        "nothing was written",
    ] {
        assert!(
            stderr.contains(expected),
            "{expected:?} missing from {stderr}"
        );
    }
    assert!(!stderr.contains("line 1:"), "{stderr}");
    assert_eq!(env.count_runs().await, 3, "nothing written for a bad batch");
}
