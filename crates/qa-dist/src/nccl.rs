//! Gradients summed on the GPUs by NCCL (cudarc, through candle's `nccl` feature): one rank
//! per GPU, the NCCL unique id made by rank 0 and broadcast over the host collectives (MPI),
//! everything else (rank, broadcast, barrier) delegated to them.

use std::sync::Arc;

use candle_core::cuda::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::{CudaDevice, CudaStorage, CustomOp1, Layout, Result, Shape, Tensor};

use crate::{Collective, Comm as HostComm};

/// An NCCL communicator, used from the thread that made it only.
struct Communicator(Comm);

// SAFETY: the communicator is created, used and dropped on the main thread (the trainer's
// one thread that calls collectives); candle requires `Send + Sync` of a custom op only
// because ops may be shared, which this one never is across threads.
unsafe impl Send for Communicator {}
// SAFETY: as above: never used from two threads.
unsafe impl Sync for Communicator {}

/// The host collectives, with device tensors summed by NCCL.
pub struct Nccl {
    host: HostComm,
    comm: Arc<Communicator>,
}

impl Nccl {
    /// Joins the NCCL clique of `host`'s ranks on `gpu` (rank 0 makes the id).
    pub fn new(host: HostComm, gpu: &CudaDevice) -> std::result::Result<Self, String> {
        let error = |e| format!("NCCL: {e:?}");
        let mut id = match host.rank() {
            0 => Id::new()
                .map_err(error)?
                .internal()
                .iter()
                .map(|&c| c as u8)
                .collect(),
            _ => vec![0u8; 128],
        };
        host.broadcast(&mut id);
        let mut internal = [0 as std::ffi::c_char; 128];
        internal
            .iter_mut()
            .zip(&id)
            .for_each(|(c, &b)| *c = b as std::ffi::c_char);
        let comm = Comm::from_rank(
            gpu.cuda_stream(),
            host.rank(),
            host.world(),
            Id::uninit(internal),
        )
        .map_err(error)?;
        Ok(Nccl {
            host,
            comm: Arc::new(Communicator(comm)),
        })
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.host.rank()
    }
    fn world(&self) -> usize {
        self.host.world()
    }
    fn local_rank(&self) -> usize {
        self.host.local_rank()
    }
    fn local_size(&self) -> usize {
        self.host.local_size()
    }
    fn all_reduce_sum(&self, send: &[f32], sum: &mut [f32]) {
        self.host.all_reduce_sum(send, sum);
    }
    fn broadcast(&self, bytes: &mut Vec<u8>) {
        self.host.broadcast(bytes);
    }
    fn barrier(&self) {
        self.host.barrier();
    }
    fn abort(&self, code: i32) -> ! {
        self.host.abort(code)
    }
    fn all_reduce_tensor(&self, t: &Tensor) -> Result<Tensor> {
        if !t.device().is_cuda() {
            return crate::host_all_reduce_tensor(self, t);
        }
        t.contiguous()?
            .apply_op1_no_bwd(&AllReduce(self.comm.clone()))
    }
}

/// `sum over ranks of x`, on the device.
struct AllReduce(Arc<Communicator>);

impl CustomOp1 for AllReduce {
    fn name(&self) -> &'static str {
        "nccl-all-reduce"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("nccl-all-reduce: device tensors only")
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("nccl-all-reduce: contiguous input only");
        };
        let x = storage.as_cuda_slice::<f32>()?.slice(start..end);
        let mut sum = storage.device.alloc_zeros::<f32>(end - start)?;
        self.0
             .0
            .all_reduce(&x, &mut sum, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}")))?;
        let device = storage.device.clone();
        Ok((
            CudaStorage::wrap_cuda_slice(sum, device),
            layout.shape().clone(),
        ))
    }
}
