//! TLS on the listener (`TLS_CERT`, `TLS_KEY`) and client certificates verified against
//! `TLS_CLIENT_CA`, with certificates made in the test by rcgen.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use reqwest::Method;

use crate::helpers::{Backend, spawn_app_with};

/// A certificate authority of the test.
struct Authority {
    certificate: Certificate,
    key: KeyPair,
}

impl Authority {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let certificate = params.self_signed(&key).unwrap();
        Self { certificate, key }
    }

    /// A certificate for `names`, for `purpose`, valid `from`..`until` (years).
    fn issue(
        &self,
        names: &[&str],
        purpose: ExtendedKeyUsagePurpose,
        (from, until): (i32, i32),
    ) -> String {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, &names[0]);
        params.extended_key_usages = vec![purpose];
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
        let certificate = params
            .signed_by(&key, &self.certificate, &self.key)
            .unwrap();
        format!("{}{}", certificate.pem(), key.serialize_pem())
    }
}

/// Writes `pem` to a file of its own; returns the path.
fn file(dir: &std::path::Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

fn client(ca: &Authority, identity: Option<&str>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(ca.certificate.pem().as_bytes()).unwrap(),
        )
        .tls_built_in_root_certs(false);
    if let Some(identity) = identity {
        builder = builder.identity(reqwest::Identity::from_pem(identity.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

async fn the_listener_speaks_tls_and_verifies_client_certificates(backend: Backend) {
    let dir = std::env::temp_dir().join(format!("gw-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = Authority::new("gateway test CA");
    let server = ca.issue(
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
        (2020, 2100),
    );
    let (cert, key) = server.split_at(server.find("-----BEGIN PRIVATE KEY").unwrap());
    let cert_path = file(&dir, "server.pem", cert);
    let key_path = file(&dir, "server.key", key);
    let clients = Authority::new("client CA");
    let client_ca = file(&dir, "clients.pem", &clients.certificate.pem());
    let app = spawn_app_with(backend, |s| {
        s.tls_cert = Some(cert_path);
        s.tls_key = Some(key_path);
        s.tls_client_ca = Some(client_ca);
    })
    .await;
    let https = app.address.replacen("http://", "https://", 1);
    let key = app.keys["acme"].clone();

    // No client certificate: TLS, and the API key authenticates as ever.
    let anonymous = client(&ca, None);
    let me = anonymous
        .request(Method::GET, format!("{https}/v1/me"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    // Plain HTTP to a TLS listener gets no answer.
    assert!(
        reqwest::Client::new()
            .get(format!("{}/health", app.address))
            .send()
            .await
            .is_err()
    );

    // A certificate of the client CA is accepted in the handshake.
    let good = clients.issue(
        &["billing.svc"],
        ExtendedKeyUsagePurpose::ClientAuth,
        (2020, 2100),
    );
    let health = client(&ca, Some(&good))
        .get(format!("{https}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // The certificate alone authenticates once an admin registers it as a key.
    let cert_client = client(&ca, Some(&good));
    let unregistered = cert_client
        .get(format!("{https}/v1/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        crate::helpers::error_code(unregistered).await,
        (401, "UNAUTHORIZED".into())
    );
    let registered = anonymous
        .post(format!("{https}/v1/api-keys"))
        .header("x-api-key", &key)
        .json(&serde_json::json!({"name": "billing", "roles": ["writer"],
                                  "certificateSubject": "billing.svc"}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);
    let registered: serde_json::Value = registered.json().await.unwrap();
    assert!(
        registered["apiKey"]["key"].is_null(),
        "no secret: {registered}"
    );
    let key_id = registered["apiKey"]["id"].as_str().unwrap().to_string();
    let me: serde_json::Value = cert_client
        .get(format!("{https}/v1/me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        me["principal"],
        serde_json::json!({"type": "certificate", "id": key_id})
    );
    assert_eq!(me["roles"], serde_json::json!(["writer"]));
    assert_eq!(me["tenant"]["id"], "acme");
    let listed: serde_json::Value = anonymous
        .get(format!("{https}/v1/api-keys/{key_id}"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["apiKey"]["certificateSubject"], "billing.svc");
    // Its roles decide, and its writes carry it as the actor.
    let created = cert_client
        .post(format!("{https}/v1/users"))
        .json(&serde_json::json!({"id": "from-cert"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    // Another certificate of the same CA is not that key.
    let other = clients.issue(
        &["other.svc"],
        ExtendedKeyUsagePurpose::ClientAuth,
        (2020, 2100),
    );
    let refused = client(&ca, Some(&other))
        .get(format!("{https}/v1/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    // Revoked: the next request that knows of the revocation is refused.
    let revoked = anonymous
        .delete(format!("{https}/v1/api-keys/{key_id}"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success());
    let position = revoked.headers()["x-event-position"]
        .to_str()
        .unwrap()
        .to_string();
    let after = cert_client
        .get(format!("{https}/v1/me"))
        .header("x-min-position", position)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);

    // Another CA's, or an expired one, is refused in the handshake.
    let stranger = Authority::new("someone else").issue(
        &["billing.svc"],
        ExtendedKeyUsagePurpose::ClientAuth,
        (2020, 2100),
    );
    let expired = clients.issue(
        &["billing.svc"],
        ExtendedKeyUsagePurpose::ClientAuth,
        (2020, 2021),
    );
    for (identity, why) in [(stranger, "another CA"), (expired, "expired")] {
        let refused = client(&ca, Some(&identity))
            .get(format!("{https}/health"))
            .send()
            .await;
        assert!(refused.is_err(), "{why}: {refused:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
crate::both_backends!(
    the_listener_speaks_tls_and_verifies_client_certificates,
    the_listener_speaks_tls_and_verifies_client_certificates
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_tls_configuration_is_refused_at_start() {
    let db = crate::helpers::TestDb::new(Backend::Sqlite).await;
    let mut settings = db.settings();
    settings.tls_cert = Some("/nonexistent/cert.pem".into());
    let error = cli::startup::Application::build(settings.clone())
        .await
        .err()
        .expect("refused");
    assert!(
        error.to_string().contains("TLS_CERT and TLS_KEY"),
        "{error}"
    );
    settings.tls_key = Some("/nonexistent/key.pem".into());
    let error = cli::startup::Application::build(settings)
        .await
        .err()
        .expect("refused");
    assert!(
        format!("{error:#}").contains("/nonexistent/cert.pem"),
        "{error:#}"
    );
}
