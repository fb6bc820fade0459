//! A real registry for image tests: Debian's docker-registry on a free loopback port, with
//! images pushed by skopeo from the OCI layouts the project builds itself. A test includes it
//! with `#[path = "common/registry.rs"] mod registry;` beside `mod common;`.

#![allow(dead_code)]

use crate::common::layouts;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Registry {
    pub child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        Registry::start_with(None)
    }

    /// A registry that demands HTTP basic auth (htpasswd, bcrypt) for this user and password.
    pub fn start_with(auth: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let mut auth_section = String::new();
        if let Some((user, password)) = auth {
            let out = Command::new("htpasswd").args(["-nbB", user, password]).output().expect("htpasswd (Debian apache2-utils)");
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, out.stdout).unwrap();
            auth_section = format!("auth:\n  htpasswd:\n    realm: tests\n    path: {}\n", htpasswd.display());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_section}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry; `tests/setup.sh test` installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { child, port, dir }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// skopeo copy of a layout tag to REPO:TAG here; returns the reference.
    pub fn push(&self, layout_tag: &str, repo: &str, all: bool) -> String {
        self.push_from(&layouts(), layout_tag, repo, all, None)
    }

    pub fn push_from(&self, layout: &Path, layout_tag: &str, repo: &str, all: bool, creds: Option<&str>) -> String {
        let dest = format!("{}/{repo}", self.host());
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if all {
            cmd.arg("--all");
        }
        if let Some(c) = creds {
            cmd.args(["--dest-creds", c]);
        }
        let st = cmd.arg(format!("oci:{}:{layout_tag}", layout.display())).arg(format!("docker://{dest}")).status().expect("skopeo");
        assert!(st.success(), "skopeo push of {layout_tag}");
        dest
    }

    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.path().join("data/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
