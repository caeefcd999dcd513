//! Headless Chromium for the browser tests (Debian's chromium + chromedriver, over WebDriver):
//! start one, sign in to the dashboard, wait for an element.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use fantoccini::{Client, ClientBuilder, Locator, elements::Element};
use serde_json::json;

use super::eventually;

pub struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub async fn browser() -> (Driver, Client) {
    let port = free_port();
    let driver = Driver(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (make test installs Debian's chromium-driver)"),
    );
    let caps = json!({"goog:chromeOptions": {
        "binary": "/usr/bin/chromium",
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,860"],
    }});
    let caps = caps.as_object().cloned().expect("caps");
    let client = eventually("chromedriver", Duration::from_secs(30), || {
        let caps = caps.clone();
        async move {
            // Plain HTTP to the local chromedriver: no TLS stack needed.
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps)
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
                .ok()
        }
    })
    .await;
    (driver, client)
}

pub async fn sign_in(c: &Client, token: &str) {
    let field = wait_for(
        c,
        Locator::Css("#login:not([hidden]) #token"),
        "the token form",
    )
    .await;
    field.send_keys(token).await.expect("type the token");
    c.find(Locator::Css("#login button"))
        .await
        .expect("sign-in button")
        .click()
        .await
        .expect("sign in");
}

/// The element `loc` finds within 20 seconds; if none appears, the panic says what the page
/// showed instead.
pub async fn wait_for(c: &Client, loc: Locator<'_>, what: &str) -> Element {
    match c
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(loc)
        .await
    {
        Ok(e) => e,
        Err(e) => {
            let shown = match c.find(Locator::Css("body")).await {
                Ok(body) => body.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            panic!("{what}: {e}; the page shows:\n{shown}")
        }
    }
}
