//! Console output: [`print!`](crate::print) / [`println!`](crate::println) format into a
//! small stack buffer that is handed to `console_io(Write)` line by line.
//!
//! The hypervisor prefixes every line with `[dN] `; kernels never print prefixes. A line
//! longer than the buffer is written in pieces. There is no lock: guest kernels have one
//! vCPU, and every `print!` owns its buffer, so an exception or event handler that prints
//! in the middle of another `print!` (or a panic while printing) can still print; its
//! line may land between two pieces of a long line, never inside a short one.

use core::fmt;

/// Size of the formatting buffer of one `print!`.
pub const LINE_BUF_LEN: usize = 256;

/// A formatting buffer that hands complete lines (and full buffers) to `sink`.
pub struct LineBuf<const N: usize, F: FnMut(&[u8])> {
    buf: [u8; N],
    len: usize,
    sink: F,
}

impl<const N: usize, F: FnMut(&[u8])> LineBuf<N, F> {
    /// An empty buffer writing to `sink`.
    pub const fn new(sink: F) -> Self {
        LineBuf {
            buf: [0; N],
            len: 0,
            sink,
        }
    }

    /// Appends bytes, flushing after each `\n` and whenever the buffer is full.
    pub fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = N - self.len;
            let line_end = bytes.iter().position(|&b| b == b'\n').map(|i| i + 1);
            let take = line_end.unwrap_or(bytes.len()).min(room);
            self.buf[self.len..self.len + take].copy_from_slice(&bytes[..take]);
            self.len += take;
            bytes = &bytes[take..];
            if self.len == N || self.buf[self.len - 1] == b'\n' {
                self.flush();
            }
        }
    }

    /// Hands whatever is buffered to the sink.
    pub fn flush(&mut self) {
        if self.len > 0 {
            (self.sink)(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl<const N: usize, F: FnMut(&[u8])> fmt::Write for LineBuf<N, F> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

impl<const N: usize, F: FnMut(&[u8])> Drop for LineBuf<N, F> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Writes all of `bytes` to the console (several hypercalls if needed). Errors are
/// dropped: there is nowhere else to report them.
pub fn write_all(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match crate::platform::console_write(bytes) {
            Ok(n) if n > 0 && n <= bytes.len() => bytes = &bytes[n..],
            _ => return,
        }
    }
}

/// Writes a string to the console unformatted.
pub fn write_str(s: &str) {
    write_all(s.as_bytes());
}

/// Implementation of [`print!`](crate::print); not for direct use.
#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let mut buf = LineBuf::<LINE_BUF_LEN, _>::new(write_all);
    let _ = fmt::Write::write_fmt(&mut buf, args);
}

/// Prints to the hypervisor console (`console_io` write).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::console::_print(::core::format_args!($($arg)*))
    };
}

/// Prints a line to the hypervisor console (`console_io` write).
#[macro_export]
macro_rules! println {
    () => {
        $crate::console::_print(::core::format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::console::_print(::core::format_args!("{}\n", ::core::format_args!($($arg)*)))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(n: usize, f: impl FnOnce(&mut dyn fmt::Write)) -> Vec<String> {
        let mut out = Vec::new();
        match n {
            8 => {
                let mut b = LineBuf::<8, _>::new(|s: &[u8]| {
                    out.push(String::from_utf8_lossy(s).into_owned())
                });
                f(&mut b);
            }
            _ => {
                let mut b = LineBuf::<64, _>::new(|s: &[u8]| {
                    out.push(String::from_utf8_lossy(s).into_owned())
                });
                f(&mut b);
            }
        }
        out
    }

    #[test]
    fn flushes_per_line_and_at_drop() {
        let out = collect(64, |w| {
            write!(w, "a\nbc").unwrap();
            write!(w, "d\n\nlast").unwrap();
        });
        assert_eq!(out, ["a\n", "bcd\n", "\n", "last"]);
    }

    #[test]
    fn splits_long_lines_at_capacity() {
        let out = collect(8, |w| writeln!(w, "0123456789abcdefXY").unwrap());
        assert_eq!(out, ["01234567", "89abcdef", "XY\n"]);
    }

    #[test]
    fn exact_fit_and_empty() {
        assert_eq!(
            collect(8, |w| writeln!(w, "1234567").unwrap()),
            ["1234567\n"]
        );
        assert!(collect(8, |w| write!(w, "").unwrap()).is_empty());
    }

    #[test]
    fn formats_numbers() {
        let out = collect(64, |w| {
            writeln!(w, "tick {} {:#x} {:?}", 3, 255, "q").unwrap()
        });
        assert_eq!(out, ["tick 3 0xff \"q\"\n"]);
    }
}
