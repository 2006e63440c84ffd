//! [`LocalEtcd`]: a throwaway single-member etcd on loopback, for tests and local trials of
//! distributed mode. It runs the `etcd` binary (`RLHF_ETCD_BIN`, else `etcd` on `PATH`; Debian's
//! `etcd-server` package) with its data in a temporary directory, and kills it when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
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
        let bin = Self::binary();
        let data = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let (client, peer) = (
            free_port().map_err(|e| format!("free port: {e}"))?,
            free_port().map_err(|e| format!("free port: {e}"))?,
        );
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(&bin)
            .arg("--name=local")
            .arg(format!("--data-dir={}", data.path().join("etcd").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=local={peer_url}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start `{}` ({e}); install Debian's etcd-server or set RLHF_ETCD_BIN",
                    bin.display()
                )
            })?;
        let mut me = Self {
            child,
            endpoint: format!("127.0.0.1:{client}"),
            _data: data,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = me.child.try_wait() {
                return Err(format!("`{}` exited at start-up: {status}", bin.display()));
            }
            if std::net::TcpStream::connect(&me.endpoint).is_ok() {
                return Ok(me);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "`{}` did not listen on {} within 20 s",
                    bin.display(),
                    me.endpoint
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `host:port` of its client URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
