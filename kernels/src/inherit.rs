//! Child processes must not inherit the kernels' open files.
//!
//! The HDF5 library opens files without `O_CLOEXEC`, so a process spawned
//! (by a shell step, or any `Command`) while a kernel has a file open keeps
//! that descriptor — and HDF5's `flock` on it — for its whole life. The
//! kernel's next open of the same file then fails with "unable to lock
//! file". Spawners call [`close_fds_on_exec`] between fork and exec.

/// Marks every descriptor above stderr close-on-exec. Marking rather than
/// closing keeps the pipe through which the standard library reports a
/// failed exec. Only async-signal-safe calls: meant for
/// `CommandExt::pre_exec`.
pub fn close_fds_on_exec() -> std::io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
    // close_range(2) with CLOEXEC (Linux 5.11+): one syscall.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if r == 0 {
        return Ok(());
    }
    // Older kernels: mark what could be open, one by one.
    let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) };
    let max = if max > 0 {
        max.min(65_536) as i32
    } else {
        4096
    };
    for fd in 3..max {
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}
