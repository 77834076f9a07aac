//! Test certificates, made at test time with the `openssl` CLI in temp dirs (no key is ever
//! committed): a test CA and the server certificates it issues, and self-signed ones.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A test certificate authority made with the `openssl` CLI in a temp dir (never committed),
/// and the server certificates it issues.
pub struct TestCa {
    dir: tempfile::TempDir,
    /// The CA certificate (PEM), for `--tls-ca`.
    pub cert: PathBuf,
    key: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    /// A fresh P-256 CA.
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().expect("temp dir");
        let cert = dir.path().join("ca.pem");
        let key = dir.path().join("ca.key");
        req_x509(
            &cert,
            &key,
            "Relay Test CA",
            "prime256v1",
            &[
                "basicConstraints=critical,CA:TRUE",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        TestCa { dir, cert, key }
    }

    /// A server certificate for DNS name `name` signed by this CA: (cert, key) paths.
    pub fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
        let d = self.dir.path();
        let (crt, key, csr, ext) = (
            d.join(format!("{name}.crt")),
            d.join(format!("{name}.key")),
            d.join(format!("{name}.csr")),
            d.join(format!("{name}.ext")),
        );
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            path_str(&key),
            "-out",
            path_str(&csr),
        ]);
        std::fs::write(
            &ext,
            format!(
                "subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .expect("write extensions file");
        openssl(&[
            "x509",
            "-req",
            "-in",
            path_str(&csr),
            "-CA",
            path_str(&self.cert),
            "-CAkey",
            path_str(&self.key),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            path_str(&ext),
            "-out",
            path_str(&crt),
        ]);
        (crt, key)
    }

    /// A self-signed certificate on curve P-521, whose signature scheme rustls does not
    /// offer: every handshake with a server using it fails. (cert, key) paths.
    pub fn p521_self_signed(&self, name: &str) -> (PathBuf, PathBuf) {
        self_signed(self.dir.path(), "p521", name, "secp521r1")
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// A fresh self-signed certificate for DNS name `name` (CN and subjectAltName) on elliptic curve
/// `curve` (`prime256v1`, `secp521r1`), as `dir/stem.crt` and `dir/stem.key`: (cert, key) paths.
pub fn self_signed(dir: &Path, stem: &str, name: &str, curve: &str) -> (PathBuf, PathBuf) {
    let (crt, key) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    req_x509(
        &crt,
        &key,
        name,
        curve,
        &[&format!("subjectAltName=DNS:{name}")],
    );
    (crt, key)
}

/// `openssl req -x509`: a fresh key on elliptic curve `curve` in `key` and a self-signed
/// certificate for common name `cn`, valid one day, with the extensions `ext`, in `crt`.
fn req_x509(crt: &Path, key: &Path, cn: &str, curve: &str, ext: &[&str]) {
    let curve = format!("ec_paramgen_curve:{curve}");
    let subj = format!("/CN={cn}");
    let mut args = vec![
        "req", "-x509", "-newkey", "ec", "-pkeyopt", &curve, "-nodes", "-days", "1", "-subj", &subj,
    ];
    for e in ext {
        args.extend(["-addext", e]);
    }
    args.extend(["-keyout", path_str(key), "-out", path_str(crt)]);
    openssl(&args);
}
