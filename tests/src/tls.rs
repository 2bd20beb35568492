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
        let ca = dir.join(format!("{name}-ca.pem"));
        let subject = format!("/CN=eventbus test CA {name}");
        let ca_key = ca.with_extension("key");
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
                &path(&ca_key),
                "-out",
                &path(&ca),
            ],
        );
        let (cert, key) = sign(
            dir,
            &ca,
            &format!("{name}-server"),
            "/CN=127.0.0.1",
            "subjectAltName = IP:127.0.0.1, DNS:localhost\nbasicConstraints = CA:FALSE\n\
             keyUsage = digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n",
        );
        Self { ca, cert, key }
    }

    /// A client certificate this CA signs, with its key: (certificate, key) PEM files.
    pub fn client_cert(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        sign(
            dir,
            &self.ca,
            &format!("{name}-client"),
            "/CN=eventbus-client",
            "basicConstraints = CA:FALSE\nkeyUsage = digitalSignature\n\
             extendedKeyUsage = clientAuth\n",
        )
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// A key and a certificate for `subject` with the extensions `ext`, signed by the CA at
/// `ca` (its key beside it, `.key`), as `<prefix>.pem` and `<prefix>.key` in `dir`.
fn sign(dir: &Path, ca: &Path, prefix: &str, subject: &str, ext: &str) -> (PathBuf, PathBuf) {
    let file = |suffix: &str| dir.join(format!("{prefix}.{suffix}"));
    let (cert, key, csr, ext_file) = (file("pem"), file("key"), file("csr"), file("ext"));
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            &path(&key),
            "-out",
            &path(&csr),
        ],
    );
    std::fs::write(&ext_file, ext).expect("write the extensions");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &path(&csr),
            "-CA",
            &path(ca),
            "-CAkey",
            &path(&ca.with_extension("key")),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &path(&cert),
            "-extfile",
            &path(&ext_file),
        ],
    );
    (cert, key)
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
