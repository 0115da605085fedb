//! The analyst console in a real browser: headless Chromium driven through chromedriver's
//! WebDriver protocol (plain JSON over HTTP), against a gateway seeded by `seed demo`.
//!
//! Needs `chromium` and `chromedriver` (Debian's `chromium` and `chromium-driver`, which
//! `.ci/run` installs); like PostgreSQL and NATS, their absence fails the test. With
//! `GATEWAY_CONSOLE_SCREENSHOTS=<folder>` it saves a screenshot of each page there (the
//! README's come from `docs/console/`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestDb, eventually, json_of, quick, spawn_app_on};

/// A chromedriver process, stopped when dropped.
struct Driver {
    process: Child,
    url: String,
    client: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn binary(names: &[&str]) -> PathBuf {
    for name in names {
        for dir in ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"] {
            let path = PathBuf::from(dir).join(name);
            if path.exists() {
                return path;
            }
        }
    }
    panic!(
        "{} not found: install Debian's chromium and chromium-driver (.ci/run does)",
        names.join(" or ")
    );
}

impl Driver {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = Command::new(binary(&["chromedriver"]))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Self {
            process,
            url: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        };
        eventually(Duration::from_secs(20), || async {
            let status = driver
                .client
                .get(format!("{}/status", driver.url))
                .send()
                .await
                .ok()?;
            status.status().is_success().then_some(())
        })
        .await;
        driver
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {body}");
        body["value"].clone()
    }

    async fn session(&self) -> Browser<'_> {
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary(&["chromium", "chromium-browser"]),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let created = self
            .call(Method::POST, "/session", Some(capabilities))
            .await;
        Browser {
            driver: self,
            id: created["sessionId"].as_str().unwrap().to_string(),
        }
    }
}

/// One browser session.
struct Browser<'a> {
    driver: &'a Driver,
    id: String,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser<'_> {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        self.driver
            .call(method, &format!("/session/{}{path}", self.id), body)
            .await
    }

    async fn go(&self, url: &str) {
        self.call(Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// Runs `script` (a function body) in the page and returns its value.
    async fn run(&self, script: &str) -> Value {
        self.call(
            Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Waits until `script` returns something truthy, and returns it.
    async fn until(&self, what: &str, script: &str) -> Value {
        for _ in 0..200 {
            let value = self.run(script).await;
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let page = self.run("return document.body.innerText").await;
        panic!("waited 20 s for {what}; the page shows:\n{page}");
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .call(
                Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found[ELEMENT].as_str().unwrap().to_string()
    }

    async fn click(&self, css: &str) {
        let element = self.element(css).await;
        self.call(
            Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        self.call(
            Method::POST,
            &format!("/element/{element}/clear"),
            Some(json!({})),
        )
        .await;
        self.call(
            Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// The browser console's errors since the last call.
    async fn console_errors(&self) -> Vec<Value> {
        let logs = self
            .call(Method::POST, "/se/log", Some(json!({"type": "browser"})))
            .await;
        logs.as_array()
            .unwrap()
            .iter()
            .filter(|entry| entry["level"] == "SEVERE")
            .cloned()
            .collect()
    }

    async fn screenshot(&self, name: &str) {
        let Ok(folder) = std::env::var("GATEWAY_CONSOLE_SCREENSHOTS") else {
            return;
        };
        self.run("window.scrollTo(0, 0); return true").await;
        let png = self.call(Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(PathBuf::from(folder).join(format!("{name}.png")), bytes).unwrap();
    }

    async fn close(self) {
        self.driver
            .call(Method::DELETE, &format!("/session/{}", self.id), None)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_demo_in_a_real_browser() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut settings = db.settings();
    quick(&mut settings);
    let summary = cli::demo::demo(settings, "demo", "Demo Corporation")
        .await
        .expect("the demo seeds");
    let keys = summary["apiKeys"].as_array().unwrap();
    let admin = keys[0]["key"].as_str().unwrap().to_string();
    let analyst = keys[2]["key"].as_str().unwrap().to_string();
    let app = spawn_app_on(db.share(), |_| {}).await;
    let today = chrono::Utc::now().date_naive();
    let rollup = eventually(Duration::from_secs(15), || async {
        let body = json_of(
            app.with_key(
                Method::GET,
                &format!("/v1/usage/rollup?from={today}&to={today}"),
                &analyst,
            )
            .send()
            .await
            .ok()?,
        )
        .await;
        (body["totals"]["messages"] == 8).then_some(body)
    })
    .await;
    let cost = rollup["totals"]["costMicros"].as_i64().unwrap();
    assert!(cost > 0);

    let driver = Driver::start().await;
    let browser = driver.session().await;
    browser.go(&app.url("/console")).await;
    browser
        .until(
            "the sign-in form",
            "return document.getElementById('key') !== null",
        )
        .await;
    browser.screenshot("sign-in").await;

    // A wrong key: the error with its code and request id, and still signed out.
    browser.type_into("#key", "gw_key_wrong_wrong").await;
    browser.click("#sign-in-form button").await;
    let error = browser
        .until(
            "the error",
            "const e = document.getElementById('error'); return !e.hidden && e.innerText",
        )
        .await;
    let error = error.as_str().unwrap();
    assert!(
        error.contains("UNAUTHORIZED") && error.contains("req_"),
        "{error}"
    );

    // Usage, in UTC over today: the chart's total is the rollup's, to the micro-dollar.
    browser.type_into("#key", &analyst).await;
    browser.click("#sign-in-form button").await;
    browser
        .until(
            "the usage page",
            "return !document.getElementById('page-usage').hidden",
        )
        .await;
    browser
        .run(&format!(
            "document.getElementById('usage-from').value = '{today}';
             document.getElementById('usage-to').value = '{today}';
             document.getElementById('usage-tz').value = 'UTC';
             return true;"
        ))
        .await;
    browser.click("#usage-form button[type=submit]").await;
    let shown = browser
        .until(
            "the total cost",
            "const e = document.getElementById('usage-total-cost');
             return e && document.getElementById('busy').hidden && e.dataset.micros",
        )
        .await;
    assert_eq!(shown.as_str().unwrap().parse::<i64>().unwrap(), cost);
    let bars = browser
        .run("return document.querySelectorAll('#usage-chart svg rect').length")
        .await;
    assert!(bars.as_u64().unwrap() >= 1);
    let messages = browser
        .run("return document.getElementById('usage-total-messages').innerText")
        .await;
    assert_eq!(messages, "8");
    // The CSV download is what the page shows: its amounts add up to the total.
    let csv = browser.run("return usageCsv()").await;
    let csv = csv.as_str().unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("windowStart,timeZone,group,costUsd"));
    let micros: i64 = lines
        .map(|line| {
            let amount = line.rsplit(',').next().unwrap();
            let (dollars, fraction) = amount.split_once('.').unwrap();
            dollars.parse::<i64>().unwrap() * 1_000_000 + fraction.parse::<i64>().unwrap()
        })
        .sum();
    assert_eq!(micros, cost, "{csv}");
    browser.screenshot("usage").await;

    // Budgets: the agent's is spent.
    browser.go(&app.url("/console#/budgets")).await;
    let budgets = browser
        .until(
            "the budgets",
            "const t = document.querySelector('#budgets table'); return t && t.innerText",
        )
        .await;
    assert!(budgets.as_str().unwrap().contains("exceeded"), "{budgets}");
    browser.screenshot("budgets").await;

    // Sessions: four, and a transcript with each reply's provider, attempts and cost.
    browser.go(&app.url("/console#/sessions")).await;
    let rows = browser
        .until(
            "the sessions",
            "return document.querySelectorAll('#sessions tbody tr').length",
        )
        .await;
    assert_eq!(rows, 4);
    browser.click("#sessions tbody tr").await;
    let transcript = browser
        .until(
            "a transcript",
            "const t = document.getElementById('transcript'); return t.querySelector('.assistant') && t.innerText",
        )
        .await;
    let transcript = transcript.as_str().unwrap();
    assert!(
        transcript.contains("vendor") && transcript.contains("attempt") && transcript.contains('$'),
        "{transcript}"
    );
    browser.screenshot("sessions").await;

    // Records: the customers, filtered with `where`, and a record's history.
    browser.go(&app.url("/console#/records")).await;
    browser
        .until(
            "the records",
            "return document.querySelectorAll('#records tbody tr').length === 3",
        )
        .await;
    browser
        .type_into("#records-where", r#"{"country": "DE"}"#)
        .await;
    browser.click("#records-form button").await;
    let filtered = browser
        .until(
            "the filtered records",
            "const rows = document.querySelectorAll('#records tbody tr');
             return rows.length === 1 && rows[0].innerText",
        )
        .await;
    assert!(filtered.as_str().unwrap().contains("customer_003"));
    // From the keyboard: Enter on the row opens its history.
    let row = browser.element("#records tbody tr").await;
    browser
        .call(
            Method::POST,
            &format!("/element/{row}/value"),
            Some(json!({"text": "\u{E007}"})),
        )
        .await;
    browser
        .until(
            "the history",
            "return document.getElementById('record-history').innerText.includes('EntityCreated')",
        )
        .await;
    browser.screenshot("records").await;

    // Live: a command's event arrives.
    browser.go(&app.url("/console#/live")).await;
    browser
        .until(
            "the live subscription",
            "return document.getElementById('live-state').innerText === 'Live'",
        )
        .await;
    let created = app
        .with_key(Method::POST, "/v1/customers", &admin)
        .json(&json!({"customerId": "customer_004", "name": "Alan Turing", "country": "GB"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let event = browser
        .until(
            "the live event",
            "const e = document.querySelector('#live-events li.event'); return e && e.innerText",
        )
        .await;
    assert!(
        event.as_str().unwrap().contains("EntityCreated")
            && event.as_str().unwrap().contains("customers/customer_004"),
        "{event}"
    );
    browser.screenshot("live").await;

    // On a phone's screen.
    browser
        .call(
            Method::POST,
            "/window/rect",
            Some(json!({"width": 390, "height": 844})),
        )
        .await;
    browser.go(&app.url("/console#/sessions")).await;
    browser
        .until(
            "the sessions on a phone",
            "return document.querySelectorAll('#sessions tbody tr').length === 4",
        )
        .await;
    browser.screenshot("phone-sessions").await;

    // Sign out: the key is gone from the tab.
    browser.click("#sign-out").await;
    browser
        .until(
            "the sign-in form again",
            "return !document.getElementById('sign-in').hidden",
        )
        .await;
    let kept = browser
        .run("return sessionStorage.getItem('gateway.console.key')")
        .await;
    assert_eq!(kept, Value::Null);

    let errors = browser.console_errors().await;
    // The wrong key's 401 is logged by the browser as a failed resource load; nothing else.
    let unexpected: Vec<&Value> = errors
        .iter()
        .filter(|e| {
            !e["message"]
                .as_str()
                .unwrap_or_default()
                .contains("status of 401")
        })
        .collect();
    assert!(unexpected.is_empty(), "JavaScript errors: {unexpected:?}");
    browser.close().await;
}
