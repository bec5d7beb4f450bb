//! Monitoring → Operations in a real browser: headless Chromium, driven
//! over WebDriver, logs in with a token, opens the list, filters it and
//! opens a run. Screenshots of each step are kept under
//! `target/test-artifacts/browser/`. `make test` installs Debian's chromium
//! and chromium-driver when they are missing.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};
use opsrun::access::{Role, generate_token};
use opsrun::ledger::NewToken;
use opsrun::{Initiator, Outcome, RunRequest, Status};
use serde_json::json;
use support::{Killed, TestEnv, wait_until};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts/browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Start `monitor serve` on a free port; returns it and its base URL.
fn serve(env: &TestEnv) -> (Killed, String) {
    let mut child = env
        .command("monitor")
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting monitor");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("monitor said {line:?}"))
        .to_string();
    (Killed(child), base)
}

/// The element with id `id`, once the page shows it (10 s at most).
async fn shown(
    client: &fantoccini::Client,
    id: &str,
) -> Result<fantoccini::elements::Element, fantoccini::error::CmdError> {
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id(id))
        .await
}

/// Click the element `css` selects.
async fn click(client: &fantoccini::Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Fill the login form on the current page with `token` and send it.
async fn submit_login(client: &fantoccini::Client, token: &str) {
    client
        .form(Locator::Id("login"))
        .await
        .unwrap()
        .set_by_name("token", token)
        .await
        .unwrap()
        .submit()
        .await
        .unwrap();
}

/// Headless Chromium under a chromedriver started for the test.
async fn browser(env: &TestEnv) -> (Killed, fantoccini::Client) {
    assert!(
        std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
        "chromium and chromium-driver are missing: `make test` installs them (apt-get install chromium chromium-driver)"
    );
    let port = free_port();
    let driver = Killed(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver"),
    );
    wait_until(Duration::from_secs(10), || async {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .await
    .expect("chromedriver did not start");
    let profile = env.job_dir().join(format!("chromium-profile-{port}"));
    let capabilities: serde_json::Map<String, serde_json::Value> = serde_json::from_value(json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            // Headless as root in a sandboxless container, with no background
            // traffic: this machine's network is closed.
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--window-size=1280,900", format!("--user-data-dir={}", profile.display())]
        }
    }))
    .unwrap();
    // Plain HTTP to the local chromedriver: no TLS stack needed.
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("connecting to chromedriver");
    (driver, client)
}

#[tokio::test]
async fn an_operator_logs_in_filters_the_list_and_opens_a_run() {
    let env = TestEnv::new().await;
    let ada = Initiator::user(7, "Ada Lovelace");
    for (run_type, site) in [
        ("inventory.sync", "paris"),
        ("backup.run", "lyon"),
        ("inventory.sync", "oslo"),
        ("backup.run", "rome"),
    ] {
        let run = env
            .service
            .ensure_run(
                &RunRequest::new(4, run_type)
                    .inputs(json!({"site": site}))
                    .initiator(ada.clone())
                    .context(json!({"target_scope": site})),
            )
            .await
            .unwrap()
            .run;
        let mut failures = vec![];
        let outcome = if site == "rome" {
            failures.push(opsrun::sanitize::failure(
                "backup.item_failed",
                "volume 3 unreadable",
            ));
            Outcome::PartiallySucceeded
        } else {
            Outcome::Succeeded
        };
        let counts = opsrun::SummaryCounts {
            total: 4,
            success: if failures.is_empty() { 4 } else { 3 },
            failed: failures.len() as u64,
            skipped: 0,
        };
        env.service
            .update_run(&run, Status::Completed, outcome, counts, failures)
            .await
            .unwrap()
            .unwrap();
    }
    let (secret, hash) = generate_token();
    env.ledger()
        .create_token(
            &NewToken {
                tenant_id: Some(4),
                role: Role::Operator,
                user: Some((7, "Ada Lovelace")),
                label: Some("browser test"),
                queues: &[],
            },
            &hash,
        )
        .await
        .unwrap();
    let (_monitor, base) = serve(&env);

    let (_driver, client) = browser(&env).await;
    let shots = artifacts();
    let shot = |name: &'static str| {
        let client = client.clone();
        let path = shots.join(name);
        async move { std::fs::write(path, client.screenshot().await.unwrap()).unwrap() }
    };

    // Not logged in: the list sends the browser to the login form.
    client
        .goto(&format!("{base}/tenants/4/operations"))
        .await
        .unwrap();
    let login = shown(&client, "login").await.unwrap();
    shot("1-login.png").await;
    submit_login(&client, &secret).await;
    drop(login);

    // The list: four runs, newest first.
    let table = shown(&client, "runs").await.unwrap();
    let rows = table.find_all(Locator::Css("tr.run")).await.unwrap();
    assert_eq!(rows.len(), 4);
    assert!(table.text().await.unwrap().contains("Partially succeeded"));
    shot("2-operations.png").await;

    // Filter by type.
    client
        .form(Locator::Id("filters"))
        .await
        .unwrap()
        .set_by_name("type", "backup.run")
        .await
        .unwrap()
        .submit()
        .await
        .unwrap();
    let filtered = wait_until(Duration::from_secs(10), || async {
        let url = client.current_url().await.ok()?;
        url.query().filter(|q| q.contains("type=backup.run"))?;
        let rows = client.find_all(Locator::Css("#runs tr.run")).await.ok()?;
        Some(rows.len())
    })
    .await;
    assert_eq!(filtered, Some(2));
    let text = client
        .find(Locator::Id("runs"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("inventory.sync"), "{text}");
    shot("3-filtered.png").await;

    // Open the partially succeeded run.
    click(&client, "#runs tr.run a").await;
    let title = shown(&client, "run-title").await.unwrap();
    assert!(title.text().await.unwrap().starts_with("backup.run #"));
    let failures = client
        .find(Locator::Id("failures"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        failures.contains("backup.item_failed") && failures.contains("volume 3 unreadable"),
        "{failures}"
    );
    assert_eq!(
        client
            .find(Locator::Id("outcome"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "Partially succeeded"
    );
    let related = client.find(Locator::Css("#links a")).await.unwrap();
    assert_eq!(
        related.attr("href").await.unwrap().as_deref(),
        Some("/tenants/4/scopes/rome")
    );
    shot("4-run.png").await;

    // Cancel a queued run: the button leads to a confirmation step; keeping
    // it changes nothing, confirming cancels it and says who did.
    let queued = env
        .service
        .ensure_run(&RunRequest::new(4, "restore.run").inputs(json!({"site": "nice"})))
        .await
        .unwrap()
        .run;
    let run_page = format!("{base}/tenants/4/operations/{}", queued.id);
    client.goto(&run_page).await.unwrap();
    // The page says what the run waits for.
    let waiting = shown(&client, "waiting-summary")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        waiting.contains("no worker has read this queue yet"),
        "{waiting}"
    );
    click(&client, "#cancel-run").await;
    let what = shown(&client, "confirm-what").await.unwrap();
    assert!(what.text().await.unwrap().contains("It has not started"));
    shot("5-cancel-confirm.png").await;
    click(&client, "#keep").await;
    shown(&client, "cancel-run")
        .await
        .expect("back on the run page, still cancellable");
    assert_eq!(
        env.ledger()
            .get(4, queued.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        Status::Queued
    );
    click(&client, "#cancel-run").await;
    shown(&client, "confirm-cancel")
        .await
        .unwrap()
        .find(Locator::Css("input[name=reason]"))
        .await
        .unwrap()
        .send_keys("restored by hand")
        .await
        .unwrap();
    click(&client, "#confirm").await;
    let outcome = wait_until(Duration::from_secs(10), || async {
        let text = client
            .find(Locator::Id("outcome"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (text == "Cancelled").then_some(text)
    })
    .await;
    assert!(outcome.is_some(), "the run page does not show the cancel");
    let failures = client
        .find(Locator::Id("failures"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        failures.contains("cancelled by Ada Lovelace (user 7): restored by hand"),
        "{failures}"
    );
    assert!(
        client.find(Locator::Id("cancel-run")).await.is_err(),
        "a cancelled run offers a cancel"
    );
    shot("6-cancelled.png").await;

    // Log out; a form on another site that logs the browser in (login CSRF)
    // is refused and sets no session.
    click(&client, "form[action='/logout'] button").await;
    shown(&client, "login").await.unwrap();
    let attack = format!(
        "data:text/html,<form id=f method=post action='{base}/login'><input name=token value='{secret}'></form>\
         <script>document.getElementById('f').submit()</script>"
    );
    client.goto(&attack).await.unwrap();
    let refused = wait_until(Duration::from_secs(10), || async {
        let text = client.source().await.ok()?;
        text.contains("cross-site request refused").then_some(text)
    })
    .await;
    assert!(refused.is_some(), "the cross-site login was not refused");
    shot("7-cross-site-refused.png").await;
    client
        .goto(&format!("{base}/tenants/4/operations"))
        .await
        .unwrap();
    shown(&client, "login")
        .await
        .expect("still logged out after the cross-site form");

    // A `next` with a tab (read by browsers as `//evil.example/x`) leaves
    // the browser on the monitor.
    client
        .goto(&format!("{base}/login?next=/%09/evil.example/x"))
        .await
        .unwrap();
    submit_login(&client, &secret).await;
    let landed = wait_until(Duration::from_secs(10), || async {
        let url = client.current_url().await.ok()?;
        url.as_str().contains("/operations").then_some(url)
    })
    .await
    .expect("the login went somewhere else");
    assert!(
        landed.as_str().starts_with(&base),
        "the browser left the monitor: {landed}"
    );
    shot("8-login-stays-on-site.png").await;
    client.close().await.unwrap();
}

/// Completed runs of `tenant`: `(hours ago, minutes into that hour, outcome, count)`.
async fn seed_completed(env: &TestEnv, tenant: i64, rows: &[(i32, i32, &str, i64)]) {
    let mut n = 0;
    for &(hours_ago, minute, outcome, count) in rows {
        for _ in 0..count {
            n += 1;
            let run = env
                .service
                .ensure_run(&RunRequest::new(tenant, "inventory.sync").inputs(json!({"n": n})))
                .await
                .unwrap()
                .run;
            sqlx::query(
                "UPDATE operation_runs SET status = 'completed', outcome = $2, \
                 completed_at = date_trunc('hour', now()) - make_interval(hours => $3) + make_interval(mins => $4), \
                 started_at = date_trunc('hour', now()) - make_interval(hours => $3) + make_interval(mins => $4) - interval '3 seconds' \
                 WHERE id = $1",
            )
            .bind(run.id.0)
            .bind(outcome)
            .bind(hours_ago)
            .bind(minute)
            .execute(&env.pool)
            .await
            .unwrap();
        }
    }
}

async fn create_token(env: &TestEnv, tenant: Option<i64>, role: Role) -> String {
    let (secret, hash) = generate_token();
    env.ledger()
        .create_token(
            &NewToken {
                tenant_id: tenant,
                role,
                user: tenant.map(|_| (7, "Ada Lovelace")),
                label: Some("browser test"),
                queues: &[],
            },
            &hash,
        )
        .await
        .unwrap();
    secret
}

async fn text_of(client: &fantoccini::Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_chart_the_live_list_and_the_queues_page() {
    let env = TestEnv::new().await;
    // Two closed hours (rolled up below) and the current one (read live).
    seed_completed(
        &env,
        5,
        &[
            (3, 10, "succeeded", 5),
            (3, 20, "failed", 2),
            (2, 5, "partially_succeeded", 3),
            (2, 50, "cancelled", 1),
            (0, 0, "succeeded", 4),
        ],
    )
    .await;
    assert!(env.ledger().roll_up(24).await.unwrap() >= 2);
    let ledger_counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT outcome, count(*) FROM operation_runs WHERE tenant_id = 5 AND status = 'completed' GROUP BY 1",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let operator = create_token(&env, Some(5), Role::Operator).await;
    let platform = create_token(&env, None, Role::Platform).await;
    let (_monitor, base) = serve(&env);
    let (_driver, client) = browser(&env).await;
    let shots = artifacts();
    let shot = |name: &'static str| {
        let client = client.clone();
        let path = shots.join(name);
        async move { std::fs::write(path, client.screenshot().await.unwrap()).unwrap() }
    };

    // The chart's totals are the ledger's, per outcome, across rolled-up
    // and live hours.
    client.goto(&format!("{base}/login")).await.unwrap();
    submit_login(&client, &operator).await;
    shown(&client, "runs-chart").await.unwrap();
    assert_eq!(text_of(&client, "#chart-total").await, "15");
    for (outcome, count) in &ledger_counts {
        let shown = text_of(&client, &format!(".chart-outcome[data-outcome={outcome}]")).await;
        assert_eq!(shown, count.to_string(), "{outcome}");
    }
    let bars = client
        .find_all(Locator::Css("#runs-chart g.bar rect"))
        .await
        .unwrap();
    assert!(
        bars.len() >= 4,
        "one rect per outcome and hour: {}",
        bars.len()
    );
    let durations = text_of(&client, "#durations-chart").await;
    assert!(durations.contains("inventory.sync (15)"), "{durations}");
    shot("9-chart.png").await;

    // A run started while the page is open appears, then completes, with
    // no reload (the marker set on this page survives).
    client
        .execute("window.notReloaded = true; return null;", vec![])
        .await
        .unwrap();
    let run = env
        .service
        .ensure_run(&RunRequest::new(5, "backup.run").inputs(json!({"live": true})))
        .await
        .unwrap()
        .run;
    let row = format!("#runs tr.run[data-run-id='{}']", run.id);
    let status_of = |css: String| {
        let client = client.clone();
        async move {
            client
                .find(Locator::Css(&css))
                .await
                .ok()?
                .attr("data-status")
                .await
                .ok()?
        }
    };
    let appeared = wait_until(Duration::from_secs(15), || status_of(row.clone())).await;
    assert_eq!(appeared.as_deref(), Some("queued"));
    shot("10-live-queued.png").await;
    env.service
        .update_run(
            &run,
            Status::Completed,
            Outcome::Succeeded,
            Default::default(),
            vec![],
        )
        .await
        .unwrap()
        .unwrap();
    let completed = wait_until(Duration::from_secs(15), || async {
        (status_of(row.clone()).await.as_deref() == Some("completed")).then_some(())
    })
    .await;
    assert!(completed.is_some(), "the run never showed as completed");
    let same_page = client
        .execute("return window.notReloaded === true;", vec![])
        .await
        .unwrap();
    assert_eq!(same_page, json!(true), "the page was reloaded");
    shot("10-live-completed.png").await;

    // The queues page is for platform tokens: a tenant's token is refused.
    client.goto(&format!("{base}/queues")).await.unwrap();
    let refused = wait_until(Duration::from_secs(10), || async {
        let text = client.source().await.ok()?;
        text.contains("for platform tokens").then_some(())
    })
    .await;
    assert!(refused.is_some(), "a tenant token saw the queues page");
    shot("11-queues-refused.png").await;
    client
        .goto(&format!("{base}/tenants/5/operations"))
        .await
        .unwrap();
    click(&client, "form[action='/logout'] button").await;
    shown(&client, "login").await.unwrap();
    submit_login(&client, &platform).await;
    shown(&client, "queues").await.unwrap();
    assert!(
        client
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/queues")
    );
    // 15 seeded runs created and completed by hand (each XADDed once), and
    // the live one: 16 entries, none read; the completions of the last
    // minutes counted.
    let cell = |css: &'static str| {
        let client = client.clone();
        async move { text_of(&client, &format!("tr.queue[data-queue=default] {css}")).await }
    };
    assert_eq!(
        cell("td.length").await,
        env.xlen("default").await.to_string()
    );
    assert_eq!(cell("td.queued").await, "0");
    let recent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM operation_runs WHERE status = 'completed' \
         AND completed_at > date_trunc('minute', now()) - interval '15 minutes'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(cell("td.throughput .completed").await, recent.to_string());
    let page = client.source().await.unwrap();
    assert!(
        !page.contains("inventory.sync"),
        "the queues page shows run contents"
    );
    shot("12-queues.png").await;
    client.close().await.unwrap();
}
