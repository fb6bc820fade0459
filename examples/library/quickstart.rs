//! microsandbox's Quick Start, and more, on the orchestrator as a Rust library: create a
//! sandbox from an OCI image, run a shell command, stream a command with stdin, write, read and
//! list files, copy a tree in and out, reconnect from a second process, stop, remove.
//!
//!   cargo run --example quickstart -- IMAGE          (e.g. alpine:3.20, oci-layout:DIR:TAG)
//!
//! Configuration comes from the environment as the CLI reads it (`ORCHESTRATOR_DATA_DIR`,
//! `ORCHESTRATOR_INSECURE_REGISTRIES`, ...). Run as root (namespace sandboxes need it). The
//! test suite builds and runs this program (tests/library.rs).

use orchestrator::{Config, ErrorKind, ExecEvent, Sandbox};
use std::error::Error;

/// Stops the program with a message when the sandbox did not do what the Quick Start says.
fn check(ok: bool, what: impl std::fmt::Display) -> Result<(), Box<dyn Error>> {
    if ok {
        Ok(())
    } else {
        Err(format!("quickstart: {what}").into())
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    // This program's own executable runs the sandboxes' shims: let it be one when asked,
    // before the runtime starts its threads.
    orchestrator::run_internal_command();
    let runtime = tokio::runtime::Runtime::new()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    runtime.block_on(async {
        match args.as_slice() {
            [flag, name] if flag == "--reconnect" => reconnect(name).await,
            [image] => quickstart(image).await,
            _ => Err("usage: quickstart IMAGE".into()),
        }
    })
}

async fn quickstart(image: &str) -> Result<(), Box<dyn Error>> {
    let name = format!("quickstart-{}", std::process::id());

    // Create a sandbox from an OCI image.
    let sandbox = Sandbox::builder(&name)
        .image(image)
        .cpus(1)
        .memory(256)
        .env("GREETING", "Hello from the orchestrator!")
        .patch(|p| p.mkdir("/srv", None).text("/srv/motd", "patched before the first start\n", None))
        .label("example", "quickstart")
        .create()
        .await?;
    println!("created {} ({})", sandbox.name(), sandbox.view().await?.isolation);

    // Run a shell command.
    let output = sandbox.shell("echo \"$GREETING\"").await?;
    print!("shell: {}", output.stdout()?);
    check(output.stdout()? == "Hello from the orchestrator!\n", "the shell's output")?;
    let failed = sandbox.exec("sh", ["-c", "echo oops >&2; exit 3"]).await?;
    check(failed.code() == 3 && failed.stderr()? == "oops\n", format!("exit 3 and stderr, got {failed:?}"))?;
    check(sandbox.fs().read_to_string("/srv/motd").await? == "patched before the first start\n", "the patch")?;

    // Stream a command, feeding its stdin.
    let mut upper = sandbox.exec_stream("tr", ["a-z", "A-Z"]).await?;
    upper.write_stdin("streamed\nthrough stdin\n").await?;
    upper.close_stdin()?;
    let (mut streamed, mut code) = (Vec::new(), None);
    while let Some(event) = upper.recv().await {
        match event {
            ExecEvent::Started { pid } => println!("stream: started as pid {pid}"),
            ExecEvent::Stdout(data) => streamed.extend_from_slice(&data),
            ExecEvent::Stderr(data) => eprint!("{}", String::from_utf8_lossy(&data)),
            ExecEvent::Exited(status) => code = status.code,
        }
    }
    print!("stream: {}", String::from_utf8_lossy(&streamed));
    check(streamed == b"STREAMED\nTHROUGH STDIN\n" && code == Some(0), "the streamed output")?;

    // Files: write, read, list, stat, rename, remove.
    let fs = sandbox.fs();
    fs.write("/tmp/config.json", b"{\"debug\": true}".to_vec()).await?;
    check(fs.read("/tmp/config.json").await? == b"{\"debug\": true}", "reading back a written file")?;
    let names: Vec<String> = fs.list("/tmp").await?.into_iter().map(|e| e.name).collect();
    println!("files: /tmp holds {names:?}");
    check(names.contains(&"config.json".to_string()), "listing /tmp")?;
    check(fs.stat("/tmp/config.json").await?.size == 15, "the file's size")?;
    fs.rename("/tmp/config.json", "/tmp/settings.json").await?;
    fs.remove("/tmp/settings.json").await?;
    check(!fs.exists("/tmp/settings.json").await?, "removing a file")?;
    match fs.read("/tmp/settings.json").await {
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        other => check(false, format!("reading a removed file gave {other:?}"))?,
    }

    // A tree in and out.
    let host = tempfile_dir()?;
    std::fs::create_dir_all(host.join("app/lib"))?;
    std::fs::write(host.join("app/lib/data.txt"), "tree data\n")?;
    fs.copy_in(host.join("app"), "/srv").await?;
    check(sandbox.shell("cat /srv/app/lib/data.txt").await?.stdout()? == "tree data\n", "copying a tree in")?;
    let (back, copied) = fs.copy_out("/srv/app", host.join("back")).await?;
    println!("copied out {copied} to {}", back.display());
    check(std::fs::read_to_string(back.join("lib/data.txt"))? == "tree data\n", "copying a tree out")?;

    // The sandbox is detached: a second process reconnects by name.
    let second = std::process::Command::new(std::env::current_exe()?).args(["--reconnect", &name]).output()?;
    print!("{}", String::from_utf8_lossy(&second.stdout));
    check(second.status.success(), format!("the second process: {}", String::from_utf8_lossy(&second.stderr)))?;

    // Stop, and wait until it has.
    sandbox.stop_and_wait().await?;
    let status = sandbox.view().await?.status;
    println!("stopped: status {status}");
    check(status == "Stopped", format!("status after stop_and_wait: {status}"))?;
    match sandbox.shell("true").await {
        Err(e) if e.kind() == ErrorKind::NotRunning => {}
        other => check(false, format!("exec into a stopped sandbox gave {other:?}"))?,
    }

    // Remove it; it is gone for every process.
    sandbox.remove().await?;
    match Sandbox::get(&name).await {
        Err(e) if e.kind() == ErrorKind::NotFound => println!("removed: {e}"),
        other => check(false, format!("Sandbox::get after remove gave {other:?}"))?,
    }
    std::fs::remove_dir_all(&host)?;
    println!("quickstart: ok");
    Ok(())
}

/// The second process: finds the sandbox by name and runs a command in it.
async fn reconnect(name: &str) -> Result<(), Box<dyn Error>> {
    let sandbox = Sandbox::get_in(Config::from_env(), name).await?;
    let output = sandbox.shell("echo reconnected to $(hostname)").await?;
    print!("second process: {}", output.stdout()?);
    check(output.success(), "the second process's command")
}

fn tempfile_dir() -> Result<std::path::PathBuf, Box<dyn Error>> {
    let dir = std::env::temp_dir().join(format!("quickstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
