//! The smtpd.conf parser on arbitrary text: it must never panic, and every refusal
//! must name the file and a line of the input.
//!
//! The text is parsed as if read from a directory that does not exist, and inputs
//! that name an absolute or home path are skipped, so that no file of the machine is
//! read (an `include` of a device would never end). Run it where host names do not
//! reach a real nameserver: `listen on NAME` resolves NAME (fuzz/run-short.sh runs
//! this target in a mount namespace whose resolv.conf names no server).
#![no_main]

use std::collections::HashMap;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.contains('/') || text.contains('~') || text.len() > 4096 {
        return;
    }
    let path = Path::new("/nonexistent-fuzz-dir/smtpd.conf");
    let macros = HashMap::from([("host".to_string(), "mx.example.org".to_string())]);
    if let Err(e) = smtpd::config::parse(text, path, &macros) {
        let shown = e.to_string();
        let main = "/nonexistent-fuzz-dir/smtpd.conf:";
        assert!(
            shown.starts_with("/nonexistent-fuzz-dir/"),
            "refusal without the file: {shown}"
        );
        // A line number, when given for the main file, is one of its lines.
        if let Some(line) = shown
            .strip_prefix(main)
            .and_then(|rest| rest.split(':').next())
            .and_then(|n| n.parse::<usize>().ok())
        {
            let lines = text.lines().count().max(1);
            assert!(
                line <= lines + 1,
                "line {line} of a {lines}-line input: {shown}"
            );
        }
    }
});
