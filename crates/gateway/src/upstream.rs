//! The three gRPC services behind the gateway: channels made once, clients cloned per call.
//!
//! Each upstream's health is watched in the background ([`Upstreams::watch`]): while the last
//! check found an upstream not serving, calls to it fail at once with DEPENDENCY_UNAVAILABLE
//! (envelope 213) instead of each waiting for a connect timeout or the call's deadline, and
//! the other upstreams' routes are unaffected.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use service_kit::{
    ErrorReason, Shutdown,
    grpc::{AttachToken, GrpcTls, REQUEST_ID, channel_tls},
};
use tonic::{
    Request, Status,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use wxmp_proto::{
    auth::v1::auth_service_client::AuthServiceClient,
    pay::v1::pay_service_client::PayServiceClient,
    user::v1::user_service_client::UserServiceClient,
};

use crate::{Config, request_id::RequestId};

/// What the API clients call through: the upstream's health gate, then the internal token.
type Svc = InterceptedService<Channel, Gate>;
/// What the health checks call through: never gated, so a down upstream is seen coming back.
type HealthSvc = InterceptedService<Channel, AttachToken>;

/// The upstreams, in the order of [`Upstreams::readiness`].
const NAMES: [&str; 3] = ["auth", "user", "pay"];

/// Consecutive failed checks after which an upstream counts as down: a check or two that time
/// out on a saturated machine (a live upstream, slow to answer) must not turn a route away.
const DOWN_AFTER: u32 = 3;

/// Consecutive failed health checks of each upstream (0 until first checked: calls go through).
#[derive(Debug, Default)]
struct HealthBoard([AtomicU32; 3]);

impl HealthBoard {
    fn set(&self, index: usize, serving: bool) {
        let name = NAMES[index];
        if serving {
            if self.0[index].swap(0, Ordering::Relaxed) >= DOWN_AFTER {
                tracing::info!(upstream = name, "upstream serving again");
            }
            metrics::gauge!("wxmp_upstream_up", "upstream" => name).set(1.0);
        } else if self.0[index].fetch_add(1, Ordering::Relaxed) + 1 == DOWN_AFTER {
            tracing::warn!(upstream = name, "upstream down: its routes fail fast (213)");
            metrics::gauge!("wxmp_upstream_up", "upstream" => name).set(0.0);
        }
    }

    fn is_down(&self, index: usize) -> bool {
        self.0[index].load(Ordering::Relaxed) >= DOWN_AFTER
    }
}

/// Client-side interceptor of the API calls: refuses at once while the upstream is known to
/// be down, else attaches the internal token.
#[derive(Clone, Debug)]
pub struct Gate {
    index: usize,
    board: Arc<HealthBoard>,
    token: AttachToken,
}

impl Interceptor for Gate {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if self.board.is_down(self.index) {
            return Err(service_kit::reason::status(
                ErrorReason::DependencyUnavailable,
                format!("{}-service is down", NAMES[self.index]),
            ));
        }
        self.token.call(request)
    }
}

/// How long a readiness probe waits for each upstream's health answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// Clients of auth-, user- and pay-service. Cheap to clone: every clone shares the channels.
#[derive(Clone, Debug)]
pub struct Upstreams {
    auth: AuthServiceClient<Svc>,
    user: UserServiceClient<Svc>,
    pay: PayServiceClient<Svc>,
    health: [(&'static str, HealthClient<HealthSvc>); 3],
    board: Arc<HealthBoard>,
    rpc_timeout: Duration,
    recipe: Arc<Recipe>,
}

/// What the API channels are made from, kept to make more of them ([`Upstreams::for_this_thread`]).
#[derive(Debug)]
struct Recipe {
    urls: [String; 3],
    connect_timeout: Duration,
    rpc_timeout: Duration,
    tls: Option<GrpcTls>,
    token: AttachToken,
}

impl Recipe {
    fn channel(&self, index: usize) -> Result<Channel, crate::Error> {
        let url = &self.urls[index];
        channel_tls(
            url,
            self.connect_timeout,
            self.rpc_timeout,
            self.tls.as_ref(),
        )
        .map_err(|source| crate::Error::Upstream {
            name: NAMES[index],
            url: url.clone(),
            source,
        })
    }

    fn gated(&self, index: usize, channel: Channel, board: &Arc<HealthBoard>) -> Svc {
        let gate = Gate {
            index,
            board: board.clone(),
            token: self.token.clone(),
        };
        InterceptedService::new(channel, gate)
    }
}

impl Upstreams {
    /// Creates the (lazily connecting) channels. Fails only on a malformed URL. Must run inside
    /// a tokio runtime, which keeps driving the channels for as long as it lives.
    pub fn new(config: &Config) -> Result<Self, crate::Error> {
        let rpc_timeout = config.rpc_timeout();
        let recipe = Arc::new(Recipe {
            urls: [
                config.auth_url.clone(),
                config.user_url.clone(),
                config.pay_url.clone(),
            ],
            // A refused or silent connect must fail well inside the call's deadline.
            connect_timeout: rpc_timeout.min(Duration::from_secs(2)),
            rpc_timeout,
            tls: config.internal.grpc_tls()?,
            token: AttachToken::new(config.internal.internal_token.as_ref()),
        });
        let board = Arc::new(HealthBoard::default());
        let channels = [recipe.channel(0)?, recipe.channel(1)?, recipe.channel(2)?];
        let health = |index: usize| {
            (
                NAMES[index],
                HealthClient::new(InterceptedService::new(
                    channels[index].clone(),
                    recipe.token.clone(),
                )),
            )
        };
        Ok(Self {
            health: [health(0), health(1), health(2)],
            auth: AuthServiceClient::new(recipe.gated(0, channels[0].clone(), &board)),
            user: UserServiceClient::new(recipe.gated(1, channels[1].clone(), &board)),
            pay: PayServiceClient::new(recipe.gated(2, channels[2].clone(), &board)),
            board,
            rpc_timeout,
            recipe,
        })
    }

    /// The same upstreams on API channels of their own, driven by the runtime this is called
    /// on; health checks and the fail-fast gate stay shared. Each actix worker is a thread
    /// with its own single-threaded runtime: with its own channels a call's connection task
    /// runs on the handler's thread, instead of every call hopping to the main runtime's
    /// threads (the channel's buffer task and its HTTP/2 connection) and back. It also makes
    /// one HTTP/2 connection per worker and upstream instead of one per upstream.
    pub fn for_this_thread(&self) -> Result<Self, crate::Error> {
        let recipe = &self.recipe;
        Ok(Self {
            auth: AuthServiceClient::new(recipe.gated(0, recipe.channel(0)?, &self.board)),
            user: UserServiceClient::new(recipe.gated(1, recipe.channel(1)?, &self.board)),
            pay: PayServiceClient::new(recipe.gated(2, recipe.channel(2)?, &self.board)),
            ..self.clone()
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

    /// Checks every upstream every `interval` until `shutdown`, so the calls of a down one
    /// fail fast. Spawned by [`crate::serve`]; without it (say under `init_service`) every
    /// call is attempted.
    pub fn watch(&self, interval: Duration, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
        let upstreams = self.clone();
        tokio::spawn(async move {
            let request_id = RequestId::from_incoming(Some(b"upstream-watch"));
            loop {
                upstreams.readiness(&request_id).await;
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        })
    }

    /// Asks each upstream's standard health service, concurrently, with a short deadline, and
    /// records what it found for the fail-fast gate. Answers (name, Ok(()) when SERVING or
    /// Err(why)), in the order auth, user, pay.
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
                        Ok(Err(status)) => Err(format!(
                            "unreachable ({:?}: {})",
                            status.code(),
                            status.message()
                        )),
                        Ok(Ok(response)) => match response.into_inner().status() {
                            ServingStatus::Serving => Ok(()),
                            other => Err(format!("not serving ({})", other.as_str_name())),
                        },
                    };
                (*name, outcome)
            }
        });
        let checked = futures::future::join_all(checks).await;
        for (index, (_, outcome)) in checked.iter().enumerate() {
            // The fail-fast gate is for an upstream that cannot be reached (its calls would
            // hang until the deadline). One that answers NOT_SERVING is up: a replica draining
            // in a rolling restart (the balancer moves calls to the others) or a service whose
            // own dependency is down (its calls fail fast by themselves).
            let reachable = match outcome {
                Ok(()) => true,
                Err(why) => why.starts_with("not serving"),
            };
            self.board.set(index, reachable);
        }
        checked
    }
}
