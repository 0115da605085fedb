//! Tokens of an identity provider: a local JWKS server with keys generated here (RSA by
//! `openssl`, P-256 and Ed25519 by ring), RS256, ES256 and EdDSA tokens, key rotation and
//! retirement, the issuer's discovery document, claims mapping for Keycloak- and Auth0-shaped
//! tokens, and every way a token must be refused.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, error_code, spawn_app_with};

/// A signing key of the provider and its public JWK.
struct Signer {
    kid: String,
    algorithm: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

fn rsa(kid: &str) -> Signer {
    let dir = std::env::temp_dir().join(format!("gw-rsa-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("key.pem");
    let generated = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&path)
        .output()
        .expect("openssl generates an RSA key");
    assert!(generated.status.success(), "{generated:?}");
    let modulus = std::process::Command::new("openssl")
        .args(["rsa", "-noout", "-modulus", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    let hex = String::from_utf8(modulus.stdout).unwrap();
    let hex = hex.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let pem = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    Signer {
        kid: kid.into(),
        algorithm: Algorithm::RS256,
        key: EncodingKey::from_rsa_pem(&pem).unwrap(),
        jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                    "n": URL_SAFE_NO_PAD.encode(n), "e": "AQAB"}),
    }
}

fn p256(kid: &str) -> Signer {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    Signer {
        kid: kid.into(),
        algorithm: Algorithm::ES256,
        key: EncodingKey::from_ec_der(pkcs8.as_ref()),
        // No `alg`: the key type says ES256.
        jwk: json!({"kty": "EC", "kid": kid, "crv": "P-256",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&point[33..65])}),
    }
}

fn ed25519(kid: &str) -> Signer {
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    Signer {
        kid: kid.into(),
        algorithm: Algorithm::EdDSA,
        key: EncodingKey::from_ed_der(pkcs8.as_ref()),
        jwk: json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "alg": "EdDSA",
                    "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())}),
    }
}

/// The provider: its JWKS and discovery document, served on a local port.
struct Provider {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
}

impl Provider {
    async fn start() -> Self {
        let keys: Arc<Mutex<Vec<Value>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let issuer = url.clone();
        let router =
            axum::Router::new()
                .route(
                    "/.well-known/openid-configuration",
                    get(move || {
                        let issuer = issuer.clone();
                        async move {
                            Json(json!({"issuer": issuer, "jwks_uri": format!("{issuer}/keys")}))
                        }
                    }),
                )
                .route(
                    "/keys",
                    get(|State(keys): State<Arc<Mutex<Vec<Value>>>>| async move {
                        Json(json!({"keys": keys.lock().unwrap().clone()}))
                    }),
                )
                .with_state(keys.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { url, keys }
    }

    fn publish(&self, signer: &Signer) {
        self.keys.lock().unwrap().push(signer.jwk.clone());
    }

    fn retire(&self, kid: &str) {
        self.keys.lock().unwrap().retain(|k| k["kid"] != kid);
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A token signed by `signer` with `claims` (and the provider's issuer and the gateway's
/// audience unless `claims` says otherwise).
fn token(signer: &Signer, provider: &Provider, claims: Value) -> String {
    let mut body = json!({"iss": provider.url, "aud": "gateway", "exp": now() + 300,
                          "sub": "billing", "tenant": "acme", "roles": ["reader"]});
    for (name, value) in claims.as_object().unwrap() {
        if value.is_null() {
            body.as_object_mut().unwrap().remove(name);
        } else {
            body[name] = value.clone();
        }
    }
    let mut header = Header::new(signer.algorithm);
    header.kid = Some(signer.kid.clone());
    jsonwebtoken::encode(&header, &body, &signer.key).unwrap()
}

async fn me(app: &TestApp, token: &str) -> (u16, Value) {
    let response = app
        .client
        .get(app.url("/v1/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn refused(app: &TestApp, token: &str, why: &str) {
    let response = app
        .client
        .get(app.url("/v1/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(response).await,
        (401, "UNAUTHORIZED".into()),
        "{why}"
    );
}

async fn provider_tokens_are_verified_against_its_keys(backend: Backend) {
    let provider = Provider::start().await;
    let (first, ec, ed) = (rsa("rsa-1"), p256("ec-1"), ed25519("ed-1"));
    for signer in [&first, &ec, &ed] {
        provider.publish(signer);
    }
    // Only the issuer is configured: its discovery document names the keys.
    let issuer = provider.url.clone();
    let app = spawn_app_with(backend, move |s| {
        s.jwt_issuer = Some(issuer);
        s.jwt_audience = Some("gateway".into());
        s.jwt_jwks_url = None;
        s.jwks_min_refresh_ms = 0;
        s.jwks_refresh_ms = 1_000;
    })
    .await;

    for signer in [&first, &ec, &ed] {
        let (status, body) = me(&app, &token(signer, &provider, json!({}))).await;
        assert_eq!(status, 200, "{:?}: {body}", signer.algorithm);
        assert_eq!(body["tenant"]["id"], "acme");
        assert_eq!(body["roles"], json!(["reader"]));
    }
    // The shared secret still signs HS256 tokens, side by side.
    let shared = api::auth::jwt::sign(
        &api::auth::jwt::Claims {
            service: Some("legacy".into()),
            sub: None,
            roles: vec!["reader".into()],
            tenant: Some("acme".into()),
            exp: now() + 300,
            nbf: None,
            iss: Some(provider.url.clone()),
            aud: json!("gateway"),
        },
        crate::helpers::JWT_SECRET.as_bytes(),
    );
    assert_eq!(me(&app, &shared).await.0, 200);

    // Refused: wrong audience or issuer, expired, not yet valid, no exp, unknown kid.
    let cases = [
        (
            token(&first, &provider, json!({"aud": "someone-else"})),
            "wrong audience",
        ),
        (
            token(&first, &provider, json!({"iss": "https://evil.example"})),
            "wrong issuer",
        ),
        (
            token(&first, &provider, json!({"exp": now() - 120})),
            "expired",
        ),
        (
            token(&first, &provider, json!({"nbf": now() + 600})),
            "not yet valid",
        ),
        (token(&first, &provider, json!({"exp": null})), "no exp"),
    ];
    for (token, why) in &cases {
        refused(&app, token, why).await;
    }
    let unknown = Signer {
        kid: "not-published".into(),
        ..rsa("x")
    };
    refused(&app, &token(&unknown, &provider, json!({})), "unknown kid").await;
    // `alg: none`, unsigned.
    let claims = URL_SAFE_NO_PAD.encode(
        json!({"iss": provider.url, "aud": "gateway", "exp": now() + 300, "sub": "x",
               "tenant": "acme", "roles": ["admin"]})
        .to_string(),
    );
    let none = format!(
        "{}.{claims}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"rsa-1"}"#)
    );
    refused(&app, &none, "alg none").await;
    // HS256 signed with the RSA key's public JWK as the secret, naming its kid: the public
    // key is never an HMAC secret.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let confused = jsonwebtoken::encode(
        &header,
        &json!({"iss": provider.url, "aud": "gateway", "exp": now() + 300, "sub": "x",
                "tenant": "acme", "roles": ["admin"]}),
        &EncodingKey::from_secret(first.jwk.to_string().as_bytes()),
    )
    .unwrap();
    refused(&app, &confused, "HS256 with the public key").await;
    // A token claiming another algorithm than its key's.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("rsa-1".into());
    let mismatched = jsonwebtoken::encode(
        &header,
        &json!({"exp": now() + 300, "sub": "x", "aud": "gateway", "iss": provider.url}),
        &ec.key,
    )
    .unwrap();
    refused(&app, &mismatched, "ES256 token on an RSA key").await;

    // Rotation: a new key works at once; the retired one stops at the next refresh.
    let second = rsa("rsa-2");
    provider.publish(&second);
    assert_eq!(
        me(&app, &token(&second, &provider, json!({}))).await.0,
        200,
        "the rotated-in key"
    );
    let old = token(&first, &provider, json!({}));
    assert_eq!(me(&app, &old).await.0, 200);
    provider.retire("rsa-1");
    crate::helpers::eventually(Duration::from_secs(10), || async {
        (me(&app, &old).await.0 == 401).then_some(())
    })
    .await;
    assert_eq!(me(&app, &token(&second, &provider, json!({}))).await.0, 200);
}
crate::both_backends!(
    provider_tokens_are_verified_against_its_keys,
    provider_tokens_are_verified_against_its_keys
);

async fn claims_are_read_where_each_provider_puts_them(backend: Backend) {
    let provider = Provider::start().await;
    let signer = rsa("kc");
    provider.publish(&signer);
    let jwks = format!("{}/keys", provider.url);
    let issuer = provider.url.clone();
    // Keycloak: roles under realm_access, the tenant in a custom claim, client credentials
    // naming the client in `azp`. Auth0: roles in `scope` and a namespaced tenant claim.
    let app = spawn_app_with(backend, move |s| {
        s.jwt_jwks_url = Some(jwks);
        s.jwt_issuer = Some(issuer);
        s.jwt_audience = Some("gateway".into());
        s.jwt_tenant_claim = "https://gateway.example/tenant".into();
        s.jwt_roles_claim = "realm_access.roles,scope".into();
        s.jwt_subject_claim = "sub,azp".into();
    })
    .await;

    let keycloak = token(
        &signer,
        &provider,
        json!({"sub": null, "azp": "billing-service", "roles": null, "tenant": null,
               "realm_access": {"roles": ["writer", "offline_access"]},
               "https://gateway.example/tenant": "acme"}),
    );
    let (status, body) = me(&app, &keycloak).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["roles"], json!(["writer"]));
    assert_eq!(body["principal"]["id"], "jwt:billing-service");
    let auth0 = token(
        &signer,
        &provider,
        json!({"sub": "abc@clients", "roles": null, "tenant": null,
               "scope": "read:things reader", "https://gateway.example/tenant": "acme"}),
    );
    let (status, body) = me(&app, &auth0).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["roles"], json!(["reader"]));
    assert_eq!(body["principal"]["id"], "jwt:abc@clients");
    // Roles decide as for every credential: a reader cannot write.
    let write = app
        .client
        .request(Method::POST, app.url("/v1/users"))
        .bearer_auth(&auth0)
        .json(&json!({"id": "u1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(write).await, (403, "FORBIDDEN".into()));
    // No subject in any configured claim: refused.
    refused(
        &app,
        &token(&signer, &provider, json!({"sub": null})),
        "no subject",
    )
    .await;
}
crate::both_backends!(
    claims_are_read_where_each_provider_puts_them,
    claims_are_read_where_each_provider_puts_them
);
