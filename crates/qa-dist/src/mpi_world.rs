//! A rank of an MPI job (rsmpi): `MPI_COMM_WORLD`, and a node-local communicator
//! (`MPI_Comm_split_type(SHARED)`) for the local rank and size.

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::{CommunicatorCollectives, Root};
use mpi::Threading;

use crate::Collective;

pub struct Mpi {
    world: SimpleCommunicator,
    local: (usize, usize),
    // Last: MPI_Finalize runs when this drops, after the communicators are freed.
    _universe: Universe,
}

impl Mpi {
    /// Initialises MPI (None when it was already initialised). Only the main thread calls
    /// MPI (`Funneled`), however many compute threads run.
    pub fn init() -> Option<Self> {
        let (universe, _) = mpi::initialize_with_threading(Threading::Funneled)?;
        let world = universe.world();
        let node = world.split_shared(world.rank());
        let local = (node.rank() as usize, node.size() as usize);
        Some(Mpi {
            world,
            local,
            _universe: universe,
        })
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn world(&self) -> usize {
        self.world.size() as usize
    }
    fn local_rank(&self) -> usize {
        self.local.0
    }
    fn local_size(&self) -> usize {
        self.local.1
    }
    fn all_reduce_sum(&self, send: &[f32], sum: &mut [f32]) {
        self.world
            .all_reduce_into(send, sum, SystemOperation::sum());
    }
    fn broadcast(&self, bytes: &mut Vec<u8>) {
        let root = self.world.process_at_rank(0);
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        bytes.resize(len as usize, 0);
        // OpenMPI rejects an empty buffer's dangling pointer even with a count of 0.
        if len > 0 {
            root.broadcast_into(&mut bytes[..]);
        }
    }
    fn barrier(&self) {
        self.world.barrier();
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
