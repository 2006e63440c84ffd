//! Mutual TLS and admin tokens over real gRPC on loopback, with certificates from
//! `rlhf_proto::certs` (the code behind `rlhf certs`). The served Admin service is a small
//! stand-in that answers with what the gate decided; the handshakes, certificate checks and
//! token checks are the real ones the roles use.

use std::path::Path;

use rlhf_proto::certs;
use rlhf_proto::security::{
    Access, AdminAuth, AdminTokens, BearerToken, Clients, Tls, endpoint, server,
};
use rlhf_proto::v1;
use rlhf_proto::v1::admin_client::AdminClient;
use tonic::{Request, Response, Status};

struct Gate(AdminAuth);

#[tonic::async_trait]
impl v1::admin_server::Admin for Gate {
    async fn status(
        &self,
        req: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        self.0.check(&req, Access::Viewer)?;
        Ok(Response::new(v1::StatusResponse {
            state: "running".into(),
            ..Default::default()
        }))
    }
    async fn stop(
        &self,
        req: Request<v1::StopRequest>,
    ) -> Result<Response<v1::StopResponse>, Status> {
        self.0.check(&req, Access::Operator)?;
        Ok(Response::new(v1::StopResponse::default()))
    }
    async fn pause(
        &self,
        req: Request<v1::PauseRequest>,
    ) -> Result<Response<v1::PauseResponse>, Status> {
        self.0.check(&req, Access::Operator)?;
        Ok(Response::new(v1::PauseResponse::default()))
    }
    async fn unpause(
        &self,
        req: Request<v1::UnpauseRequest>,
    ) -> Result<Response<v1::PauseResponse>, Status> {
        self.0.check(&req, Access::Operator)?;
        Ok(Response::new(v1::PauseResponse::default()))
    }
    async fn evict(
        &self,
        req: Request<v1::EvictRequest>,
    ) -> Result<Response<v1::EvictResponse>, Status> {
        self.0.check(&req, Access::Operator)?;
        Ok(Response::new(v1::EvictResponse::default()))
    }
    async fn set(&self, req: Request<v1::SetRequest>) -> Result<Response<v1::SetResponse>, Status> {
        self.0.check(&req, Access::Operator)?;
        Ok(Response::new(v1::SetResponse::default()))
    }
}

/// Serves the gate on a free loopback port; returns `host:port`.
async fn serve(tls: Option<&Tls>, clients: Clients, auth: AdminAuth) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let at = listener.local_addr().expect("addr").to_string();
    let router = server(tls, clients)
        .expect("server config")
        .add_service(v1::admin_server::AdminServer::new(Gate(auth)));
    tokio::spawn(
        router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    at
}

/// Calls Status at `at` (dialled as `host`:port) with `tls` and `token`; the gRPC code on
/// failure, with the message.
async fn status(
    host_port: &str,
    tls: Option<&Tls>,
    token: Option<&str>,
) -> Result<(), (tonic::Code, String)> {
    let channel = endpoint(host_port, tls)
        .expect("endpoint")
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| (tonic::Code::Unavailable, format!("{e:?}")))?;
    let mut c = AdminClient::with_interceptor(channel, BearerToken::new(token).expect("token"));
    c.status(v1::StatusRequest {})
        .await
        .map(|_| ())
        .map_err(|s| (s.code(), s.message().to_string()))
}

async fn stop(host_port: &str, tls: Option<&Tls>, token: Option<&str>) -> Option<tonic::Code> {
    let channel = endpoint(host_port, tls).expect("endpoint").connect_lazy();
    let mut c = AdminClient::with_interceptor(channel, BearerToken::new(token).expect("token"));
    c.stop(v1::StopRequest {}).await.err().map(|s| s.code())
}

fn member(dir: &Path, stem: &str, names: &[&str], server_name: Option<&str>) -> Tls {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let issued = certs::issue(dir, stem, &names, 1).expect("issue");
    Tls::load(
        &issued.ca_cert,
        Some((&issued.cert, &issued.key)),
        server_name.map(String::from),
    )
    .expect("load")
}

#[tokio::test]
async fn members_need_a_certificate_of_the_cluster_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dir.path().join("cluster");
    let server_tls = member(&cluster, "server", &["127.0.0.1", "localhost"], None);
    let client_tls = member(&cluster, "client", &["client"], None);
    let at = serve(Some(&server_tls), Clients::Members, AdminAuth::default()).await;

    // A member of the same CA: served.
    status(&at, Some(&client_tls), None).await.expect("member");
    // Dialled by name instead of IP address: the certificate names localhost too.
    let port = at.rsplit(':').next().expect("port");
    status(&format!("localhost:{port}"), Some(&client_tls), None)
        .await
        .expect("by name");

    // Knows the CA but has no certificate: refused in the handshake.
    let ca_only = Tls::load(&cluster.join("ca.crt"), None, None).expect("ca only");
    let e = status(&at, Some(&ca_only), None)
        .await
        .expect_err("no client cert");
    assert_ne!(e.0, tonic::Code::Ok, "{e:?}");

    // A certificate of another CA: refused by the server; and this client refuses the server.
    let stranger = member(&dir.path().join("other"), "client", &["client"], None);
    status(&at, Some(&stranger), None)
        .await
        .expect_err("other CA");

    // Plain HTTP/2 to a TLS port: no answer.
    status(&at, None, None).await.expect_err("plaintext");

    // The server's certificate does not name the host dialled: the client refuses it,
    // unless told the name to check (server_name).
    let named = member(&cluster, "named", &["rlhf-cluster"], None);
    let at_named = serve(Some(&named), Clients::Members, AdminAuth::default()).await;
    let e = status(&at_named, Some(&client_tls), None)
        .await
        .expect_err("name mismatch");
    assert!(
        e.1.contains("certificate") || e.1.contains("Certificate"),
        "{e:?}"
    );
    let by_name = Tls::load(
        &cluster.join("ca.crt"),
        Some((&cluster.join("client.crt"), &cluster.join("client.key"))),
        Some("rlhf-cluster".into()),
    )
    .expect("load");
    status(&at_named, Some(&by_name), None)
        .await
        .expect("server_name");
}

#[tokio::test]
async fn admin_port_takes_tokens_or_member_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dir.path().join("cluster");
    let server_tls = member(&cluster, "server", &["127.0.0.1"], None);
    let client_tls = member(&cluster, "client", &["ops"], None);
    let ca_only = Tls::load(&cluster.join("ca.crt"), None, None).expect("ca only");
    let tokens = AdminTokens::parse("viewer vvvvvvvvvvvvvvvvvvvv\noperator oooooooooooooooooooo")
        .expect("tokens");
    let at = serve(
        Some(&server_tls),
        Clients::Anyone,
        AdminAuth::new(Some(tokens)),
    )
    .await;
    let (viewer, operator) = (Some("vvvvvvvvvvvvvvvvvvvv"), Some("oooooooooooooooooooo"));

    // Without a certificate the port answers, and the token decides.
    let e = status(&at, Some(&ca_only), None)
        .await
        .expect_err("no token");
    assert_eq!(e.0, tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.1.contains("--token-file"), "{e:?}");
    let e = status(&at, Some(&ca_only), Some("wrongwrongwrongwrong"))
        .await
        .expect_err("unknown token");
    assert_eq!(e.0, tonic::Code::Unauthenticated, "{e:?}");
    status(&at, Some(&ca_only), viewer)
        .await
        .expect("viewer reads");
    assert_eq!(
        stop(&at, Some(&ca_only), viewer).await,
        Some(tonic::Code::PermissionDenied)
    );
    assert_eq!(stop(&at, Some(&ca_only), operator).await, None);
    // A member's certificate counts as an operator.
    assert_eq!(stop(&at, Some(&client_tls), None).await, None);
    // A certificate of another CA is refused even where certificates are optional.
    let stranger = member(&dir.path().join("other"), "client", &["x"], None);
    status(&at, Some(&stranger), operator)
        .await
        .expect_err("other CA");
}

#[test]
fn bad_files_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let issued = certs::issue(dir.path(), "tls", &["a".into()], 1).expect("issue");
    let missing = dir.path().join("missing.crt");
    let e = Tls::load(&missing, None, None).expect_err("missing");
    assert!(
        e.to_string().starts_with(&missing.display().to_string()),
        "{e}"
    );
    // A key where the certificate belongs, and a certificate where the key belongs.
    let e = Tls::load(&issued.ca_cert, Some((&issued.key, &issued.key)), None)
        .expect_err("key as cert");
    assert!(
        e.to_string().contains(&issued.key.display().to_string())
            && e.to_string().contains("no certificate"),
        "{e}"
    );
    let e = Tls::load(&issued.ca_cert, Some((&issued.cert, &issued.cert)), None)
        .expect_err("cert as key");
    assert!(e.to_string().contains("no usable private key"), "{e}");
    // A key that belongs to another certificate: refused when the server is built.
    let other = certs::issue(dir.path(), "other", &["b".into()], 1).expect("issue");
    let mixed = Tls::load(&issued.ca_cert, Some((&issued.cert, &other.key)), None).expect("load");
    let e = server(Some(&mixed), Clients::Members).expect_err("mismatched key");
    assert!(e.to_string().contains("TLS"), "{e}");
    // The second call reused the CA: both certificates chain to the one ca.crt.
    assert!(issued.ca_created && !other.ca_created);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&issued.key)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
    }
    let e = certs::issue(dir.path(), "x", &[], 1).expect_err("no names");
    assert!(e.to_string().starts_with("name:"), "{e}");
}

/// With an operator name, a member's certificate only reads the status; a certificate valid
/// for the operator name (or a member with an operator token) may stop the run.
#[tokio::test]
async fn operator_certificates_are_the_ones_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dir.path().join("cluster");
    let server_tls = member(&cluster, "server", &["127.0.0.1"], None);
    let worker = member(&cluster, "worker", &["rollout"], None);
    let operator = member(&cluster, "operator", &["rlhf-operator"], None);
    let tokens = AdminTokens::parse("operator oooooooooooooooooooo").expect("tokens");
    let auth = AdminAuth::new(Some(tokens)).with_operator_name(Some("rlhf-operator".into()));
    let at = serve(Some(&server_tls), Clients::Anyone, auth).await;
    status(&at, Some(&worker), None)
        .await
        .expect("a member reads");
    assert_eq!(
        stop(&at, Some(&worker), None).await,
        Some(tonic::Code::PermissionDenied)
    );
    assert_eq!(stop(&at, Some(&operator), None).await, None);
    assert_eq!(
        stop(&at, Some(&worker), Some("oooooooooooooooooooo")).await,
        None
    );
    // Without tokens the operator name alone gates: no certificate, no call.
    let only_name = AdminAuth::new(None).with_operator_name(Some("rlhf-operator".into()));
    let at = serve(Some(&server_tls), Clients::Anyone, only_name).await;
    let ca_only = Tls::load(&cluster.join("ca.crt"), None, None).expect("ca only");
    let e = status(&at, Some(&ca_only), None)
        .await
        .expect_err("anonymous");
    assert_eq!(e.0, tonic::Code::Unauthenticated, "{e:?}");
    assert_eq!(stop(&at, Some(&operator), None).await, None);
}
