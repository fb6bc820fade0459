//! A client of one sandbox's shim socket: handshake, exec with streamed output, the file API,
//! status, attach and stop. Blocking; one request in flight per call, except `exec_streaming`,
//! which lets a second thread feed stdin through a `Sender`.

use guest_agent::protocol::{
    self, AgentRequest, DirEntry, ErrorCode, ExecRequest, ExitStatus, FileStat, Frame, Response, ShimRequest,
    ShimStatus, CHUNK_LEN, PROTOCOL_VERSION,
};
use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the sandbox's shim at {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("connection to the sandbox lost: {0}")]
    Frame(#[from] protocol::FrameError),
    #[error("{message}")]
    Remote { code: ErrorCode, message: String },
    #[error("unexpected response: {0}")]
    Unexpected(String),
    /// Reading or writing this side's data (a host file, stdout), not the connection.
    #[error("{0}")]
    Local(std::io::Error),
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// Sends frames for one request from any thread (stdin, resize, signals).
#[derive(Clone)]
pub struct Sender {
    stream: Arc<Mutex<UnixStream>>,
    id: u64,
}

impl Sender {
    pub fn send(&self, body: impl Into<ShimRequest>) -> bool {
        let Ok(buf) = protocol::encode(&Frame { id: self.id, body: body.into() }) else { return false };
        self.stream.lock().unwrap_or_else(|e| e.into_inner()).write_all(&buf).is_ok()
    }
}

pub struct ShimClient {
    reader: BufReader<UnixStream>,
    writer: Arc<Mutex<UnixStream>>,
    next_id: u64,
    /// The handshake's id while its answer has not been read ([`ShimClient::connect_pipelined`]).
    hello: Option<u64>,
}

/// Where streamed output goes.
pub enum Output<'a> {
    Stdout(&'a [u8]),
    Stderr(&'a [u8]),
}

fn remote(r: Response) -> ClientError {
    match r {
        Response::Error { code, message } => ClientError::Remote { code, message },
        other => ClientError::Unexpected(format!("{other:?}")),
    }
}

impl ShimClient {
    pub fn connect(socket: &Path) -> Result<ShimClient> {
        let stream = UnixStream::connect(socket)
            .map_err(|e| ClientError::Connect { path: socket.display().to_string(), source: e })?;
        Self::over(stream).map_err(|e| match e {
            ClientError::Connect { source, .. } => ClientError::Connect { path: socket.display().to_string(), source },
            other => other,
        })
    }

    /// A client over a stream already connected to a shim (or to whatever answers like one),
    /// after the handshake.
    pub fn over(stream: UnixStream) -> Result<ShimClient> {
        let mut c = Self::unchecked(stream)?;
        match c.call(ShimRequest::Hello { version: PROTOCOL_VERSION, client: "orchestrator".into() })? {
            Response::Hello { .. } => Ok(c),
            other => Err(remote(other)),
        }
    }

    fn unchecked(stream: UnixStream) -> Result<ShimClient> {
        let writer = stream.try_clone().map_err(|e| ClientError::Connect { path: String::new(), source: e })?;
        Ok(ShimClient { reader: BufReader::with_capacity(CHUNK_LEN + 64, stream), writer: Arc::new(Mutex::new(writer)), next_id: 1, hello: None })
    }

    /// Connects and sends the handshake without waiting for its answer, so the first request
    /// travels with it (one round trip fewer: `exec`'s fast path). A refused handshake is the
    /// first request's error.
    pub fn connect_pipelined(socket: &Path) -> Result<ShimClient> {
        let stream = UnixStream::connect(socket).map_err(|e| ClientError::Connect { path: socket.display().to_string(), source: e })?;
        let mut c = Self::unchecked(stream)?;
        c.hello = Some(c.start(ShimRequest::Hello { version: PROTOCOL_VERSION, client: "orchestrator".into() })?);
        Ok(c)
    }

    /// Sends a request and returns its id.
    pub fn start(&mut self, body: impl Into<ShimRequest>) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let buf = protocol::encode(&Frame { id, body: body.into() })?;
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).write_all(&buf).map_err(protocol::FrameError::Io)?;
        Ok(id)
    }

    pub fn sender(&self, id: u64) -> Sender {
        Sender { stream: self.writer.clone(), id }
    }

    pub fn recv(&mut self) -> Result<Frame<Response>> {
        loop {
            let f: Frame<Response> = protocol::read_frame(&mut self.reader)?;
            if self.hello == Some(f.id) {
                self.hello = None;
                match f.body {
                    Response::Hello { .. } => continue,
                    other => return Err(remote(other)),
                }
            }
            return Ok(f);
        }
    }

    /// Next response for `id` (responses of other ids are dropped: one request at a time).
    fn recv_for(&mut self, id: u64) -> Result<Response> {
        loop {
            let f = self.recv()?;
            if f.id == id {
                return Ok(f.body);
            }
        }
    }

    pub fn call(&mut self, body: impl Into<ShimRequest>) -> Result<Response> {
        let id = self.start(body)?;
        self.recv_for(id)
    }

    fn expect_done(&mut self, body: impl Into<ShimRequest>) -> Result<()> {
        match self.call(body)? {
            Response::Done => Ok(()),
            other => Err(remote(other)),
        }
    }

    /// Runs a command, passing output to `on_output` as it arrives; `on_start` gets a sender for
    /// stdin / resize / signals and the process's pid once it runs. Returns its exit status.
    pub fn exec_streaming(
        &mut self,
        req: ExecRequest,
        on_start: impl FnOnce(Sender, u32),
        mut on_output: impl FnMut(Output<'_>),
    ) -> Result<ExitStatus> {
        let id = self.start(AgentRequest::Exec(Box::new(req)))?;
        let mut on_start = Some(on_start);
        loop {
            match self.recv_for(id)? {
                Response::Started { pid } => {
                    if let Some(f) = on_start.take() {
                        f(self.sender(id), pid);
                    }
                }
                Response::Stdout { data } => on_output(Output::Stdout(&data)),
                Response::Stderr { data } => on_output(Output::Stderr(&data)),
                Response::Exited(st) => return Ok(st),
                other => return Err(remote(other)),
            }
        }
    }

    /// Runs a command to completion and collects its output.
    pub fn exec(&mut self, req: ExecRequest) -> Result<(ExitStatus, Vec<u8>, Vec<u8>)> {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let st = self.exec_streaming(req, |_, _| {}, |o| match o {
            Output::Stdout(d) => out.extend_from_slice(d),
            Output::Stderr(d) => err.extend_from_slice(d),
        })?;
        Ok((st, out, err))
    }

    /// Streams a file into `out` as its chunks arrive (no whole-file buffer); returns its size.
    pub fn read_file_to(&mut self, path: &str, out: &mut dyn Write) -> Result<u64> {
        self.read_from_to(path, 0, out)
    }

    /// Streams a file from `offset` to its end into `out`; returns the bytes written.
    pub fn read_from_to(&mut self, path: &str, offset: u64, out: &mut dyn Write) -> Result<u64> {
        let id = self.start(AgentRequest::ReadFile { path: path.into(), offset, len: None })?;
        let mut total = 0u64;
        loop {
            match self.recv_for(id)? {
                Response::Data { data, eof } => {
                    out.write_all(&data).map_err(ClientError::Local)?;
                    total += data.len() as u64;
                    if eof {
                        return Ok(total);
                    }
                }
                other => return Err(remote(other)),
            }
        }
    }

    /// A file's bytes as a reader, pulled from the agent chunk by chunk (nothing buffered past
    /// one chunk). Read it to its end before the next request on this connection.
    pub fn read_file_stream(&mut self, path: &str) -> Result<FileStream<'_>> {
        let id = self.start(AgentRequest::ReadFile { path: path.into(), offset: 0, len: None })?;
        Ok(FileStream { client: self, id, chunk: Vec::new(), at: 0, eof: false })
    }

    /// Writes a file from `input` in chunks as they are read (the first truncates and sets
    /// `mode`); returns its size.
    pub fn write_file_from(&mut self, path: &str, input: &mut dyn std::io::Read, mode: Option<u32>) -> Result<u64> {
        let mut buf = vec![0u8; CHUNK_LEN];
        let mut offset = 0u64;
        loop {
            let mut filled = 0;
            while filled < buf.len() {
                match input.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(ClientError::Local(e)),
                }
            }
            if filled > 0 || offset == 0 {
                self.expect_done(AgentRequest::WriteFile { path: path.into(), offset, data: buf[..filled].to_vec(), truncate: offset == 0, mode })?;
            }
            offset += filled as u64;
            if filled < buf.len() {
                return Ok(offset);
            }
        }
    }

    pub fn read_file(&mut self, path: &str) -> Result<Vec<u8>> {
        self.read_range(path, 0, None)
    }

    /// At most `len` bytes (None: to the end) of a file from `offset`.
    pub fn read_range(&mut self, path: &str, offset: u64, len: Option<u64>) -> Result<Vec<u8>> {
        let id = self.start(AgentRequest::ReadFile { path: path.into(), offset, len })?;
        let mut out = Vec::new();
        loop {
            match self.recv_for(id)? {
                Response::Data { data, eof } => {
                    out.extend_from_slice(&data);
                    if eof {
                        return Ok(out);
                    }
                }
                other => return Err(remote(other)),
            }
        }
    }

    /// Writes a whole file in chunks (the first truncates).
    pub fn write_file(&mut self, path: &str, data: &[u8], mode: Option<u32>) -> Result<()> {
        let mut offset = 0usize;
        loop {
            let end = (offset + CHUNK_LEN).min(data.len());
            self.expect_done(AgentRequest::WriteFile {
                path: path.into(),
                offset: offset as u64,
                data: data[offset..end].to_vec(),
                truncate: offset == 0,
                mode,
            })?;
            offset = end;
            if offset >= data.len() {
                return Ok(());
            }
        }
    }

    pub fn list_dir(&mut self, path: &str) -> Result<Vec<DirEntry>> {
        let id = self.start(AgentRequest::ListDir { path: path.into() })?;
        let mut out = Vec::new();
        loop {
            match self.recv_for(id)? {
                Response::Entries(mut e) => out.append(&mut e),
                Response::Done => return Ok(out),
                other => return Err(remote(other)),
            }
        }
    }

    pub fn stat(&mut self, path: &str) -> Result<FileStat> {
        match self.call(AgentRequest::Stat { path: path.into(), follow_symlinks: false })? {
            Response::Stat(s) => Ok(s),
            other => Err(remote(other)),
        }
    }

    pub fn mkdir(&mut self, path: &str, parents: bool) -> Result<()> {
        self.expect_done(AgentRequest::Mkdir { path: path.into(), parents, mode: None })
    }

    pub fn remove(&mut self, path: &str, recursive: bool) -> Result<()> {
        self.expect_done(AgentRequest::Remove { path: path.into(), recursive })
    }

    pub fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        self.expect_done(AgentRequest::Rename { from: from.into(), to: to.into() })
    }

    pub fn status(&mut self) -> Result<ShimStatus> {
        match self.call(ShimRequest::Status)? {
            Response::Status(s) => Ok(s),
            other => Err(remote(other)),
        }
    }

    /// The resource figures of the sandbox whose shim listens on `socket`: one connection, the
    /// handshake pipelined with the request, every read and write bounded by `timeout`.
    pub fn sample_at(socket: &Path, timeout: std::time::Duration) -> Result<guest_agent::protocol::ResourceSample> {
        let stream = UnixStream::connect(socket).map_err(|e| ClientError::Connect { path: socket.display().to_string(), source: e })?;
        for set in [UnixStream::set_read_timeout, UnixStream::set_write_timeout] {
            set(&stream, Some(timeout)).map_err(|e| ClientError::Connect { path: socket.display().to_string(), source: e })?;
        }
        let mut c = Self::unchecked(stream)?;
        c.hello = Some(c.start(ShimRequest::Hello { version: PROTOCOL_VERSION, client: "orchestrator".into() })?);
        c.sample()
    }

    /// The sandbox's resource figures now, as its shim reads them.
    pub fn sample(&mut self) -> Result<guest_agent::protocol::ResourceSample> {
        match self.call(ShimRequest::Sample)? {
            Response::Sample(s) => Ok(s),
            other => Err(remote(other)),
        }
    }

    /// Kills every process in a sandbox without a main process but its agent.
    pub fn kill_others(&mut self) -> Result<()> {
        self.expect_done(ShimRequest::Agent(AgentRequest::KillOthers))
    }

    /// The host pid of a namespace sandbox's init, while it runs (not yet reaped).
    pub fn init_pid(&mut self) -> Result<u32> {
        match self.call(ShimRequest::InitPid)? {
            Response::InitPid { pid } => Ok(pid),
            other => Err(remote(other)),
        }
    }

    pub fn stop(&mut self, grace_ms: u64) -> Result<()> {
        self.expect_done(ShimRequest::Stop { grace_ms })
    }

    /// Attaches to the main process: returns the request id; read frames with `recv`.
    pub fn attach(&mut self) -> Result<u64> {
        let id = self.start(ShimRequest::Attach)?;
        match self.recv_for(id)? {
            Response::Ready => Ok(id),
            other => Err(remote(other)),
        }
    }
}

/// A file in a sandbox, read as it arrives ([`ShimClient::read_file_stream`]).
pub struct FileStream<'a> {
    client: &'a mut ShimClient,
    id: u64,
    chunk: Vec<u8>,
    at: usize,
    eof: bool,
}

impl std::io::Read for FileStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            if self.eof {
                return Ok(0);
            }
            match self.client.recv_for(self.id).map_err(std::io::Error::other)? {
                Response::Data { data, eof } => {
                    (self.chunk, self.at, self.eof) = (data, 0, eof);
                }
                other => return Err(std::io::Error::other(remote(other))),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
