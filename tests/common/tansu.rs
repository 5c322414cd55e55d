//! A real Kafka-protocol broker for the end-to-end tests: a `tansu` process on a free port
//! (memory storage), killed on drop. Missing binary or a broker that does not come up is a test
//! failure with a clear message, never a skip.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `tansu` on PATH, else in ~/.cargo/bin (where `.ci/setup` installs it).
pub fn tansu_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("tansu"))
        .find(|p| p.is_file());
    let cargo_bin = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cargo/bin/tansu"))
        .filter(|p| p.is_file());
    on_path.or(cargo_bin).unwrap_or_else(|| {
        panic!("the `tansu` broker binary is required by this test (not on PATH nor in ~/.cargo/bin); install it with .ci/setup or `cargo install tansu --features dynostore --locked`")
    })
}

pub struct Tansu {
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Tansu {
    /// Starts a broker on a free port.
    pub fn start(log_dir: &std::path::Path) -> Tansu {
        Self::start_on(free_port(), log_dir)
    }

    /// Starts a broker on `port` (again, after `kill`: clients keep their bootstrap address).
    pub fn start_on(port: u16, log_dir: &std::path::Path) -> Tansu {
        let mut t = Tansu {
            port,
            child: None,
            log: log_dir.join(format!("tansu-{port}.log")),
        };
        t.restart();
        t
    }

    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// (Re)starts the process on the same port and waits until it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &self.url(),
                "--advertised-listener-url",
                &self.url(),
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tansu: {e}"));
        self.child = Some(child);
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "tansu exited at start ({status}); log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "tansu did not listen on port {} within 20 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, like a crashed broker; memory storage loses everything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        let t0 = Instant::now();
        loop {
            let out = Command::new(tansu_bin())
                .args([
                    "topic",
                    "create",
                    name,
                    "--partitions",
                    &partitions.to_string(),
                    "--broker",
                    &self.url(),
                ])
                .output()
                .unwrap();
            if out.status.success() {
                return;
            }
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "tansu topic create {name} failed: {text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}
