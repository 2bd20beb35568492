//! TLS fixtures: a certificate authority and a server certificate for 127.0.0.1, made
//! by the `openssl` command in a test's folder, and a TLS-terminating proxy (Debian's
//! `stunnel4`, which `make test` installs) in front of a plain TCP server: tansu, the S3
//! server or the registry double.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A CA and one server certificate it signed, valid for 127.0.0.1 and localhost.
pub struct TestCa {
    /// The CA's certificate (PEM): what clients trust.
    pub ca: PathBuf,
    /// The server's certificate (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (installed with Debian's openssl package)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    /// Makes a CA named `name` and a server certificate it signs, under `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let f = |suffix: &str| format!("{name}-{suffix}");
        let subject = format!("/CN=eventbus test CA {name}");
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &subject,
                "-keyout",
                &f("ca.key"),
                "-out",
                &f("ca.pem"),
            ],
        );
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                &f("server.key"),
                "-out",
                &f("server.csr"),
            ],
        );
        std::fs::write(
            dir.join(f("server.ext")),
            "subjectAltName = IP:127.0.0.1, DNS:localhost\nbasicConstraints = CA:FALSE\n\
             keyUsage = digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n",
        )
        .expect("write the extensions");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &f("server.csr"),
                "-CA",
                &f("ca.pem"),
                "-CAkey",
                &f("ca.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &f("server.pem"),
                "-extfile",
                &f("server.ext"),
            ],
        );
        Self {
            ca: dir.join(f("ca.pem")),
            cert: dir.join(f("server.pem")),
            key: dir.join(f("server.key")),
        }
    }

    /// A client certificate this CA signs, with its key: (certificate, key) PEM files.
    pub fn client_cert(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let f = |suffix: &str| format!("{name}-client-{suffix}");
        let ca_key = self.ca.with_extension("key");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=eventbus-client",
                "-keyout",
                &f("key.pem"),
                "-out",
                &f("csr"),
            ],
        );
        std::fs::write(
            dir.join(f("ext")),
            "basicConstraints = CA:FALSE\nkeyUsage = digitalSignature\n\
             extendedKeyUsage = clientAuth\n",
        )
        .expect("write the extensions");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &f("csr"),
                "-CA",
                &self.ca.display().to_string(),
                "-CAkey",
                &ca_key.display().to_string(),
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &f("cert.pem"),
                "-extfile",
                &f("ext"),
            ],
        );
        (dir.join(f("cert.pem")), dir.join(f("key.pem")))
    }
}

/// A running `stunnel` that accepts TLS on 127.0.0.1 and forwards the plain bytes.
pub struct TlsProxy {
    /// The port it accepts TLS on.
    pub port: u16,
    child: Child,
}

impl TlsProxy {
    /// Starts a proxy with `ca`'s server certificate, accepting on `port` and forwarding
    /// to 127.0.0.1:`target`; returns once it accepts connections.
    pub fn start(ca: &TestCa, dir: &Path, port: u16, target: u16) -> Self {
        Self::start_with(ca, dir, port, target, "")
    }

    /// As [`TlsProxy::start`], refusing clients without a certificate `ca` signed.
    pub fn start_requiring_client_certs(ca: &TestCa, dir: &Path, port: u16, target: u16) -> Self {
        let verify = format!("verifyChain = yes\nCAfile = {}\n", ca.ca.display());
        Self::start_with(ca, dir, port, target, &verify)
    }

    fn start_with(ca: &TestCa, dir: &Path, port: u16, target: u16, extra: &str) -> Self {
        let conf = dir.join(format!("stunnel-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\ndebug = notice\n[proxy]\naccept = 127.0.0.1:{port}\n\
                 connect = 127.0.0.1:{target}\ncert = {}\nkey = {}\n{extra}",
                ca.cert.display(),
                ca.key.display()
            ),
        )
        .expect("write the stunnel config");
        let log = std::fs::File::create(dir.join(format!("stunnel-{port}.log"))).expect("log");
        let child = Command::new(stunnel())
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start stunnel (`make test` installs Debian's stunnel4)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "stunnel did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, child }
    }
}

fn stunnel() -> &'static str {
    if Path::new("/usr/bin/stunnel4").exists() {
        "/usr/bin/stunnel4"
    } else {
        "stunnel"
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
