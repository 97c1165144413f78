//! TLS to PostgreSQL: a throwaway cluster serving a certificate from a test CA, and
//! every sslmode the gateway supports against it.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use rowcast::pg::{DbError, DbTarget};
use support::*;

struct TlsCluster {
    _cluster: Cluster,
    port: u16,
    ca: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(status.status.success(), "openssl {args:?}: {status:?}");
}

/// A cluster with `ssl = on`, its certificate (for `localhost` only) signed by a CA
/// made for the test.
fn tls_cluster() -> TlsCluster {
    let cluster = Cluster::private();
    let server = cluster.server().expect("private cluster");
    let data = server.data_dir().to_path_buf();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &data,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=rowcast test CA",
            ],
        ]
        .concat(),
    );
    openssl(
        &data,
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        data.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &data,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    if let Some((uid, gid)) = server.run_as() {
        for file in ["server.key", "server.crt"] {
            std::os::unix::fs::chown(data.join(file), Some(uid), Some(gid)).unwrap();
        }
    }
    std::fs::set_permissions(
        data.join("server.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let ca = std::env::temp_dir().join(format!(
        "rowcast-test-ca-{}-{}.crt",
        std::process::id(),
        server.port()
    ));
    std::fs::copy(data.join("ca.crt"), &ca).unwrap();
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .unwrap();
    std::io::Write::write_all(
        &mut conf,
        b"\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
    )
    .unwrap();
    server.stop().unwrap();
    server.start_server().unwrap();
    TlsCluster {
        port: server.port(),
        ca,
        _cluster: cluster,
    }
}

impl TlsCluster {
    fn target(&self, host: &str, mode: &str, with_ca: bool) -> DbTarget {
        let mut url = format!(
            "postgres://rowcast@{host}:{}/postgres?sslmode={mode}",
            self.port
        );
        if with_ca {
            url.push_str(&format!("&sslrootcert={}", self.ca.display()));
        }
        DbTarget::from_url(&url).unwrap()
    }
}

async fn uses_tls(target: &DbTarget) -> Result<bool, DbError> {
    let client = target.connect_spawned().await?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

#[tokio::test]
async fn every_sslmode_behaves_as_libpq_documents() {
    let tls = tls_cluster();
    // Encrypted without verification.
    assert!(uses_tls(&tls.target("127.0.0.1", "require", false))
        .await
        .unwrap());
    assert!(uses_tls(&tls.target("127.0.0.1", "prefer", false))
        .await
        .unwrap());
    assert!(!uses_tls(&tls.target("127.0.0.1", "disable", false))
        .await
        .unwrap());
    // Chain and host name verified.
    assert!(uses_tls(&tls.target("localhost", "verify-full", true))
        .await
        .unwrap());
    // verify-ca checks the chain only, so an address the certificate does not name is fine.
    assert!(uses_tls(&tls.target("127.0.0.1", "verify-ca", true))
        .await
        .unwrap());
    // A name the certificate does not carry, or an unknown CA, is refused.
    for target in [
        tls.target("127.0.0.1", "verify-full", true),
        tls.target("localhost", "verify-full", false),
        tls.target("localhost", "verify-ca", false),
    ] {
        let err = uses_tls(&target).await.unwrap_err();
        assert!(matches!(err, DbError::Tls { .. }), "{target}: {err}");
        assert!(err.is_permanent());
    }
}

#[tokio::test]
async fn the_binary_migrates_over_verified_tls() {
    let tls = tls_cluster();
    let url = format!(
        "postgres://rowcast@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        tls.port,
        tls.ca.display()
    );
    let output = Command::new(binary())
        .args(["migrate", "--database-url", &url])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let output = Command::new(binary())
        .args([
            "migrate",
            "--database-url",
            &url.replace("localhost", "127.0.0.1"),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.lines().last().unwrap_or_default().contains("TLS"),
        "{stderr}"
    );
}
