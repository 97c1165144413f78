//! The embedded default: a private PostgreSQL started from the machine's binaries.
//!
//! Used when no database is configured (no URL, no `PG*` variable), and by the test
//! harness for throwaway clusters. initdb refuses to run as root, so as root
//! the server runs as an unprivileged system user (`postgres`, else `nobody`).

use std::fs;
use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::DbTarget;

/// The superuser and database the private server is set up with.
pub const USER: &str = "rowcast";

/// Why the private server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// No `initdb`/`pg_ctl` on this machine.
    #[error("no PostgreSQL server binaries found (looked at `pg_config --bindir` and /usr/lib/postgresql/*/bin); install them (Debian/Ubuntu: apt-get install postgresql) or set DATABASE_URL")]
    NoBinaries,
    /// Running as root and no unprivileged user exists to run the server.
    #[error("running as root and no unprivileged user (postgres, nobody) exists to run the private PostgreSQL; create one or set DATABASE_URL")]
    NoUser,
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A PostgreSQL tool exited with an error.
    #[error("{tool} failed: {output}")]
    Tool {
        /// The program.
        tool: String,
        /// Its last lines of output.
        output: String,
    },
}

/// Settings for a private server.
#[derive(Debug, Clone)]
pub struct Options {
    /// Durable writes; off for throwaway test clusters.
    pub fsync: bool,
    /// The server's connection limit.
    pub max_connections: u32,
    /// `wal_level=logical`, so `--capture wal` works out of the box; off only to test
    /// the refusal on a server without it.
    pub logical_decoding: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            fsync: true,
            max_connections: 200,
            logical_decoding: true,
        }
    }
}

/// A running private server.
#[derive(Debug)]
pub struct Embedded {
    /// Where `pg_ctl` lives: the same tools stop the server at exit.
    bindir: PathBuf,
    /// The cluster's files, kept between runs so data survives a restart.
    data_dir: PathBuf,
    /// The loopback port it listens on, for the targets handed out.
    port: u16,
    /// The unprivileged user and group the tools run as when rowcast runs as root
    /// (PostgreSQL refuses to run as root).
    run_as: Option<(u32, u32)>,
    /// The server options given to `pg_ctl start` (port, sockets, durability).
    settings: String,
}

impl Embedded {
    /// Starts (or finds already running) the server whose data lives in `data_dir`,
    /// creating the cluster on first use. Blocking: call from start-up code.
    pub fn start(data_dir: &Path, options: &Options) -> Result<Embedded, EmbeddedError> {
        let bindir = find_bindir().ok_or(EmbeddedError::NoBinaries)?;
        let run_as = if effective_uid() == Some(0) {
            Some(unprivileged_user().ok_or(EmbeddedError::NoUser)?)
        } else {
            None
        };
        let data_dir = absolute(data_dir)?;
        fs::create_dir_all(&data_dir).map_err(|source| EmbeddedError::Io {
            what: "creating",
            path: data_dir.clone(),
            source,
        })?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&data_dir, Some(uid), Some(gid)).map_err(|source| {
                EmbeddedError::Io {
                    what: "changing the owner of",
                    path: data_dir.clone(),
                    source,
                }
            })?;
        }
        fs::set_permissions(
            &data_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .map_err(|source| EmbeddedError::Io {
            what: "setting permissions of",
            path: data_dir.clone(),
            source,
        })?;
        let mut server = Embedded {
            bindir,
            data_dir,
            port: 0,
            run_as,
            settings: String::new(),
        };
        if !server.data_dir.join("PG_VERSION").exists() {
            server.run_tool(
                "initdb",
                &[
                    "-D".as_ref(),
                    server.data_dir.as_os_str(),
                    "-U".as_ref(),
                    USER.as_ref(),
                    "--auth=trust".as_ref(),
                    "--encoding=UTF8".as_ref(),
                    "--locale=C".as_ref(),
                    "--no-sync".as_ref(),
                ],
            )?;
        }
        if let Some(port) = server.running_port() {
            server.port = port;
            return Ok(server);
        }
        server.port = free_port().map_err(|source| EmbeddedError::Io {
            what: "finding a free port for",
            path: server.data_dir.clone(),
            source,
        })?;
        server.settings = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections={}",
            server.port, options.max_connections
        );
        if options.logical_decoding {
            server.settings.push_str(
                " -c wal_level=logical -c max_replication_slots=64 -c max_wal_senders=32",
            );
        }
        if !options.fsync {
            server
                .settings
                .push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        server.start_server()?;
        Ok(server)
    }

    /// The superuser's connection to database `dbname`.
    pub fn target(&self, dbname: &str) -> DbTarget {
        let url = format!(
            "postgres://{USER}@127.0.0.1:{}/{dbname}?sslmode=disable",
            self.port
        );
        // The URL is built from a number and fixed names.
        DbTarget::from_url(&url).unwrap_or_else(|_| unreachable!())
    }

    /// The TCP port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The user the server runs as, when started as root.
    pub fn run_as(&self) -> Option<(u32, u32)> {
        self.run_as
    }

    /// Stops the server (fast shutdown: sessions are ended, data is kept).
    pub fn stop(&self) -> Result<(), EmbeddedError> {
        self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"])
    }

    /// Starts it again after [`stop`](Self::stop), on the same port.
    pub fn start_server(&self) -> Result<(), EmbeddedError> {
        let log = self.data_dir.join("postgres.log");
        self.run_tool(
            "pg_ctl",
            &[
                "-D".as_ref(),
                self.data_dir.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "-o".as_ref(),
                self.settings.as_ref(),
                "start".as_ref(),
            ],
        )
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), EmbeddedError> {
        let mut full: Vec<&std::ffi::OsStr> = vec!["-D".as_ref(), self.data_dir.as_os_str()];
        full.extend(args.iter().map(std::ffi::OsStr::new));
        self.run_tool("pg_ctl", &full)
    }

    /// The port of a server already running on this data directory.
    fn running_port(&self) -> Option<u16> {
        let status = self
            .command("pg_ctl")
            .arg("status")
            .arg("-D")
            .arg(&self.data_dir)
            .output()
            .ok()?;
        if !status.status.success() {
            return None;
        }
        let pid_file = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        pid_file.lines().nth(3)?.trim().parse().ok()
    }

    fn command(&self, tool: &str) -> Command {
        let mut command = Command::new(self.bindir.join(tool));
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
            // HOME of root is not readable by the server's user.
            command.current_dir("/").env("HOME", "/tmp");
        }
        command
    }

    fn run_tool(&self, tool: &str, args: &[&std::ffi::OsStr]) -> Result<(), EmbeddedError> {
        let output =
            self.command(tool)
                .args(args)
                .output()
                .map_err(|source| EmbeddedError::Io {
                    what: "running",
                    path: self.bindir.join(tool),
                    source,
                })?;
        check(tool, output)
    }
}

fn check(tool: &str, output: Output) -> Result<(), EmbeddedError> {
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stdout));
    let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = tail[tail.len().saturating_sub(3)..].join(" | ");
    Err(EmbeddedError::Tool {
        tool: tool.to_owned(),
        output: tail,
    })
}

/// `pg_config --bindir` if it has initdb, else the newest /usr/lib/postgresql/*/bin.
pub fn find_bindir() -> Option<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if output.status.success() && has_server(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

fn absolute(path: &Path) -> Result<PathBuf, EmbeddedError> {
    std::path::absolute(path).map_err(|source| EmbeddedError::Io {
        what: "resolving",
        path: path.to_owned(),
        source,
    })
}

fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The uid and gid of `postgres`, else `nobody`, from /etc/passwd.
fn unprivileged_user() -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    ["postgres", "nobody"].iter().find_map(|name| {
        passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() > 3 && fields[0] == *name {
                Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
            } else {
                None
            }
        })
    })
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
