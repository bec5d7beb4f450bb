//! opsrun over TLS to Redis: a server with a certificate from a test CA.
//! A run goes end to end (producer, worker) over `rediss://` with the CA
//! given by file, as an ACL user whose rights cover opsrun's keys only; a
//! client that does not trust the CA, or reaches the server by a name its
//! certificate does not hold, is refused with exit 7; a wrong password, or
//! a user without rights on opsrun's keys, with exit 2.

mod support;

use devstack::{Redis, RedisCluster, TestCa};
use support::{TestEnv, Worker, json_stdout};

#[tokio::test]
async fn a_run_goes_end_to_end_over_tls_and_an_untrusted_server_is_refused() {
    let dir = std::env::temp_dir().join(format!("opsrun-tls-{}", std::process::id()));
    // The certificate names 127.0.0.1 only, so `localhost` is a wrong name.
    let ca = TestCa::create(&dir.join("good"), &["127.0.0.1"]).unwrap();
    let (redis, tls_port) = tokio::task::spawn_blocking({
        let ca = ca.clone();
        move || Redis::start_tls(&ca).unwrap()
    })
    .await
    .unwrap();
    let url = format!("rediss://opsrun:s3cret-pass@127.0.0.1:{tls_port}/");
    let env = TestEnv::with_redis_and_ca(&url, &ca.ca_file).await;
    // An ACL user limited to opsrun's keys (this test's prefix) and to
    // non-dangerous commands; the default user is off.
    let prefix = env.prefix.clone();
    for acl in [
        vec![
            "ACL",
            "SETUSER",
            "opsrun",
            "on",
            ">s3cret-pass",
            &format!("~{prefix}:*"),
            "+@all",
            "-@dangerous",
        ],
        vec![
            "ACL",
            "SETUSER",
            "stranger",
            "on",
            ">other-pass",
            "~elsewhere:*",
            "+@all",
            "-@dangerous",
        ],
        vec!["ACL", "SETUSER", "default", "off"],
    ] {
        let answer = redis.cli(&acl).unwrap();
        assert!(answer.trim() == "OK", "{acl:?}: {answer}");
    }

    let mut worker = env.command("worker");
    worker.env("REDIS_CA_FILE", &ca.ca_file);
    let _worker = Worker::spawn_with_registry(&env, "", worker);
    let out = env
        .command("producer")
        .env("REDIS_CA_FILE", &ca.ca_file)
        .args(["enqueue", "--tenant", "1", "--type", "demo.succeed"])
        .output()
        .unwrap();
    support::assert_exit(&out, 0);
    let run_id = json_stdout(&out)["run_id"].as_i64().unwrap();
    support::assert_succeeds(&env, 1, run_id).await;

    // Another CA, and the system's roots: the server is not trusted. A
    // name the certificate does not hold: refused too.
    let other = TestCa::create(&dir.join("other"), &["127.0.0.1"]).unwrap();
    for (url, ca_file) in [
        (url.clone(), Some(&other.ca_file)),
        (url.clone(), None),
        (format!("rediss://localhost:{tls_port}/"), Some(&ca.ca_file)),
    ] {
        let mut producer = env.command("producer");
        producer.env("REDIS_URL", &url).env_remove("REDIS_CA_FILE");
        if let Some(ca_file) = ca_file {
            producer.env("REDIS_CA_FILE", ca_file);
        }
        let out = producer
            .args(["enqueue", "--tenant", "2", "--type", "demo.succeed"])
            .output()
            .unwrap();
        let stderr = support::assert_exit(&out, 7);
        assert!(
            stderr.contains("certificate"),
            "{url} {ca_file:?}: {stderr}"
        );

        let mut reaper = env.command("reaper");
        reaper.env("REDIS_URL", &url).env_remove("REDIS_CA_FILE");
        if let Some(ca_file) = ca_file {
            reaper.env("REDIS_CA_FILE", ca_file);
        }
        let out = reaper.arg("--once").output().unwrap();
        support::assert_exit(&out, 7);
    }

    // Credentials Redis refuses, and a user without rights on opsrun's
    // keys: a configuration error (exit 2) naming the problem, the password
    // never printed.
    for (url, word) in [
        (
            format!("rediss://opsrun:wrong-pass@127.0.0.1:{tls_port}/"),
            "authentication failed",
        ),
        (
            format!("rediss://stranger:other-pass@127.0.0.1:{tls_port}/"),
            "noperm",
        ),
    ] {
        let out = env
            .command("worker")
            .env("REDIS_URL", &url)
            .env("REDIS_CA_FILE", &ca.ca_file)
            .args(["--startup-timeout", "10s"])
            .output()
            .unwrap();
        let stderr = support::assert_exit(&out, 2);
        assert!(
            stderr.contains("refused the credentials") && stderr.to_lowercase().contains(word),
            "{stderr}"
        );
        assert!(
            !stderr.contains("wrong-pass") && !stderr.contains("other-pass"),
            "{stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Redis Cluster over TLS (`rediss+cluster://`, TLS between the nodes
/// too): a run goes end to end; a client that does not trust the CA is
/// refused with exit 7.
#[tokio::test]
async fn a_run_goes_end_to_end_on_a_tls_cluster() {
    let dir = std::env::temp_dir().join(format!("opsrun-tls-cluster-{}", std::process::id()));
    let ca = TestCa::create(&dir.join("good"), &["127.0.0.1"]).unwrap();
    let cluster = tokio::task::spawn_blocking({
        let ca = ca.clone();
        move || RedisCluster::start_tls(3, 0, &ca).unwrap()
    })
    .await
    .unwrap();
    let url = cluster.url();
    assert!(url.starts_with("rediss+cluster://"), "{url}");
    let env = TestEnv::with_redis_and_ca(&url, &ca.ca_file).await;
    let mut worker = env.command("worker");
    worker.env("REDIS_CA_FILE", &ca.ca_file);
    let _worker = Worker::spawn_with_registry(&env, "", worker);
    let mut runs = Vec::new();
    for queue in ["default", "q1", "q2"] {
        let out = env
            .command("producer")
            .env("REDIS_CA_FILE", &ca.ca_file)
            .args([
                "enqueue",
                "--tenant",
                "1",
                "--type",
                "demo.succeed",
                "--queue",
                queue,
            ])
            .output()
            .unwrap();
        support::assert_exit(&out, 0);
        runs.push(json_stdout(&out)["run_id"].as_i64().unwrap());
    }
    let mut worker_q = env.command("worker");
    worker_q
        .env("REDIS_CA_FILE", &ca.ca_file)
        .env("OPSRUN_QUEUES", "q1,q2");
    let _worker_q = Worker::spawn_with_registry(&env, "", worker_q);
    for run_id in runs {
        support::assert_succeeds(&env, 1, run_id).await;
    }

    let other = TestCa::create(&dir.join("other"), &["127.0.0.1"]).unwrap();
    let out = env
        .command("producer")
        .env("REDIS_CA_FILE", &other.ca_file)
        .args(["enqueue", "--tenant", "2", "--type", "demo.succeed"])
        .output()
        .unwrap();
    let stderr = support::assert_exit(&out, 7);
    assert!(stderr.contains("certificate"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
