//! Chrome/Perfetto trace-event JSON, so a run can be opened in a browser
//! (ui.perfetto.dev or chrome://tracing): one track per device, one instant per event.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use crate::TraceEvent;

/// Streams events to a JSON file as they happen (memory stays flat on long runs).
pub struct PerfettoWriter {
    out: BufWriter<File>,
    first: bool,
    named: Vec<bool>,
}

fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

impl PerfettoWriter {
    /// Creates `path` and writes the JSON header.
    pub fn create(path: &Path) -> io::Result<PerfettoWriter> {
        let mut out = BufWriter::new(File::create(path)?);
        out.write_all(b"{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n")?;
        Ok(PerfettoWriter {
            out,
            first: true,
            named: Vec::new(),
        })
    }

    fn record(&mut self, json: &str) -> io::Result<()> {
        if !self.first {
            self.out.write_all(b",\n")?;
        }
        self.first = false;
        self.out.write_all(json.as_bytes())
    }

    /// Appends one event (an instant on the device's track).
    pub fn event(&mut self, e: &TraceEvent<'_>) -> io::Result<()> {
        if self.named.len() <= e.node {
            self.named.resize(e.node + 1, false);
        }
        if !self.named[e.node] {
            self.named[e.node] = true;
            let meta = format!(
                "{{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":{0},\"args\":{{\"name\":\"device {0}\"}}}}",
                e.node
            );
            self.record(&meta)?;
        }
        // The line starts with the time; the rest names what happened.
        let what = e.line.split_once(' ').map_or(e.line, |(_, rest)| rest.trim_start());
        let name = what.split(" | ").next().unwrap_or(what);
        let mut j = String::with_capacity(96 + e.line.len());
        j.push_str("{\"name\":\"");
        escape(name, &mut j);
        j.push_str(&format!(
            "\",\"ph\":\"i\",\"s\":\"t\",\"pid\":1,\"tid\":{},\"ts\":{}.{:03},\"args\":{{\"line\":\"",
            e.node,
            e.time_ns / 1000,
            e.time_ns % 1000
        ));
        escape(what, &mut j);
        j.push_str("\"}}");
        self.record(&j)
    }

    /// Closes the JSON document.
    pub fn finish(mut self) -> io::Result<()> {
        self.out.write_all(b"\n]}\n")?;
        self.out.flush()
    }
}
