//! How many bytes a read would take, and how many this process may still allocate: readers
//! refuse a read that cannot fit before allocating it.

/// Bytes this process may still allocate, as far as the system says: available memory plus
/// free swap (`/proc/meminfo`), and the soft limits on the data segment and the address space.
/// `None` when none of these can be read.
pub fn memory_limit() -> Option<u64> {
    let mut limit: Option<u64> = None;
    let mut take = |v: u64| limit = Some(limit.map_or(v, |l| l.min(v)));
    if let Ok(text) = std::fs::read_to_string("/proc/meminfo") {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kb| kb.saturating_mul(1024))
        };
        if let Some(avail) = field("MemAvailable:") {
            take(avail.saturating_add(field("SwapFree:").unwrap_or(0)));
        }
    }
    for resource in [libc::RLIMIT_DATA, libc::RLIMIT_AS] {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given and nothing else.
        if unsafe { libc::getrlimit(resource, &mut r) } == 0 && r.rlim_cur != libc::RLIM_INFINITY {
            take(r.rlim_cur);
        }
    }
    limit
}

/// Bytes of `n` samples of `shape` at `elem` bytes an element, if that fits in a `u64`.
pub fn samples_bytes(n: usize, shape: &[usize], elem: u64) -> Option<u64> {
    sample_bytes(shape, elem)?.checked_mul(n as u64)
}

/// Bytes of one sample of `shape` at `elem` bytes an element, if that fits in a `u64`.
pub fn sample_bytes(shape: &[usize], elem: u64) -> Option<u64> {
    shape.iter().try_fold(elem, |a, &d| a.checked_mul(d as u64))
}
