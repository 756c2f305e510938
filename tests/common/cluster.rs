//! A real single-node SLURM for tests (Debian's slurmctld, slurmd and munge, started with a
//! private configuration, ports, state folders and munge socket under a temporary folder, so that
//! nothing else on the machine is touched). Included by the SLURM tests with
//! `#[path = "common/cluster.rs"] mod cluster;`; [`Cluster::start`] says why where it cannot start
//! (not root, the packages missing, the daemons not coming up), and the test then skips.
#![allow(dead_code)]

use crate::common::*;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A single-node cluster of this test's own: munged, slurmctld and slurmd run in the
/// foreground as children of the test. Dropping it (also when the test panics) cancels every
/// job, shuts the daemons down (`scontrol shutdown`) and kills by pid whatever is left.
pub struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
    daemons: Vec<(&'static str, Child)>,
    /// One cluster at a time per test binary: a second slurmd on the same node name does not
    /// come up, and the test that started it would skip (dropped after `drop` has shut down).
    _alone: std::sync::MutexGuard<'static, ()>,
}

static ONE_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The daemons and commands the cluster needs, found on PATH or in /usr/sbin.
pub fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Polls `ready` every 0.1 s until it holds (Ok) or `limit` has passed (Err).
pub fn until(limit: Duration, mut ready: impl FnMut() -> bool) -> Result<(), ()> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// Starts the cluster, or says why it cannot be started here.
    pub fn start() -> Result<Cluster, String> {
        let alone = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root (the daemons run as root here)".into());
        }
        for t in [
            "munged",
            "slurmctld",
            "slurmd",
            "sbatch",
            "squeue",
            "scancel",
            "scontrol",
            "sinfo",
        ] {
            if tool(t).is_none() {
                return Err(format!(
                    "no {t}: apt-get install slurmctld slurmd slurm-client munge (./setup.sh as root)"
                ));
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        // munged wants every folder above its socket searchable by all.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["ctld", "spool"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        let key = d.join("munge.key");
        let mut bytes = vec![0u8; 1024];
        std::io::Read::read_exact(&mut File::open("/dev/urandom").unwrap(), &mut bytes).unwrap();
        std::fs::write(&key, &bytes).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let host = String::from_utf8(Command::new("hostname").arg("-s").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let p = |name: &str| d.join(name).display().to_string();
        let conf = d.join("slurm.conf");
        std::fs::write(
            &conf,
            format!(
                "ClusterName=probetest\n\
                 SlurmctldHost={host}(127.0.0.1)\n\
                 SlurmctldPort={}\n\
                 SlurmdPort={}\n\
                 AuthType=auth/munge\n\
                 CredType=cred/munge\n\
                 AuthInfo=socket={}\n\
                 SlurmUser=root\n\
                 SlurmdUser=root\n\
                 ProctrackType=proctrack/linuxproc\n\
                 TaskPlugin=task/none\n\
                 SelectType=select/cons_tres\n\
                 SelectTypeParameters=CR_Core\n\
                 ReturnToService=2\n\
                 MpiDefault=none\n\
                 MailProg=/bin/true\n\
                 JobCompType=jobcomp/none\n\
                 JobAcctGatherType=jobacct_gather/none\n\
                 AccountingStorageType=accounting_storage/none\n\
                 MinJobAge=600\n\
                 SchedulerParameters=sched_min_interval=200000,sched_interval=1\n\
                 StateSaveLocation={}\n\
                 SlurmdSpoolDir={}\n\
                 SlurmctldPidFile={}\n\
                 SlurmdPidFile={}\n\
                 SlurmctldLogFile={}\n\
                 SlurmdLogFile={}\n\
                 NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN\n\
                 PartitionName=probetest Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n",
                free_port(),
                free_port(),
                p("munge.socket"),
                p("ctld"),
                p("spool"),
                p("slurmctld.pid"),
                p("slurmd.pid"),
                p("slurmctld.log"),
                p("slurmd.log"),
            ),
        )
        .unwrap();
        let mut c = Cluster {
            dir,
            conf,
            daemons: Vec::new(),
            _alone: alone,
        };
        let socket = d.join("munge.socket");
        c.spawn(
            "munged",
            &[
                "-F".into(),
                format!("--socket={}", socket.display()),
                format!("--key-file={}", key.display()),
                format!("--pid-file={}", p("munged.pid")),
                format!("--log-file={}", p("munged.log")),
                format!("--seed-file={}", p("munged.seed")),
            ],
        );
        until(Duration::from_secs(10), || socket.exists())
            .map_err(|_| format!("munged did not start: {}", c.tail("munged.out")))?;
        c.spawn("slurmctld", &["-D".into(), "-i".into()]);
        c.spawn("slurmd", &["-D".into()]);
        // Up: the node idle. Given up on (the test skips): a daemon that exited, or a minute.
        let mut state = String::new();
        let mut exited = None;
        let _ = until(Duration::from_secs(60), || {
            let o = c.cmd("sinfo").args(["-h", "-o", "%T"]).output().unwrap();
            state = String::from_utf8_lossy(&o.stdout).trim().to_string();
            exited = c.daemons.iter_mut().find_map(|(name, child)| {
                let status = child.try_wait().ok().flatten()?;
                Some(format!("{name} exited ({status})"))
            });
            state == "idle" || exited.is_some()
        });
        if state != "idle" {
            return Err(format!(
                "{}; the node is '{state}':\nslurmctld: {}\nslurmd: {}",
                exited.unwrap_or_else(|| "the node did not come up idle in 60 s".into()),
                c.tail("slurmctld.out"),
                c.tail("slurmd.out")
            ));
        }
        Ok(c)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts a daemon in the foreground, its output into `<name>.out`.
    fn spawn(&mut self, name: &'static str, args: &[String]) {
        let out = File::create(self.path().join(format!("{name}.out"))).unwrap();
        let mut cmd = self.cmd(name);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        // No HDF5 file of this process may leak into a daemon (see hdf5_guard).
        let child = {
            let _g = hdf5_guard();
            cmd.spawn().unwrap()
        };
        self.daemons.push((name, child));
    }

    /// A command of this cluster: its configuration, none of the caller's SLURM variables.
    pub fn cmd(&self, name: &str) -> Command {
        let mut cmd = Command::new(tool(name).unwrap_or_else(|| PathBuf::from(name)));
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("SLURM_") || k.starts_with("SBATCH_") || k.starts_with("SQUEUE_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("SLURM_CONF", &self.conf);
        cmd
    }

    pub fn run(&self, name: &str, args: &[&str]) -> Output {
        let mut cmd = self.cmd(name);
        cmd.args(args);
        run(cmd)
    }

    pub fn tail(&self, file: &str) -> String {
        let text = std::fs::read_to_string(self.path().join(file)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Job ids in the queue (pending, running, completing).
    pub fn queue(&self) -> Vec<String> {
        let o = self.run("squeue", &["-h", "-o", "%i %T"]);
        o.stdout.lines().map(str::to_string).collect()
    }

    /// Waits until the queue is empty; fails the test after `limit`.
    pub fn drain(&self, limit: Duration) {
        let t = Instant::now();
        loop {
            let q = self.queue();
            if q.is_empty() {
                return;
            }
            assert!(
                t.elapsed() < limit,
                "jobs still queued after {limit:?}: {q:?}\nslurmctld: {}",
                self.tail("slurmctld.log")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A job's (or array task's, `ID_I`) state and reason, as `scontrol show job` says.
    pub fn state(&self, id: &str) -> String {
        let o = self.run("scontrol", &["show", "job", "-o", id]);
        if o.code != 0 {
            return format!("{} {}", o.stdout.trim(), o.stderr.trim());
        }
        o.stdout
            .split_whitespace()
            .filter(|w| w.starts_with("JobState=") || w.starts_with("Reason="))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids: Vec<String> = self
            .queue()
            .iter()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        if !ids.is_empty() {
            let mut a = vec!["--full"];
            a.extend(ids.iter().map(String::as_str));
            self.run("scancel", &a);
            let _ = until(Duration::from_secs(20), || self.queue().is_empty());
        }
        self.run("scontrol", &["shutdown"]);
        let t = Instant::now();
        for (name, child) in self.daemons.iter_mut().rev() {
            if *name == "munged" {
                // SAFETY: a signal to our own child's pid, which has not been reaped yet.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            }
            while child.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(20)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            if child.try_wait().ok().flatten().is_none() {
                eprintln!("{name} did not stop: killing pid {}", child.id());
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A child process killed if the test ends (or panics) before waiting for it.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
