//! What every command's process does first: core dumps off before any key is unwrapped, and the
//! bound on each KMS attempt.

use std::time::Duration;

/// KMS calls are short; this bounds each attempt.
pub const KMS_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Keeps unwrapped keys out of core dumps: the process becomes non-dumpable (no core file, no
/// ptrace attach by other processes of the same user) and its core size limit 0. Called first in
/// `main`, before any key is unwrapped.
#[cfg(target_os = "linux")]
pub fn disable_core_dumps() -> Result<(), nix::Error> {
    use nix::sys::resource::{setrlimit, Resource};
    nix::sys::prctl::set_dumpable(false)?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0)
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn the_process_becomes_non_dumpable_without_core_files() {
        use nix::sys::resource::{getrlimit, Resource};
        super::disable_core_dumps().unwrap();
        assert!(!nix::sys::prctl::get_dumpable().unwrap());
        assert_eq!(getrlimit(Resource::RLIMIT_CORE).unwrap(), (0, 0));
    }
}
