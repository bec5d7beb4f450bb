//! Monitoring → Operations through the router, without a socket: filters,
//! keyset pagination, the 30-day default, tenant isolation on every
//! endpoint, roles, bad input, login, and the CLI equivalents.

mod support;

use std::collections::HashSet;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use opsrun::access::{Role, generate_token};
use opsrun::ledger::NewToken;
use opsrun_monitor::{AppState, router, views};
use serde_json::{Value, json};
use support::{TestEnv, assert_exit, json_stdout};
use tower::ServiceExt;

const A: i64 = 101;
const B: i64 = 202;

fn app(env: &TestEnv) -> Router {
    router(AppState::new(
        env.ledger().clone(),
        Some(env.service.clone()),
        views::Links::default(),
        "http://monitor.test",
    ))
}

async fn token(env: &TestEnv, tenant: i64, role: Role, user: Option<(i64, &str)>) -> String {
    let (secret, hash) = generate_token();
    env.ledger()
        .create_token(
            &NewToken {
                tenant_id: Some(tenant),
                role,
                user,
                label: Some("test"),
                queues: &[],
            },
            &hash,
        )
        .await
        .unwrap();
    secret
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = match body {
        Some(body) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .unwrap();
    send(app, request).await
}

async fn body_text(response: axum::response::Response) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), 10 << 20)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

async fn get(app: &Router, uri: &str, token: &str) -> Answer {
    call(app, Method::GET, uri, Some(token), None).await
}

/// A run row written directly, so tests control its age and state.
struct Seed<'a> {
    tenant: i64,
    run_type: &'a str,
    days_ago: f64,
    outcome: &'a str,
    user: Option<(i64, &'a str)>,
    failure: Option<&'a str>,
    context: Value,
}

impl Default for Seed<'_> {
    fn default() -> Self {
        Seed {
            tenant: A,
            run_type: "inventory.sync",
            days_ago: 1.0,
            outcome: "succeeded",
            user: None,
            failure: None,
            context: json!({}),
        }
    }
}

/// Insert seeded runs; `outcome` `pending` makes a queued run. Returns ids in insertion order.
async fn seed(env: &TestEnv, seeds: &[Seed<'_>]) -> Vec<i64> {
    let mut ids = Vec::new();
    for s in seeds {
        let (status, completed) = if s.outcome == "pending" {
            ("queued", false)
        } else {
            ("completed", true)
        };
        let failures = match s.failure {
            Some(code) => json!([{"code": code, "message": "it broke", "count": 1}]),
            None => json!([]),
        };
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO operation_runs (tenant_id, user_id, initiator_name, type, status, outcome, run_identity_hash, \
                 failure_summary, context, queue, created_at, started_at, completed_at, summary_counts) \
             VALUES ($1, $2, $3, $4, $5, $6, encode(sha256(random()::text::bytea), 'hex'), $7, $8, 'default', \
                 now() - make_interval(secs => $9), \
                 CASE WHEN $10 THEN now() - make_interval(secs => $9) + interval '1 second' END, \
                 CASE WHEN $10 THEN now() - make_interval(secs => $9) + interval '3 seconds' END, \
                 '{\"total\":10,\"success\":8,\"failed\":2,\"skipped\":0}') RETURNING id",
        )
        .bind(s.tenant)
        .bind(s.user.map(|u| u.0))
        .bind(s.user.map(|u| u.1).unwrap_or("System"))
        .bind(s.run_type)
        .bind(status)
        .bind(s.outcome)
        .bind(failures)
        .bind(&s.context)
        .bind(s.days_ago * 86400.0)
        .bind(completed)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        ids.push(id);
    }
    ids
}

fn ids(answer: &Answer) -> Vec<i64> {
    answer.json()["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn pages_cover_every_run_once_newest_first() {
    let env = TestEnv::new().await;
    // 45 runs, many sharing one created_at (as a batch start stamps them).
    let mut seeds: Vec<Seed> = (0..30)
        .map(|i| Seed {
            days_ago: 1.0 + f64::from(i % 5),
            ..Seed::default()
        })
        .collect();
    seeds.extend((0..15).map(|_| Seed {
        days_ago: 2.0,
        ..Seed::default()
    }));
    let mut all = seed(&env, &seeds).await;
    seed(
        &env,
        &[Seed {
            tenant: B,
            ..Seed::default()
        }],
    )
    .await;
    let app = app(&env);
    let reader = token(&env, A, Role::Readonly, None).await;

    let mut seen = Vec::new();
    let mut uri = "/api/v1/runs?limit=7".to_string();
    let mut pages = 0;
    loop {
        let page = get(&app, &uri, &reader).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        seen.extend(ids(&page));
        pages += 1;
        match page.json()["next_url"].as_str() {
            Some(next) => uri = next.to_string(),
            None => break,
        }
    }
    assert_eq!(pages, 7);
    let unique: HashSet<i64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "a run was repeated");
    all.sort();
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, all, "a run was missed or another tenant's shown");
    // Newest first, ties by id descending: the order is the one the list promises.
    let created: Vec<(String, i64)> = sqlx::query_as(
        "SELECT created_at::text, id FROM operation_runs WHERE tenant_id = $1 ORDER BY created_at DESC, id DESC",
    )
    .bind(A)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        seen,
        created.into_iter().map(|(_, id)| id).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn the_list_defaults_to_the_last_30_days() {
    let env = TestEnv::new().await;
    let ids_seeded = seed(
        &env,
        &[
            Seed {
                days_ago: 29.0,
                ..Seed::default()
            },
            Seed {
                days_ago: 31.0,
                ..Seed::default()
            },
        ],
    )
    .await;
    let app = app(&env);
    let reader = token(&env, A, Role::Readonly, None).await;
    let recent = get(&app, "/api/v1/runs", &reader).await;
    assert_eq!(ids(&recent), vec![ids_seeded[0]]);
    let since = (chrono::Utc::now() - chrono::Duration::days(40))
        .format("%Y-%m-%d")
        .to_string();
    let older = get(&app, &format!("/api/v1/runs?since={since}"), &reader).await;
    assert_eq!(ids(&older), ids_seeded);
}

#[tokio::test]
async fn every_filter_narrows_the_list() {
    let env = TestEnv::new().await;
    let ada = Some((7, "Ada Lovelace"));
    let s = seed(
        &env,
        &[
            Seed {
                run_type: "backup.run",
                ..Seed::default()
            },
            Seed {
                outcome: "failed",
                failure: Some("job.timeout"),
                user: ada,
                ..Seed::default()
            },
            Seed {
                outcome: "partially_succeeded",
                failure: Some("item.failed"),
                ..Seed::default()
            },
            Seed {
                outcome: "pending",
                user: ada,
                days_ago: 0.5,
                ..Seed::default()
            },
            Seed {
                days_ago: 10.0,
                ..Seed::default()
            },
        ],
    )
    .await;
    let app = app(&env);
    let reader = token(&env, A, Role::Readonly, None).await;
    let until = (chrono::Utc::now() - chrono::Duration::days(5)).to_rfc3339();
    for (query, expected) in [
        ("type=backup.run".to_string(), vec![s[0]]),
        ("status=queued".into(), vec![s[3]]),
        ("status=completed&outcome=failed".into(), vec![s[1]]),
        ("outcome=partially_succeeded".into(), vec![s[2]]),
        ("initiator=7".into(), vec![s[3], s[1]]),
        ("initiator=ada%20lovelace".into(), vec![s[3], s[1]]),
        (
            "initiator=system&type=inventory.sync".into(),
            vec![s[2], s[4]],
        ),
        ("failure_code=job.timeout".into(), vec![s[1]]),
        (format!("until={}", until.replace('+', "%2B")), vec![s[4]]),
    ] {
        let answer = get(&app, &format!("/api/v1/runs?{query}"), &reader).await;
        assert_eq!(answer.status, StatusCode::OK, "{query}: {}", answer.text);
        assert_eq!(ids(&answer), expected, "{query}");
    }
}

#[tokio::test]
async fn bad_filters_are_400_naming_the_field_and_leak_nothing() {
    let env = TestEnv::new().await;
    seed(&env, &[Seed::default()]).await;
    let app = app(&env);
    let reader = token(&env, A, Role::Readonly, None).await;
    for (query, field) in [
        ("status=done", "status"),
        ("outcome=ok", "outcome"),
        ("type=x'%20OR%201=1--", "type"),
        ("failure_code=a'b", "failure_code"),
        ("since=yesterday", "since"),
        ("limit=0", "limit"),
        ("cursor=abc", "cursor"),
        ("cursor=-8000000000000000000.1", "cursor"),
        ("until=0001-01-01", "until"),
        ("tenant_id=202", "query"),
    ] {
        let answer = get(&app, &format!("/api/v1/runs?{query}"), &reader).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{query}: {}",
            answer.text
        );
        let body = answer.json();
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
        assert!(body.get("runs").is_none());
        for leak in ["SELECT", "operation_runs", "sqlx", "postgres"] {
            assert!(
                !answer.text.contains(leak),
                "{query} leaked {leak}: {}",
                answer.text
            );
        }
    }
    // Page sizes are capped, not refused.
    let big = get(&app, "/api/v1/runs?limit=5000", &reader).await;
    assert_eq!(big.json()["limit"], 200);
    // The HTML list answers a bad filter with 400 and its message, not a stack.
    let page = get(
        &app,
        &format!("/tenants/{A}/operations?status=done"),
        &reader,
    )
    .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.text.contains("is not a status"), "{}", page.text);
}

#[tokio::test]
async fn another_tenants_runs_answer_exactly_like_missing_ones() {
    let env = TestEnv::new().await;
    let ada = Some((7, "Ada"));
    let a_runs = seed(
        &env,
        &[Seed {
            user: ada,
            ..Seed::default()
        }],
    )
    .await;
    seed(
        &env,
        &[Seed {
            tenant: B,
            ..Seed::default()
        }],
    )
    .await;
    let app = app(&env);
    let b_reader = token(&env, B, Role::Operator, Some((7, "Ada"))).await;
    let a_reader = token(&env, A, Role::Readonly, ada).await;
    let a_run = a_runs[0];

    // List: only B's run.
    let list = get(&app, "/api/v1/runs?since=2000-01-01", &b_reader).await;
    assert_eq!(list.json()["runs"].as_array().unwrap().len(), 1);
    assert!(!ids(&list).contains(&a_run));
    // Detail: A's run and a run that does not exist answer alike.
    let theirs = get(&app, &format!("/api/v1/runs/{a_run}"), &b_reader).await;
    let missing = get(&app, "/api/v1/runs/999999999", &b_reader).await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    assert_eq!(
        (theirs.status, theirs.text.clone()),
        (missing.status, missing.text.clone())
    );
    assert_eq!(
        get(&app, &format!("/api/v1/runs/{a_run}"), &a_reader)
            .await
            .status,
        StatusCode::OK
    );
    // HTML: A's tenant path and A's run page are 404 for B.
    for path in [
        format!("/tenants/{A}/operations"),
        format!("/tenants/{A}/operations/{a_run}"),
        format!("/tenants/{B}/operations/{a_run}"),
        format!("/tenants/{A}/notifications"),
    ] {
        let page = get(&app, &path, &b_reader).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{path}");
        assert!(
            !page.text.contains("inventory.sync #"),
            "{path} showed a run"
        );
    }
    // Notifications: the same user id in tenant B sees none of tenant A's, and cannot mark them.
    let a_notes: Vec<i64> = sqlx::query_scalar("SELECT id FROM notifications WHERE tenant_id = $1")
        .bind(A)
        .fetch_all(&env.pool)
        .await
        .unwrap();
    let b_notes = get(&app, "/api/v1/notifications", &b_reader).await;
    assert_eq!(b_notes.json()["notifications"], json!([]));
    let mark = call(
        &app,
        Method::POST,
        "/api/v1/notifications/read",
        Some(&b_reader),
        Some(json!({"ids": a_notes})),
    )
    .await;
    assert_eq!(mark.json()["marked"], 0);
    // Start: the tenant comes from the token; naming another one is refused.
    let start = call(
        &app,
        Method::POST,
        "/api/v1/runs",
        Some(&b_reader),
        Some(json!({"type": "inventory.sync", "tenant_id": A})),
    )
    .await;
    assert_eq!(start.status, StatusCode::BAD_REQUEST, "{}", start.text);
    let count_a: i64 =
        sqlx::query_scalar("SELECT count(*) FROM operation_runs WHERE tenant_id = $1")
            .bind(A)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(count_a, 1);
}

#[tokio::test]
async fn operators_start_runs_and_readonly_tokens_cannot() {
    let env = TestEnv::new().await;
    let app = app(&env);
    let reader = token(&env, A, Role::Readonly, Some((7, "Ada"))).await;
    let operator = token(&env, A, Role::Operator, Some((7, "Ada"))).await;
    let other = token(&env, A, Role::Operator, Some((8, "Grace"))).await;
    let body = json!({"type": "inventory.sync", "inputs": {"site": "paris"}, "context": {"provider_connection_id": 5}});

    let refused = call(
        &app,
        Method::POST,
        "/api/v1/runs",
        Some(&reader),
        Some(body.clone()),
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(env.count_runs().await, 0);

    // The caller's trace context comes in the W3C header; a malformed one
    // is a 400 naming it, and nothing is started.
    let start_traced = |traceparent: &str| {
        Request::builder()
            .method(Method::POST)
            .uri("/api/v1/runs")
            .header(header::AUTHORIZATION, format!("Bearer {operator}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header("traceparent", traceparent)
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let malformed = send(&app, start_traced("00-abc-01")).await;
    assert_eq!(
        malformed.status,
        StatusCode::BAD_REQUEST,
        "{}",
        malformed.text
    );
    assert!(malformed.text.contains("traceparent"), "{}", malformed.text);
    assert_eq!(env.count_runs().await, 0);

    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let started = send(&app, start_traced(traceparent)).await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.text);
    let started = started.json();
    let run_id = started["run"]["id"].as_i64().unwrap();
    assert_eq!(started["run"]["traceparent"], traceparent);
    assert_eq!(started["dispatch"], "sent");
    assert_eq!(started["run"]["initiator_name"], "Ada");
    assert_eq!(started["run"]["user_id"], 7);
    assert_eq!(
        started["view_url"],
        format!("http://monitor.test/tenants/{A}/operations/{run_id}")
    );
    assert_eq!(env.xlen("default").await, 1);
    assert_eq!(
        started["run"]["links"][0]["url"],
        format!("/tenants/{A}/provider-connections/5")
    );

    // A second caller with the same identity is folded into the active run, and not notified.
    let again = call(&app, Method::POST, "/api/v1/runs", Some(&other), Some(body)).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.json()["folded_into"], run_id);
    assert_eq!(again.json()["run"]["initiator_name"], "Ada");
    assert_eq!(env.xlen("default").await, 1);
    let grace = get(&app, "/api/v1/notifications", &other).await;
    assert_eq!(grace.json()["notifications"], json!([]));
    let ada = get(&app, "/api/v1/notifications", &operator).await;
    assert_eq!(ada.json()["notifications"][0]["kind"], "queued");

    // Bad start input: 400 naming the field, nothing written.
    for (bad, field) in [
        (json!({"type": "Not A Type"}), "type"),
        (json!({"type": "inventory.sync", "inputs": [1]}), "inputs"),
        (json!({"type": "inventory.sync", "tenant_id": 1}), "body"),
    ] {
        let answer = call(
            &app,
            Method::POST,
            "/api/v1/runs",
            Some(&operator),
            Some(bad.clone()),
        )
        .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(
            answer.json()["error"]["field"],
            field,
            "{bad}: {}",
            answer.text
        );
    }
    assert_eq!(env.count_runs().await, 1);
}

#[tokio::test]
async fn tokens_are_required_checked_and_revocable() {
    let env = TestEnv::new().await;
    seed(&env, &[Seed::default()]).await;
    let app = app(&env);
    let none = call(&app, Method::GET, "/api/v1/runs", None, None).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.headers[header::WWW_AUTHENTICATE], "Bearer");
    let forged = get(&app, "/api/v1/runs", &format!("opsrun_{}", "0".repeat(64))).await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    let reader = token(&env, A, Role::Readonly, None).await;
    assert_eq!(
        get(&app, "/api/v1/runs", &reader).await.status,
        StatusCode::OK
    );
    // Stored hashed: the secret is nowhere in the table.
    let stored: Vec<String> = sqlx::query_scalar("SELECT token_sha256 FROM api_tokens")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert!(
        stored
            .iter()
            .all(|h| !reader.contains(h.as_str()) && !h.contains(&reader[7..]))
    );
    let id: i64 = sqlx::query_scalar("SELECT id FROM api_tokens")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(env.ledger().revoke_token(Some(A), id).await.unwrap());
    assert_eq!(
        get(&app, "/api/v1/runs", &reader).await.status,
        StatusCode::UNAUTHORIZED
    );
    // A service token has no notifications.
    let service = token(&env, A, Role::Readonly, None).await;
    assert_eq!(
        get(&app, "/api/v1/notifications", &service).await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn html_pages_log_in_with_a_secure_cookie_and_show_a_run() {
    let env = TestEnv::new().await;
    let run = seed(
        &env,
        &[Seed {
            outcome: "partially_succeeded",
            failure: Some("item.failed"),
            context: json!({"restore_run_id": "r/1", "note": "x"}),
            ..Seed::default()
        }],
    )
    .await[0];
    let app = app(&env);
    let reader = token(&env, A, Role::Readonly, Some((7, "Ada <b>"))).await;

    let anonymous = call(
        &app,
        Method::GET,
        &format!("/tenants/{A}/operations"),
        None,
        None,
    )
    .await;
    assert_eq!(anonymous.status, StatusCode::SEE_OTHER);
    assert_eq!(
        anonymous.headers[header::LOCATION],
        format!("/login?next=%2Ftenants%2F{A}%2Foperations")
    );

    let login = |form: String| {
        Request::post("/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form))
            .unwrap()
    };
    let bad = app
        .clone()
        .oneshot(login("token=opsrun_nope".into()))
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    let good = app
        .clone()
        .oneshot(login(format!("token={reader}&next=%2F%2Fevil.example")))
        .await
        .unwrap();
    assert_eq!(good.status(), StatusCode::SEE_OTHER);
    // An off-site `next` is ignored.
    assert_eq!(
        good.headers()[header::LOCATION],
        format!("/tenants/{A}/operations")
    );
    let cookie = good.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let session = cookie.split(';').next().unwrap().to_string();
    let page = |uri: String| {
        Request::get(uri)
            .header(header::COOKIE, session.clone())
            .body(Body::empty())
            .unwrap()
    };

    let list = app
        .clone()
        .oneshot(page(format!("/tenants/{A}/operations")))
        .await
        .unwrap();
    assert_eq!(list.status(), StatusCode::OK);
    let html = body_text(list).await;
    assert!(html.contains(&format!("data-run-id=\"{run}\"")), "{html}");
    assert!(html.contains("Partially succeeded"));
    assert!(
        html.contains("Ada &lt;b&gt;") && !html.contains("Ada <b>"),
        "names are escaped"
    );

    let detail = app
        .clone()
        .oneshot(page(format!("/tenants/{A}/operations/{run}")))
        .await
        .unwrap();
    assert_eq!(detail.status(), StatusCode::OK);
    let html = body_text(detail).await;
    for expected in [
        "inventory.sync #",
        "Partially succeeded",
        "item.failed",
        "it broke",
        "10 total, 8 succeeded",
        "created",
        "started",
        "completed",
        &format!("/tenants/{A}/restores/r%2F1"),
        "runs with this identity",
    ] {
        assert!(html.contains(expected), "detail lacks {expected}: {html}");
    }
}

#[tokio::test]
async fn run_detail_json_has_every_field_readably() {
    let env = TestEnv::new().await;
    let run = seed(
        &env,
        &[Seed {
            outcome: "failed",
            failure: Some("job.timeout"),
            user: Some((3, "Lin")),
            context: json!({"backup_schedule_id": 9, "target_scope": "eu"}),
            ..Seed::default()
        }],
    )
    .await[0];
    let app = app(&env);
    let reader = token(&env, A, Role::Readonly, None).await;
    let d = get(&app, &format!("/api/v1/runs/{run}"), &reader)
        .await
        .json();
    assert_eq!(d["status_label"], "Completed");
    assert_eq!(d["outcome_label"], "Failed");
    assert_eq!(d["initiator_name"], "Lin");
    assert_eq!(d["failure_summary"][0]["code"], "job.timeout");
    assert_eq!(d["summary_counts"]["total"], 10);
    assert_eq!(
        d["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["created", "started", "completed"]
    );
    let links: Vec<&str> = d["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["url"].as_str().unwrap())
        .collect();
    assert_eq!(
        links,
        [
            format!("/tenants/{A}/backup-schedules/9"),
            format!("/tenants/{A}/scopes/eu")
        ]
    );
    assert_eq!(d["run_identity_hash"].as_str().unwrap().len(), 64);
    // The identity link lists the runs sharing it.
    let same = d["same_identity_url"]
        .as_str()
        .unwrap()
        .replace("http://monitor.test/tenants/101/operations", "/api/v1/runs");
    assert_eq!(ids(&get(&app, &same, &reader).await), vec![run]);
}

#[tokio::test]
async fn the_cli_lists_and_shows_runs_with_the_same_filters() {
    let env = TestEnv::new().await;
    let s = seed(
        &env,
        &[
            Seed {
                outcome: "failed",
                failure: Some("job.timeout"),
                ..Seed::default()
            },
            Seed::default(),
            Seed {
                tenant: B,
                ..Seed::default()
            },
        ],
    )
    .await;
    let tenant = A.to_string();
    let out = env
        .command("monitor")
        .args([
            "runs",
            "list",
            "--tenant",
            &tenant,
            "--outcome",
            "failed",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let listed: Vec<i64> = json_stdout(&out)["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, vec![s[0]]);
    let table = env
        .command("monitor")
        .args(["runs", "list", "--tenant", &tenant])
        .output()
        .unwrap();
    let text = assert_exit(&table, 0);
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("Failed"),
        "{text}"
    );
    let bad = env
        .command("monitor")
        .args(["runs", "list", "--tenant", &tenant, "--status", "done"])
        .output()
        .unwrap();
    assert!(assert_exit(&bad, 2).contains("status"));
    let show = env
        .command("monitor")
        .args([
            "runs",
            "show",
            "--tenant",
            &tenant,
            &s[0].to_string(),
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert_exit(&show, 0);
    assert_eq!(json_stdout(&show)["outcome_label"], "Failed");
    // Another tenant's run is not found (exit 6), like a missing one.
    let theirs = env
        .command("monitor")
        .args(["runs", "show", "--tenant", &tenant, &s[2].to_string()])
        .output()
        .unwrap();
    assert_exit(&theirs, 6);
    // Tokens: printed once, usable, listed without the secret.
    let created = env
        .command("monitor")
        .args([
            "token",
            "create",
            "--tenant",
            &tenant,
            "--role",
            "readonly",
            "--user-id",
            "7",
            "--user-name",
            "Ada",
        ])
        .output()
        .unwrap();
    assert_exit(&created, 0);
    let secret = String::from_utf8(created.stdout)
        .unwrap()
        .trim()
        .to_string();
    assert!(
        env.ledger()
            .token_by_secret(&secret)
            .await
            .unwrap()
            .is_some()
    );
    let listed = env
        .command("monitor")
        .args(["token", "list", "--tenant", &tenant])
        .output()
        .unwrap();
    assert_exit(&listed, 0);
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&secret[7..]));
    let bad_role = env
        .command("monitor")
        .args(["token", "create", "--tenant", &tenant, "--role", "admin"])
        .output()
        .unwrap();
    assert_exit(&bad_role, 2);
}

/// Secrets a real exec job prints to stderr (a sample of the sanitizer's
/// classes, one of them a private key long enough that the stored tail
/// starts inside its body) reach neither the stored failure, nor the run's
/// page, nor the initiator's notification.
#[tokio::test]
async fn secrets_a_job_prints_reach_no_stored_failure_page_or_notification() {
    let env = TestEnv::new().await;
    let secrets = [
        "pw@with/slash es",
        "Tr0ub4dor3",
        "AbCdEf+gHiJk",
        "sk-abc123XYZ",
        "rk_live_51H8abcXYZ987",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "with spaces inside",
        "k3y-v4lue-here",
        "MIIEowIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi8Xq0lKpW4nYb6tRzUe1cVgHsJ",
    ];
    let dir = env.job_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let stderr_file = dir.join("stderr.txt");
    let key_body = [secrets[8]; 40].join("\n");
    std::fs::write(
        &stderr_file,
        format!(
            "connecting to postgres://app:{}@db:5432/app\n\
             Error 1045: app:{}@tcp(mysql:3306)/app\n\
             GET https://acct.blob.core.windows.net/c?sv=1&sig={}\n\
             openai said: invalid key {}\n\
             stripe: {} revoked\n\
             aws: secret {} in use\n\
             body {{\"password\": \"{}\"}}\n\
             Authorization: ApiKey {}\n\
             -----BEGIN RSA PRIVATE KEY-----\n{key_body}\n-----END RSA PRIVATE KEY-----\n\
             fatal: could not sync site paris\n",
            secrets[0],
            secrets[1],
            secrets[2],
            secrets[3],
            secrets[4],
            secrets[5],
            secrets[6],
            secrets[7]
        ),
    )
    .unwrap();
    let registry = format!(
        "[types.\"test.leaky\"]\ncommand = [\"sh\", \"-c\", \"cat {} >&2; exit 1\"]\n",
        stderr_file.display()
    );
    let _worker = support::Worker::spawn_with_registry(&env, &registry, env.command("worker"));
    let request = opsrun::RunRequest::new(A, "test.leaky")
        .initiator(opsrun::Initiator::user(7, "Ada Lovelace"));
    let run = env.service.ensure_run(&request).await.unwrap().run;
    let done = support::completed(&env, &run).await;
    assert_eq!(done.outcome, opsrun::Outcome::Failed);
    let failure = &done.failure_summary.0[0];
    assert_eq!(failure.code, "job.exit_nonzero");
    assert!(
        failure
            .message
            .ends_with("fatal: could not sync site paris"),
        "the stderr tail is kept readable: {}",
        failure.message
    );

    let stored: String =
        sqlx::query_scalar("SELECT row_to_json(r)::text FROM operation_runs r WHERE id = $1")
            .bind(run.id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let reader = token(&env, A, Role::Readonly, Some((7, "Ada Lovelace"))).await;
    let page = get(
        &app(&env),
        &format!("/tenants/{A}/operations/{}", run.id),
        &reader,
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    let notifications = env.ledger().notifications(A, 7, false, 10).await.unwrap();
    let completed = notifications
        .iter()
        .find(|n| n.kind == "completed")
        .expect("a completion notification");
    for (place, text) in [
        ("stored run", stored.as_str()),
        ("run page", page.text.as_str()),
        ("notification", completed.body.as_str()),
    ] {
        assert!(text.contains("[REDACTED]"), "{place}: {text}");
        for secret in secrets {
            // The page escapes some characters; compare a plain stretch too.
            let stretch = &secret[..secret.len().min(8)];
            assert!(
                !text.contains(secret) && !text.contains(stretch),
                "{place} holds {secret:?}: {text}"
            );
        }
    }
}

fn form_post(uri: &str, form: String, headers: &[(&str, &str)]) -> Request<Body> {
    let mut request =
        Request::post(uri).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Body::from(form)).unwrap()
}

async fn send(app: &Router, request: Request<Body>) -> Answer {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    Answer {
        status,
        headers,
        text: body_text(response).await,
    }
}

#[tokio::test]
async fn a_login_goes_only_to_a_plain_local_path_and_never_answers_500() {
    let env = TestEnv::new().await;
    let app = app(&env);
    let reader = token(&env, A, Role::Readonly, None).await;
    for next in [
        "/%09/evil.example/x",
        "/%0A/evil.example",
        "%2F%5Cevil.example",
        "/%20/evil.example",
        "https%3A%2F%2Fevil.example",
    ] {
        let answer = send(
            &app,
            form_post("/login", format!("token={reader}&next={next}"), &[]),
        )
        .await;
        assert_eq!(
            answer.status,
            StatusCode::SEE_OTHER,
            "{next}: {}",
            answer.text
        );
        assert_eq!(
            answer.headers[header::LOCATION],
            format!("/tenants/{A}/operations"),
            "{next}"
        );
        let form = get(&app, &format!("/login?next={next}"), "").await;
        assert_eq!(form.status, StatusCode::OK, "{next}");
        assert!(!form.text.contains("evil.example"), "{next}: {}", form.text);
    }
    let fine = send(
        &app,
        form_post(
            "/login",
            format!("token={reader}&next=%2Ftenants%2F{A}%2Foperations%3Fstatus%3Dfailed"),
            &[],
        ),
    )
    .await;
    assert_eq!(
        fine.headers[header::LOCATION],
        format!("/tenants/{A}/operations?status=failed")
    );
}

#[tokio::test]
async fn cross_site_posts_are_refused_and_same_site_ones_pass() {
    let env = TestEnv::new().await;
    let app = app(&env);
    let attacker = token(&env, B, Role::Operator, Some((9, "Mallory"))).await;
    // Login CSRF: an auto-submitting form on another site logs the browser
    // in as the attacker's tenant.
    for headers in [
        &[("origin", "https://evil.example")][..],
        &[("origin", "null")][..],
        &[("sec-fetch-site", "cross-site")][..],
        &[("referer", "https://evil.example/page")][..],
    ] {
        let answer = send(
            &app,
            form_post("/login", format!("token={attacker}"), headers),
        )
        .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{headers:?}");
        assert!(answer.headers.get(header::SET_COOKIE).is_none());
    }
    let own = [("host", "monitor.test"), ("origin", "http://monitor.test")];
    let answer = send(&app, form_post("/login", format!("token={attacker}"), &own)).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    let session = answer.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();

    // Every cookie-authenticated POST: mark-read, start, logout.
    for uri in [
        format!("/tenants/{B}/notifications/read"),
        "/api/v1/notifications/read".into(),
        "/api/v1/runs".into(),
        "/logout".into(),
    ] {
        let mut request = Request::post(uri.as_str())
            .header(header::COOKIE, session.clone())
            .header("origin", "https://evil.example")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"type":"inventory.sync"}"#))
            .unwrap();
        let refused = send(&app, request).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{uri}");
        request = Request::post(uri.as_str())
            .header(header::COOKIE, session.clone())
            .header("host", "monitor.test")
            .header("origin", "http://monitor.test")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"type":"inventory.sync"}"#))
            .unwrap();
        let passed = send(&app, request).await;
        assert_ne!(
            passed.status,
            StatusCode::FORBIDDEN,
            "{uri}: {}",
            passed.text
        );
    }
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM operation_runs WHERE tenant_id = $1")
        .bind(B)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(runs, 1, "only the same-site start created a run");
}

#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let env = TestEnv::new().await;
    let app = app(&env);
    let reader = token(&env, A, Role::Readonly, None).await;
    for uri in [
        "/login".to_string(),
        format!("/tenants/{A}/operations"),
        "/api/v1/runs".into(),
        "/api/v1/runs/999".into(),
        "/healthz".into(),
    ] {
        let answer = get(&app, &uri, &reader).await;
        let h = &answer.headers;
        assert!(
            h[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("frame-ancestors 'none'"),
            "{uri}"
        );
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{uri}");
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY", "{uri}");
        assert_eq!(h[header::CACHE_CONTROL], "no-store", "{uri}");
    }
    let page = get(&app, &format!("/tenants/{A}/operations"), &reader).await;
    assert!(
        !page.text.contains("<style"),
        "no inline style under the CSP"
    );
    let css = get(&app, "/static/opsrun.css", &reader).await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(
        css.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
}

#[tokio::test]
async fn a_session_ends_at_logout_and_with_its_token_and_the_cookie_is_not_the_token() {
    let env = TestEnv::new().await;
    let app = app(&env);
    let reader = token(&env, A, Role::Readonly, None).await;
    let login = || async {
        let answer = send(&app, form_post("/login", format!("token={reader}"), &[])).await;
        answer.headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string()
    };
    let page = |session: String| {
        Request::get(format!("/tenants/{A}/operations"))
            .header(header::COOKIE, session)
            .body(Body::empty())
            .unwrap()
    };
    let session = login().await;
    assert!(
        !session.contains(&reader),
        "the cookie must not be the token"
    );
    assert_eq!(
        send(&app, page(session.clone())).await.status,
        StatusCode::OK
    );
    // The token itself in the cookie logs nobody in.
    assert_eq!(
        send(&app, page(format!("opsrun_session={reader}")))
            .await
            .status,
        StatusCode::SEE_OTHER
    );

    let logout = Request::post("/logout")
        .header(header::COOKIE, session.clone())
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, logout).await.status, StatusCode::SEE_OTHER);
    // A copy of the cookie kept after logout is refused.
    assert_eq!(
        send(&app, page(session.clone())).await.status,
        StatusCode::SEE_OTHER
    );
    let api = Request::get("/api/v1/me")
        .header(header::COOKIE, session)
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, api).await.status, StatusCode::UNAUTHORIZED);

    // Revoking the token ends its sessions; an expired session is refused.
    let second = login().await;
    for (revoked, expected) in [(true, StatusCode::SEE_OTHER), (false, StatusCode::OK)] {
        sqlx::query(
            "UPDATE api_tokens SET revoked_at = CASE WHEN $2 THEN now() END WHERE tenant_id = $1",
        )
        .bind(A)
        .bind(revoked)
        .execute(&env.pool)
        .await
        .unwrap();
        assert_eq!(
            send(&app, page(second.clone())).await.status,
            expected,
            "revoked: {revoked}"
        );
    }
    sqlx::query("UPDATE monitor_sessions SET created_at = now() - interval '9 hours', expires_at = now() - interval '1 hour'").execute(&env.pool).await.unwrap();
    assert_eq!(send(&app, page(second)).await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn failed_logins_are_limited_per_client() {
    let env = TestEnv::new().await;
    let app = app(&env);
    let reader = token(&env, A, Role::Readonly, None).await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(
            send(&app, form_post("/login", "token=opsrun_guess".into(), &[]))
                .await
                .status,
        );
    }
    assert!(
        statuses[..10]
            .iter()
            .all(|s| *s == StatusCode::UNAUTHORIZED),
        "{statuses:?}"
    );
    assert!(
        statuses[10..]
            .iter()
            .all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    // Even the right token waits now.
    let limited = send(&app, form_post("/login", format!("token={reader}"), &[])).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers.contains_key(header::RETRY_AFTER));
    assert!(limited.headers.get(header::SET_COOKIE).is_none());
}

#[tokio::test]
async fn a_token_starts_runs_only_on_the_types_queue_unless_allowed_more() {
    let env = TestEnv::new().await;
    let app = app(&env);
    let operator = token(&env, A, Role::Operator, None).await;
    let start = |token: String, queue: &'static str| {
        let app = app.clone();
        async move {
            call(
                &app,
                Method::POST,
                "/api/v1/runs",
                Some(&token),
                Some(json!({"type": "inventory.sync", "inputs": {"q": queue}, "queue": queue})),
            )
            .await
        }
    };
    let foreign = start(operator.clone(), "backups-tenant2-priority").await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN, "{}", foreign.text);
    assert!(foreign.text.contains("allow-queue"), "{}", foreign.text);
    assert_eq!(env.xlen("backups-tenant2-priority").await, 0);
    let own = start(operator, "default").await;
    assert_eq!(own.status, StatusCode::CREATED, "{}", own.text);

    let (secret, hash) = generate_token();
    env.ledger()
        .create_token(
            &NewToken {
                tenant_id: Some(A),
                role: Role::Operator,
                user: None,
                label: Some("priority"),
                queues: &["backups-tenant2-priority".to_string()],
            },
            &hash,
        )
        .await
        .unwrap();
    let allowed = start(secret, "backups-tenant2-priority").await;
    assert_eq!(allowed.status, StatusCode::CREATED, "{}", allowed.text);
    assert_eq!(env.xlen("backups-tenant2-priority").await, 1);
}

/// `monitor serve` as deployed: clients that send half a request are cut
/// off after the header timeout while `/healthz` still answers, and
/// SIGTERM stops the server with exit 0.
#[tokio::test]
async fn slow_clients_are_cut_off_while_healthz_answers_and_sigterm_stops_the_server() {
    use std::io::{BufRead, BufReader};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = TestEnv::new().await;
    let mut child = env
        .command("monitor")
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-connections",
            "16",
            "--header-timeout",
            "1s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap()
        .to_string();

    let mut slow = Vec::new();
    for _ in 0..64 {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(stream);
    }
    let health = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    })
    .await
    .expect("/healthz did not answer while slow clients were connected");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    for mut stream in slow {
        let mut buf = [0u8; 512];
        let closed =
            tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "a half-sent request was still open: {closed:?}"
        );
    }

    // SAFETY: signals the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = support::wait_for_exit(&mut child, std::time::Duration::from_secs(15));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

/// With a streaming replica for its reads (`--read-database-url`): lists,
/// run pages and notification lists answer from the replica, a start and
/// marking read go to the primary (and the start answers with the run the
/// primary wrote), and the lag is reported on every response and, past the
/// warning, on the pages.
#[tokio::test]
async fn reads_come_from_a_replica_and_writes_go_to_the_primary() {
    let primary = tokio::task::spawn_blocking(|| {
        devstack::Postgres::start(devstack::PostgresOptions::fast()).unwrap()
    })
    .await
    .unwrap();
    let env = TestEnv::on_database(&primary.create_database("opsrun").await.unwrap()).await;
    let replica = primary.start_replica().unwrap();
    let replica_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&format!(
            "postgres://opsrun@127.0.0.1:{}/opsrun",
            replica.port()
        ))
        .await
        .unwrap();
    let app = router(
        AppState::new(
            env.ledger().clone(),
            Some(env.service.clone()),
            views::Links::default(),
            "http://monitor.test",
        )
        .with_replica(
            opsrun::Ledger::new(replica_pool.clone()),
            std::time::Duration::from_secs(1),
        ),
    );
    // Tokens are checked on the primary: usable at once.
    let operator = token(&env, A, Role::Operator, Some((7, "Ana"))).await;
    let start = |n: i64| {
        call(
            &app,
            Method::POST,
            "/api/v1/runs",
            Some(&operator),
            Some(json!({"type": "demo.succeed", "inputs": {"n": n}})),
        )
    };
    let started = start(1).await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.text);
    let id = started.json()["run"]["id"].as_i64().unwrap();

    // The list, the run and the notifications come from the replica once
    // it has replayed the start.
    let listed = support::wait_until(std::time::Duration::from_secs(10), || async {
        let list = get(&app, "/api/v1/runs", &operator).await;
        (list.json()["runs"][0]["id"] == json!(id)).then_some(list)
    })
    .await
    .expect("the run reached the replica");
    let lag: f64 = listed.headers["x-opsrun-replica-lag"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(lag < 5.0, "{lag}");
    assert_eq!(
        get(&app, &format!("/api/v1/runs/{id}"), &operator)
            .await
            .status,
        StatusCode::OK
    );
    let notes = get(&app, "/api/v1/notifications", &operator).await;
    assert_eq!(
        notes.json()["notifications"][0]["run_id"],
        json!(id),
        "{}",
        notes.text
    );
    // Marking read writes to the primary (the replica refuses writes).
    mark_all_read(&app, &operator).await;
    let refused = sqlx::query("UPDATE notifications SET read_at = now()")
        .execute(&replica_pool)
        .await;
    assert!(refused.is_err(), "the replica is read-only");

    // Replay paused: the primary moves on, the replica falls behind, and
    // past the warning the pages read from it say so.
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&replica_pool)
        .await
        .unwrap();
    let second = start(2).await;
    assert_eq!(second.status, StatusCode::CREATED);
    // The start answered from the primary; the list is the replica's, without it.
    let second = second.json()["run"]["id"].as_i64().unwrap();
    let list = get(&app, "/api/v1/runs", &operator).await;
    assert_eq!(
        list.json()["runs"][0]["id"],
        json!(id),
        "run {second} is not replayed yet"
    );
    let page = support::wait_until(std::time::Duration::from_secs(10), || async {
        let page = get(&app, &format!("/tenants/{A}/operations"), &operator).await;
        page.text.contains("replica-lag").then_some(page)
    })
    .await
    .expect("the page says the replica is behind");
    assert!(page.text.contains("behind the primary"), "{}", page.text);
    let lag: f64 = page.headers["x-opsrun-replica-lag"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(lag >= 1.0, "{lag}");
    drop(replica);
}

/// Each service under its own role from `deploy/roles.sql`: migrations as
/// the migrator, a start as the producer, the worker and reaper binaries
/// under theirs, the monitor (list, start, mark read) under its own; the
/// monitor's role cannot change a run, the worker's cannot create a table.
#[tokio::test]
async fn each_service_works_under_its_own_role_and_no_further() {
    let pg = tokio::task::spawn_blocking(|| {
        devstack::Postgres::start(devstack::PostgresOptions::fast()).unwrap()
    })
    .await
    .unwrap();
    let admin_url = pg.create_database("opsrun").await.unwrap();
    let roles_sql = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/roles.sql"),
    )
    .unwrap();
    let apply_roles = || async {
        let admin = sqlx::PgPool::connect(&admin_url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(roles_sql.clone()))
            .execute(&admin)
            .await
            .unwrap();
    };
    let url = |role: &str| format!("postgres://{role}@127.0.0.1:{}/opsrun", pg.port());
    apply_roles().await;
    let env = TestEnv::on_database(&url("opsrun_migrator")).await;
    let migrate = env
        .command("producer")
        .env("DATABASE_URL", url("opsrun_migrator"))
        .arg("migrate")
        .output()
        .unwrap();
    assert_exit(&migrate, 0);
    apply_roles().await;

    // The producer, worker and reaper binaries, each as its role, for a
    // type with a concurrency limit: the start makes its key's count, the
    // claim and the completion write it, the reaper folds the releases.
    const LIMITED: &str = r#"
[types."demo.succeed"]
concurrency = { limit = 2, per = "tenant" }
"#;
    let registry = env.write_registry(LIMITED);
    let out = env
        .command("producer")
        .env("DATABASE_URL", url("opsrun_producer"))
        .args([
            "enqueue",
            "--registry",
            registry.to_str().unwrap(),
            "--tenant",
            &A.to_string(),
            "--type",
            "demo.succeed",
            "--user-id",
            "7",
            "--initiator-name",
            "Ana",
        ])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let run_id = json_stdout(&out)["run_id"].as_i64().unwrap();
    let mut worker = env.command("worker");
    worker
        .env("DATABASE_URL", url("opsrun_worker"))
        .arg("--no-migrate");
    let _worker = support::Worker::spawn_with_registry(&env, LIMITED, worker);
    support::assert_succeeds(&env, A, run_id).await;
    let reaper = env
        .command("reaper")
        .env("DATABASE_URL", url("opsrun_reaper"))
        .args(["--once", "--retention", "1s"])
        .output()
        .unwrap();
    assert_exit(&reaper, 0);
    assert_eq!(json_stdout(&reaper)["failed_passes"], json!([]));

    // The monitor under its role: lists, starts, marks read.
    let monitor_pool = sqlx::PgPool::connect(&url("opsrun_monitor")).await.unwrap();
    let monitor_ledger = opsrun::Ledger::new(monitor_pool.clone());
    let app = router(AppState::new(
        monitor_ledger.clone(),
        Some(opsrun::RunService::new(
            monitor_ledger,
            env.service.transport().clone(),
        )),
        views::Links::default(),
        "http://monitor.test",
    ));
    let operator = token(&env, A, Role::Operator, Some((7, "Ana"))).await;
    assert_eq!(
        get(&app, "/api/v1/runs", &operator).await.status,
        StatusCode::OK
    );
    let started = call(
        &app,
        Method::POST,
        "/api/v1/runs",
        Some(&operator),
        Some(json!({"type": "demo.succeed", "inputs": {"n": 2}})),
    )
    .await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.text);
    mark_all_read(&app, &operator).await;
    // It cancels (through the one function that may), though it cannot
    // update runs; so does the producer's CLI.
    let started_id = started.json()["run"]["id"].as_i64().unwrap();
    let cancelled = call(
        &app,
        Method::POST,
        &format!("/api/v1/runs/{started_id}/cancel"),
        Some(&operator),
        Some(json!({"reason": "under its role"})),
    )
    .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text);
    assert!(matches!(
        cancelled.json()["result"].as_str(),
        Some("cancelled" | "cancel_requested" | "already_completed")
    ));
    let out = env
        .command("producer")
        .env("DATABASE_URL", url("opsrun_producer"))
        .args([
            "cancel",
            "--tenant",
            &A.to_string(),
            "--run",
            &run_id.to_string(),
        ])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert_eq!(json_stdout(&out)["result"], "already_completed");
    assert_eq!(
        get(&app, "/api/v1/actions", &operator).await.json()["actions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // A retry is a start its role records: a run no worker handles fails,
    // and is retried through the monitor.
    let out = env
        .command("producer")
        .env("DATABASE_URL", url("opsrun_producer"))
        .args([
            "enqueue",
            "--tenant",
            &A.to_string(),
            "--type",
            "unknown.kind",
        ])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let failed_id = json_stdout(&out)["run_id"].as_i64().unwrap();
    support::wait_until(std::time::Duration::from_secs(20), || async {
        let run = env
            .ledger()
            .get(A, opsrun::RunId(failed_id))
            .await
            .unwrap()?;
        (run.outcome == opsrun::Outcome::Failed).then_some(())
    })
    .await
    .expect("the unhandled run failed");
    let retried = call(
        &app,
        Method::POST,
        &format!("/api/v1/runs/{failed_id}/retry"),
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(retried.status, StatusCode::CREATED, "{}", retried.text);
    assert_eq!(retried.json()["run"]["retry_of"], failed_id);

    // And no further.
    let denied = |result: Result<sqlx::postgres::PgQueryResult, sqlx::Error>| match result {
        Err(sqlx::Error::Database(e)) => e.code().as_deref() == Some("42501"),
        _ => false,
    };
    let monitor_updates = sqlx::query("UPDATE operation_runs SET context = context")
        .execute(&monitor_pool)
        .await;
    assert!(denied(monitor_updates), "the monitor's role changed a run");
    let worker_pool = sqlx::PgPool::connect(&url("opsrun_worker")).await.unwrap();
    let worker_creates = sqlx::query("CREATE TABLE stolen (a int)")
        .execute(&worker_pool)
        .await;
    assert!(denied(worker_creates), "the worker's role created a table");
    let worker_deletes = sqlx::query("DELETE FROM operation_runs")
        .execute(&worker_pool)
        .await;
    assert!(denied(worker_deletes), "the worker's role deleted runs");
}

/// `POST /api/v1/notifications/read` for all of the caller's; it must answer 200.
async fn mark_all_read(app: &Router, token: &str) {
    let marked = call(
        app,
        Method::POST,
        "/api/v1/notifications/read",
        Some(token),
        Some(json!({})),
    )
    .await;
    assert_eq!(marked.status, StatusCode::OK, "{}", marked.text);
}

#[tokio::test]
async fn operators_cancel_runs_and_every_cancel_is_in_the_trail() {
    let env = TestEnv::new().await;
    let app = app(&env);
    let reader = token(&env, A, Role::Readonly, Some((7, "Ada"))).await;
    let operator = token(&env, A, Role::Operator, Some((8, "Grace"))).await;
    let stranger = token(&env, B, Role::Operator, Some((9, "Eve"))).await;
    let run = env
        .service
        .ensure_run(&opsrun::RunRequest::new(A, "inventory.sync"))
        .await
        .unwrap()
        .run;
    let path = format!("/api/v1/runs/{}/cancel", run.id);

    let refused = call(&app, Method::POST, &path, Some(&reader), None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text);
    let hidden = call(&app, Method::POST, &path, Some(&stranger), None).await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND, "{}", hidden.text);
    let missing = call(
        &app,
        Method::POST,
        "/api/v1/runs/99999/cancel",
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let bad = call(
        &app,
        Method::POST,
        &path,
        Some(&operator),
        Some(json!({"why": "x"})),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
    assert_eq!(
        env.ledger().get(A, run.id).await.unwrap().unwrap().status,
        opsrun::Status::Queued
    );

    // It says what it waits for.
    let shown = get(&app, &format!("/api/v1/runs/{}", run.id), &reader)
        .await
        .json();
    assert!(
        shown["waiting_for"]["summary"]
            .as_str()
            .unwrap()
            .contains("Waiting in queue"),
        "{shown}"
    );
    // The run page offers the cancel to operators only, behind a confirmation page.
    let page = get(
        &app,
        &format!("/tenants/{A}/operations/{}", run.id),
        &operator,
    )
    .await;
    assert!(page.text.contains("id=\"cancel-run\""), "{}", page.text);
    let page = get(
        &app,
        &format!("/tenants/{A}/operations/{}", run.id),
        &reader,
    )
    .await;
    assert!(!page.text.contains("id=\"cancel-run\""));
    let confirm = get(
        &app,
        &format!("/tenants/{A}/operations/{}/cancel", run.id),
        &operator,
    )
    .await;
    assert_eq!(confirm.status, StatusCode::OK);
    assert!(
        confirm.text.contains("It has not started"),
        "{}",
        confirm.text
    );
    assert_eq!(
        get(
            &app,
            &format!("/tenants/{A}/operations/{}/cancel", run.id),
            &reader
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );

    let done = call(
        &app,
        Method::POST,
        &path,
        Some(&operator),
        Some(json!({"reason": "duplicate"})),
    )
    .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    let done = done.json();
    assert_eq!(done["result"], "cancelled");
    assert_eq!(done["changed"], true);
    assert_eq!(done["run"]["outcome"], "cancelled");
    assert_eq!(
        done["run"]["failure_summary"][0]["message"],
        "cancelled by Grace (user 8): duplicate"
    );
    let again = call(&app, Method::POST, &path, Some(&operator), None)
        .await
        .json();
    assert_eq!(again["result"], "already_completed");
    assert_eq!(again["changed"], false);

    // A retry of the cancelled run: operators only, within the tenant.
    let retry = format!("/api/v1/runs/{}/retry", run.id);
    let refused = call(&app, Method::POST, &retry, Some(&reader), None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text);
    let hidden = call(&app, Method::POST, &retry, Some(&stranger), None).await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND, "{}", hidden.text);
    assert_eq!(env.count_runs().await, 1, "a refused retry starts nothing");
    let retried = call(
        &app,
        Method::POST,
        &retry,
        Some(&operator),
        Some(json!({"reason": "wanted after all"})),
    )
    .await;
    assert!(retried.status.is_success(), "{}", retried.text);
    assert_eq!(env.count_runs().await, 2);

    // The trail: readable by any role of the tenant, newest first; none elsewhere.
    let trail = get(&app, "/api/v1/actions", &reader).await.json();
    let actions = trail["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 3, "{trail}");
    assert_eq!(actions[0]["action"], "retry");
    assert_eq!(actions[0]["actor_name"], "Grace");
    assert_eq!(actions[0]["reason"], "wanted after all");
    let actions = &actions[1..];
    assert_eq!(actions[0]["result"], "already_completed");
    assert_eq!(actions[1]["result"], "cancelled");
    assert_eq!(actions[1]["actor_name"], "Grace");
    assert_eq!(actions[1]["actor_user_id"], 8);
    assert_eq!(actions[1]["reason"], "duplicate");
    assert_eq!(
        get(&app, "/api/v1/actions", &stranger).await.json()["actions"],
        json!([])
    );
    let page = get(&app, &format!("/tenants/{A}/actions"), &reader).await;
    assert!(
        page.text.contains("duplicate") && page.text.contains("Grace"),
        "{}",
        page.text
    );
}

#[tokio::test]
async fn only_a_token_made_for_a_queue_pauses_it_and_the_list_says_so() {
    let env = TestEnv::new().await;
    let app = app(&env);
    let (secret, hash) = generate_token();
    env.ledger()
        .create_token(
            &NewToken {
                tenant_id: Some(A),
                role: Role::Operator,
                user: Some((8, "Grace")),
                label: Some("ops"),
                queues: &["imports".to_string()],
            },
            &hash,
        )
        .await
        .unwrap();
    let operator = token(&env, A, Role::Operator, Some((7, "Ada"))).await;
    let reader = token(&env, A, Role::Readonly, Some((7, "Ada"))).await;

    let refused = call(
        &app,
        Method::POST,
        "/api/v1/queues/imports/pause",
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text);
    assert!(
        refused.text.contains("--allow-queue imports"),
        "{}",
        refused.text
    );
    let refused = call(
        &app,
        Method::POST,
        "/api/v1/queues/imports/pause",
        Some(&reader),
        None,
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let unknown = call(
        &app,
        Method::POST,
        "/api/v1/queues/imports/stop",
        Some(&secret),
        None,
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(env.ledger().paused_queues().await.unwrap().is_empty());

    let paused = call(
        &app,
        Method::POST,
        "/api/v1/queues/imports/pause",
        Some(&secret),
        Some(json!({"reason": "supplier feed broken"})),
    )
    .await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.text);
    assert_eq!(paused.json()["result"], "paused");
    let listed = get(&app, "/api/v1/queues", &reader).await.json();
    assert_eq!(listed["paused"][0]["queue"], "imports");
    let page = get(&app, &format!("/tenants/{A}/operations"), &reader).await;
    assert!(
        page.text.contains("is paused since") && page.text.contains("supplier feed broken"),
        "{}",
        page.text
    );
    let trail = get(&app, "/api/v1/actions", &reader).await.json();
    assert_eq!(trail["actions"][0]["action"], "pause");
    assert_eq!(trail["actions"][0]["queue"], "imports");
    assert_eq!(trail["actions"][0]["actor_name"], "Grace");

    let resumed = call(
        &app,
        Method::POST,
        "/api/v1/queues/imports/resume",
        Some(&secret),
        None,
    )
    .await;
    assert_eq!(resumed.json()["result"], "resumed");
    assert!(env.ledger().paused_queues().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_schedule_created_through_the_api_fires_and_is_managed_there() {
    let env = TestEnv::new().await;
    let app = app(&env);
    let operator = token(&env, A, Role::Operator, Some((7, "Ada"))).await;
    let reader = token(&env, A, Role::Readonly, Some((7, "Ada"))).await;
    let stranger = token(&env, B, Role::Operator, Some((9, "Eve"))).await;
    let body = json!({"name": "hourly-sync", "cron": "0 * * * *", "timezone": "Europe/Paris",
                      "type": "inventory.sync", "inputs": {"site": "paris"}, "missed": "latest"});

    let refused = call(
        &app,
        Method::POST,
        "/api/v1/schedules",
        Some(&reader),
        Some(body.clone()),
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    for (bad, field) in [
        (
            json!({"name": "x", "cron": "0 25 * * *", "type": "inventory.sync"}),
            "cron",
        ),
        (
            json!({"name": "x", "cron": "0 * * * *", "type": "inventory.sync", "missed": "often"}),
            "missed",
        ),
        (
            json!({"cron": "0 * * * *", "type": "inventory.sync"}),
            "name",
        ),
    ] {
        let answer = call(
            &app,
            Method::POST,
            "/api/v1/schedules",
            Some(&operator),
            Some(bad),
        )
        .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text);
        assert!(answer.text.contains(field), "{}", answer.text);
    }
    let created = call(
        &app,
        Method::POST,
        "/api/v1/schedules",
        Some(&operator),
        Some(body.clone()),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let created = created.json();
    let id = created["schedule"]["id"].as_i64().unwrap();
    assert_eq!(created["schedule"]["created_by"], "Ada");
    assert_eq!(created["next_slots"].as_array().unwrap().len(), 5);
    let again = call(
        &app,
        Method::POST,
        "/api/v1/schedules",
        Some(&operator),
        Some(body),
    )
    .await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);

    // Its slot comes (made due here): the reaper fires it.
    sqlx::query(
        "UPDATE schedules SET last_slot = date_trunc('hour', now()) - interval '59 minutes', \
             next_slot = date_trunc('hour', now()) WHERE id = $1",
    )
    .bind(id)
    .execute(&env.pool)
    .await
    .unwrap();
    let config = opsrun_reaper::ReaperConfig {
        queues: vec!["default".into()],
        ..Default::default()
    };
    let report = opsrun_reaper::run_once(&env.service, &config).await;
    assert_eq!(report.schedules.fired, 1, "{report:?}");
    let listed = get(&app, "/api/v1/schedules", &reader).await.json();
    let run_id = listed["schedules"][0]["last_slots"][0]["run_id"]
        .as_i64()
        .expect("the slot's run");
    let run = get(&app, &format!("/api/v1/runs/{run_id}"), &reader)
        .await
        .json();
    assert_eq!(run["inputs"]["site"], "paris");
    assert_eq!(run["inputs"]["schedule_id"], id);
    assert_eq!(run["identity_rule"], "strict");
    assert_eq!(
        get(&app, "/api/v1/schedules", &stranger).await.json()["schedules"],
        json!([])
    );
    let page = get(&app, &format!("/tenants/{A}/schedules"), &reader).await;
    assert!(
        page.text.contains("hourly-sync") && page.text.contains(&format!("#{run_id}")),
        "{}",
        page.text
    );

    // Managed there: another tenant cannot touch it; pause, change, delete.
    let hidden = call(
        &app,
        Method::POST,
        "/api/v1/schedules/hourly-sync/pause",
        Some(&stranger),
        None,
    )
    .await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND);
    let paused = call(
        &app,
        Method::POST,
        "/api/v1/schedules/hourly-sync/pause",
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(paused.json()["schedule"]["paused"], true);
    let changed = call(
        &app,
        Method::PUT,
        "/api/v1/schedules/hourly-sync",
        Some(&operator),
        Some(json!({"cron": "15 3 * * *", "timezone": "UTC", "type": "inventory.sync"})),
    )
    .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    assert_eq!(changed.json()["schedule"]["cron"], "15 3 * * *");
    let deleted = call(
        &app,
        Method::DELETE,
        "/api/v1/schedules/hourly-sync",
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(
        get(&app, "/api/v1/schedules", &reader).await.json()["schedules"],
        json!([])
    );
}

#[tokio::test]
async fn platform_tokens_see_queue_health_and_never_a_tenants_runs() {
    let env = TestEnv::new().await;
    let app = app(&env);
    let mut seeds: Vec<Seed> = (0..3)
        .map(|_| Seed {
            days_ago: 2.0,
            ..Seed::default()
        })
        .collect();
    seeds.push(Seed {
        outcome: "failed",
        failure: Some("job.timeout"),
        ..Seed::default()
    });
    seeds.push(Seed {
        tenant: B,
        outcome: "cancelled",
        ..Seed::default()
    });
    seeds.push(Seed {
        outcome: "pending",
        ..Seed::default()
    });
    seed(&env, &seeds).await;
    // Hours before this one are rolled up; a run completed a minute ago is
    // read live: the chart counts each run once either way.
    assert!(env.ledger().roll_up(100).await.unwrap() >= 2);
    seed(
        &env,
        &[Seed {
            days_ago: 0.001,
            ..Seed::default()
        }],
    )
    .await;
    let reader = token(&env, A, Role::Readonly, None).await;
    let (platform, hash) = generate_token();
    env.ledger()
        .create_token(
            &NewToken {
                tenant_id: None,
                role: Role::Platform,
                user: None,
                label: Some("platform"),
                queues: &[],
            },
            &hash,
        )
        .await
        .unwrap();
    // A platform token bound to a tenant cannot exist.
    let (_, other_hash) = generate_token();
    assert!(
        env.ledger()
            .create_token(
                &NewToken {
                    tenant_id: Some(A),
                    role: Role::Platform,
                    user: None,
                    label: None,
                    queues: &[],
                },
                &other_hash,
            )
            .await
            .is_err()
    );

    // The chart counts the tenant's completed runs by outcome, and only its own.
    let chart = get(&app, "/api/v1/chart", &reader).await;
    assert_eq!(chart.status, StatusCode::OK, "{}", chart.text);
    let chart = chart.json();
    let total = |outcome: &str| -> i64 {
        chart["counts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["outcome"] == outcome)
            .map(|c| c["runs"].as_i64().unwrap())
            .sum()
    };
    assert_eq!(
        (total("succeeded"), total("failed"), total("cancelled")),
        (4, 1, 0)
    );
    assert_eq!(chart["durations"][0]["runs"], 5);
    assert_eq!(chart["step"], "day");

    // Queue health is for the platform token; it sees no tenant's runs.
    let health = get(&app, "/api/v1/platform/queues", &platform).await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.text);
    let default = health.json()[0].clone();
    assert_eq!(default["queue"], "default");
    assert_eq!(default["queued"], 1);
    assert!(!health.text.contains("inventory.sync"), "{}", health.text);
    assert_eq!(
        get(&app, "/api/v1/platform/queues", &reader).await.status,
        StatusCode::FORBIDDEN
    );
    for uri in ["/api/v1/runs", "/api/v1/chart", "/api/v1/notifications"] {
        let refused = get(&app, uri, &platform).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{uri}");
        assert!(refused.text.contains("platform token"), "{}", refused.text);
    }

    // The CLI makes platform tokens with --platform only.
    let out = env
        .command("monitor")
        .args(["token", "create", "--tenant", "1", "--role", "platform"])
        .output()
        .unwrap();
    let stderr = assert_exit(&out, 2);
    assert!(stderr.contains("--platform"), "{stderr}");
    let out = env
        .command("monitor")
        .args(["token", "create", "--platform", "--label", "ops"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let listed = env
        .command("monitor")
        .args(["token", "list", "--platform"])
        .output()
        .unwrap();
    assert_exit(&listed, 0);
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(listed.contains("\"role\":\"platform\""), "{listed}");
}
