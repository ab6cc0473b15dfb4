//! Certificates for tests and tours: a CA made with the openssl command
//! line (installed by `scripts/install-deps.sh`) and the server and client
//! certificates it signs, for the stand-ins' TLS and mTLS and for kuzet's
//! tests against them.

use std::path::{Path, PathBuf};

/// A PKI made with the openssl command line in a folder: a CA and the
/// certificates it signs (EC P-256 keys, valid two days). It panics when
/// openssl fails: it is made for tests and tours, not for production.
pub struct Pki {
    dir: PathBuf,
    name: String,
}

/// A certificate a [`Pki`] signed and its key, as PEM files.
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
}

impl Issued {
    /// The certificate's bytes.
    pub fn cert_pem(&self) -> Vec<u8> {
        std::fs::read(&self.cert).unwrap()
    }

    /// The key's bytes.
    pub fn key_pem(&self) -> Vec<u8> {
        std::fs::read(&self.key).unwrap()
    }
}

impl Pki {
    /// A CA named `name` (`NAME-ca.pem`, `NAME-ca.key`) in `dir`; several
    /// PKIs of other names may share a folder.
    pub fn new(dir: &Path, name: &str) -> Pki {
        let pki = Pki {
            dir: dir.to_path_buf(),
            name: name.to_string(),
        };
        let (pem, key) = (format!("{name}-ca.pem"), format!("{name}-ca.key"));
        pki.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &format!("/CN=kuzet test {name} CA"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ]);
        pki
    }

    /// The CA's certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// A server certificate for 127.0.0.1 and localhost.
    pub fn server(&self, name: &str) -> Issued {
        self.issue(
            name,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth",
        )
    }

    /// A client certificate (for mTLS).
    pub fn client(&self, name: &str) -> Issued {
        self.issue(name, "extendedKeyUsage=clientAuth")
    }

    /// `NAME.pem` and `NAME.key`, signed by the CA with extensions `ext`.
    fn issue(&self, name: &str, ext: &str) -> Issued {
        let (cnf, csr) = (format!("{name}.cnf"), format!("{name}.csr"));
        let issued = Issued {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        };
        std::fs::write(
            self.dir.join(&cnf),
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{ext}\n"),
        )
        .unwrap();
        let path = |p: &Path| p.to_str().unwrap().to_string();
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &path(&issued.key),
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &path(&self.ca()),
            "-CAkey",
            &format!("{}-ca.key", self.name),
            "-CAcreateserial",
            "-out",
            &path(&issued.cert),
            "-days",
            "2",
            "-extfile",
            &cnf,
        ]);
        issued
    }

    fn openssl(&self, args: &[&str]) {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("openssl (scripts/install-deps.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
