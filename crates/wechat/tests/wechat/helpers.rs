//! A canned WeChat: the test kit's HTTP server on 127.0.0.1:0 answering canned responses,
//! recording requests, and a client pointed at it.
use std::time::Duration;

use wechat::{WechatClient, WechatConfig};
use wxmp_testkit::http::TestServer;

pub use wxmp_testkit::http::{Request, Response as Reply};

pub struct Server {
    pub base: String,
    server: TestServer,
}

impl Server {
    pub fn requests(&self) -> Vec<Request> {
        self.server.requests()
    }

    pub fn client(&self) -> WechatClient {
        client_for(&self.base, Duration::from_secs(5))
    }
}

pub fn client_for(base: &str, timeout: Duration) -> WechatClient {
    WechatClient::new(WechatConfig {
        api_base: base.to_owned(),
        pay_base: base.to_owned(),
        connect_timeout: Duration::from_secs(1),
        request_timeout: timeout,
    })
    .unwrap()
}

/// Serves every request with `handler`.
pub async fn serve<F>(handler: F) -> Server
where
    F: Fn(&Request) -> Reply + Send + Sync + 'static,
{
    let server = TestServer::start_with(handler).await;
    Server {
        base: server.base(),
        server,
    }
}

/// Accepts connections and reads requests but never answers.
pub async fn serve_silence() -> String {
    TestServer::silent().await.base()
}
