//! What a plugin returns besides patches, as the host lowers it from the component: secret
//! values (or errors), deny reasons, and cache times. Invariants: no panic; an accepted secret
//! is 1 byte to 64 KiB and exactly what the plugin gave; an error names the plugin and never
//! contains the value; a reason is at most 1 KiB plus a note of the cut, valid UTF-8 and a prefix
//! of what was given; a cache time is at most an hour, so a cache deadline never overflows.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use orchestrator::plugin::{lower_cache_seconds, lower_reason, lower_secret};

#[derive(Arbitrary, Debug)]
struct Input {
    plugin: String,
    key: String,
    answer: Result<String, String>,
    /// Stretches the value past the size limit now and then.
    repeat: u8,
    reason: String,
    cache_seconds: u32,
}

fuzz_target!(|input: Input| {
    let answer = match input.answer {
        Ok(v) if input.repeat > 250 => Ok(v.repeat(usize::from(input.repeat) * 300).chars().take(70_000).collect()),
        other => other,
    };
    let given = answer.clone();
    match lower_secret(&input.plugin, &input.key, answer) {
        Ok(value) => {
            assert_eq!(Ok(&value), given.as_ref());
            assert!(!value.is_empty() && value.len() <= 64 * 1024);
        }
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains(&input.plugin), "the error names the plugin: {text}");
            if let Ok(value) = &given {
                if value.len() >= 8 {
                    assert!(!text.contains(value.as_str()), "an error never carries the value");
                }
            }
        }
    }
    let kept = lower_reason(input.reason.clone());
    if kept != input.reason {
        let cut = kept.split("… (").next().unwrap_or("");
        assert!(cut.len() <= 1024 && input.reason.starts_with(cut), "{kept:?}");
    }
    let seconds = lower_cache_seconds(input.cache_seconds);
    assert!(seconds <= 3600);
    assert!(std::time::Instant::now().checked_add(std::time::Duration::from_secs(u64::from(seconds))).is_some());
});
