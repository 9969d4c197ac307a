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

/// Bytes of console input the hypervisor keeps for dom0.
pub const INPUT_CAPACITY: usize = 4096;

/// Console input received on the serial port and not yet read by dom0
/// (`CONSOLEIO_read`): a FIFO of [`INPUT_CAPACITY`] bytes. When it is full, new bytes are
/// dropped and counted (the UART's own FIFO is only 16 bytes, so the hypervisor drains
/// it into this buffer on every timer tick).
pub struct InputRing {
    buf: [u8; INPUT_CAPACITY],
    head: usize,
    len: usize,
    dropped: u64,
}

impl Default for InputRing {
    fn default() -> Self {
        InputRing {
            buf: [0; INPUT_CAPACITY],
            head: 0,
            len: 0,
            dropped: 0,
        }
    }
}

impl InputRing {
    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room left.
    pub fn room(&self) -> usize {
        INPUT_CAPACITY - self.len
    }

    /// Bytes dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Appends `bytes`; those that do not fit are dropped (and counted). Returns how
    /// many were kept.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let keep = bytes.len().min(self.room());
        for &b in &bytes[..keep] {
            self.buf[(self.head + self.len) % INPUT_CAPACITY] = b;
            self.len += 1;
        }
        self.dropped += (bytes.len() - keep) as u64;
        keep
    }

    /// Takes up to `out.len()` bytes, oldest first; returns how many.
    pub fn pop(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.len);
        for o in &mut out[..n] {
            *o = self.buf[self.head];
            self.head = (self.head + 1) % INPUT_CAPACITY;
            self.len -= 1;
        }
        n
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

/// Sanitises one `console_io(WriteLine)` line in place and returns the part to emit:
/// one trailing `\n` (and a `\r` before it) is dropped, every other control character
/// (a `\n` or `\r` inside the line, escapes, DEL) becomes `?`, so the caller can emit
/// exactly one line and never drive the terminal.
pub fn sanitise_line(line: &mut [u8]) -> &[u8] {
    let mut len = line.len();
    if len > 0 && line[len - 1] == b'\n' {
        len -= 1;
        if len > 0 && line[len - 1] == b'\r' {
            len -= 1;
        }
    }
    for b in &mut line[..len] {
        if *b < 0x20 && *b != b'\t' || *b == 0x7f {
            *b = b'?';
        }
    }
    &line[..len]
}

/// Writes `line\n` to `sink` with no source prefix, replacing invalid UTF-8 (the line
/// is already sanitised: [`sanitise_line`]).
pub fn emit_raw_line(sink: &mut dyn Write, line: &[u8]) {
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

    #[test]
    fn input_ring_is_a_bounded_fifo() {
        let mut r = InputRing::default();
        assert_eq!(r.pop(&mut [0; 4]), 0);
        assert_eq!(r.push(b"hello"), 5);
        let mut out = [0u8; 3];
        assert_eq!(r.pop(&mut out), 3);
        assert_eq!(&out, b"hel");
        // Wrap around the end of the buffer, then overflow.
        let big = vec![7u8; INPUT_CAPACITY];
        assert_eq!(r.push(&big), INPUT_CAPACITY - 2);
        assert_eq!(r.dropped(), 2);
        assert_eq!(r.room(), 0);
        assert_eq!(r.push(b"x"), 0);
        assert_eq!(r.dropped(), 3);
        let mut all = vec![0u8; INPUT_CAPACITY + 10];
        assert_eq!(r.pop(&mut all), INPUT_CAPACITY);
        assert_eq!(&all[..2], b"lo");
        assert!(all[2..INPUT_CAPACITY].iter().all(|&b| b == 7));
        assert!(r.is_empty());
    }

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
    fn sanitise_line_keeps_one_line_without_controls() {
        let mut l = *b"[dom1] a\rb\x1b[2Jc\td\n";
        assert_eq!(sanitise_line(&mut l), b"[dom1] a?b?[2Jc\td");
        let mut l = *b"x\ny\r\n";
        assert_eq!(sanitise_line(&mut l), b"x?y");
        let mut l = *b"\n";
        assert_eq!(sanitise_line(&mut l), b"");
        let mut s = StringConsole::default();
        emit_raw_line(&mut s, b"[dom2] hi \xff");
        assert_eq!(s.out, "[dom2] hi \u{fffd}\n");
    }

    #[test]
    fn emit_line_formats_prefix() {
        let mut s = String::new();
        emit_line(&mut s, format_args!("d{}", 3), b"hi\xff");
        assert_eq!(s, "[d3] hi\u{fffd}\n");
    }
}
