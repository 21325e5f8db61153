//! Starts, kills and restarts the three members of either system.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub struct Member {
    cmd: Vec<String>,
    log: std::path::PathBuf,
    child: Option<Child>,
}

impl Member {
    fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(&self.cmd[0])
            .args(&self.cmd[1..])
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.cmd[0]))?;
        self.child = Some(child);
        Ok(())
    }
}

/// A CA, one certificate every member serves and calls its peers with (`node`), and the
/// bench's own client certificate (`bench`, an admin), made by this build's `switchyard certs`.
pub fn make_pki(dir: &Path) -> Result<std::path::PathBuf> {
    let _ = std::fs::remove_dir_all(dir);
    let cli = std::env::current_exe()?.with_file_name("switchyard");
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new(&cli).args(args).output().with_context(|| format!("running {}", cli.display()))?;
        if !out.status.success() {
            bail!("switchyard {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    let d = dir.to_str().context("a UTF-8 path")?;
    run(&["certs", "init", d])?;
    run(&["certs", "issue", d, "--role", "node", "--name", "node", "--san", "127.0.0.1"])?;
    run(&["certs", "issue", d, "--role", "admin", "--name", "bench", "--san", "127.0.0.1"])?;
    Ok(dir.to_path_buf())
}

pub struct Cluster {
    pub system: String,
    pub client_addrs: Vec<String>,
    members: Vec<Member>,
}

fn ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    ls.iter().map(|l| l.local_addr().expect("addr").port()).collect()
}

impl Cluster {
    /// `pki`: a directory from [`make_pki`], for members that serve mTLS. `etcd_timing`: etcd's
    /// heartbeat interval and election timeout in ms, instead of its defaults (100, 1000).
    pub fn start(
        system: &str,
        bin_dir: &Path,
        out: &Path,
        n: usize,
        pki: Option<&Path>,
        etcd_timing: Option<&[u64]>,
    ) -> Result<Cluster> {
        let scheme = if pki.is_some() { "https" } else { "http" };
        let pem = |name: &str| pki.map(|p| p.join(name).display().to_string()).unwrap_or_default();
        let dir = out.join(system);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let p = ports(6);
        let mut members = Vec::new();
        let mut client_addrs = Vec::new();
        match system {
            "switchyard" => {
                let initial: Vec<String> = (0..n).map(|i| format!("{}=127.0.0.1:{}", i + 1, p[i])).collect();
                for (i, port) in p.iter().enumerate().take(n) {
                    let addr = format!("127.0.0.1:{port}");
                    client_addrs.push(addr.clone());
                    members.push(Member {
                        cmd: vec![
                            bin_dir.join("switchyard-control").display().to_string(),
                            "--id".into(),
                            (i + 1).to_string(),
                            "--listen".into(),
                            addr,
                            "--data-dir".into(),
                            dir.join(format!("node-{}", i + 1)).display().to_string(),
                            "--initial-cluster".into(),
                            initial.join(","),
                        ]
                        .into_iter()
                        .chain(pki.iter().flat_map(|_| {
                            ["--tls-ca".into(), pem("ca.crt"), "--tls-cert".into(), pem("node.crt")]
                                .into_iter()
                                .chain(["--tls-key".into(), pem("node.key")])
                        }))
                        .collect(),
                        log: dir.join(format!("node-{}.log", i + 1)),
                        child: None,
                    });
                }
            }
            "etcd" => {
                let initial: Vec<String> =
                    (0..n).map(|i| format!("n{}={scheme}://127.0.0.1:{}", i + 1, p[3 + i])).collect();
                for i in 0..n {
                    let client = format!("{scheme}://127.0.0.1:{}", p[i]);
                    let peer = format!("{scheme}://127.0.0.1:{}", p[3 + i]);
                    client_addrs.push(format!("127.0.0.1:{}", p[i]));
                    let cmd = [
                        "etcd",
                        "--name",
                        &format!("n{}", i + 1),
                        "--data-dir",
                        &dir.join(format!("n{}", i + 1)).display().to_string(),
                        "--listen-client-urls",
                        &client,
                        "--advertise-client-urls",
                        &client,
                        "--listen-peer-urls",
                        &peer,
                        "--initial-advertise-peer-urls",
                        &peer,
                        "--initial-cluster",
                        &initial.join(","),
                        "--initial-cluster-token",
                        "bench",
                        "--initial-cluster-state",
                        "new",
                    ]
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>();
                    let mut cmd = cmd;
                    if pki.is_some() {
                        for (flag, file) in [
                            ("--trusted-ca-file", "ca.crt"),
                            ("--cert-file", "node.crt"),
                            ("--key-file", "node.key"),
                            ("--peer-trusted-ca-file", "ca.crt"),
                            ("--peer-cert-file", "node.crt"),
                            ("--peer-key-file", "node.key"),
                        ] {
                            cmd.extend([flag.to_string(), pem(file)]);
                        }
                        cmd.extend(["--client-cert-auth".into(), "--peer-client-cert-auth".into()]);
                    }
                    if let Some([heartbeat, election]) = etcd_timing {
                        cmd.extend(["--heartbeat-interval".into(), heartbeat.to_string()]);
                        cmd.extend(["--election-timeout".into(), election.to_string()]);
                    }
                    members.push(Member { cmd, log: dir.join(format!("n{}.log", i + 1)), child: None });
                }
            }
            other => bail!("unknown system {other:?}: switchyard or etcd"),
        }
        for m in &mut members {
            m.start()?;
        }
        Ok(Cluster { system: system.into(), client_addrs, members })
    }

    /// Every running member answers and agrees on a leader.
    pub async fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        if self.system == "etcd" {
            while !crate::target::learn_etcd_ids(&self.client_addrs).await {
                if Instant::now() > deadline {
                    bail!("etcd members did not answer within 30s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        loop {
            let mut ok = true;
            for (i, a) in self.client_addrs.iter().enumerate() {
                if self.members[i].child.is_none() {
                    continue;
                }
                ok &= crate::target::Conn::new(&self.system, a).leader_index().await.is_some();
            }
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} cluster not ready after 30s", self.system);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn leader(&self) -> Result<usize> {
        for a in &self.client_addrs {
            if let Some(l) = crate::target::Conn::new(&self.system, a).leader_index().await {
                return Ok(l);
            }
        }
        bail!("no leader")
    }

    /// CPU seconds (user + system) the running members have used so far, from
    /// `/proc/PID/stat`: the cost of a phase is the difference across it, a figure the
    /// machine's noise moves less than a rate does.
    pub fn cpu_seconds(&self) -> f64 {
        self.members.iter().filter_map(|m| m.child.as_ref()).filter_map(|c| cpu_seconds_of(&c.id().to_string())).sum()
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.members[i].start()
    }

    pub fn stop(&mut self) {
        for i in 0..self.members.len() {
            self.kill9(i);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// CPU seconds (user + system) process `pid` (or `self`) has used so far, from
/// `/proc/PID/stat`; `None` once it is gone.
pub fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) are space-separated; utime and
    // stime are the 14th and 15th fields of the whole line, in USER_HZ (100 on Linux) ticks.
    let f: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    Some((f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?) as f64 / 100.0)
}
