//! Adapter runs: one shadow run per domain record, none before `previewed`,
//! then following the record forward; idempotent; never dispatched or
//! reclaimed; and `producer mirror` as services run it.

mod support;

use opsrun::mirror::{DomainStatus, MirrorRequest, Mirrored};
use opsrun::{Failure, Initiator, Outcome, RunRequest, Status, SummaryCounts};
use opsrun_reaper::ReaperConfig;
use serde_json::json;
use support::{TestEnv, assert_exit, json_stdout};

fn report(domain_id: &str, status: DomainStatus) -> MirrorRequest {
    MirrorRequest {
        run: RunRequest::new(3, "restore.execute")
            .initiator(Initiator::user(7, "Ada"))
            .context(json!({"restore_run_id": domain_id})),
        domain_id: domain_id.into(),
        status,
        summary_counts: SummaryCounts::default(),
        failures: vec![],
    }
}

async fn mirror(env: &TestEnv, request: &MirrorRequest) -> Mirrored {
    env.service.mirror(request).await.unwrap()
}

#[tokio::test]
async fn no_run_exists_before_the_record_is_previewed() {
    let env = TestEnv::new().await;
    for status in [DomainStatus::Draft, DomainStatus::Previewing] {
        let m = mirror(&env, &report("r-1", status)).await;
        assert_eq!((m.run, m.changed), (None, false));
    }
    assert_eq!(env.count_runs().await, 0);
}

#[tokio::test]
async fn each_domain_status_maps_to_its_run_state() {
    let env = TestEnv::new().await;
    for (status, expected) in [
        (DomainStatus::Previewed, (Status::Queued, Outcome::Pending)),
        (DomainStatus::Queued, (Status::Queued, Outcome::Pending)),
        (DomainStatus::Running, (Status::Running, Outcome::Pending)),
        (
            DomainStatus::Succeeded,
            (Status::Completed, Outcome::Succeeded),
        ),
        (
            DomainStatus::PartiallySucceeded,
            (Status::Completed, Outcome::PartiallySucceeded),
        ),
        (DomainStatus::Failed, (Status::Completed, Outcome::Failed)),
        (
            DomainStatus::Cancelled,
            (Status::Completed, Outcome::Failed),
        ),
    ] {
        let id = format!("{status:?}");
        let m = mirror(&env, &report(&id, status)).await;
        let run = m.run.unwrap();
        assert!(m.changed);
        assert_eq!((run.status, run.outcome), expected, "{status:?}");
        assert_eq!(run.domain_id.as_deref(), Some(id.as_str()));
        assert_eq!(run.identity_rule, "strict");
        if expected.0 == Status::Completed {
            assert!(
                run.started_at.is_some(),
                "a finished record's run has a start"
            );
        }
        if status == DomainStatus::Cancelled {
            assert_eq!(run.failure_summary.0[0].code, "domain.cancelled");
        }
    }
    // One run per record.
    assert_eq!(env.count_runs().await, 7);
}

#[tokio::test]
async fn the_shadow_run_follows_the_record_forward_and_repeats_change_nothing() {
    let env = TestEnv::new().await;
    let first = mirror(&env, &report("r-9", DomainStatus::Previewed))
        .await
        .run
        .unwrap();
    let again = mirror(&env, &report("r-9", DomainStatus::Previewed)).await;
    assert!(!again.changed);
    assert_eq!(
        again.run.as_ref(),
        Some(&first),
        "a repeat changes nothing, not even updated_at"
    );

    let running = mirror(&env, &report("r-9", DomainStatus::Running)).await;
    assert!(running.changed);
    assert_eq!(running.run.as_ref().unwrap().id, first.id);
    // A stale report arriving late never moves the run back.
    let stale = mirror(&env, &report("r-9", DomainStatus::Previewed)).await;
    assert!(!stale.changed);
    assert_eq!(stale.run.unwrap().status, Status::Running);

    let mut done = report("r-9", DomainStatus::PartiallySucceeded);
    done.summary_counts = SummaryCounts {
        total: 10,
        success: 9,
        failed: 1,
        skipped: 0,
    };
    done.failures = vec![Failure {
        code: "restore.item_failed".into(),
        message: "mount failed, password=hunter2".into(),
        count: 1,
    }];
    let finished = mirror(&env, &done).await.run.unwrap();
    assert_eq!(
        (finished.status, finished.outcome),
        (Status::Completed, Outcome::PartiallySucceeded)
    );
    assert_eq!(finished.summary_counts.0.success, 9);
    assert!(!finished.failure_summary.0[0].message.contains("hunter2"));
    // Final: neither a repeat nor a different ending changes it.
    for status in [
        DomainStatus::PartiallySucceeded,
        DomainStatus::Failed,
        DomainStatus::Running,
    ] {
        let m = mirror(&env, &report("r-9", status)).await;
        assert!(!m.changed, "{status:?}");
        assert_eq!(m.run.unwrap().updated_at, finished.updated_at);
    }
    // The initiator heard about it twice: queued, and how it ended.
    let kinds: Vec<String> =
        sqlx::query_scalar("SELECT kind FROM notifications WHERE user_id = 7 ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(kinds, ["queued", "completed"]);
    assert_eq!(env.count_runs().await, 1);
}

#[tokio::test]
async fn shadow_runs_are_never_dispatched_or_reclaimed() {
    let env = TestEnv::new().await;
    let queued = mirror(&env, &report("q", DomainStatus::Previewed))
        .await
        .run
        .unwrap();
    let running = mirror(&env, &report("r", DomainStatus::Running))
        .await
        .run
        .unwrap();
    sqlx::query("UPDATE operation_runs SET heartbeat_at = now() - interval '1 day'")
        .execute(&env.pool)
        .await
        .unwrap();
    let config = ReaperConfig {
        queues: vec!["default".into()],
        ..Default::default()
    };
    let round = opsrun_reaper::run_once(&env.service, &config).await;
    assert!(round.failed_passes.is_empty(), "{round:?}");
    let now_queued = env.ledger().get(3, queued.id).await.unwrap().unwrap();
    let now_running = env.ledger().get(3, running.id).await.unwrap().unwrap();
    assert_eq!(now_queued.status, Status::Queued);
    assert!(now_queued.dispatch_entry_id.is_none() && now_queued.reclaims.0.is_empty());
    assert_eq!(
        now_queued.dispatched_at, None,
        "never stamped as dispatched"
    );
    assert_eq!(now_running.status, Status::Running);
    assert!(now_running.reclaims.0.is_empty());
    assert_eq!(env.xlen("default").await, 0);
}

#[tokio::test]
async fn producer_mirror_reports_the_run_and_refuses_bad_input() {
    let env = TestEnv::new().await;
    let base = [
        "mirror",
        "--tenant",
        "3",
        "--type",
        "restore.execute",
        "--domain-id",
        "restore-41",
    ];
    let draft = env.producer(&[&base[..], &["--domain-status", "draft"]].concat());
    assert_exit(&draft, 0);
    assert_eq!(json_stdout(&draft)["run_id"], json!(null));

    let previewed = env.producer(
        &[
            &base[..],
            &[
                "--domain-status",
                "previewed",
                "--user-id",
                "7",
                "--initiator-name",
                "Ada",
                "--context",
                r#"{"restore_run_id": 41}"#,
            ],
        ]
        .concat(),
    );
    assert_exit(&previewed, 0);
    let out = json_stdout(&previewed);
    assert_eq!(
        (
            out["status"].as_str(),
            out["outcome"].as_str(),
            out["changed"].as_bool()
        ),
        (Some("queued"), Some("pending"), Some(true))
    );
    assert!(
        out["view_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/tenants/3/operations/{}", out["run_id"]))
    );

    let done = env.producer(
        &[
            &base[..],
            &[
                "--domain-status",
                "failed",
                "--summary-counts",
                r#"{"total":4,"success":0,"failed":4}"#,
                "--failure",
                "restore.item_failed=disk full",
            ],
        ]
        .concat(),
    );
    assert_exit(&done, 0);
    let out = json_stdout(&done);
    assert_eq!(
        (out["status"].as_str(), out["outcome"].as_str()),
        (Some("completed"), Some("failed"))
    );
    assert_eq!(out["failure_summary"][0]["code"], "restore.item_failed");
    let repeat = env.producer(&[&base[..], &["--domain-status", "failed"]].concat());
    assert_eq!(json_stdout(&repeat)["changed"], false);

    for bad in [
        vec!["--domain-status", "exploded"],
        vec!["--domain-status", "running", "--failure", "no-equals"],
        vec!["--domain-status", "running", "--summary-counts", "[1]"],
        vec!["--domain-status", "running", "--context", "nope"],
    ] {
        let out = env.producer(
            &[
                &[
                    "mirror",
                    "--tenant",
                    "3",
                    "--type",
                    "restore.execute",
                    "--domain-id",
                    "other",
                ][..],
                &bad,
            ]
            .concat(),
        );
        let stderr = assert_exit(&out, 2);
        assert!(!stderr.is_empty(), "{bad:?}");
    }
    assert_eq!(env.count_runs().await, 1, "bad input wrote nothing");
}
