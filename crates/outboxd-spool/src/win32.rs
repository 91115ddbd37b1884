//! The few Win32 helpers the Windows files of the OS layer share: wide
//! strings, owned handles, a process's account, the home's named objects.

use std::io;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::path::Path;

use windows_sys::Win32::Foundation::{HANDLE, LocalFree};
use windows_sys::Win32::Security::Authorization::ConvertSidToStringSidW;
use windows_sys::Win32::Security::{
    GetSidSubAuthority, GetSidSubAuthorityCount, GetTokenInformation, PSID, TOKEN_QUERY,
    TOKEN_USER, TokenUser,
};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

/// `s` as a NUL-terminated UTF-16 string.
pub fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

/// Takes ownership of a handle a call returned; the last OS error when it
/// is null or invalid.
///
/// # Safety
///
/// `handle` is null, invalid, or a handle the caller owns and gives up.
pub unsafe fn owned(handle: HANDLE) -> io::Result<OwnedHandle> {
    if handle.is_null() || handle == windows_sys::Win32::Foundation::INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a valid handle the caller just received and owns.
    Ok(unsafe { OwnedHandle::from_raw_handle(handle) })
}

/// Calls `f` with the user SID of the token of the process behind
/// `process`.
fn with_user_sid<T>(process: HANDLE, f: impl FnOnce(PSID) -> io::Result<T>) -> io::Result<T> {
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: `token` receives a handle that `owned` takes over.
    if unsafe { OpenProcessToken(process, TOKEN_QUERY, &mut token) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: OpenProcessToken succeeded: `token` is ours to close.
    let token = unsafe { owned(token) }?;
    let mut buffer = vec![0u64; 128];
    let mut len = 0u32;
    // SAFETY: the buffer is valid and 8-byte aligned for the size given.
    let ok = unsafe {
        GetTokenInformation(
            token.as_raw_handle(),
            TokenUser,
            buffer.as_mut_ptr().cast(),
            (buffer.len() * 8) as u32,
            &mut len,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: GetTokenInformation filled a TOKEN_USER at the buffer's start,
    // whose SID points into the same buffer, alive during `f`.
    let sid = unsafe { (*(buffer.as_ptr() as *const TOKEN_USER)).User.Sid };
    f(sid)
}

/// The relative id (the last part of the user SID) of the account that
/// runs the process behind `process`: the "uid" the OS-neutral code
/// compares (unique among the machine's local accounts).
pub fn account_rid(process: HANDLE) -> io::Result<u32> {
    with_user_sid(process, |sid| {
        // SAFETY: a valid SID from the token.
        unsafe {
            let count = *GetSidSubAuthorityCount(sid);
            if count == 0 {
                return Ok(0);
            }
            Ok(*GetSidSubAuthority(sid, u32::from(count) - 1))
        }
    })
}

/// The user SID of this process, as a string (`S-1-5-21-…`), for
/// security descriptors.
pub fn current_user_sid() -> io::Result<String> {
    // SAFETY: the pseudo handle of the current process needs no closing.
    with_user_sid(unsafe { GetCurrentProcess() }, |sid| {
        let mut text: *mut u16 = std::ptr::null_mut();
        // SAFETY: a valid SID; `text` receives a LocalAlloc'ed string.
        if unsafe { ConvertSidToStringSidW(sid, &mut text) } == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a NUL-terminated string that ConvertSidToStringSidW made.
        let len = (0..).take_while(|&i| unsafe { *text.add(i) } != 0).count();
        // SAFETY: `len` units are valid; the string is freed once copied.
        let sid = String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(text, len) });
        // SAFETY: frees what ConvertSidToStringSidW allocated.
        unsafe { LocalFree(text.cast()) };
        Ok(sid)
    })
}

/// The name of the home's kernel objects: `outboxd-` and a hash of its
/// absolute path (case folded, as Windows paths are), as design.md's pipe
/// name `\\.\pipe\outboxd-<hash>` asks.
pub fn object_name(home: &Path) -> String {
    let text = home.to_string_lossy().to_lowercase();
    // FNV-1a, 64 bits: stable across builds and releases.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("outboxd-{hash:016x}")
}

/// The name of one of the home's named events (`Local\outboxd-<hash>-stop`,
/// `-nudge`): session-local, like the user's daemon.
pub fn event_name(home: &Path, purpose: &str) -> String {
    format!(r"Local\{}-{purpose}", object_name(home))
}

/// Sets the named event `name` (one that exists: a daemon's).
pub fn set_event(name: &str) -> io::Result<()> {
    use windows_sys::Win32::System::Threading::{EVENT_MODIFY_STATE, OpenEventW, SetEvent};
    let wide = wide(name);
    // SAFETY: a NUL-terminated name; `owned` checks the result.
    let event = unsafe { owned(OpenEventW(EVENT_MODIFY_STATE, 0, wide.as_ptr())) }?;
    // SAFETY: a valid event handle opened with EVENT_MODIFY_STATE.
    if unsafe { SetEvent(event.as_raw_handle()) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes this process's standard handles non-inheritable. Windows hands a
/// child every inheritable handle of its parent, and a console program's
/// standard handles are inheritable: a long-lived child (the daemon,
/// PostgreSQL) would otherwise hold its parent's output open for its whole
/// life, and whoever reads that output to its end would wait for ever.
/// The child's own standard handles are given to it explicitly.
pub fn keep_std_handles_private() {
    use windows_sys::Win32::Foundation::{HANDLE_FLAG_INHERIT, SetHandleInformation};
    use windows_sys::Win32::System::Console::{
        GetStdHandle, STD_ERROR_HANDLE, STD_INPUT_HANDLE, STD_OUTPUT_HANDLE,
    };
    for which in [STD_INPUT_HANDLE, STD_OUTPUT_HANDLE, STD_ERROR_HANDLE] {
        // SAFETY: reads this process's standard handle; clearing its
        // inherit flag changes nothing else (a null one just fails).
        unsafe { SetHandleInformation(GetStdHandle(which), HANDLE_FLAG_INHERIT, 0) };
    }
}
