//! Prometheus metrics, scraped by a real Prometheus server from the worker,
//! reaper and monitor binaries during a load, and queried through its HTTP
//! API: runs completed by outcome equal the ledger's counts, a queue's
//! length equals XLEN, and the shipped alert rules pass `promtool`.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use devstack::Prometheus;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use opsrun::{Outcome, RunRequest};
use serde_json::{Value, json};
use support::{Killed, TestEnv, Worker, wait_until};

/// A free loopback address.
fn address() -> String {
    format!("127.0.0.1:{}", devstack::free_port().unwrap())
}

/// A PromQL query's vector: each sample's labels and value.
async fn query(prometheus: &Prometheus, promql: &str) -> Vec<(Value, f64)> {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let encoded = percent_encoding::utf8_percent_encode(promql, percent_encoding::NON_ALPHANUMERIC);
    let uri: http::Uri = format!("{}/api/v1/query?query={encoded}", prometheus.url())
        .parse()
        .unwrap();
    let response = client.get(uri).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["status"], "success", "{promql}: {answer}");
    answer["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sample| {
            let value = sample["value"][1].as_str().unwrap().parse().unwrap();
            (sample["metric"].clone(), value)
        })
        .collect()
}

/// One number per value of `label` in a query's answer.
async fn by_label(prometheus: &Prometheus, promql: &str, label: &str) -> BTreeMap<String, f64> {
    query(prometheus, promql)
        .await
        .into_iter()
        .map(|(metric, value)| (metric[label].as_str().unwrap_or("").to_string(), value))
        .collect()
}

#[tokio::test]
async fn prometheus_scrapes_the_binaries_and_their_counts_match_the_ledger() {
    let env = TestEnv::new().await;
    let (worker_at, reaper_at, monitor_at) = (address(), address(), address());
    let _worker = Worker::spawn(&env, &env.redis_url, &["--metrics-listen", &worker_at]);
    let _reaper = Killed(
        env.command("reaper")
            .args(["--interval", "1s", "--metrics-listen", &reaper_at])
            .args(["--metrics-interval", "300ms", "--queues", "default,parked"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let monitor_listen = address();
    let _monitor = Killed(
        env.command("monitor")
            .args([
                "serve",
                "--listen",
                &monitor_listen,
                "--metrics-listen",
                &monitor_at,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let prometheus = Prometheus::start(&[
        ("worker", worker_at),
        ("reaper", reaper_at),
        ("monitor", monitor_at),
    ])
    .unwrap();

    // A mixed load on the worker's queue, and runs parked on a queue no
    // worker reads.
    let mut runs = Vec::new();
    for (run_type, n) in [
        ("test.succeed", 30),
        ("test.fail", 10),
        ("test.partial", 10),
    ] {
        for i in 0..n {
            let request = RunRequest::new(1, run_type).inputs(json!({"i": i}));
            runs.push(env.service.ensure_run(&request).await.unwrap().run);
        }
    }
    for i in 0..20 {
        let request = RunRequest::new(1, "test.succeed")
            .queue("parked")
            .inputs(json!({"parked": i}));
        env.service.ensure_run(&request).await.unwrap();
    }
    for run in &runs {
        support::completed_within(&env, run, Duration::from_secs(60)).await;
    }
    for _ in 0..3 {
        let mut stream = tokio::net::TcpStream::connect(&monitor_listen)
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(
            &mut stream,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut answer = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer)
            .await
            .unwrap();
    }

    let ledger: BTreeMap<String, f64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT outcome, count(*) FROM operation_runs WHERE status = 'completed' GROUP BY outcome",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(outcome, n)| (outcome, n as f64))
    .collect();
    assert_eq!(
        ledger.get(Outcome::Succeeded.as_str()),
        Some(&30.0),
        "{ledger:?}"
    );
    let parked_length = env.xlen("parked").await as f64;
    assert_eq!(parked_length, 20.0);

    // Prometheus scrapes twice a second; wait for the figures to settle.
    let settled = wait_until(Duration::from_secs(30), || async {
        let completed = by_label(
            &prometheus,
            "sum by (outcome) (opsrun_runs_completed_total)",
            "outcome",
        )
        .await;
        let length = by_label(
            &prometheus,
            "opsrun_queue_length{queue=\"parked\"}",
            "queue",
        )
        .await;
        let queued = by_label(
            &prometheus,
            "opsrun_queue_runs{queue=\"parked\",status=\"queued\"}",
            "queue",
        )
        .await;
        let ok = completed == ledger
            && length.get("parked") == Some(&parked_length)
            && queued.get("parked") == Some(&20.0);
        ok.then_some((completed, length))
    })
    .await;
    assert!(
        settled.is_some(),
        "completed by outcome {:?} (ledger {ledger:?}); parked length {:?} (XLEN {parked_length}); parked queued {:?}",
        by_label(
            &prometheus,
            "sum by (outcome) (opsrun_runs_completed_total)",
            "outcome"
        )
        .await,
        by_label(&prometheus, "opsrun_queue_length", "queue").await,
        by_label(&prometheus, "opsrun_queue_runs{status=\"queued\"}", "queue").await,
    );

    // Every target is up, each series says which service it came from.
    let up = wait_until(Duration::from_secs(20), || async {
        let up = by_label(&prometheus, "up == 1", "job").await;
        (up.len() == 3).then_some(up)
    })
    .await;
    assert!(up.is_some(), "{:?}", query(&prometheus, "up").await);
    let durations = by_label(
        &prometheus,
        "sum by (service) (opsrun_run_duration_seconds_count)",
        "service",
    )
    .await;
    assert_eq!(durations.get("worker"), Some(&50.0), "{durations:?}");
    let started = query(&prometheus, "sum(opsrun_runs_started_total)").await;
    assert_eq!(started[0].1, 50.0);
    let waits = query(&prometheus, "sum(opsrun_run_queue_wait_seconds_count)").await;
    assert_eq!(waits[0].1, 50.0);
    let health = wait_until(Duration::from_secs(10), || async {
        by_label(
            &prometheus,
            "opsrun_http_requests_total{route=\"/healthz\",status=\"200\"} >= 3",
            "route",
        )
        .await
        .remove("/healthz")
    })
    .await;
    assert!(
        health.is_some(),
        "{:?}",
        query(&prometheus, "opsrun_http_requests_total").await
    );
    // No run or tenant id is a label.
    let labels = query(&prometheus, "{__name__=~\"opsrun_.*\"}").await;
    for (metric, _) in &labels {
        for key in metric.as_object().unwrap().keys() {
            assert!(
                !["run_id", "tenant_id", "tenant", "id"].contains(&key.as_str()),
                "{metric}"
            );
        }
    }
}

#[test]
fn the_shipped_alert_rules_pass_promtool() {
    let promtool = Prometheus::promtool().expect("promtool (installed with prometheus)");
    let rules =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/prometheus/alerts.yml");
    let out = std::process::Command::new(promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(rules.with_file_name("../grafana/opsrun.json")).unwrap(),
    )
    .unwrap();
    assert!(
        dashboard["panels"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    );
}
