//! Errno-style error codes returned by hypercalls.
//!
//! A hypercall returns a non-negative value on success and `-(errno)` on failure, in
//! `rax`. The values are Linux/Xen errno numbers (`xen/include/public/errno.h` uses the
//! same), so `-14` means "bad address" everywhere.

/// Why a hypercall failed. The hypercall returns `-(self as i64)`.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Errno {
    /// Operation not permitted (e.g. an unprivileged domain asked for a privileged op).
    EPERM = 1,
    /// No such entry.
    ENOENT = 2,
    /// No such domain.
    ESRCH = 3,
    /// I/O error.
    EIO = 5,
    /// Argument list too long: a length or count exceeds the hypercall's limit.
    E2BIG = 7,
    /// Bad handle (port, grant ref, ...).
    EBADF = 9,
    /// Try again.
    EAGAIN = 11,
    /// Out of memory.
    ENOMEM = 12,
    /// Permission denied.
    EACCES = 13,
    /// Bad guest address: non-canonical, in the hypervisor's region, unmapped, not
    /// user-accessible, or read-only for a write.
    EFAULT = 14,
    /// Resource busy.
    EBUSY = 16,
    /// Already exists.
    EEXIST = 17,
    /// Invalid argument.
    EINVAL = 22,
    /// No space left.
    ENOSPC = 28,
    /// Result out of range.
    ERANGE = 34,
    /// Unknown or unimplemented hypercall / sub-operation.
    ENOSYS = 38,
    /// Operation not supported.
    EOPNOTSUPP = 95,
}

impl Errno {
    /// Every defined error code, for exhaustive tests and decoding.
    pub const ALL: [Errno; 17] = [
        Errno::EPERM,
        Errno::ENOENT,
        Errno::ESRCH,
        Errno::EIO,
        Errno::E2BIG,
        Errno::EBADF,
        Errno::EAGAIN,
        Errno::ENOMEM,
        Errno::EACCES,
        Errno::EFAULT,
        Errno::EBUSY,
        Errno::EEXIST,
        Errno::EINVAL,
        Errno::ENOSPC,
        Errno::ERANGE,
        Errno::ENOSYS,
        Errno::EOPNOTSUPP,
    ];

    /// The value placed in `rax`: `-(errno)`.
    pub const fn to_ret(self) -> i64 {
        -(self as i32 as i64)
    }

    /// Decodes a hypercall return value: `Ok(value)` if non-negative, the error if it is
    /// a known `-(errno)`, and `Err(EINVAL)` for an unknown negative value.
    pub fn from_ret(ret: i64) -> Result<u64, Errno> {
        if ret >= 0 {
            return Ok(ret as u64);
        }
        let code = ret.unsigned_abs();
        Err(Errno::ALL
            .iter()
            .copied()
            .find(|e| *e as i32 as u64 == code)
            .unwrap_or(Errno::EINVAL))
    }

    /// The conventional name, e.g. `"EFAULT"`.
    pub const fn name(self) -> &'static str {
        match self {
            Errno::EPERM => "EPERM",
            Errno::ENOENT => "ENOENT",
            Errno::ESRCH => "ESRCH",
            Errno::EIO => "EIO",
            Errno::E2BIG => "E2BIG",
            Errno::EBADF => "EBADF",
            Errno::EAGAIN => "EAGAIN",
            Errno::ENOMEM => "ENOMEM",
            Errno::EACCES => "EACCES",
            Errno::EFAULT => "EFAULT",
            Errno::EBUSY => "EBUSY",
            Errno::EEXIST => "EEXIST",
            Errno::EINVAL => "EINVAL",
            Errno::ENOSPC => "ENOSPC",
            Errno::ERANGE => "ERANGE",
            Errno::ENOSYS => "ENOSYS",
            Errno::EOPNOTSUPP => "EOPNOTSUPP",
        }
    }
}

impl core::fmt::Display for Errno {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ret_round_trip() {
        for e in Errno::ALL {
            assert_eq!(Errno::from_ret(e.to_ret()), Err(e));
        }
        assert_eq!(Errno::from_ret(0), Ok(0));
        assert_eq!(Errno::from_ret(42), Ok(42));
        assert_eq!(Errno::from_ret(-9999), Err(Errno::EINVAL));
        assert_eq!(Errno::EFAULT.to_ret(), -14);
        assert_eq!(Errno::ENOSYS.to_ret(), -38);
    }
}
