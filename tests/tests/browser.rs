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

#[tokio::test]
async fn an_operator_logs_in_filters_the_list_and_opens_a_run() {
    assert!(
        std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
        "chromium and chromium-driver are missing: `make test` installs them (apt-get install chromium chromium-driver)"
    );
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

    let port = free_port();
    let _driver = Killed(
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
    let profile = env.job_dir().join("chromium-profile");
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
    let login = client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("login"))
        .await
        .unwrap();
    shot("1-login.png").await;
    submit_login(&client, &secret).await;
    drop(login);

    // The list: four runs, newest first.
    let table = client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("runs"))
        .await
        .unwrap();
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
    let title = client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("run-title"))
        .await
        .unwrap();
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
    let waiting = client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("waiting-summary"))
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
    let what = client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("confirm-what"))
        .await
        .unwrap();
    assert!(what.text().await.unwrap().contains("It has not started"));
    shot("5-cancel-confirm.png").await;
    click(&client, "#keep").await;
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("cancel-run"))
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
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("confirm-cancel"))
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
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("login"))
        .await
        .unwrap();
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
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("login"))
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
