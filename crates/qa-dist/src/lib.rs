//! The collectives data-parallel training and evaluation need, behind one small interface:
//! rank, world size, the ranks on this node, a sum of `f32` buffers over all ranks, a
//! broadcast of bytes from rank 0 and a barrier. `Solo` is one process and does nothing, so
//! the trainer has one code path; `Mpi` (feature `mpi`) is a rank of an `mpirun`/`srun` job.
//!
//! Everything here is called from the main thread only (rayon's workers never call MPI).

#[cfg(feature = "mpi")]
mod mpi_world;
#[cfg(feature = "nccl")]
pub mod nccl;

use std::rc::Rc;

use sha2::{Digest, Sha256};

#[cfg(feature = "mpi")]
pub use mpi_world::Mpi;

/// Floats per all-reduce call: gradients travel in buckets of this size, not one call per
/// tensor (and not one copy of the whole model).
pub const BUCKET: usize = 1 << 20;

pub trait Collective {
    /// This process's rank, `0..world()`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn world(&self) -> usize;
    /// This rank's position among the ranks on its node, `0..local_size()`.
    fn local_rank(&self) -> usize;
    /// The number of ranks on this node.
    fn local_size(&self) -> usize;
    /// `sum[i] = the sum over ranks of their `send[i]``.
    fn all_reduce_sum(&self, send: &[f32], sum: &mut [f32]);
    /// Rank 0's `bytes` on every rank.
    fn broadcast(&self, bytes: &mut Vec<u8>);
    fn barrier(&self);
    /// Ends every rank of the job with `code` (a rank that fails alone, while the others may
    /// wait in a collective).
    fn abort(&self, code: i32) -> !;
    /// The sum over ranks of an f32 tensor wherever it lives: through the host by default,
    /// on the device where a device collective (NCCL) is there.
    fn all_reduce_tensor(
        &self,
        t: &candle_core::Tensor,
    ) -> candle_core::Result<candle_core::Tensor> {
        host_all_reduce_tensor(self, t)
    }
}

/// `all_reduce_tensor` through the host: copy out, sum in buckets, copy back.
pub fn host_all_reduce_tensor<C: Collective + ?Sized>(
    comm: &C,
    t: &candle_core::Tensor,
) -> candle_core::Result<candle_core::Tensor> {
    if comm.world() == 1 {
        return Ok(t.clone());
    }
    let mut values: Vec<f32> = t.flatten_all()?.to_vec1()?;
    all_reduce_parts(comm, &mut [&mut values]);
    candle_core::Tensor::from_vec(values, t.shape(), t.device())
}

/// `comm` for training on `device`: on a GPU of a job of several ranks built with NCCL, with
/// device tensors summed by NCCL; else `comm` itself.
pub fn on_device(comm: Comm, device: &candle_core::Device) -> Result<Comm, String> {
    #[cfg(feature = "nccl")]
    if let (candle_core::Device::Cuda(gpu), true) = (device, comm.world() > 1) {
        return Ok(Rc::new(nccl::Nccl::new(comm, gpu)?));
    }
    let _ = device;
    Ok(comm)
}

/// One process: every collective is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn local_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, send: &[f32], sum: &mut [f32]) {
        sum.copy_from_slice(send);
    }
    fn broadcast(&self, _bytes: &mut Vec<u8>) {}
    fn barrier(&self) {}
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// A shared handle to the job's collectives.
pub type Comm = Rc<dyn Collective>;

/// Sums `parts` (say, every parameter's gradient) over all ranks in place, `BUCKET` floats
/// per call. Nothing to do for one rank.
pub fn all_reduce_parts<C: Collective + ?Sized>(comm: &C, parts: &mut [&mut [f32]]) {
    if comm.world() == 1 {
        return;
    }
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut send = Vec::with_capacity(BUCKET.min(total));
    let mut sum = vec![0f32; BUCKET.min(total)];
    // (part, offset) of each float in the bucket, as runs: where to copy the sums back.
    let mut runs: Vec<(usize, usize, usize)> = Vec::new();
    let mut flush =
        |send: &mut Vec<f32>, runs: &mut Vec<(usize, usize, usize)>, parts: &mut [&mut [f32]]| {
            let sum = &mut sum[..send.len()];
            comm.all_reduce_sum(send, sum);
            let mut at = 0;
            for &(p, offset, len) in runs.iter() {
                parts[p][offset..offset + len].copy_from_slice(&sum[at..at + len]);
                at += len;
            }
            send.clear();
            runs.clear();
        };
    for p in 0..parts.len() {
        let mut offset = 0;
        while offset < parts[p].len() {
            let len = (parts[p].len() - offset).min(BUCKET - send.len());
            send.extend_from_slice(&parts[p][offset..offset + len]);
            runs.push((p, offset, len));
            offset += len;
            if send.len() == BUCKET {
                flush(&mut send, &mut runs, parts);
            }
        }
    }
    if !send.is_empty() {
        flush(&mut send, &mut runs, parts);
    }
}

/// How many ranks failed a step every rank took (0: all went on). A rank that failed passes
/// `true`; the others learn of it here instead of waiting in the next collective forever.
pub fn failures<C: Collective + ?Sized>(comm: &C, failed: bool) -> usize {
    if comm.world() == 1 {
        return usize::from(failed);
    }
    let mut sum = [0f32];
    comm.all_reduce_sum(&[f32::from(u8::from(failed))], &mut sum);
    sum[0] as usize
}

/// Why a step every rank took together did not go on.
#[derive(Debug)]
pub enum Stopped<E> {
    /// This rank failed (the others know and stop too).
    Here(E),
    /// Another rank failed; it says why.
    Elsewhere,
}

/// `result`, once every rank knows whether any rank failed: a collective point where the
/// job stops as a whole (for one rank, `Here` is the error as it is).
pub fn together<C: Collective + ?Sized, T, E>(
    comm: &C,
    result: Result<T, E>,
) -> Result<T, Stopped<E>> {
    let failed = failures(comm, result.is_err());
    match result {
        Err(e) => Err(Stopped::Here(e)),
        Ok(_) if failed > 0 => Err(Stopped::Elsewhere),
        Ok(v) => Ok(v),
    }
}

/// How a rank's error ends the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every rank is stopping (an error found `together`): print, wait for the others, exit.
    Together,
    /// Only this rank failed, the others may wait in a collective: print, end the job.
    Alone,
}

/// Prints `TOOL: error: MESSAGE` (`TOOL: rank R of N: error: ...` in a job of several ranks)
/// in one write, so lines of ranks do not interleave, and ends as `ending` says (`None`:
/// another rank failed and printed why; this one ends silently).
pub fn fail<C: Collective + ?Sized>(
    comm: &C,
    tool: &str,
    error: Option<&str>,
    ending: Ending,
) -> std::process::ExitCode {
    if let Some(message) = error {
        let line = match comm.world() {
            1 => format!("{tool}: error: {message}\n"),
            n => format!("{tool}: rank {} of {n}: error: {message}\n", comm.rank()),
        };
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    }
    if comm.world() > 1 {
        match ending {
            Ending::Together => comm.barrier(),
            Ending::Alone => comm.abort(1),
        }
    }
    std::process::ExitCode::from(1)
}

/// Prints `line` (no newline) on stderr in one write, from rank 0 only.
pub fn say<C: Collective + ?Sized>(comm: &C, line: &str) {
    if comm.rank() == 0 {
        let line = format!("{line}\n");
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    }
}

/// Where this rank's value differs from rank 0's: compares the sha256 of `value` and returns
/// rank 0's value when they differ (None when they agree or for one rank).
pub fn differs_from_rank0<C: Collective + ?Sized>(comm: &C, value: &[u8]) -> Option<Vec<u8>> {
    if comm.world() == 1 {
        return None;
    }
    let mut theirs = value.to_vec();
    comm.broadcast(&mut theirs);
    let digest = |b: &[u8]| Sha256::digest(b);
    (digest(&theirs) != digest(value)).then_some(theirs)
}

/// A balanced split of `n` items over `world` ranks: rank `r`'s range (the first `n % world`
/// ranks take one more).
pub fn share(n: usize, world: usize, rank: usize) -> std::ops::Range<usize> {
    let (base, extra) = (n / world, n % world);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// The job size a launcher (mpirun, srun, hydra) set in this process's environment, if one
/// started it.
pub fn launched_world() -> Option<usize> {
    [
        // OpenMPI's mpirun, MPICH's hydra (and PMI-2 launchers), a Slurm job step (srun).
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "SLURM_STEP_NUM_TASKS",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
}

/// This process's collectives, started before any compute thread: MPI when built with it
/// and launched by mpirun/srun as more than one process, else `Solo`. Sets the compute threads (`RAYON_NUM_THREADS`,
/// read by rayon and candle's matmul) to `threads`, or under MPI to the node's cores divided
/// by the ranks on it. Errors when launched as several ranks without MPI built in.
/// Rank 0 prints `TOOL: rank 0 of N (...)` once when there are several ranks.
pub fn start(tool: &str, threads: Option<usize>) -> Result<Comm, String> {
    let comm = open(tool)?;
    let threads = match threads {
        Some(n) => Some(n),
        None if comm.world() > 1 => {
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            Some((cores / comm.local_size()).max(1))
        }
        None => None,
    };
    if let Some(n) = threads {
        // Read by candle's matmul and by rayon's global pool; set before either starts.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if comm.world() > 1 {
        let each = threads.map_or("all cores".into(), |n| format!("{n} threads"));
        say(
            &*comm,
            &format!(
                "{tool}: rank 0 of {} ({} on this node, {each} each)",
                comm.world(),
                comm.local_size()
            ),
        );
    }
    Ok(comm)
}

/// MPI only when a launcher started this process: a plain run does not pay for (or depend
/// on) a singleton MPI start.
#[cfg(feature = "mpi")]
fn open(_tool: &str) -> Result<Comm, String> {
    if launched_world().is_none() {
        return Ok(Rc::new(Solo));
    }
    Ok(match Mpi::init() {
        Some(mpi) if mpi.world() > 1 => Rc::new(mpi),
        _ => Rc::new(Solo),
    })
}

#[cfg(not(feature = "mpi"))]
fn open(tool: &str) -> Result<Comm, String> {
    match launched_world().filter(|&n| n > 1) {
        Some(n) => Err(format!(
            "started as one of {n} MPI processes, but this {tool} was built without MPI \
             (cargo build --release --bins --features qa-train/mpi,qa-eval/mpi)"
        )),
        None => Ok(Rc::new(Solo)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_item_once_and_differ_by_at_most_one() {
        for (n, world) in [(8, 2), (5, 2), (1, 3), (0, 2), (10, 4)] {
            let ranges: Vec<_> = (0..world).map(|r| share(n, world, r)).collect();
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges[world - 1].end, n);
            for w in ranges.windows(2) {
                assert_eq!(w[0].end, w[1].start);
            }
            let lens: Vec<usize> = ranges.iter().map(ExactSizeIterator::len).collect();
            assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
        }
    }

    /// Two fake ranks summing through buckets: every float of every part, across bucket
    /// edges, is the sum of both ranks' values.
    #[test]
    fn buckets_sum_every_part() {
        struct Twice;
        impl Collective for Twice {
            fn rank(&self) -> usize {
                0
            }
            fn world(&self) -> usize {
                2
            }
            fn local_rank(&self) -> usize {
                0
            }
            fn local_size(&self) -> usize {
                2
            }
            fn all_reduce_sum(&self, send: &[f32], sum: &mut [f32]) {
                assert!(send.len() <= BUCKET);
                sum.iter_mut().zip(send).for_each(|(s, v)| *s = 2.0 * v);
            }
            fn broadcast(&self, _bytes: &mut Vec<u8>) {}
            fn barrier(&self) {}
            fn abort(&self, _code: i32) -> ! {
                unreachable!()
            }
        }
        let mut a: Vec<f32> = (0..BUCKET + 3).map(|i| i as f32).collect();
        let mut b = vec![1.5f32; 7];
        let mut c: Vec<f32> = (0..BUCKET - 5).map(|i| -(i as f32)).collect();
        all_reduce_parts(&Twice, &mut [&mut a, &mut b, &mut c]);
        assert!(a.iter().enumerate().all(|(i, &v)| v == 2.0 * i as f32));
        assert!(b.iter().all(|&v| v == 3.0));
        assert!(c.iter().enumerate().all(|(i, &v)| v == -2.0 * i as f32));
    }
}
