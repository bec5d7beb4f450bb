//! Trace propagation end to end: a run started under a W3C `traceparent`
//! (the producer's variable, a batch line, the library) gets worker spans in
//! that trace, exported over OTLP/HTTP to a receiver started here; the exec
//! job sees `TRACEPARENT` in the same trace; every attempt of a retried run
//! joins it; a malformed traceparent is refused, naming it, with nothing
//! written.

mod support;

use std::time::Duration;

use devstack::{OtlpReceiver, ReceivedSpan};
use opsrun::trace::TraceContext;
use opsrun::{Outcome, RunRequest};
use support::{TestEnv, Worker, assert_exit, json_stdout, wait_until};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn registry(dir: &std::path::Path) -> String {
    format!(
        r#"
[types."traced.exec"]
command = ["sh", "-c", "echo \"$TRACEPARENT\" > {dir}/traceparent-$OPSRUN_RUN_ID"]

[types."traced.flaky"]
command = ["sh", "-c", "if [ \"$OPSRUN_ATTEMPT\" -lt 2 ]; then exit 75; fi"]
max_attempts = 3
retry_backoff = "100ms"
retry_backoff_max = "200ms"
"#,
        dir = dir.display()
    )
}

/// The spans of `trace` received so far.
fn spans_of(receiver: &OtlpReceiver, trace: &str) -> Vec<ReceivedSpan> {
    receiver
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == trace)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_spans_join_the_callers_trace_and_exec_jobs_continue_it() {
    let env = TestEnv::new().await;
    let receiver = OtlpReceiver::start().await.unwrap();
    let dir = env.job_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let registry_text = registry(&dir);
    let registry_path = env.write_registry(&registry_text);
    let registry_arg = registry_path.to_str().unwrap();

    // `producer enqueue` of tenant 1 under `traceparent`.
    let enqueue = |traceparent: String| {
        env.command("producer")
            .env("TRACEPARENT", traceparent)
            .args([
                "enqueue",
                "--registry",
                registry_arg,
                "--tenant",
                "1",
                "--type",
                "traced.exec",
            ])
            .output()
            .unwrap()
    };
    // A malformed traceparent is refused with exit 2, naming it; nothing is written.
    let out = enqueue("00-not-a-trace-01".into());
    let stderr = assert_exit(&out, 2);
    assert!(stderr.contains("traceparent"), "{stderr}");
    assert_eq!(env.count_runs().await, 0);

    let mut command = env.command("worker");
    command
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .args(["--concurrency", "4"]);
    let _worker = Worker::spawn_with_registry(&env, &registry_text, command);
    // Dispatches retries when their backoff ends.
    let _reaper = support::fast_reaper_with_registry(&env, &registry_text);

    // The producer, under the caller's trace (TRACEPARENT, as a CI job or a
    // shell script run inside a span would set it).
    let out = enqueue(format!("00-{TRACE}-{PARENT}-01"));
    assert_exit(&out, 0);
    let run_id = json_stdout(&out)["run_id"].as_i64().unwrap();
    let stored: Option<String> =
        sqlx::query_scalar("SELECT traceparent FROM operation_runs WHERE id = $1")
            .bind(run_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(stored.as_deref(), Some(&*format!("00-{TRACE}-{PARENT}-01")));

    // The run's attempt span is a child of the caller's span, one span per
    // attempt, its attributes what the claim and the completion did.
    let run = wait_until(Duration::from_secs(20), || async {
        spans_of(&receiver, TRACE)
            .into_iter()
            .find(|s| s.name == "run")
    })
    .await
    .unwrap_or_else(|| panic!("spans of the trace never arrived: {:?}", receiver.spans()));
    assert_eq!(run.parent_span_id, PARENT);
    assert_eq!(run.service, "opsrun-worker");
    assert_eq!(
        run.attribute("run_id").as_deref(),
        Some(&*run_id.to_string())
    );
    assert_eq!(
        run.attribute("opsrun.written").as_deref(),
        Some("succeeded")
    );
    assert_eq!(
        run.attribute("opsrun.claim.statement_runs").as_deref(),
        Some("1")
    );
    assert!(run.attribute("opsrun.claim.seconds").is_some(), "{run:?}");
    // Info log lines stay in the logs; only warnings become span events.
    assert!(run.events.is_empty(), "{:?}", run.events);
    assert!(!run.failed);

    // The exec job got TRACEPARENT in the same trace, under the attempt's span.
    let seen = std::fs::read_to_string(dir.join(format!("traceparent-{run_id}"))).unwrap();
    let seen = TraceContext::parse(seen.trim()).unwrap();
    assert_eq!(seen.trace_id(), TRACE);
    assert_eq!(seen.to_string(), format!("00-{TRACE}-{}-01", run.span_id));

    // A batch line's own traceparent, and the library's: each run joins its trace.
    let batch_trace = "0af7651916cd43dd8448eb211c80319c";
    let batch = format!(
        "{{\"tenant_id\": 2, \"type\": \"traced.exec\", \"traceparent\": \"00-{batch_trace}-b7ad6b7169203331-01\"}}\n"
    );
    let out = support::run_with_stdin(
        env.command("producer")
            .args(["enqueue", "--registry", registry_arg, "--batch", "-"]),
        batch.as_bytes(),
    );
    assert_exit(&out, 0);

    // A retried run: every attempt's span is in the one trace.
    let flaky_trace = "11112222333344445555666677778888";
    let flaky = env
        .service
        .ensure_run(&RunRequest::new(3, "traced.flaky").traceparent(
            TraceContext::parse(&format!("00-{flaky_trace}-1111222233334444-01")).unwrap(),
        ))
        .await
        .unwrap()
        .run;
    let done = support::completed(&env, &flaky).await;
    assert_eq!((done.outcome, done.attempt), (Outcome::Succeeded, 2));
    // Each attempt's span: the first failed and was retried.
    let attempts = wait_until(Duration::from_secs(20), || async {
        let attempts: Vec<(String, bool, String)> = spans_of(&receiver, flaky_trace)
            .into_iter()
            .filter(|s| s.name == "run")
            .filter_map(|s| {
                Some((
                    s.attribute("attempt")?,
                    s.failed,
                    s.attribute("opsrun.written")?,
                ))
            })
            .collect();
        (attempts.len() == 2).then_some(attempts)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "two attempts never arrived: {:?}",
            spans_of(&receiver, flaky_trace)
        )
    });
    assert!(
        attempts.contains(&("1".into(), true, "retried".into()))
            && attempts.contains(&("2".into(), false, "succeeded".into())),
        "{attempts:?}"
    );
    wait_until(Duration::from_secs(20), || async {
        spans_of(&receiver, batch_trace)
            .iter()
            .any(|s| s.name == "run")
            .then_some(())
    })
    .await
    .expect("the batch line's run never reported spans in its trace");
}
