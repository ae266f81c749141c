//! The three gRPC services behind the gateway: channels made once, clients cloned per call.

use std::time::Duration;

use service_kit::grpc::{AttachToken, REQUEST_ID, channel};
use tonic::{service::interceptor::InterceptedService, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use wxmp_proto::{
    auth::v1::auth_service_client::AuthServiceClient,
    pay::v1::pay_service_client::PayServiceClient,
    user::v1::user_service_client::UserServiceClient,
};

use crate::{Config, request_id::RequestId};

type Svc = InterceptedService<Channel, AttachToken>;

/// How long a readiness probe waits for each upstream's health answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// Clients of auth-, user- and pay-service. Cheap to clone: every clone shares the channels.
#[derive(Clone, Debug)]
pub struct Upstreams {
    auth: AuthServiceClient<Svc>,
    user: UserServiceClient<Svc>,
    pay: PayServiceClient<Svc>,
    health: [(&'static str, HealthClient<Svc>); 3],
    rpc_timeout: Duration,
}

impl Upstreams {
    /// Creates the (lazily connecting) channels. Fails only on a malformed URL. Must run inside
    /// a tokio runtime, which keeps driving the channels for as long as it lives.
    pub fn new(config: &Config) -> Result<Self, crate::Error> {
        let rpc_timeout = config.rpc_timeout();
        // A refused or silent connect must fail well inside the call's deadline.
        let connect_timeout = rpc_timeout.min(Duration::from_secs(2));
        let token = AttachToken::new(config.internal.internal_token.as_ref());
        let make = |name: &'static str, url: &str| -> Result<Svc, crate::Error> {
            let ch = channel(url, connect_timeout, rpc_timeout).map_err(|source| {
                crate::Error::Upstream {
                    name,
                    url: url.to_owned(),
                    source,
                }
            })?;
            Ok(InterceptedService::new(ch, token.clone()))
        };
        let auth = make("auth", &config.auth_url)?;
        let user = make("user", &config.user_url)?;
        let pay = make("pay", &config.pay_url)?;
        Ok(Self {
            health: [
                ("auth", HealthClient::new(auth.clone())),
                ("user", HealthClient::new(user.clone())),
                ("pay", HealthClient::new(pay.clone())),
            ],
            auth: AuthServiceClient::new(auth),
            user: UserServiceClient::new(user),
            pay: PayServiceClient::new(pay),
            rpc_timeout,
        })
    }

    pub fn auth(&self) -> AuthServiceClient<Svc> {
        self.auth.clone()
    }

    pub fn user(&self) -> UserServiceClient<Svc> {
        self.user.clone()
    }

    pub fn pay(&self) -> PayServiceClient<Svc> {
        self.pay.clone()
    }

    /// A request carrying the caller's request id and the gateway's deadline (sent as
    /// `grpc-timeout`, so the service knows when to give up too).
    pub fn request<T>(&self, request_id: &RequestId, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(value) = request_id.as_str().parse() {
            request.metadata_mut().insert(REQUEST_ID, value);
        }
        request.set_timeout(self.rpc_timeout);
        request
    }

    /// Asks each upstream's standard health service, concurrently, with a short deadline.
    /// Answers (name, Ok(()) when SERVING or Err(why)).
    pub async fn readiness(
        &self,
        request_id: &RequestId,
    ) -> Vec<(&'static str, Result<(), String>)> {
        let checks = self.health.iter().map(|(name, client)| {
            let mut client = client.clone();
            let mut request = tonic::Request::new(HealthCheckRequest {
                service: String::new(),
            });
            if let Ok(value) = request_id.as_str().parse() {
                request.metadata_mut().insert(REQUEST_ID, value);
            }
            request.set_timeout(HEALTH_TIMEOUT);
            async move {
                let outcome =
                    match tokio::time::timeout(HEALTH_TIMEOUT, client.check(request)).await {
                        Err(_) => Err("timed out".to_owned()),
                        Ok(Err(status)) => Err(format!("unreachable ({:?})", status.code())),
                        Ok(Ok(response)) => match response.into_inner().status() {
                            ServingStatus::Serving => Ok(()),
                            other => Err(format!("not serving ({})", other.as_str_name())),
                        },
                    };
                (*name, outcome)
            }
        });
        futures::future::join_all(checks).await
    }
}
