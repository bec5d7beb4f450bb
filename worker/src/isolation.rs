//! What keeps an exec job away from the worker's own secrets, beyond the
//! job's empty environment and `run_as` user (see [`crate::exec`]): the
//! worker process is not dumpable, so a process of the same user cannot
//! read its memory or `/proc/<pid>/environ`, and it forgets the variables
//! that held secrets once they are read, down to the bytes `/proc` shows.
//! Call both before any thread starts.

use std::collections::BTreeMap;
use std::ffi::CStr;

use opsrun::registry::WORKER_CREDENTIALS;

unsafe extern "C" {
    /// The process's environment block (POSIX `environ`).
    static mut environ: *mut *mut libc::c_char;
}

/// Mark the process not dumpable: its `/proc/<pid>/{environ,mem,maps}`
/// belong to root, and no core file holds its memory.
pub fn make_undumpable() -> std::io::Result<()> {
    // SAFETY: prctl with PR_SET_DUMPABLE takes plain integers.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The environment as it is now, minus the worker's own credentials: what
/// jobs may inherit from (each type names the variables it gets).
pub fn snapshot_env() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| !WORKER_CREDENTIALS.contains(&k.as_str()))
        .collect()
}

/// Remove from this process's environment every variable that holds a
/// secret (the worker's credentials and any secret-named variable), after
/// overwriting its value where the kernel shows it in `/proc/<pid>/environ`
/// (removing a variable only unlinks it; the original bytes stay there).
/// Returns the names forgotten.
///
/// # Safety
/// No other thread may be running: the environment is not thread-safe.
pub unsafe fn forget_secret_env() -> Vec<String> {
    let names: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| WORKER_CREDENTIALS.contains(&k.as_str()) || opsrun::sanitize::is_secret_name(k))
        .collect();
    // SAFETY: single-threaded (the caller's promise); `environ` is a
    // null-terminated array of NUL-terminated strings, which this only
    // overwrites within their length.
    unsafe {
        let mut entry = environ;
        while !entry.is_null() && !(*entry).is_null() {
            let text = CStr::from_ptr(*entry).to_bytes();
            if let Some(eq) = text.iter().position(|b| *b == b'=')
                && names.iter().any(|n| n.as_bytes() == &text[..eq])
            {
                std::ptr::write_bytes((*entry).add(eq + 1), b'x', text.len() - eq - 1);
            }
            entry = entry.add(1);
        }
        for name in &names {
            std::env::remove_var(name);
        }
    }
    names
}
