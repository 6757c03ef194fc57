//! A small PKI for one test, made with the `openssl` command: two CAs (`ca`, `other-ca`), a
//! server certificate for 127.0.0.1/localhost (`server`), a client certificate for mutual TLS
//! (`client`) and an expired server certificate from the same CA and key (`expired`). Files are
//! `<name>.pem` and `<name>.key` in [`Pki::dir`].

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{HarnessError, Result};

/// Keys and certificates in a temp dir (see the module docs).
pub struct Pki {
    dir: tempfile::TempDir,
}

/// Runs `openssl` in `dir`; its output in the error when it fails.
fn run(dir: &Path, program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| HarnessError::io(program, e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(HarnessError::io(
        program,
        std::io::Error::other(format!(
            "{program} {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
    ))
}

fn write(path: PathBuf, text: &str) -> Result<()> {
    std::fs::write(&path, text).map_err(|e| HarnessError::io("write a PKI file", e))
}

impl Pki {
    /// Makes every key and certificate (a second or two of `openssl`).
    pub fn new() -> Result<Pki> {
        let pki = Pki {
            dir: crate::harness_temp_dir("ioc-e2e-pki-")?,
        };
        let d = pki.dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let (key, pem, subj) = (
                format!("{ca}.key"),
                format!("{ca}.pem"),
                format!("/CN=ioc-e2e {ca}"),
            );
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            args.extend([
                "-keyout",
                &key,
                "-out",
                &pem,
                "-days",
                "30",
                "-subj",
                &subj,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            run(d, "openssl", &args)?;
        }
        write(
            d.join("server.ext"),
            "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n",
        )
        ?;
        write(
            d.join("client.ext"),
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n",
        )
        ?;
        for (name, cn) in [("server", "localhost"), ("client", "gw-client")] {
            let mut args = vec!["req"];
            args.extend(ec);
            let key = format!("{name}.key");
            let csr = format!("{name}.csr");
            let subj = format!("/CN={cn}");
            args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            run(d, "openssl", &args)?;
            let pem = format!("{name}.pem");
            let ext = format!("{name}.ext");
            run(
                d,
                "openssl",
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "30",
                    "-extfile",
                    &ext,
                    "-out",
                    &pem,
                ],
            )?;
        }
        // An expired server certificate from the same CA, same key: `openssl ca` can set dates.
        write(d.join("index.txt"), "")?;
        write(d.join("serial"), "1000\n")?;
        std::fs::create_dir_all(d.join("newcerts"))
            .map_err(|e| HarnessError::io("create newcerts", e))?;
        write(
            d.join("ca.cnf"),
            "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\nnew_certs_dir = newcerts\nserial = serial\ndefault_md = sha256\npolicy = any\nunique_subject = no\n[any]\ncommonName = supplied\n",
        )
        ?;
        run(
            d,
            "openssl",
            &[
                "ca",
                "-batch",
                "-config",
                "ca.cnf",
                "-cert",
                "ca.pem",
                "-keyfile",
                "ca.key",
                "-in",
                "server.csr",
                "-out",
                "expired.pem",
                "-startdate",
                "20200101000000Z",
                "-enddate",
                "20200201000000Z",
                "-extfile",
                "server.ext",
                "-notext",
            ],
        )?;
        Ok(pki)
    }

    /// The folder holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `dir/name`, e.g. `path("ca.pem")`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}
