//! Mutual TLS on internal gRPC: with `WXMP_GRPC_TLS_*` a server answers only clients that
//! present a certificate signed by the CA. Test certificates are made with the `openssl`
//! command at test time (a throwaway CA, a server and a client certificate, and a rogue CA
//! with its own client).

use std::{path::Path, process::Command, time::Duration};

use service_kit::{
    Shutdown,
    grpc::{DrainConfig, GrpcTls, GrpcTlsConfig, channel, channel_tls, serve_draining},
};
use tonic::service::Routes;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl on PATH");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA `name` (name.pem, name.key).
fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
}

/// A leaf `name` signed by `ca`, valid for localhost and 127.0.0.1, as server and client.
fn leaf(dir: &Path, ca: &str, name: &str) {
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ],
    );
}

fn tls(dir: &Path, name: &str, ca: &str) -> GrpcTls {
    GrpcTls::load(&GrpcTlsConfig {
        grpc_tls_cert: Some(dir.join(format!("{name}.pem"))),
        grpc_tls_key: Some(dir.join(format!("{name}.key"))),
        grpc_tls_ca: Some(dir.join(format!("{ca}.pem"))),
    })
    .unwrap()
    .expect("configured")
}

async fn health(channel: tonic::transport::Channel) -> Result<i32, tonic::Status> {
    let mut client = HealthClient::new(channel);
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        client.check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .expect("an answer or an error, not a hang")?;
    Ok(answer.into_inner().status)
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_signed_by_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ca(d, "ca");
    leaf(d, "ca", "server");
    leaf(d, "ca", "client");
    ca(d, "rogue-ca");
    leaf(d, "rogue-ca", "rogue");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = Shutdown::new();
    let server_tls = tls(d, "server", "ca");
    let server = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            serve_draining(
                listener,
                Routes::default(),
                &[],
                shutdown,
                || async { true },
                Some(&server_tls),
                DrainConfig::none(),
            )
            .await
        }
    });
    let url = format!("http://127.0.0.1:{port}");
    let timeout = Duration::from_secs(5);

    // A client with a certificate of the CA is served (the http:// URL is dialled over TLS).
    let good = channel_tls(&url, timeout, timeout, Some(&tls(d, "client", "ca"))).unwrap();
    assert_eq!(health(good).await.expect("served"), 1, "SERVING");
    let by_name = format!("http://localhost:{port}");
    let good = channel_tls(&by_name, timeout, timeout, Some(&tls(d, "client", "ca"))).unwrap();
    assert_eq!(health(good).await.expect("served by name"), 1);

    // A client signed by another CA is refused.
    let rogue = GrpcTls::load(&GrpcTlsConfig {
        grpc_tls_cert: Some(d.join("rogue.pem")),
        grpc_tls_key: Some(d.join("rogue.key")),
        grpc_tls_ca: Some(d.join("ca.pem")),
    })
    .unwrap()
    .unwrap();
    let refused = health(channel_tls(&url, timeout, timeout, Some(&rogue)).unwrap()).await;
    assert!(refused.is_err(), "a rogue client certificate: {refused:?}");

    // A plaintext client is refused.
    let refused = health(channel(&url, timeout, timeout).unwrap()).await;
    assert!(refused.is_err(), "plaintext: {refused:?}");

    // A client that trusts another CA does not talk to this server either.
    let wrong_trust = tls(d, "rogue", "rogue-ca");
    let refused = health(channel_tls(&url, timeout, timeout, Some(&wrong_trust)).unwrap()).await;
    assert!(
        refused.is_err(),
        "server not signed by the trusted CA: {refused:?}"
    );

    shutdown.trigger();
    server.await.unwrap().unwrap();
}

#[test]
fn tls_is_all_three_files_or_none() {
    assert!(GrpcTls::load(&GrpcTlsConfig::default()).unwrap().is_none());
    let missing = GrpcTls::load(&GrpcTlsConfig {
        grpc_tls_cert: Some("/nonexistent/cert.pem".into()),
        grpc_tls_key: Some("/nonexistent/key.pem".into()),
        grpc_tls_ca: Some("/nonexistent/ca.pem".into()),
    })
    .unwrap_err();
    assert!(
        missing.to_string().contains("WXMP_GRPC_TLS_CERT"),
        "{missing}"
    );
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        tls: GrpcTlsConfig,
    }
    assert!(Cli::try_parse_from(["x", "--grpc-tls-cert", "c.pem"]).is_err());
    let all = Cli::try_parse_from([
        "x",
        "--grpc-tls-cert",
        "c",
        "--grpc-tls-key",
        "k",
        "--grpc-tls-ca",
        "a",
    ])
    .unwrap();
    assert!(all.tls.grpc_tls_ca.is_some());
}
