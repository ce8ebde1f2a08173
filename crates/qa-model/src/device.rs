//! Where the model runs: `cpu`, `cuda` (the first GPU) or `cuda:N`. Chosen once, at the
//! command line or in the pipeline YAML (`device:`); everything below takes the `Device`.

use candle_core::Device;

use crate::error::{ModelError, Result};

/// How to get a build that can use a GPU, for the error a CPU-only build gives.
pub const CUDA_BUILD_HINT: &str =
    "this build has no CUDA support: build with `make build-cuda` (scripts/build_cuda.sh; README, \"Training on a GPU\")";

/// Parses `cpu`, `cuda` or `cuda:N` and opens the device. Fails in one line when the name is
/// unknown, the build has no CUDA support, or there is no such GPU.
/// `device(name)` for the rank with node-local rank `local_rank`: a bare `cuda` is its own
/// GPU, `cuda:LOCAL_RANK` (one GPU per rank, as `mpirun -np <GPUs per node>` expects).
pub fn device_for_rank(name: &str, local_rank: usize) -> Result<Device> {
    match name {
        "cuda" if local_rank > 0 => device(&format!("cuda:{local_rank}")),
        other => device(other),
    }
}

pub fn device(name: &str) -> Result<Device> {
    let bad = |message: String| ModelError::Device {
        name: name.into(),
        message,
    };
    let ordinal = match name {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| bad("unknown device (expected cpu, cuda or cuda:N)".into()))?,
    };
    if !cfg!(feature = "cuda") {
        return Err(bad(CUDA_BUILD_HINT.into()));
    }
    let device = Device::new_cuda(ordinal).map_err(|e| {
        let first_line = e.to_string().lines().next().unwrap_or_default().to_string();
        bad(format!(
            "no usable CUDA GPU {ordinal} on this machine (driver or GPU missing?): {first_line}"
        ))
    })?;
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = &device {
        // Everything runs on candle's one stream, so cudarc's per-allocation CUDA events
        // (cross-stream synchronisation) are pure overhead: two event creations per tensor.
        // SAFETY: cudarc requires that no buffer is shared across streams once tracking is
        // off; this device has just been created and everything runs on its one stream.
        unsafe { cuda.disable_event_tracking() };
    }
    Ok(device)
}

/// `cpu` or `cuda:N`, for logs and metadata.
pub fn name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_bad_ones_fail_in_one_line() {
        assert!(device("cpu").unwrap().is_cpu());
        let err = device("gpu").unwrap_err().to_string();
        assert!(err.contains("\"gpu\"") && err.contains("cuda:N"), "{err}");
        let err = device("cuda:x").unwrap_err().to_string();
        assert!(err.contains("unknown device"), "{err}");
        #[cfg(not(feature = "cuda"))]
        {
            let err = device("cuda").unwrap_err().to_string();
            assert!(
                err.contains("make build-cuda") && !err.contains('\n'),
                "{err}"
            );
        }
    }
}
