//! Reading a secret from the controlling terminal, without echo.

use std::fs::OpenOptions;
use std::io::{self, BufRead, Write};
use std::os::fd::AsRawFd;

/// Writes `prompt` to the controlling terminal and reads one line from it with echo
/// off (as getpass(3) does); the line without its end.
pub fn read_secret(prompt: &str) -> io::Result<String> {
    let tty = OpenOptions::new().read(true).write(true).open("/dev/tty")?;
    let fd = tty.as_raw_fd();
    // SAFETY: termios is plain data that tcgetattr fills in.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the call; `saved` is writable memory of the right type.
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut quiet = saved;
    quiet.c_lflag &= !(libc::ECHO | libc::ECHONL);
    quiet.c_lflag |= libc::ICANON;
    // SAFETY: as above; `quiet` is a valid termios copied from the terminal's own.
    if unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &quiet) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut w = &tty;
    let read = w.write_all(prompt.as_bytes()).and_then(|()| {
        let mut line = String::new();
        io::BufReader::new(&tty).read_line(&mut line)?;
        Ok(line)
    });
    // SAFETY: restores the settings read above on the same open terminal.
    unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &saved) };
    let _ = w.write_all(b"\n");
    let line = read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}
