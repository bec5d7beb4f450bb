//! Schedules: each slot fires once however many reapers run, a paused
//! schedule fires nothing, and after downtime the missed slots follow the
//! schedule's policy; across a DST change the reaper fires a zone's local
//! time once (slot arithmetic across both changes is unit-tested in
//! `opsrun::schedule`).

mod support;

use serde_json::json;
use support::{TestEnv, assert_exit, json_stdout};

/// Create schedule `name` (every minute, UTC) with `missed`; its last slot
/// is set `minutes` slots back, so that many slots are due now.
async fn due_schedule(env: &TestEnv, name: &str, missed: &str, minutes: i32) -> i64 {
    let out = env.producer(&[
        "schedule",
        "create",
        "--tenant",
        "3",
        "--name",
        name,
        "--cron",
        "* * * * *",
        "--type",
        "backup.run",
        "--inputs",
        r#"{"target": "vault"}"#,
        "--missed",
        missed,
        "--actor-name",
        "Ada",
    ]);
    assert_exit(&out, 0);
    let id = json_stdout(&out)["id"].as_i64().unwrap();
    sqlx::query(
        "UPDATE schedules SET last_slot = date_trunc('minute', now()) - make_interval(mins => $2) + interval '1 second', \
             next_slot = date_trunc('minute', now()) - make_interval(mins => $2 - 1) WHERE id = $1",
    )
    .bind(id)
    .bind(minutes)
    .execute(&env.pool)
    .await
    .unwrap();
    id
}

/// The slots a schedule fired (oldest first) and how many it skipped.
async fn settled(env: &TestEnv, id: i64) -> (Vec<String>, i64) {
    let fired: Vec<String> = sqlx::query_scalar(
        "SELECT inputs ->> 'scheduled_for' FROM operation_runs WHERE inputs ->> 'schedule_id' = $1::text ORDER BY 1",
    )
    .bind(id)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let skipped: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM schedule_slots WHERE schedule_id = $1 AND skipped",
    )
    .bind(id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    (fired, skipped)
}

fn reaper_once(env: &TestEnv) -> std::process::Child {
    env.command("reaper")
        .args(["--once", "--queues", "default"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn a_slot_fires_once_with_three_reapers_and_a_paused_schedule_fires_nothing() {
    let env = TestEnv::new().await;
    // `latest`: a minute that turns while the test runs adds a skipped slot, not a second run.
    let nightly = due_schedule(&env, "nightly", "latest", 1).await;
    let held = due_schedule(&env, "held", "skip", 1).await;
    assert_exit(
        &env.producer(&["schedule", "pause", "--tenant", "3", "--name", "held"]),
        0,
    );

    // Three reapers at once, twice over.
    for _ in 0..2 {
        let reapers: Vec<_> = (0..3).map(|_| reaper_once(&env)).collect();
        for reaper in reapers {
            let out = reaper.wait_with_output().unwrap();
            assert_exit(&out, 0);
        }
    }
    let (fired, skipped) = settled(&env, nightly).await;
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert!(skipped <= 1, "{skipped}");
    let run: (String, String, String, i32) = sqlx::query_as(
        "SELECT identity_rule, initiator_name, inputs ->> 'target', attempt FROM operation_runs \
         WHERE inputs ->> 'schedule_id' = $1::text",
    )
    .bind(nightly)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(run.0, "strict");
    assert_eq!(run.1, "System");
    assert_eq!(run.2, "vault");
    assert_eq!(
        settled(&env, held).await,
        (vec![], 0),
        "a paused schedule fired"
    );

    // The listing shows the next slots and the last ones with their run.
    let listed =
        json_stdout(&env.producer(&["schedule", "list", "--tenant", "3", "--name", "nightly"]));
    let entry = &listed["schedules"][0];
    assert_eq!(entry["next_slots"].as_array().unwrap().len(), 5);
    assert!(entry["last_slots"][0]["run_id"].is_i64(), "{entry}");
    // Another tenant sees none of it.
    let other = json_stdout(&env.producer(&["schedule", "list", "--tenant", "4"]));
    assert_eq!(other["schedules"], json!([]));
    assert_exit(
        &env.producer(&["schedule", "delete", "--tenant", "4", "--name", "nightly"]),
        6,
    );
}

#[tokio::test]
async fn missed_slots_after_downtime_follow_each_policy() {
    let env = TestEnv::new().await;
    // Three slots were missed: two minutes ago, one minute ago, and this minute's.
    let skip = due_schedule(&env, "skip", "skip", 3).await;
    let latest = due_schedule(&env, "latest", "latest", 3).await;
    let catch_up = due_schedule(&env, "catch-up", "catch-up:2", 3).await;
    let out = reaper_once(&env).wait_with_output().unwrap();
    assert_exit(&out, 0);
    let report = json_stdout(&out);
    assert!(
        report["schedules"]["fired"].as_u64().unwrap() >= 4,
        "{report}"
    );

    for (id, fires) in [(skip, 1), (latest, 1), (catch_up, 2)] {
        let (fired, skipped) = settled(&env, id).await;
        let slots: i64 =
            sqlx::query_scalar("SELECT count(*) FROM schedule_slots WHERE schedule_id = $1")
                .bind(id)
                .fetch_one(&env.pool)
                .await
                .unwrap();
        assert_eq!(fired.len(), fires, "schedule {id}: {fired:?}");
        assert_eq!(skipped as usize + fired.len(), slots as usize);
        assert!(slots >= 3, "schedule {id}: {slots} slots settled");
        // What fired are the latest slots.
        let newest: Vec<String> = sqlx::query_scalar(
            "SELECT to_char(slot AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS') FROM schedule_slots \
             WHERE schedule_id = $1 ORDER BY slot DESC LIMIT $2",
        )
        .bind(id)
        .bind(fires as i64)
        .fetch_all(&env.pool)
        .await
        .unwrap();
        for slot in newest {
            assert!(
                fired.iter().any(|f| f.starts_with(&slot)),
                "schedule {id}: {slot} not in {fired:?}"
            );
        }
    }

    // Bad definitions are refused, naming the field; nothing is written.
    for (args, field) in [
        (["--cron", "61 * * * *", "--missed", "skip"], "cron"),
        (["--cron", "* * * * *", "--missed", "sometimes"], "missed"),
    ] {
        let out = env.producer(&[
            "schedule",
            "create",
            "--tenant",
            "3",
            "--name",
            "bad",
            "--type",
            "backup.run",
            args[0],
            args[1],
            args[2],
            args[3],
        ]);
        let stderr = assert_exit(&out, 2);
        assert!(stderr.contains(field), "{stderr}");
    }
    let out = env.producer(&[
        "schedule",
        "create",
        "--tenant",
        "3",
        "--name",
        "zone",
        "--type",
        "backup.run",
        "--cron",
        "0 3 * * *",
        "--timezone",
        "Mars/Olympus",
    ]);
    assert!(assert_exit(&out, 2).contains("timezone"));
    let out = env.producer(&[
        "schedule",
        "create",
        "--tenant",
        "3",
        "--name",
        "skip",
        "--type",
        "backup.run",
        "--cron",
        "0 3 * * *",
    ]);
    assert!(assert_exit(&out, 2).contains("already has a schedule"));
}

#[tokio::test]
async fn schedules_declared_in_the_registry_are_kept_as_declared() {
    let env = TestEnv::new().await;
    let declare = |cron: &str| {
        env.write_registry(&format!(
            "[schedules.nightly]\ntenant = 5\ncron = \"{cron}\"\ntimezone = \"Europe/Paris\"\ntype = \"backup.run\"\n\
             inputs = {{ target = \"vault\" }}\nmissed = \"catch-up:3\"\n"
        ))
    };
    let reap = |registry: &std::path::Path| {
        let out = env
            .command("reaper")
            .args([
                "--once",
                "--queues",
                "default",
                "--registry",
                registry.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert_exit(&out, 0);
    };
    reap(&declare("30 2 * * *"));
    let listed = json_stdout(&env.producer(&["schedule", "list", "--tenant", "5"]));
    let nightly = &listed["schedules"][0]["schedule"];
    assert_eq!(nightly["created_by"], "registry");
    assert_eq!(nightly["cron"], "30 2 * * *");
    assert_eq!(nightly["missed"], "catch_up");
    assert_eq!(nightly["catch_up_max"], 3);
    assert_eq!(nightly["inputs"], json!({"target": "vault"}));
    // A changed declaration changes it; the same one again changes nothing.
    reap(&declare("45 3 * * *"));
    reap(&declare("45 3 * * *"));
    let listed = json_stdout(&env.producer(&["schedule", "list", "--tenant", "5"]));
    assert_eq!(listed["schedules"].as_array().unwrap().len(), 1);
    assert_eq!(listed["schedules"][0]["schedule"]["cron"], "45 3 * * *");
    // One made through the CLI under that name in another tenant is its own.
    let out = env.producer(&[
        "schedule",
        "create",
        "--tenant",
        "6",
        "--name",
        "nightly",
        "--cron",
        "0 1 * * *",
        "--type",
        "backup.run",
    ]);
    assert_exit(&out, 0);
    reap(&declare("45 3 * * *"));
    let other = json_stdout(&env.producer(&["schedule", "list", "--tenant", "6"]));
    assert_eq!(other["schedules"][0]["schedule"]["cron"], "0 1 * * *");

    // A bad declaration is refused at start, naming it.
    let out = env
        .command("reaper")
        .args([
            "--once",
            "--registry",
            declare("99 * * * *").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = assert_exit(&out, 2);
    assert!(
        stderr.contains("schedules.\"nightly\"") && stderr.contains("cron"),
        "{stderr}"
    );
}

#[tokio::test]
async fn across_a_dst_change_the_reaper_fires_the_local_time_once() {
    let env = TestEnv::new().await;
    let out = env.producer(&[
        "schedule",
        "create",
        "--tenant",
        "3",
        "--name",
        "nightly-paris",
        "--cron",
        "30 2 * * *",
        "--timezone",
        "Europe/Paris",
        "--type",
        "backup.run",
        "--missed",
        "catch-up:1000",
    ]);
    assert_exit(&out, 0);
    let id = json_stdout(&out)["id"].as_i64().unwrap();
    // Down since before the fall-back of 25 October 2026 (02:30 happened
    // twice that night in Paris): every slot since fires on catch-up.
    sqlx::query(
        "UPDATE schedules SET last_slot = '2026-10-23 12:00Z', next_slot = '2026-10-24 00:30Z' WHERE id = $1",
    )
    .bind(id)
    .execute(&env.pool)
    .await
    .unwrap();
    let out = reaper_once(&env).wait_with_output().unwrap();
    assert_exit(&out, 0);
    let (fired, skipped) = settled(&env, id).await;
    assert_eq!(skipped, 0);
    let around: Vec<&str> = fired
        .iter()
        .map(String::as_str)
        .filter(|slot| slot.starts_with("2026-10-2"))
        .take(3)
        .collect();
    assert_eq!(
        around,
        [
            "2026-10-24T00:30:00+00:00", // 02:30 CEST
            "2026-10-25T00:30:00+00:00", // 02:30 CEST, the first of the two
            "2026-10-26T01:30:00+00:00", // 02:30 CET
        ],
        "{fired:?}"
    );
    // One slot a day, every day since.
    let days: std::collections::BTreeSet<&str> = fired.iter().map(|s| &s[..10]).collect();
    assert_eq!(days.len(), fired.len(), "{fired:?}");
}
