//! The command line, run in process against the test database as `gateway …` would be.

use std::time::Duration;

use clap::Parser;
use reqwest::Method;
use serde_json::Value;

use crate::both_backends;
use crate::helpers::{Backend, TestApp, eventually, spawn_app};

/// Runs `gateway <args>` on the app's database; its output as JSON, or its error.
async fn gateway(app: &TestApp, args: &[&str]) -> anyhow::Result<Value> {
    let cli = cli::Cli::try_parse_from(std::iter::once("gateway").chain(args.iter().copied()))?;
    let mut out = Vec::new();
    cli::run(cli, app.db.settings(), &mut out).await?;
    Ok(serde_json::from_slice(&out)?)
}

/// Waits until `key` gets `status` from the platform's tenant list.
async fn platform_answers(app: &TestApp, key: &str, status: u16) {
    eventually(Duration::from_secs(10), || async {
        let response = app
            .with_key(Method::GET, "/v1/tenants", key)
            .send()
            .await
            .ok()?;
        (response.status() == status).then_some(())
    })
    .await;
}

async fn platform_keys_rotate_and_revoke(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = gateway(
        &app,
        &[
            "keys",
            "create",
            "--tenant",
            "platform",
            "--roles",
            "superadmin",
        ],
    )
    .await
    .unwrap();
    let first_key = first["apiKey"]["key"].as_str().unwrap().to_string();
    let first_id = first["apiKey"]["id"].as_str().unwrap().to_string();
    platform_answers(&app, &first_key, 200).await;

    let rotated = gateway(&app, &["keys", "rotate-platform"]).await.unwrap();
    let new_key = rotated["apiKey"]["key"].as_str().unwrap().to_string();
    let new_id = rotated["apiKey"]["id"].as_str().unwrap().to_string();
    assert_eq!(rotated["revoked"], serde_json::json!([first_id]));
    platform_answers(&app, &new_key, 200).await;
    platform_answers(&app, &first_key, 401).await;

    let revoked = gateway(
        &app,
        &["keys", "revoke", "--tenant", "platform", "--id", &new_id],
    )
    .await
    .unwrap();
    assert_eq!(revoked["apiKey"]["revoked"], true);
    platform_answers(&app, &new_key, 401).await;

    // A key that does not exist is an error, and so is a malformed command line.
    let error = gateway(
        &app,
        &["keys", "revoke", "--tenant", "acme", "--id", "key_nope"],
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("no key 'key_nope'"), "{error}");
    assert!(
        gateway(&app, &["keys", "revoke", "--tenant", "acme"])
            .await
            .is_err()
    );
}
both_backends!(
    platform_keys_rotate_and_revoke,
    platform_keys_rotate_and_revoke
);
