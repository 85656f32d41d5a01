//! A real SMTP server for the email tests: aiosmtpd (PyPI; `scripts/test` installs it into `.venv-test/` and sets
//! `PLUMB_TEST_PYTHON`), run as a child process on a free loopback port with a certificate from a throw-away test
//! CA, killed when its guard is dropped. Received mail lands in a Maildir and is parsed with Python's `email`
//! package, so the MIME is checked by a parser that is not ours.

use serde::Deserialize;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Python with aiosmtpd. Fails (never skips) when the environment does not provide it.
pub fn python() -> PathBuf {
    match std::env::var_os("PLUMB_TEST_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!(
            "PLUMB_TEST_PYTHON is not set. The email tests need a real SMTP server (aiosmtpd): run them through \
             scripts/test, which installs it into .venv-test/ and sets PLUMB_TEST_PYTHON, or run scripts/test once \
             and then `PLUMB_TEST_PYTHON=$PWD/.venv-test/bin/python cargo test --test alerts_email`"
        ),
    }
}

/// A port on 127.0.0.1 that nothing listens on (at the time of asking).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    l.local_addr().expect("local addr").port()
}

/// A test CA and a server certificate it signed (for `localhost`, `127.0.0.1` and `::1` unless told otherwise),
/// written as PEM files.
pub struct Pki {
    dir: tempfile::TempDir,
    /// The CA certificate (what a sink's `ca` holds).
    pub ca_pem: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        Pki::for_names(name, &["localhost", "127.0.0.1", "::1"])
    }

    /// The same with a server certificate for exactly these names.
    pub fn for_names(name: &str, names: &[&str]) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("plumb test CA {name}"));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca, ca_key);

        let leaf_key = KeyPair::generate().expect("server key");
        let mut leaf =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("server params");
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let leaf_cert = leaf
            .signed_by(&leaf_key, &issuer)
            .expect("server certificate");

        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("server.crt");
        let key = dir.path().join("server.key");
        // The chain: the server sends its certificate; the client trusts the CA.
        std::fs::write(&cert, leaf_cert.pem()).expect("write cert");
        std::fs::write(&key, leaf_key.serialize_pem()).expect("write key");
        std::fs::write(dir.path().join("ca.crt"), ca_cert.pem()).expect("write CA");
        Pki {
            dir,
            ca_pem: ca_cert.pem(),
            cert,
            key,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// How the CLI server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// STARTTLS offered and required before MAIL (aiosmtpd's default with `--tlscert`).
    StartTls,
    /// Implicit TLS (`--smtpscert`).
    Implicit,
    /// No TLS at all: STARTTLS is not offered.
    NoTls,
}

/// A running aiosmtpd; killed on drop.
pub struct SmtpServer {
    child: Child,
    pub port: u16,
    pub maildir: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The AUTH server: aiosmtpd's `Controller` with an authenticator for one user, STARTTLS required, AUTH only
/// after TLS. Its handler stores each mail in a Maildir with aiosmtpd's `X-MailFrom` and `X-RcptTo`, `X-Test-TLS` (was the session encrypted) and
/// `X-Test-User` (who authenticated) added, and scripts RCPT answers: `bad…@` gets 550, `busy…@` gets 451.
const AUTH_SERVER: &str = r#"
import mailbox, ssl, sys, threading
from email import message_from_bytes
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

host, port, cert, key, maildir, user, password = sys.argv[1:8]
box = mailbox.Maildir(maildir)

class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("bad"):
            return "550 5.1.1 no such user here"
        if address.startswith("busy"):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        msg = message_from_bytes(envelope.content)
        msg["X-MailFrom"] = envelope.mail_from
        msg["X-RcptTo"] = ", ".join(envelope.rcpt_tos)
        msg["X-Test-TLS"] = "yes" if session.ssl is not None else "no"
        msg["X-Test-User"] = session.auth_data.decode() if session.authenticated else "-"
        box.add(msg)
        return "250 OK"

def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (isinstance(auth_data, LoginPassword)
          and auth_data.login == user.encode() and auth_data.password == password.encode())
    # handled=False: aiosmtpd answers (235 or 535) itself; its default (True) would leave the client waiting.
    return AuthResult(success=ok, handled=False, auth_data=auth_data.login if ok else None)

ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
controller = Controller(Handler(), hostname=host, port=int(port), tls_context=ctx, require_starttls=True,
                        authenticator=authenticator, auth_require_tls=True, auth_required=True)
controller.start()
print("ready", flush=True)
threading.Event().wait()
"#;

/// Parse every mail in `MAILDIR/new` with Python's `email` package: headers (decoded), the top-level content
/// type, and each part's content type and decoded text.
const PARSE_MAILDIR: &str = r#"
import json, os, re, sys
from email import message_from_binary_file, policy
new = os.path.join(sys.argv[1], "new")
out = []
# Arrival order: Maildir names are "SECONDS.M<microseconds>P<pid>Q<counter>.host"; the microseconds are not
# zero-padded (a plain sort misorders two mails of one second), the counter grows with every delivery.
def arrival(name):
    q = re.search(r"Q(\d+)", name)
    return (int(name.split(".")[0]) if name.split(".")[0].isdigit() else 0, int(q.group(1)) if q else 0, name)
for name in sorted(os.listdir(new), key=arrival) if os.path.isdir(new) else []:
    with open(os.path.join(new, name), "rb") as f:
        m = message_from_binary_file(f, policy=policy.default)
    parts = []
    if m.is_multipart():
        for p in m.iter_parts():
            parts.append({"content_type": p.get_content_type(), "charset": p.get_content_charset() or "",
                          "body": p.get_content() if p.get_content_maintype() == "text" else ""})
    out.append({"headers": [[k, str(v)] for k, v in m.items()], "content_type": m.get_content_type(),
                "parts": parts, "defects": [repr(d) for d in m.defects]})
print(json.dumps(out))
"#;

impl SmtpServer {
    /// `python -m aiosmtpd` with the Mailbox handler, listening on a free loopback port.
    pub fn start(mode: Mode, pki: Option<&Pki>) -> SmtpServer {
        SmtpServer::start_on(mode, pki, free_port())
    }

    /// The same on a given port (a server that comes back where it was).
    pub fn start_on(mode: Mode, pki: Option<&Pki>, port: u16) -> SmtpServer {
        let dir = tempfile::tempdir().expect("tempdir");
        // aiosmtpd's Mailbox creates the Maildir; an existing empty directory would make DATA fail.
        let maildir = dir.path().join("maildir");
        let mut cmd = Command::new(python());
        cmd.args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"));
        let tls = |flag: &str| {
            let p = pki.expect("a TLS server needs certificates");
            [
                format!("--{flag}cert"),
                p.cert.display().to_string(),
                format!("--{flag}key"),
                p.key.display().to_string(),
            ]
        };
        match mode {
            Mode::StartTls => {
                cmd.args(tls("tls"));
            }
            Mode::Implicit => {
                cmd.args(tls("smtps"));
            }
            Mode::NoTls => {}
        }
        cmd.args(["-c", "aiosmtpd.handlers.Mailbox"]).arg(&maildir);
        Self::spawn(cmd, dir, port, maildir)
    }

    /// The AUTH server (see [`AUTH_SERVER`]) accepting `user`/`password`.
    pub fn start_auth(pki: &Pki, user: &str, password: &str) -> SmtpServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("auth_server.py");
        std::fs::write(&script, AUTH_SERVER).expect("write script");
        let maildir = dir.path().join("maildir");
        let port = free_port();
        let mut cmd = Command::new(python());
        cmd.arg(&script)
            .arg("127.0.0.1")
            .arg(port.to_string())
            .arg(&pki.cert)
            .arg(&pki.key)
            .arg(&maildir)
            .arg(user)
            .arg(password);
        Self::spawn(cmd, dir, port, maildir)
    }

    fn spawn(mut cmd: Command, dir: tempfile::TempDir, port: u16, maildir: PathBuf) -> SmtpServer {
        let log = dir.path().join("server.log");
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start aiosmtpd with {}: {e}", python().display()));
        let mut server = SmtpServer {
            child,
            port,
            maildir,
            log,
            _dir: dir,
        };
        server.wait_ready();
        server
    }

    /// Until the port accepts connections; fails with the server's output if it exits or takes too long.
    fn wait_ready(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let t0 = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "aiosmtpd exited ({status}) before listening on {addr}:\n{}",
                    self.log()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if t0.elapsed() > Duration::from_secs(20) {
                panic!(
                    "aiosmtpd did not listen on {addr} within 20s:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the server printed so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Every mail received so far, parsed by Python's `email` package.
    pub fn mails(&self) -> Vec<Mail> {
        let out = Command::new(python())
            .arg("-c")
            .arg(PARSE_MAILDIR)
            .arg(&self.maildir)
            .output()
            .expect("run the Maildir parser");
        assert!(
            out.status.success(),
            "parsing {} failed: {}",
            self.maildir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("parser output is JSON")
    }

    /// Wait until `n` mails have arrived (aiosmtpd writes them before answering 250, so this is quick).
    pub fn wait_mails(&self, n: usize) -> Vec<Mail> {
        let t0 = Instant::now();
        loop {
            let m = self.mails();
            if m.len() >= n || t0.elapsed() > Duration::from_secs(10) {
                assert_eq!(m.len(), n, "mails received\nserver log:\n{}", self.log());
                return m;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One received mail, as Python's `email` package parsed it.
#[derive(Debug, Deserialize)]
pub struct Mail {
    pub headers: Vec<(String, String)>,
    pub content_type: String,
    pub parts: Vec<MailPart>,
    pub defects: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct MailPart {
    pub content_type: String,
    pub charset: String,
    pub body: String,
}

impl Mail {
    /// Every value of header `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The one value of header `name`; fails when it is missing or repeated.
    pub fn header(&self, name: &str) -> &str {
        let v = self.all(name);
        assert_eq!(v.len(), 1, "header {name} in {self:#?}");
        v[0]
    }

    /// The body of the one part of this content type.
    pub fn part(&self, content_type: &str) -> &str {
        let p: Vec<&MailPart> = self
            .parts
            .iter()
            .filter(|p| p.content_type == content_type)
            .collect();
        assert_eq!(p.len(), 1, "one {content_type} part in {self:#?}");
        &p[0].body
    }
}
