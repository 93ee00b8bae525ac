//! `mda` delivery: run an administrator's command with the message on its stdin.
//!
//! The command runs as `/bin/sh -c SCRIPT smtpd-mda ARGS...`, in its own process group,
//! with only the environment it is given. SCRIPT is the administrator's text with
//! placeholders (see [`expand_command`](crate::format::expand_command)); envelope data
//! reaches the command only through ARGS and the environment, never through the text
//! the shell parses.
//!
//! The message goes to stdin through a socket rather than a pipe: writes to it never
//! raise SIGPIPE, so a command that exits without reading everything cannot kill the
//! delivery process, whatever its signal dispositions. Its exit status decides the
//! outcome instead. stdout and stderr share one socket; the first 512 bytes are kept to
//! explain a failure, the rest is drained and dropped.
//!
//! Exit status: 0 is delivered; 71 (EX_OSERR) and 75 (EX_TEMPFAIL) are temporary
//! failures, as are death by a signal and running past the timeout (the whole process
//! group is then killed); any other status is a permanent failure. The failure text is
//! the first non-empty line the command printed, else `command exited with status N`.

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::Outcome;
use crate::format::FormatCtx;

/// `$0` of the shell running an mda command, as seen in `ps` and error messages.
pub const ARGV0: &str = "smtpd-mda";

/// The `PATH` given to mda commands.
pub const DEFAULT_PATH: &str = "/usr/bin:/bin:/usr/sbin:/sbin:/usr/local/bin:/usr/local/sbin";

/// How much of the command's output is kept for the failure text.
const OUTPUT_KEEP: usize = 512;

/// Size of the copy buffer.
const CHUNK: usize = 64 * 1024;

/// How often blocked reads and writes look at the clock.
const TICK: Duration = Duration::from_millis(100);

/// sysexits(3) codes that mean "try again later".
const EX_OSERR: i32 = 71;
const EX_TEMPFAIL: i32 = 75;

/// The environment of an mda command, OpenSMTPD's set:
///
/// | variable | value |
/// |---|---|
/// | `DOMAIN` | domain of the recipient after expansion (`dest`) |
/// | `EXTENSION` | sub-address of `dest`'s user part; only set when there is one |
/// | `HOME` | the user's home directory |
/// | `LOCAL` | user part of `dest`, sub-address included |
/// | `LOGNAME`, `USER` | the user |
/// | `ORIGINAL_RECIPIENT` | the recipient before expansion (`rcpt`) |
/// | `PATH` | [`DEFAULT_PATH`] |
/// | `RECIPIENT` | `dest` |
/// | `SENDER` | the envelope sender, empty for the null sender |
/// | `SHELL` | `/bin/sh` |
///
/// Control characters in the values are replaced by `:`. The values are envelope data:
/// scripts should quote them (`"$SENDER"`) and never `eval` them.
pub fn mda_env(ctx: &FormatCtx) -> Vec<(String, String)> {
    let (local, domain) = ctx.dest.rsplit_once('@').unwrap_or((&ctx.dest, ""));
    let extension = match local.split_once(ctx.subaddr_delim) {
        Some((user, ext)) if !user.is_empty() => ext,
        _ => "",
    };
    let mut env = vec![
        ("DOMAIN", domain),
        ("HOME", ctx.home.as_str()),
        ("LOCAL", local),
        ("LOGNAME", ctx.user.as_str()),
        ("ORIGINAL_RECIPIENT", ctx.rcpt.as_str()),
        ("PATH", DEFAULT_PATH),
        ("RECIPIENT", ctx.dest.as_str()),
        ("SENDER", ctx.sender.as_str()),
        ("SHELL", "/bin/sh"),
        ("USER", ctx.user.as_str()),
    ];
    if !extension.is_empty() {
        env.push(("EXTENSION", extension));
        env.sort_by_key(|(k, _)| *k);
    }
    env.into_iter()
        .map(|(k, v)| (k.to_string(), clean(v)))
        .collect()
}

/// `s` with control characters replaced by `:`.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ':' } else { c })
        .collect()
}

/// Runs `/bin/sh -c script smtpd-mda args...` with exactly the environment `env`, feeds
/// it `msg` and waits at most `timeout` for it to exit.
///
/// The command inherits the caller's working directory, user and umask. See the module
/// documentation for how the result maps to an [`Outcome`].
pub fn run(
    script: &str,
    args: &[String],
    env: &[(String, String)],
    msg: &mut dyn Read,
    timeout: Duration,
) -> Outcome {
    let deadline = Instant::now() + timeout;
    let mut child = match spawn(script, args, env) {
        Ok(c) => c,
        Err(e) => return Outcome::TempFail(format!("cannot run command: {e}")),
    };

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let done = Arc::clone(&done);
        let output = child.output;
        thread::Builder::new()
            .name("mda-output".into())
            .spawn(move || collect_output(output, &done))
    };
    let reader = match reader {
        Ok(r) => r,
        Err(e) => {
            kill_group(&mut child.process);
            let _ = child.process.wait();
            return Outcome::TempFail(format!("cannot start output reader: {e}"));
        }
    };

    let fed = feed(&child.stdin, msg, deadline);
    let mut early_failure = None;
    let mut timed_out = false;
    match fed {
        Feed::Done => {}
        Feed::TimedOut => {
            kill_group(&mut child.process);
            timed_out = true;
        }
        // Kill before closing stdin: the command must not take a cut message for a
        // whole one.
        Feed::ReadFailed(e) => {
            kill_group(&mut child.process);
            early_failure = Some(format!("reading message: {e}"));
        }
        Feed::WriteFailed(e) => {
            kill_group(&mut child.process);
            early_failure = Some(format!("writing to command: {e}"));
        }
    }
    drop(child.stdin);

    let status = if timed_out {
        child.process.wait()
    } else {
        wait_until(&mut child.process, deadline).map(|(status, late)| {
            timed_out = late;
            status
        })
    };
    done.store(true, Ordering::Relaxed);
    let output = reader.join().unwrap_or_default();

    if let Some(text) = early_failure {
        return Outcome::TempFail(text);
    }
    if timed_out {
        return Outcome::TempFail(format!("command timed out after {timeout:?}"));
    }
    match status {
        Ok(status) => outcome(status, &output),
        Err(e) => Outcome::TempFail(format!("waiting for command: {e}")),
    }
}

/// The running command and our ends of its stdin and output.
struct Running {
    process: Child,
    stdin: UnixStream,
    output: UnixStream,
}

fn spawn(script: &str, args: &[String], env: &[(String, String)]) -> io::Result<Running> {
    let (stdin, child_stdin) = UnixStream::pair()?;
    let (output, child_stdout) = UnixStream::pair()?;
    let child_stderr = child_stdout.try_clone()?;
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(script)
        .arg(ARGV0)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::from(OwnedFd::from(child_stdin)))
        .stdout(Stdio::from(OwnedFd::from(child_stdout)))
        .stderr(Stdio::from(OwnedFd::from(child_stderr)))
        .process_group(0);
    let process = cmd.spawn()?;
    // `cmd` holds the child's ends; closing ours is what lets EOF through.
    drop(cmd);
    stdin.set_write_timeout(Some(TICK))?;
    output.set_read_timeout(Some(TICK))?;
    Ok(Running {
        process,
        stdin,
        output,
    })
}

/// How feeding the message went.
enum Feed {
    /// All written, or the command closed its stdin (its status will tell).
    Done,
    /// The deadline passed while the command was not reading.
    TimedOut,
    /// The message could not be read.
    ReadFailed(io::Error),
    /// Writing failed for another reason than the command going away.
    WriteFailed(io::Error),
}

fn feed(mut stdin: &UnixStream, msg: &mut dyn Read, deadline: Instant) -> Feed {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match msg.read(&mut buf) {
            Ok(0) => return Feed::Done,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Feed::ReadFailed(e),
        };
        let mut off = 0;
        while off < n {
            match stdin.write(&buf[off..n]) {
                Ok(k) => off += k,
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        if Instant::now() >= deadline {
                            return Feed::TimedOut;
                        }
                    }
                    io::ErrorKind::Interrupted => {}
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
                        return Feed::Done
                    }
                    _ => return Feed::WriteFailed(e),
                },
            }
        }
    }
}

/// Reads the command's output until EOF, keeping the first [`OUTPUT_KEEP`] bytes. Once
/// `done` is set (the command has exited) an idle tick ends the read, so a background
/// process that inherited the socket cannot hold the delivery.
fn collect_output(mut output: UnixStream, done: &AtomicBool) -> Vec<u8> {
    let mut kept = Vec::with_capacity(OUTPUT_KEEP);
    let mut buf = [0u8; 4096];
    loop {
        match output.read(&mut buf) {
            Ok(0) => return kept,
            Ok(n) => {
                let room = OUTPUT_KEEP - kept.len();
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) => match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    if done.load(Ordering::Relaxed) {
                        return kept;
                    }
                }
                _ => return kept,
            },
        }
    }
}

/// Waits for `child` until `deadline`, then kills its process group and reaps it; the
/// flag says whether that happened.
fn wait_until(child: &mut Child, deadline: Instant) -> io::Result<(ExitStatus, bool)> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((status, false));
        }
        let now = Instant::now();
        if now >= deadline {
            kill_group(child);
            return child.wait().map(|s| (s, true));
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Sends SIGKILL to the process group of `child` (which leads it), then to `child`.
///
/// The standard library has no killpg and this module stays free of unsafe code, so
/// the group is killed by the shell's `kill` builtin. `child` has not been reaped yet,
/// so its pid, which is the group id, cannot have been reused.
fn kill_group(child: &mut Child) {
    let pgid = child.id().to_string();
    let _ = Command::new("/bin/sh")
        .args(["-c", "kill -KILL -\"$1\" 2>/dev/null", "smtpd-kill", &pgid])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
}

/// Maps an exit status and the captured output to an outcome.
fn outcome(status: ExitStatus, output: &[u8]) -> Outcome {
    let said = first_line(output);
    if let Some(code) = status.code() {
        let text = || {
            said.clone()
                .unwrap_or_else(|| format!("command exited with status {code}"))
        };
        return match code {
            0 => Outcome::Ok,
            EX_OSERR | EX_TEMPFAIL => Outcome::TempFail(text()),
            _ => Outcome::PermFail(text()),
        };
    }
    let signal = status.signal().unwrap_or(0);
    Outcome::TempFail(said.unwrap_or_else(|| format!("command killed by signal {signal}")))
}

/// The first non-empty line of `output`, trimmed, control characters replaced.
fn first_line(output: &[u8]) -> Option<String> {
    String::from_utf8_lossy(output)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(clean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    use crate::testutil::TempDir;

    const MSG: &[u8] = b"Received: x\nSubject: hi\n\nbody\n";
    const SECOND: Duration = Duration::from_secs(1);

    fn env() -> Vec<(String, String)> {
        vec![("PATH".into(), DEFAULT_PATH.into())]
    }

    fn sh(script: &str, args: &[&str]) -> Outcome {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        run(script, &args, &env(), &mut &MSG[..], 10 * SECOND)
    }

    #[test]
    fn cat_to_a_file() {
        let t = TempDir::new("cat");
        let out = t.0.join("out");
        let args = [out.to_str().unwrap()];
        assert_eq!(sh("cat > \"$1\"", &args), Outcome::Ok);
        assert_eq!(fs::read(&out).unwrap(), MSG);
    }

    #[test]
    fn large_message_with_chatty_command() {
        let t = TempDir::new("large");
        let out = t.0.join("out");
        let mut msg = Vec::new();
        for i in 0..200_000 {
            msg.extend_from_slice(format!("line {i}\n").as_bytes());
        }
        // Echoes everything to stdout too: output must be drained while stdin is fed.
        let script = "tee \"$1\"";
        let args = [out.to_string_lossy().into_owned()];
        let r = run(script, &args, &env(), &mut &msg[..], 30 * SECOND);
        assert_eq!(r, Outcome::Ok);
        assert_eq!(fs::read(&out).unwrap(), msg);
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(
            sh("exit 75", &[]),
            Outcome::TempFail("command exited with status 75".into())
        );
        assert_eq!(
            sh("exit 71", &[]),
            Outcome::TempFail("command exited with status 71".into())
        );
        assert_eq!(
            sh("exit 1", &[]),
            Outcome::PermFail("command exited with status 1".into())
        );
        assert_eq!(
            sh("echo; echo '  mailbox full ' >&2; echo more; exit 67", &[]),
            Outcome::PermFail("mailbox full".into())
        );
        assert_eq!(
            sh("printf 'busy\\n'; exit 75", &[]),
            Outcome::TempFail("busy".into())
        );
        assert_eq!(
            sh("kill -TERM $$", &[]),
            Outcome::TempFail("command killed by signal 15".into())
        );
    }

    #[test]
    fn missing_program_is_permanent() {
        assert!(matches!(sh("/nonexistent/mda", &[]), Outcome::PermFail(_)));
    }

    #[test]
    fn early_exit_without_reading_is_fine() {
        let mut big = vec![b'x'; 4 << 20];
        big.push(b'\n');
        let r = run("exit 0", &[], &env(), &mut &big[..], 10 * SECOND);
        assert_eq!(r, Outcome::Ok);
        let r = run(
            "head -c 10 >/dev/null; exit 1",
            &[],
            &env(),
            &mut &big[..],
            10 * SECOND,
        );
        assert_eq!(r, Outcome::PermFail("command exited with status 1".into()));
    }

    #[test]
    fn timeout_kills_the_group() {
        let t = TempDir::new("timeout");
        let marker = t.0.join("marker");
        let args = [marker.to_string_lossy().into_owned()];
        // The subshell's sleep would create the marker if it survived the kill.
        let script = "(sleep 2; touch \"$1\") & sleep 30";
        let started = Instant::now();
        let r = run(
            script,
            &args,
            &env(),
            &mut &MSG[..],
            Duration::from_millis(300),
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(r, Outcome::TempFail("command timed out after 300ms".into()));
        thread::sleep(Duration::from_millis(2500));
        assert!(!marker.exists(), "a process of the group survived");
    }

    #[test]
    fn timeout_while_command_does_not_read() {
        let big = vec![b'x'; 8 << 20];
        let started = Instant::now();
        let r = run(
            "sleep 30",
            &[],
            &env(),
            &mut &big[..],
            Duration::from_millis(300),
        );
        assert!(
            matches!(r, Outcome::TempFail(ref t) if t.contains("timed out")),
            "{r:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn background_process_does_not_hold_delivery() {
        let started = Instant::now();
        assert_eq!(sh("sleep 3 >/dev/null 2>&1 & exit 0", &[]), Outcome::Ok);
        assert_eq!(sh("(sleep 3 &) ; exit 0", &[]), Outcome::Ok);
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn environment_is_only_what_we_pass() {
        let ctx = FormatCtx {
            sender: "a@b.c".into(),
            rcpt: "Orig+x@d.e".into(),
            dest: "bob+lists@d.e".into(),
            user: "bob".into(),
            home: "/home/bob".into(),
            subaddr_delim: '+',
        };
        let env = mda_env(&ctx);
        let t = TempDir::new("env");
        let out = t.0.join("env");
        let script = "env | sort > \"$1\"";
        let args = [out.to_string_lossy().into_owned()];
        assert_eq!(
            run(script, &args, &env, &mut &MSG[..], 10 * SECOND),
            Outcome::Ok
        );
        let got = fs::read_to_string(&out).unwrap();
        for want in [
            "DOMAIN=d.e",
            "EXTENSION=lists",
            "HOME=/home/bob",
            "LOCAL=bob+lists",
            "LOGNAME=bob",
            "ORIGINAL_RECIPIENT=Orig+x@d.e",
            "RECIPIENT=bob+lists@d.e",
            "SENDER=a@b.c",
            "SHELL=/bin/sh",
            "USER=bob",
        ] {
            assert!(got.lines().any(|l| l == want), "{want} missing in {got}");
        }
        assert!(got.contains(&format!("PATH={DEFAULT_PATH}")));
        // Nothing leaks from our own environment (the shell may add PWD and the like).
        for line in got.lines() {
            let name = line.split('=').next().unwrap();
            assert!(
                env.iter().any(|(k, _)| k == name)
                    || ["PWD", "OLDPWD", "SHLVL", "_"].contains(&name),
                "unexpected {line}"
            );
        }
    }

    #[test]
    fn env_values_are_cleaned_and_extension_optional() {
        let ctx = FormatCtx {
            sender: "a\nb@c".into(),
            dest: "bob@d".into(),
            ..FormatCtx::default()
        };
        let env = mda_env(&ctx);
        assert!(env.iter().all(|(k, _)| k != "EXTENSION"));
        assert!(env.contains(&("SENDER".into(), "a:b@c".into())));
        assert!(env.contains(&("LOCAL".into(), "bob".into())));
        assert!(env.contains(&("DOMAIN".into(), "d".into())));
    }

    #[test]
    fn hostile_arguments_arrive_intact_and_unexecuted() {
        let t = TempDir::new("hostile");
        let out = t.0.join("out");
        let pwned = t.0.join("pwned");
        let evil = format!(
            ";touch {p}; $(touch {p}) `touch {p}` ' \" * \\",
            p = pwned.display()
        );
        let args = [out.to_string_lossy().into_owned(), evil.clone()];
        let script = "printf '%s' \"$2\" > \"$1\"; cat >/dev/null";
        assert_eq!(
            run(script, &args, &env(), &mut &MSG[..], 10 * SECOND),
            Outcome::Ok
        );
        assert_eq!(fs::read_to_string(&out).unwrap(), evil);
        assert!(!pwned.exists());

        // End to end with the format expansion, as privsep uses it.
        let ctx = FormatCtx {
            sender: format!(";touch {};", pwned.display()),
            ..FormatCtx::default()
        };
        let fmt = format!("printf '%s' %{{sender:raw}} > {}", out.display());
        let (script, args) = crate::format::expand_command(&fmt, &ctx).unwrap();
        assert!(!script.contains("touch"));
        assert_eq!(
            run(&script, &args, &env(), &mut &MSG[..], 10 * SECOND),
            Outcome::Ok
        );
        assert_eq!(fs::read_to_string(&out).unwrap(), ctx.sender);
        assert!(!pwned.exists());
    }

    #[test]
    fn argv0_is_ours() {
        let t = TempDir::new("argv0");
        let out = t.0.join("out");
        let args = [out.to_str().unwrap()];
        assert_eq!(sh("echo \"$0\" > \"$1\"", &args), Outcome::Ok);
        assert_eq!(fs::read_to_string(&out).unwrap(), "smtpd-mda\n");
    }

    #[test]
    fn output_is_bounded() {
        let r = sh("yes 0123456789 | head -c 100000; exit 1", &[]);
        assert_eq!(r, Outcome::PermFail("0123456789".into()));
        assert_eq!(first_line(b"\n \n\x1b[31mred\n"), Some(":[31mred".into()));
        assert_eq!(first_line(b""), None);
    }
}
