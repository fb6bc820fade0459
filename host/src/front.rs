//! `orchestrator`: the command users type. It runs the commands that must start fast itself
//! (`exec NAME -- CMD` on a running sandbox, `--version`) and hands every other one, unchanged,
//! to `orchestrator-core` beside it (the full CLI, the shims and the sandboxes' init).
//!
//! Why a second binary and not lazy initialisation: the core binary links wasmtime, the
//! registry client and rustls; loading it costs about 1.2 ms of CPU before `main` (its
//! relocations alone fault in some 240 pages), whatever `main` then skips. This one links only
//! the shim client, so `exec` starts in a fraction of that. Anything it does not recognise
//! exactly (another command, an unusual flag, `--help`, a sandbox not reachable by name) goes
//! to the core, which gives the same output and errors it always did.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

/// `exec` as the fast path understands it.
struct FastExec {
    data_dir: Option<PathBuf>,
    name: String,
    options: orchestrator::cli::ExecFlags,
    command: Vec<String>,
}

/// Parses `[--data-dir DIR] exec [-i] [-t] [-e K=V]... [-w DIR] [-u USER] [--timeout S] NAME --
/// CMD...`; None for anything else (the core parses it).
fn parse(args: &[String]) -> Option<FastExec> {
    let mut data_dir = None;
    let mut i = 0;
    let value = |i: &mut usize| -> Option<String> {
        *i += 1;
        args.get(*i).cloned()
    };
    while i < args.len() && args[i] != "exec" {
        match args[i].as_str() {
            "--data-dir" => data_dir = Some(PathBuf::from(value(&mut i)?)),
            a if a.starts_with("--data-dir=") => data_dir = Some(PathBuf::from(&a["--data-dir=".len()..])),
            _ => return None,
        }
        i += 1;
    }
    i += 1;
    let mut options = orchestrator::cli::ExecFlags::default();
    let name = loop {
        let a = args.get(i)?.as_str();
        match a {
            "-i" | "--interactive" => options.interactive = true,
            "-t" | "--tty" => options.tty = true,
            "-it" | "-ti" => (options.interactive, options.tty) = (true, true),
            "-e" | "--env" => options.env.push(value(&mut i)?),
            "-w" | "--workdir" => options.workdir = Some(value(&mut i)?),
            "-u" | "--user" => options.user = Some(value(&mut i)?),
            "--timeout" => options.timeout = Some(value(&mut i)?.parse().ok()?),
            "--data-dir" => data_dir = Some(PathBuf::from(value(&mut i)?)),
            a if a.starts_with('-') => return None,
            name => break name.to_string(),
        }
        i += 1;
    };
    if args.get(i + 1).map(String::as_str) != Some("--") || args.len() <= i + 2 {
        return None;
    }
    Some(FastExec { data_dir, name, options, command: args[i + 2..].to_vec() })
}

fn core_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    exe.with_file_name("orchestrator-core")
}

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let text: Option<Vec<String>> = args.iter().map(|a| a.to_str().map(String::from)).collect();
    // Debug logging is the core's (tracing); a user asking for it gets the core.
    if let (Some(text), None) = (&text, std::env::var_os("ORCHESTRATOR_LOG")) {
        if text.len() == 1 && (text[0] == "--version" || text[0] == "-V") {
            println!("orchestrator {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        if let Some(fast) = parse(text) {
            // SAFETY: restoring the default SIGPIPE disposition before any thread exists.
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
            let data_dir = fast
                .data_dir
                .or_else(|| std::env::var_os("ORCHESTRATOR_DATA_DIR").filter(|v| !v.is_empty()).map(PathBuf::from))
                .unwrap_or_else(orchestrator::paths::default_data_dir);
            if let Some(result) = orchestrator::cli::exec_by_name(&data_dir, &fast.name, fast.command, fast.options) {
                match result {
                    Ok(code) => std::process::exit(code),
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        std::process::exit(1);
                    }
                }
            }
        }
    }
    let core = core_binary();
    let err = std::process::Command::new(&core).arg0("orchestrator").args(&args).exec();
    eprintln!("error: cannot run {}: {err} (the orchestrator binary needs orchestrator-core beside it; reinstall both: `just build`)", core.display());
    std::process::exit(127);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn only_plain_execs_take_the_fast_path() {
        let f = parse(&args("exec -it -e A=1 -w /tmp -u 1000 --timeout 5 web -- sh -c true")).unwrap();
        assert_eq!((f.name.as_str(), f.command.len()), ("web", 3));
        assert!(f.options.interactive && f.options.tty);
        assert_eq!((f.options.env, f.options.workdir.as_deref(), f.options.user.as_deref(), f.options.timeout), (vec!["A=1".to_string()], Some("/tmp"), Some("1000"), Some(5)));
        assert_eq!(parse(&args("--data-dir /d exec web -- true")).unwrap().data_dir, Some(PathBuf::from("/d")));
        for other in ["get", "exec web", "exec web --", "exec web true", "exec --help web -- true", "exec -x web -- true", "--insecure-registry r exec web -- true", "exec --timeout x web -- true", "run busybox -- true"] {
            assert!(parse(&args(other)).is_none(), "{other}");
        }
    }
}
