//! Tokens as RFC 8725 asks: every rule refused with a 401 naming it, counted in
//! `/metrics`, keys pinned to their algorithm and selected by `kid`, and the token
//! never written to the logs.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use api::http::auth::{
    mint_hs256_with_kid, Claims, KeyMaterial, KeySpec, TokenRules, DEFAULT_AUDIENCE, DEFAULT_ISSUER,
};
use api::http::{Authenticator, Role, ServerConfig};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::support::*;

/// A key pair made for these tests only; it protects nothing.
const RS256_PRIVATE_PEM: &[u8] = include_bytes!("fixtures/rs256-test-private.pem");
const RS256_PUBLIC_PEM: &[u8] = include_bytes!("fixtures/rs256-test-public.pem");
const OLD_SECRET: &[u8] = b"the-retiring-hs256-secret-of-32-bytes";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Valid claims as JSON, to be bent by each case.
fn claims() -> Value {
    json!({
        "sub": "ops",
        "role": "admin",
        "exp": now() + 600,
        "iat": now(),
        "iss": DEFAULT_ISSUER,
        "aud": DEFAULT_AUDIENCE,
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().expect("an object").remove(key);
    claims
}

fn sign(algorithm: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("a token")
}

fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        claims,
        &EncodingKey::from_secret(SECRET),
    )
}

fn rs256(kid: &str, claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(RS256_PRIVATE_PEM).expect("the test key");
    sign(Algorithm::RS256, Some(kid), claims, &key)
}

/// An unsigned token: `{"alg":"none"}`, the claims, and an empty signature.
fn unsigned(claims: &Value) -> String {
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(claims)
    )
}

#[tokio::test]
async fn each_broken_token_rule_is_a_401_naming_the_rule() {
    let app = spawn_app().await;
    let hs384 = sign(
        Algorithm::HS384,
        None,
        &claims(),
        &EncodingKey::from_secret(SECRET),
    );
    let cases = [
        ("alg none", unsigned(&claims()), "token-algorithm"),
        ("an algorithm not configured", hs384, "token-algorithm"),
        (
            "a kid not configured",
            sign(
                Algorithm::HS256,
                Some("nobody"),
                &claims(),
                &EncodingKey::from_secret(SECRET),
            ),
            "token-unknown-key",
        ),
        (
            "another secret",
            sign(
                Algorithm::HS256,
                None,
                &claims(),
                &EncodingKey::from_secret(OLD_SECRET),
            ),
            "token-signature",
        ),
        (
            "expired",
            hs256(&with(claims(), "exp", json!(now() - 60))),
            "token-expired",
        ),
        ("no exp", hs256(&without(claims(), "exp")), "token-claims"),
        (
            "nbf in the future",
            hs256(&with(claims(), "nbf", json!(now() + 300))),
            "token-not-yet-valid",
        ),
        (
            "iat in the future",
            hs256(&with(claims(), "iat", json!(now() + 300))),
            "token-issued-in-future",
        ),
        (
            "another issuer",
            hs256(&with(claims(), "iss", json!("someone-else"))),
            "token-issuer",
        ),
        (
            "no issuer",
            hs256(&without(claims(), "iss")),
            "token-claims",
        ),
        (
            "another audience",
            hs256(&with(claims(), "aud", json!("another-api"))),
            "token-audience",
        ),
        (
            "an unknown role",
            hs256(&with(claims(), "role", json!("root"))),
            "token-claims",
        ),
        ("not a JWT", "a.b".to_owned(), "token-malformed"),
    ];
    for (case, token, rule) in &cases {
        let reply = app.get("/v1/events", token).await;
        assert_eq!(reply.status.as_u16(), 401, "{case}: {}", reply.body);
        reply.problem(401, rule);
        assert_eq!(reply.body["field"], "Authorization", "{case}");
    }
    app.send(app.http.get(app.url("/v1/events")))
        .await
        .problem(401, "token-missing");

    // Within the leeway is still fine: clocks drift a little.
    let skewed = hs256(&with(claims(), "nbf", json!(now() + 2)));
    app.get("/v1/events", &skewed).await.ok(200);
    app.get("/v1/events", &hs256(&claims())).await.ok(200);

    let metrics = app
        .send(app.http.get(app.url("/metrics")))
        .await
        .body
        .as_str()
        .expect("metrics text")
        .to_owned();
    for (_, _, rule) in &cases {
        let line = format!("commerce_token_refusals_total{{rule=\"{rule}\"}}");
        assert!(metrics.contains(&line), "{line} missing from /metrics");
    }
}

/// An app verifying with a key set: RS256 under `rs-2026`, HS256 under `hs-old`
/// (or only the RS256 key once the old one is retired).
async fn app_with_key_set(retire_old: bool) -> TestApp {
    let mut keys = vec![KeySpec {
        kid: Some("rs-2026".into()),
        material: KeyMaterial::Rs256Pem(RS256_PUBLIC_PEM.to_vec()),
    }];
    if !retire_old {
        keys.push(KeySpec {
            kid: Some("hs-old".into()),
            material: KeyMaterial::Hs256(OLD_SECRET.to_vec()),
        });
    }
    let authenticator =
        Authenticator::with_keys(keys, TokenRules::default()).expect("a valid key set");
    spawn_app_with_authenticator(
        ServerConfig {
            body_limit_bytes: BODY_LIMIT_BYTES,
            ..ServerConfig::default()
        },
        authenticator,
    )
    .await
}

#[tokio::test]
async fn keys_rotate_by_kid_and_each_pins_its_algorithm() {
    let app = app_with_key_set(false).await;
    let old = sign(
        Algorithm::HS256,
        Some("hs-old"),
        &claims(),
        &EncodingKey::from_secret(OLD_SECRET),
    );
    // Both the new key and the one being retired verify their own tokens.
    app.get("/v1/events", &rs256("rs-2026", &claims()))
        .await
        .ok(200);
    app.get("/v1/events", &old).await.ok(200);

    // The classic confusion: an HS256 token whose "secret" is the RS256 public key.
    let confused = sign(
        Algorithm::HS256,
        Some("rs-2026"),
        &claims(),
        &EncodingKey::from_secret(RS256_PUBLIC_PEM),
    );
    app.get("/v1/events", &confused)
        .await
        .problem(401, "token-algorithm");
    let confused_without_kid = sign(
        Algorithm::HS256,
        None,
        &claims(),
        &EncodingKey::from_secret(RS256_PUBLIC_PEM),
    );
    app.get("/v1/events", &confused_without_kid)
        .await
        .problem(401, "token-unknown-key");
    // An RS256 token naming the HS256 key is refused the same way.
    app.get("/v1/events", &rs256("hs-old", &claims()))
        .await
        .problem(401, "token-algorithm");
    app.get("/v1/events", &rs256("rs-2025", &claims()))
        .await
        .problem(401, "token-unknown-key");

    // Once the old key is retired, its tokens stop working and the new ones do not.
    let retired = app_with_key_set(true).await;
    retired
        .get("/v1/events", &old)
        .await
        .problem(401, "token-unknown-key");
    retired
        .get("/v1/events", &rs256("rs-2026", &claims()))
        .await
        .ok(200);
}

#[tokio::test]
async fn tokens_minted_for_another_issuer_or_audience_are_refused_by_configuration() {
    let rules = TokenRules {
        issuer: "https://id.example".into(),
        audience: "shop".into(),
        leeway_secs: 0,
    };
    let authenticator = Authenticator::with_keys(
        vec![KeySpec {
            kid: None,
            material: KeyMaterial::Hs256(SECRET.to_vec()),
        }],
        rules,
    )
    .expect("a valid key set");
    let app = spawn_app_with_authenticator(ServerConfig::default(), authenticator).await;
    let ours = Claims {
        iss: "https://id.example".into(),
        aud: "shop".into(),
        ..Claims::new("ops", Role::Admin, (now() + 600) as u64)
    };
    let token = mint_hs256_with_kid(SECRET, None, &ours).unwrap();
    app.get("/v1/events", &token).await.ok(200);
    // The defaults are not accepted once others are configured.
    app.get("/v1/events", &admin())
        .await
        .problem(401, "token-issuer");
    let foreign_audience = Claims {
        aud: DEFAULT_AUDIENCE.into(),
        ..ours.clone()
    };
    app.get(
        "/v1/events",
        &mint_hs256_with_kid(SECRET, None, &foreign_audience).unwrap(),
    )
    .await
    .problem(401, "token-audience");
    // With no leeway, a token not valid for another few seconds is refused.
    let early = Claims {
        nbf: Some((now() + 3) as u64),
        ..ours
    };
    app.get(
        "/v1/events",
        &mint_hs256_with_kid(SECRET, None, &early).unwrap(),
    )
    .await
    .problem(401, "token-not-yet-valid");
}

/// Everything the process logs, at every level, from the first call on.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || Capture(sink.clone()))
            .finish();
        // Another test may have installed a subscriber first; then this one sees
        // nothing, and the assertion below would be empty, so say so.
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this test binary");
        logs
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn refused_and_accepted_tokens_never_reach_the_logs() {
    let logs = captured_logs();
    let app = spawn_app().await;
    let refused = hs256(&with(claims(), "aud", json!("another-api")));
    let accepted = hs256(&claims());
    app.get("/v1/events", &refused)
        .await
        .problem(401, "token-audience");
    app.get("/v1/events", &accepted).await.ok(200);
    app.post("/v1/carts", &accepted, json!({"currency": "EUR"}))
        .await;
    let text = String::from_utf8_lossy(
        &logs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
    .into_owned();
    assert!(!text.is_empty(), "the capture saw no log lines at all");
    for token in [&refused, &accepted] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!text.contains(token.as_str()), "a token was logged");
        assert!(!text.contains(signature), "a token's signature was logged");
    }
}
