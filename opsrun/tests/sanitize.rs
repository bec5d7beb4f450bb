//! The sanitizer against a corpus of realistic failure messages (secrets in
//! every syntax a job, a driver or a library prints them in, and ordinary
//! text that must stay readable), and a property test: a generated
//! credential embedded in any of those syntaxes never comes out.

use opsrun::sanitize::{MAX_MESSAGE_BYTES, REDACTED, redact, redact_tail};
use proptest::prelude::*;

/// Text holding secrets, and the parts of it that must not survive.
const SECRET: &[(&str, &[&str])] = &[
    // URL credentials, however the password is spelled.
    (
        "connect redis://:hunter2pw@cache:6379/0 failed",
        &["hunter2pw"],
    ),
    (
        "postgres://app:s3cr3t-pw@db.internal/app refused",
        &["s3cr3t-pw"],
    ),
    (
        "dial postgres://app:p@ss@word@db:5432/app: timeout",
        &["p@ss", "ss@word"],
    ),
    (
        "dial postgres://app:pa/ss/wd@db:5432/app: timeout",
        &["pa/ss/wd", "ss/wd"],
    ),
    (
        "dial postgres://app:my secret pw@db/app failed",
        &["my secret pw", "secret pw"],
    ),
    (
        "amqp://guest:gu%40est%2Fpw@rabbit:5672/ refused",
        &["gu@est", "gu%40est", "est/pw", "est%2Fpw"],
    ),
    (
        "clone https://x-access-token:ghs_16C7e42F292c6912E7710c838347Ae178B4a@github.com/o/r.git",
        &["ghs_16C7e42F", "6912E7710c8"],
    ),
    (
        "fetch https://oauth2:glpat-Xy7aBcD3eFgH1jK2lMnO@gitlab.example.com/g/p.git",
        &["glpat-Xy7a", "Xy7aBcD3eF"],
    ),
    // Driver DSNs.
    (
        "Error 1045: app:Tr0ub4dor3@tcp(mysql:3306)/app?parseTime=true",
        &["Tr0ub4dor3"],
    ),
    (
        "sqlalchemy: scott:tiger9@db.example.com:5432/prod unreachable",
        &["tiger9"],
    ),
    (
        "pq: host=db user=app password='my secret pw' dbname=app sslmode=require",
        &["my secret", "secret pw"],
    ),
    (
        "libpq: host=db port=5432 password=plainpw99 dbname=app",
        &["plainpw99"],
    ),
    (
        "Server=tcp:sql.example.com;User ID=app;Password=Sql$erver!2024;Encrypt=True",
        &["Sql$erver", "erver!2024"],
    ),
    (
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;EndpointSuffix=core.windows.net",
        &["Eby8vdM02x", "KBHBeksoGMGw"],
    ),
    (
        "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=root;SharedAccessKey=abc/DEF+ghi123=",
        &["abc/DEF+ghi123"],
    ),
    // Signed URLs and API keys in query strings.
    (
        "GET https://acct.blob.core.windows.net/c/b?sv=2021-08-06&se=2026-12-01&sp=r&sig=AbCdEf%2BgHiJk%3D 403",
        &["AbCdEf", "gHiJk"],
    ),
    (
        "GET https://maps.googleapis.com/maps/api/geocode/json?address=x&key=AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe",
        &["AIzaSyDaGm", "ISLn_3namBG"],
    ),
    (
        "GET https://api.example.com/v1/items?auth=shortpw7&page=2 401",
        &["shortpw7"],
    ),
    (
        "s3: https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261201%2Fus-east-1&X-Amz-Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024",
        &["AKIAIOSFODNN7EXAMPLE", "fe5f80f77d5fa3be"],
    ),
    (
        "encoded: redirect=https%3A%2F%2Fapi.example.com%2Fcb%3Ftoken%3DqZ81xkLm%26a%3D1",
        &["qZ81xkLm"],
    ),
    ("form body: user=app&password%3Dhunter2two", &["hunter2two"]),
    // Key formats of well-known services, short or unusual ones too.
    (
        "openai: invalid key sk-abc123XYZ",
        &["sk-abc123XYZ", "abc123XYZ"],
    ),
    (
        "anthropic: sk-ant-api03-AbCdEfGhIjKlMnOp-QrStUv rejected",
        &["AbCdEfGhIjKl", "sk-ant-api03"],
    ),
    (
        "stripe: rk_live_51H8abcXYZ987 revoked",
        &["rk_live_51H8abc", "51H8abcXYZ987"],
    ),
    (
        "stripe: sk_test_4eC39HqLyjWDarjtT1zdp7dc",
        &["4eC39HqLyjWD"],
    ),
    ("aws AKIAIOSFODNN7EXAMPLE here", &["AKIAIOSFODNN7EXAMPLE"]),
    (
        "aws secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY used",
        &["wJalrXUtnFEMI", "bPxRfiCYEXAMPLEKEY"],
    ),
    (
        "gh ghp_abcdefghijklmnopqrstuvwxyz0123456789AB",
        &["ghp_abcdefghijklmnop"],
    ),
    (
        "slack xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        &["AbCdEfGhIjKl", "1234567890123"],
    ),
    (
        "POST https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX failed",
        &["T00000000", "B00000000", "XXXXXXXXXXXX"],
    ),
    (
        "POST https://discord.com/api/webhooks/123456789012345678/AbC-dEf_GhI failed",
        &["AbC-dEf_GhI"],
    ),
    (
        "sendgrid 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 rejected",
        &["ngeVfQFYQlKU0", "TwL2iGABf9"],
    ),
    (
        "opsrun_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef is revoked",
        &["0123456789abcdef0123"],
    ),
    (
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        &["dozjgNryP4J3", "eyJzdWIiOiIx"],
    ),
    // Private keys, with or without their armor lines.
    (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi\n-----END RSA PRIVATE KEY-----",
        &["MIIEowIBAAKCAQEA", "AMfQyuvBjM9Oi"],
    ),
    (
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n",
        &["b3BlbnNzaC1rZXkt"],
    ),
    (
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF2nH0sBCADqUz1kGhT5nB3kL8oP2xW9vR4\n=Xy7Q\n-----END PGP PRIVATE KEY BLOCK-----",
        &["lQOYBF2nH0sB", "Xy7Q"],
    ),
    (
        "key body tail\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\nMZR3vmvlW8vD1mQ8f6h5n0yq2x3R4tB7uI9oP1aS2dF3gH4jK5lZ6xC7vB8nM9\n-----END PRIVATE KEY-----\nfatal",
        &["MIIEvQIBADANBgkq", "MZR3vmvlW8vD1mQ8"],
    ),
    // Structured secrets in JSON, headers, command lines and environments.
    (
        r#"{"user":"app","password": "with spaces inside"}"#,
        &["with spaces", "spaces inside"],
    ),
    (
        r#"{"config":{"secret": {"id": "kid-1", "value": "nested s3cret"}}, "ok": true}"#,
        &["nested s3cret", "kid-1"],
    ),
    (
        r#"request body {\"api_key\": \"AbC 123 xyz\"} rejected"#,
        &["AbC 123", "123 xyz"],
    ),
    (r#"{"api_key":"AbC123xyz789"}"#, &["AbC123xyz789"]),
    (
        "Authorization: ApiKey k3y-v4lue-here\nnext line",
        &["k3y-v4lue-here"],
    ),
    (
        "Authorization: Digest username=\"app\", response=\"6629fae49393a05397450978507c4ef1\"",
        &["6629fae4939", "username=\"app\""],
    ),
    ("Authorization: Bearer abc", &["abc"]),
    ("curl -H 'Authorization: Bearer s.ort' failed", &["s.ort"]),
    (
        "Cookie: theme=dark; session_id=9f8e7d6c5b4a",
        &["9f8e7d6c5b4a", "theme=dark"],
    ),
    ("Set-Cookie: sid=Zx9Qw2Er; Path=/; HttpOnly", &["Zx9Qw2Er"]),
    ("x-api-key: k3y-v4lue-here", &["k3y-v4lue-here"]),
    (
        "auth header Basic dXNlcjpwYXNzd29yZA==",
        &["dXNlcjpwYXNzd29yZA"],
    ),
    (
        "ran: pg_dump --host db --password hunter2 --dbname app",
        &["hunter2"],
    ),
    (
        "ran: mysql --user=root --password=S3cure! app",
        &["S3cure!"],
    ),
    ("env: DB_PASS=opensesame PATH=/usr/bin", &["opensesame"]),
    ("export PGPASSWORD='two words'", &["two words"]),
    (
        "gpg: passphrase=correct-horse-battery",
        &["correct-horse-battery"],
    ),
    ("password=Tr0ub4dor&x=1", &["Tr0ub4dor"]),
    (r#"refresh_token="rt-998877""#, &["rt-998877"]),
    ("client_secret = zzTopSecret", &["zzTopSecret"]),
    ("yaml: {password: hunter, user: app}", &["hunter,"]),
    (r#"ruby: {"password" => "pa55 word"}"#, &["pa55 word"]),
    ("spring.datasource.password=Spr1ng!", &["Spr1ng!"]),
    ("token: a1b2c3", &["a1b2c3"]),
];

/// Ordinary text that must come out unchanged.
const INNOCENT: &[&str] = &[
    "run 550e8400-e29b-41d4-a716-446655440000 failed at 2026-11-22T13:49:28Z",
    "entry 1795350439883-0 on queue inventory_sync_with_a_long_descriptive_name_here",
    "queue.dispatch_failed: tokens_processed=12 items=3",
    "inventory.sync could not reach the provider (HTTP 503)",
    "/tmp/opsrun-worker-test-t5x756049814/registry-2026-11-22/broken.toml: unknown key",
    "creating token: failed returned from database",
    "password authentication failed for user \"app\"",
    "missing Bearer token",
    "the token was revoked",
    "basic checks passed, 3 of 4 items synced",
    "connection to https://api.example.com:8443/v1/items timed out after 30s",
    "see https://docs.example.com/errors#E1042 for details",
    "instance i-0abcd1234efgh5678 in us-east-1 is stopping",
    "panicked at src/sync.rs:142:9: index out of bounds: the len is 3 but the index is 7",
    "max_tokens=4096 exceeded by prompt of 5000 tokens",
    "duplicate key value violates unique constraint \"operation_runs_pkey\"",
    "bypass=true compass=north sort_key=created_at",
    "SyncInventoryForWarehouseWorker failed after 3 attempts",
    "HTTP/1.1 429 Too Many Requests: retry after 30 seconds",
    "backup of volume vol-0123 (500 GiB) finished in 1h 02m",
    "site paris: 120 of 130 items synced, 10 skipped",
    "email ops@example.com when done",
];

#[test]
fn secrets_in_the_corpus_never_survive() {
    for (text, secrets) in SECRET {
        let out = redact(text);
        for secret in *secrets {
            assert!(
                !out.contains(secret),
                "{secret:?} survived in {out:?}\n from {text:?}"
            );
        }
        assert!(out.contains(REDACTED), "nothing redacted in {out:?}");
    }
}

#[test]
fn ordinary_text_in_the_corpus_survives() {
    for text in INNOCENT {
        assert_eq!(redact(text), *text);
    }
}

#[test]
fn the_corpus_is_at_least_sixty_cases() {
    assert!(SECRET.len() + INNOCENT.len() >= 60);
}

#[test]
fn the_words_around_a_secret_stay_readable() {
    assert_eq!(
        redact("connect postgres://app:s3cr3t@db.internal:5432/app refused"),
        "connect postgres://[REDACTED]@db.internal:5432/app refused"
    );
    assert_eq!(
        redact(r#"{"user":"app","password":"x y z","port":5432}"#),
        r#"{"user":"app","password":"[REDACTED]","port":5432}"#
    );
    assert_eq!(
        redact("sync failed: Authorization: ApiKey abc"),
        "sync failed: Authorization: [REDACTED]"
    );
}

#[test]
fn a_long_stderr_keeps_its_redacted_tail() {
    let key_line = "MIIEowIBAAKCAQEAwJGyLmW3nKxQ7Zt1t9dYpQ2mV8rHjK3sFbN0cXeR5uTgY6LiPo";
    let stderr = format!(
        "-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----\npassword=hunter2two\nerror: giving up",
        [key_line; 32].join("\n")
    );
    let tail = redact_tail(&stderr, 300);
    assert!(tail.ends_with("error: giving up"), "{tail}");
    assert!(
        !tail.contains("MIIEow") && !tail.contains("hunter2two"),
        "{tail}"
    );
    assert!(redact(&"x".repeat(5000)).len() <= MAX_MESSAGE_BYTES);
}

/// A credential: 8 to 40 characters with a digit and a letter, from
/// `alphabet`.
fn credential(alphabet: &'static str) -> impl Strategy<Value = String> {
    let chars: Vec<char> = alphabet.chars().collect();
    (
        proptest::collection::vec(proptest::sample::select(chars), 6..38),
        0..10u8,
        proptest::sample::select(vec!['q', 'Z', 'k', 'M']),
    )
        .prop_map(|(mut body, digit, letter)| {
            body.insert(body.len() / 2, char::from(b'0' + digit));
            body.push(letter);
            body.into_iter().collect()
        })
}

/// Characters a value may hold where its syntax delimits it (quotes, URL
/// userinfo): anything printable but the quote itself.
const ANY: &str =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%*+-./:=?@^_~ ,;&()[]{}";
/// Characters an unquoted value may hold (no delimiter of its syntax).
const BARE: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$*+-./:=?@^_~";
/// Characters of a token in a header, query string or key format.
const TOKEN: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~+/";

/// Secret names in their usual spellings.
fn secret_name() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(vec![
        "password",
        "PASSWORD",
        "db_password",
        "DB_PASS",
        "pwd",
        "passphrase",
        "secret",
        "client_secret",
        "api_key",
        "apiKey",
        "x-api-key",
        "token",
        "access_token",
        "AccountKey",
        "SharedAccessKey",
        "sig",
        "auth",
        "private_key",
        "credentials",
        "session_id",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, max_shrink_iters: 0, ..ProptestConfig::default() })]

    #[test]
    fn a_credential_in_a_url_never_survives(pw in credential(ANY), scheme in "(postgres|redis|amqp|https|mongodb\\+srv)") {
        let pw = pw.replace('\n', "");
        for text in [
            format!("connect {scheme}://app:{pw}@db.internal:5432/x refused"),
            format!("connect {scheme}://:{pw}@db/x"),
        ] {
            let out = redact(&text);
            prop_assert!(!out.contains(&pw), "{pw:?} survived in {out:?}");
        }
    }

    #[test]
    fn a_credential_under_a_secret_name_never_survives(
        quoted in credential(ANY),
        bare in credential(BARE),
        name in secret_name(),
    ) {
        let quoted = quoted.replace(['"', '\''], "");
        let cases = [
            (format!(r#"{{"user":"app","{name}": "{quoted}","n":1}}"#), &quoted),
            (format!(r#"body {{\"{name}\":\"{quoted}\"}}"#), &quoted),
            (format!("{name}='{quoted}' host=db"), &quoted),
            (format!("{name}={bare}&page=2"), &bare),
            (format!("GET /x?a=1&{name}={bare} HTTP/1.1"), &bare),
            (format!("export {name}={bare}"), &bare),
            (format!("{name}: {bare}"), &bare),
            (format!("run --{name} {bare} --verbose"), &bare),
            (format!("run --{name}={bare}"), &bare),
            (format!("Server=db;{name}={bare};Encrypt=True"), &bare),
        ];
        for (text, secret) in cases {
            let out = redact(&text);
            prop_assert!(!out.contains(secret.as_str()), "{secret:?} survived in {out:?} from {text:?}");
        }
    }

    #[test]
    fn a_credential_after_an_auth_scheme_never_survives(
        token in credential(TOKEN),
        scheme in "(Bearer|Basic|Token|ApiKey|Digest)",
    ) {
        for text in [
            format!("Authorization: {scheme} {token}"),
            format!("request had Authorization: {scheme} {token} and failed"),
            format!("Proxy-Authorization: {scheme} {token}"),
            format!("sent {scheme} {token} upstream"),
        ] {
            let out = redact(&text);
            prop_assert!(!out.contains(&token), "{token:?} survived in {out:?}");
        }
    }

    #[test]
    fn a_credential_percent_encoded_never_survives(pw in credential(ANY), name in secret_name()) {
        let encoded: String = percent_encoding::utf8_percent_encode(&pw, percent_encoding::NON_ALPHANUMERIC).to_string();
        for text in [
            format!("callback?{name}={encoded}&x=1"),
            format!("redis://app:{encoded}@cache:6379"),
        ] {
            let out = redact(&text);
            prop_assert!(!out.contains(&pw) && !out.contains(&encoded), "{pw:?} survived in {out:?}");
        }
    }

    #[test]
    fn a_random_key_body_never_survives(bytes in proptest::collection::vec(any::<u8>(), 48..400)) {
        // base64 of random bytes, wrapped at 64 columns like PEM, no armor.
        let body = base64_lines(&bytes);
        let text = format!("stderr tail:\n{body}\nexit 1");
        let out = redact(&text);
        for line in body.lines().filter(|l| l.trim_end_matches('=').len() >= 24) {
            prop_assert!(!out.contains(line), "{line:?} survived in {out:?}");
        }
    }
}

/// Standard base64, 64 characters a line, as in a PEM body.
fn base64_lines(bytes: &[u8]) -> String {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(bytes);
    text.as_bytes()
        .chunks(64)
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}
