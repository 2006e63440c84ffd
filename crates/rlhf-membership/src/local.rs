//! [`LocalEtcd`]: a throwaway etcd on loopback (one member, or a cluster of several with
//! [`LocalEtcd::cluster`]), for tests and local trials of distributed mode. It runs the `etcd` binary (`RLHF_ETCD_BIN`, else `etcd` on `PATH`; Debian's
//! `etcd-server` package) with its data in a temporary directory, and kills it when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running etcd child process.
#[derive(Debug)]
pub struct LocalEtcd {
    child: Child,
    endpoint: String,
    _data: tempfile::TempDir,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl LocalEtcd {
    /// The etcd binary this would run.
    pub fn binary() -> PathBuf {
        std::env::var_os("RLHF_ETCD_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("etcd"))
    }

    /// Starts etcd and waits (up to 20 s) until it accepts connections on its client port.
    pub fn start() -> Result<Self, String> {
        Ok(Self::cluster(1)?.remove(0))
    }

    /// Starts a cluster of `members` etcd processes (each its own member, `local-0`, ...) and
    /// waits (up to 20 s) until every one accepts connections on its client port.
    pub fn cluster(members: usize) -> Result<Vec<Self>, String> {
        Self::spawn(members, None)
    }

    /// Starts one etcd whose client port speaks TLS with `cert` and `key` (PEM; the
    /// certificate must name 127.0.0.1) and accepts only clients with a certificate of `ca`
    /// (`--client-cert-auth`).
    pub fn start_tls(ca: &Path, cert: &Path, key: &Path) -> Result<Self, String> {
        Ok(Self::spawn(1, Some((ca, cert, key)))?.remove(0))
    }

    /// Ports are found free and then bound by etcd: another process (tests run in parallel) can
    /// take one in between, and etcd then exits at start-up. That is retried with fresh ports.
    fn spawn(members: usize, tls: Option<(&Path, &Path, &Path)>) -> Result<Vec<Self>, String> {
        let mut attempt = 1;
        loop {
            match Self::spawn_once(members, tls) {
                Err(Start::Exited(e)) if attempt < START_ATTEMPTS => {
                    eprintln!("{e}; retrying with other ports");
                    attempt += 1;
                }
                Err(Start::Exited(e) | Start::Failed(e)) => return Err(e),
                Ok(started) => return Ok(started),
            }
        }
    }

    fn spawn_once(members: usize, tls: Option<(&Path, &Path, &Path)>) -> Result<Vec<Self>, Start> {
        let bin = Self::binary();
        let port = || free_port().map_err(|e| Start::Failed(format!("free port: {e}")));
        let mut ports = Vec::with_capacity(members);
        for _ in 0..members {
            ports.push((port()?, port()?));
        }
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("local-{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut started = Vec::with_capacity(members);
        for (i, (client, peer)) in ports.into_iter().enumerate() {
            let data = tempfile::tempdir()
                .map_err(|e| Start::Failed(format!("temporary directory: {e}")))?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            let client_url = format!("{scheme}://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let mut command = Command::new(&bin);
            if let Some((ca, cert, key)) = tls {
                command
                    .arg(format!("--cert-file={}", cert.display()))
                    .arg(format!("--key-file={}", key.display()))
                    .arg(format!("--trusted-ca-file={}", ca.display()))
                    .arg("--client-cert-auth");
            }
            let child = command
                .arg(format!("--name=local-{i}"))
                .arg(format!("--data-dir={}", data.path().join("etcd").display()))
                .arg(format!("--listen-client-urls={client_url}"))
                .arg(format!("--advertise-client-urls={client_url}"))
                .arg(format!("--listen-peer-urls={peer_url}"))
                .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                .arg(format!("--initial-cluster={}", initial.join(",")))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| {
                    Start::Failed(format!(
                        "cannot start `{}` ({e}); install Debian's etcd-server or set \
                         RLHF_ETCD_BIN",
                        bin.display()
                    ))
                })?;
            started.push(Self {
                child,
                endpoint: format!("127.0.0.1:{client}"),
                _data: data,
            });
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for me in &mut started {
            loop {
                if let Ok(Some(status)) = me.child.try_wait() {
                    return Err(Start::Exited(format!(
                        "`{}` exited at start-up: {status}",
                        bin.display()
                    )));
                }
                if std::net::TcpStream::connect(&me.endpoint).is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(Start::Failed(format!(
                        "`{}` did not listen on {} within 20 s",
                        bin.display(),
                        me.endpoint
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(started)
    }

    /// Kills this member (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `host:port` of its client URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

/// How often [`LocalEtcd`] starts etcd with fresh ports when it exits at start-up.
const START_ATTEMPTS: usize = 3;

/// Why a start of local etcd processes failed.
enum Start {
    /// A member exited at start-up (most likely a port taken since it was found free).
    Exited(String),
    /// Anything else.
    Failed(String),
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
