//! The YAML reader and validator on any text (what anyone who can commit to a watched
//! directory controls). Invariants: no panic; every error is located within the text (a line
//! the text has, or 0 for file-level problems); the alias-bomb bound holds, so memory and time
//! per input stay small (libFuzzer's -rss_limit_mb and -timeout enforce it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let lines = orchestrator::spec::yaml::line_count(text);
    match orchestrator::spec::parse_str(Path::new("/nonexistent-fuzz-dir/input.yaml"), text) {
        Ok(manifests) => assert!(manifests.iter().all(|m| !m.resource.name.is_empty())),
        Err(errors) => {
            assert!(!errors.is_empty());
            for e in errors {
                assert!(e.line <= lines, "error at line {} of a {lines}-line text: {e}", e.line);
                assert!(!e.message.is_empty());
            }
        }
    }
});
