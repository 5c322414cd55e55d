//! A real mosquitto broker per test, on a free local port, with persistence so that a restarted
//! broker keeps persistent sessions (and the messages queued for them). Never the system one.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = "/usr/sbin/mosquitto";

pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Started as root, mosquitto switches to the `mosquitto` user and can then neither write its
/// log nor save its persistence file in our root-owned temp dir: a restarted broker would come
/// back without the sessions and the messages queued for them. Staying root keeps them.
/// (Run as any other user, mosquitto changes no user and ignores the line.)
fn stay_root() -> &'static str {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        "user root\n"
    } else {
        ""
    }
}

impl Mosquitto {
    /// Starts a broker keeping its state in `dir`; panics with the broker's log if it does not
    /// listen within 10 s (a missing broker fails the test, it is never skipped).
    pub fn start(dir: &Path) -> Mosquitto {
        Self::start_on(dir, free_port())
    }

    pub fn start_on(dir: &Path, port: u16) -> Mosquitto {
        std::fs::create_dir_all(dir).unwrap();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "{}listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nautosave_interval 1\nmax_queued_messages 0\nlog_dest file {}\nlog_type all\n",
                stay_root(),
                dir.display(),
                dir.join("mosquitto.log").display()
            ),
        )
        .unwrap();
        assert!(
            Path::new(BIN).exists(),
            "{BIN} is missing: install the Debian package mosquitto"
        );
        let child = Command::new(BIN)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        let mut m = Mosquitto {
            child: Some(child),
            port,
            dir: dir.to_owned(),
        };
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "mosquitto exited with {status} before listening on {port}:\n{}",
                    m.log()
                );
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "mosquitto did not listen on {port} within 10 s:\n{}",
                m.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            m.log().contains("mosquitto version"),
            "mosquitto on {port} cannot write its log (and so not its persistence file either) in {}",
            dir.display()
        );
        m
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    /// SIGTERM and wait: mosquitto saves its persistence file on the way out.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let t0 = Instant::now();
            while c.try_wait().unwrap().is_none() {
                if t0.elapsed() > Duration::from_secs(10) {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// SIGSTOP: the broker keeps its sockets open but answers nothing (publishes stay unacked).
    pub fn freeze(&self) {
        let c = self.child.as_ref().expect("broker running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGSTOP,
        )
        .unwrap();
    }

    /// SIGCONT after `freeze`.
    pub fn thaw(&self) {
        let c = self.child.as_ref().expect("broker running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGCONT,
        )
        .unwrap();
    }

    /// SIGKILL: whatever was not saved is lost (the last autosave survives).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The same broker (state directory and port) again.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        *self = Mosquitto::start_on(&self.dir.clone(), port);
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
