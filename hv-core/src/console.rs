//! The shared console: one output stream (the serial port) carrying the hypervisor's log
//! and every domain's console output, each line prefixed by its source (`[hv] `,
//! `[d0] `, `[d1] ` ...).
//!
//! Domains write arbitrary byte runs; [`LineBuffer`] collects them into whole lines so
//! lines from different sources never interleave mid-line. Output from unprivileged
//! domains is sanitised (control characters other than tab become `?`) so a guest cannot
//! forge another source's prefix with a carriage return or drive the terminal with
//! escape sequences. Lines longer than the buffer are split.

use core::fmt::Write;

/// Where console output goes (the serial port, or a `String` in tests).
pub trait ConsoleSink: Write {
    /// Polls for console input; returns bytes read into `buf` (0 if none).
    fn read_input(&mut self, buf: &mut [u8]) -> usize;
}

/// Maximum line length before a forced break.
pub const LINE_MAX: usize = 160;

/// Accumulates one domain's partial output line.
#[derive(Clone, Copy)]
pub struct LineBuffer {
    buf: [u8; LINE_MAX],
    len: usize,
}

impl Default for LineBuffer {
    fn default() -> Self {
        LineBuffer {
            buf: [0; LINE_MAX],
            len: 0,
        }
    }
}

impl LineBuffer {
    /// Appends `bytes`, emitting each completed line as `prefix` + line + `\n`.
    pub fn push(&mut self, bytes: &[u8], sanitise: bool, emit: &mut dyn FnMut(&[u8])) {
        for &b in bytes {
            if b == b'\n' {
                emit(&self.buf[..self.len]);
                self.len = 0;
                continue;
            }
            if b == b'\r' {
                continue;
            }
            let b = if sanitise && (b < 0x20 && b != b'\t' || b == 0x7f) {
                b'?'
            } else {
                b
            };
            if self.len == LINE_MAX {
                emit(&self.buf[..self.len]);
                self.len = 0;
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
    }

    /// Emits a pending partial line, if any.
    pub fn flush(&mut self, emit: &mut dyn FnMut(&[u8])) {
        if self.len > 0 {
            emit(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

/// Writes `[prefix] line\n` to `sink`, replacing invalid UTF-8.
pub fn emit_line(sink: &mut dyn Write, prefix: core::fmt::Arguments<'_>, line: &[u8]) {
    let _ = sink.write_str("[");
    let _ = sink.write_fmt(prefix);
    let _ = sink.write_str("] ");
    for chunk in line.utf8_chunks() {
        let _ = sink.write_str(chunk.valid());
        if !chunk.invalid().is_empty() {
            let _ = sink.write_str("\u{fffd}");
        }
    }
    let _ = sink.write_str("\n");
}

/// A console sink that records into a `String` (host tests).
#[cfg(not(target_os = "none"))]
#[derive(Default)]
pub struct StringConsole {
    /// Everything written.
    pub out: String,
    /// Pending input.
    pub input: std::collections::VecDeque<u8>,
}

#[cfg(not(target_os = "none"))]
impl Write for StringConsole {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.out.push_str(s);
        Ok(())
    }
}

#[cfg(not(target_os = "none"))]
impl ConsoleSink for StringConsole {
    fn read_input(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() {
            match self.input.pop_front() {
                Some(b) => {
                    buf[n] = b;
                    n += 1;
                }
                None => break,
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]], sanitise: bool) -> Vec<String> {
        let mut lb = LineBuffer::default();
        let mut out = vec![];
        for c in chunks {
            lb.push(c, sanitise, &mut |l| {
                out.push(String::from_utf8_lossy(l).into_owned())
            });
        }
        lb.flush(&mut |l| out.push(String::from_utf8_lossy(l).into_owned()));
        out
    }

    #[test]
    fn joins_partial_writes_into_lines() {
        assert_eq!(
            lines(&[b"hel", b"lo\nwor", b"ld"], true),
            vec!["hello", "world"]
        );
    }

    #[test]
    fn sanitises_control_characters() {
        assert_eq!(lines(&[b"a\r\x1b[2Jb\x07\n"], true), vec!["a?[2Jb?"]);
        assert_eq!(lines(&[b"a\x1bb\n"], false), vec!["a\x1bb"]);
    }

    #[test]
    fn splits_overlong_lines() {
        let long = vec![b'x'; LINE_MAX + 5];
        let l = lines(&[&long], true);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].len(), LINE_MAX);
        assert_eq!(l[1].len(), 5);
    }

    #[test]
    fn emit_line_formats_prefix() {
        let mut s = String::new();
        emit_line(&mut s, format_args!("d{}", 3), b"hi\xff");
        assert_eq!(s, "[d3] hi\u{fffd}\n");
    }
}
