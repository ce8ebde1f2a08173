//! CUDA against the CPU (the CUDA build only: `--features qa-train/cuda`), on the oracle's
//! seeded checkpoint. Each test says in one line that it skips where there is no usable GPU.
//! A test binary built here runs on a GPU machine without cargo, from the repository root
//! (`scripts/gpu_bundle.sh`, `scripts/gpu_check.sh`): fixtures are found at run time.
#![cfg(feature = "cuda")]

use candle_core::Device;
use qa_model::testing::{fixture, seeded_checkpoint};
use qa_model::{make_batch, Mode, RunOptions, RunPlan};
use qa_train::step::Learner;
use squad_core::Feature;

mod common;
use common::max_abs_diff;

fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!(
                "skipped: no usable CUDA GPU ({})",
                e.to_string().lines().next().unwrap_or("")
            );
            None
        }
    }
}

fn features(name: &str, n: usize) -> Vec<Feature> {
    qa_features::parity::read_reference(&fixture("qa-features", name), n).unwrap()
}

fn learner(plan: &RunPlan) -> Learner {
    common::seeded_learner(plan, 1)
}

#[test]
fn eval_logits_on_the_gpu_match_the_cpu_within_1e_3() {
    let Some(gpu) = gpu() else { return };
    let feats = features("dev200.eval.ref.parquet", 32);
    let refs: Vec<&Feature> = feats.iter().collect();
    let cpu_model = seeded_checkpoint(&RunPlan::cpu_inference()).model;
    let gpu_model =
        seeded_checkpoint(&RunPlan::inference(gpu.clone(), qa_kernels::Precision::F32)).model;
    for chunk in refs.chunks(8) {
        let (cs, ce) = cpu_model
            .forward(&make_batch(chunk, None, &Device::Cpu).unwrap(), None)
            .unwrap();
        let (gs, ge) = gpu_model
            .forward(&make_batch(chunk, None, &gpu).unwrap(), None)
            .unwrap();
        let d = max_abs_diff(&cs, &gs).max(max_abs_diff(&ce, &ge));
        assert!(d < 1e-3, "logits differ by {d}");
    }
}

/// One AdamW step on the GPU, with each choice of its kernels, against the CPU's: loss and
/// gradient norm within 1e-3 relative, every weight within 1e-4.
#[test]
fn a_training_step_on_the_gpu_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let feats = features("tiny.train.ref.parquet", 8);
    let batch: Vec<&Feature> = feats.iter().collect();
    let mut cpu = learner(&RunPlan::cpu_train());
    let want = cpu.step(0, std::slice::from_ref(&batch), 2e-5).unwrap();
    let (want_loss, want_norm) = (want.loss.value().unwrap(), want.grad_norm.value().unwrap());
    for (fused_cuda_norm, fused_cuda_adamw) in [(false, true), (true, true), (false, false)] {
        let options = RunOptions {
            fused_cuda_norm,
            fused_cuda_adamw,
            ..RunOptions::default()
        };
        let mut on_gpu = learner(&RunPlan::new(gpu.clone(), Mode::Train, options.clone()));
        let got = on_gpu.step(0, std::slice::from_ref(&batch), 2e-5).unwrap();
        let (loss, norm) = (got.loss.value().unwrap(), got.grad_norm.value().unwrap());
        assert!(
            (loss - want_loss).abs() / want_loss < 1e-3,
            "{options:?}: loss {loss} vs {want_loss}"
        );
        assert!(
            (norm - want_norm).abs() / want_norm < 1e-3,
            "{options:?}: grad norm {norm} vs {want_norm}"
        );
        for (name, var) in &cpu.params.vars {
            let d = max_abs_diff(var.as_tensor(), on_gpu.params.vars[name].as_tensor());
            assert!(
                d < 1e-4,
                "{options:?}: {name} differs by {d} after one step"
            );
        }
    }
}

/// Dropout masks are a function of (seed, step, call, element) on both devices: the first
/// step's loss with dropout on is the CPU's.
#[test]
fn dropout_masks_on_the_gpu_are_the_cpus() {
    let Some(gpu) = gpu() else { return };
    let feats = features("tiny.train.ref.parquet", 8);
    let batch: Vec<&Feature> = feats.iter().collect();
    let loss = |plan: &RunPlan| {
        let mut l = learner(plan);
        l.dropout = Some(qa_model::DropoutRng::new(43));
        l.step(0, std::slice::from_ref(&batch), 2e-5)
            .unwrap()
            .loss
            .value()
            .unwrap()
    };
    let (cpu, on_gpu) = (
        loss(&RunPlan::cpu_train()),
        loss(&RunPlan::new(gpu, Mode::Train, RunOptions::default())),
    );
    assert!(
        (cpu - on_gpu).abs() / cpu < 1e-3,
        "loss with dropout: cpu {cpu}, gpu {on_gpu}"
    );
}

/// NCCL with one rank (NCCL refuses two ranks on one GPU): a step through the NCCL
/// collectives gives the step without them, and the all-reduce of a tensor is itself.
#[cfg(feature = "nccl")]
#[test]
fn nccl_of_one_rank_sums_gradients_on_the_gpu() {
    let Some(gpu) = gpu() else { return };
    let Device::Cuda(cuda) = &gpu else {
        unreachable!()
    };
    let nccl = qa_dist::nccl::Nccl::new(std::rc::Rc::new(qa_dist::Solo), cuda).unwrap();
    let x = candle_core::Tensor::arange(0f32, 1000., &gpu).unwrap();
    let sum = qa_dist::Collective::all_reduce_tensor(&nccl, &x).unwrap();
    assert_eq!(max_abs_diff(&x, &sum), 0.0);
    let feats = features("tiny.train.ref.parquet", 8);
    let batch: Vec<&Feature> = feats.iter().collect();
    let plan = RunPlan::new(gpu.clone(), Mode::Train, RunOptions::default());
    let loss = |comm: qa_dist::Comm| {
        let mut l = learner(&plan);
        l.comm = comm;
        l.step(0, std::slice::from_ref(&batch), 2e-5)
            .unwrap()
            .loss
            .value()
            .unwrap()
    };
    let (plain, through_nccl) = (
        loss(std::rc::Rc::new(qa_dist::Solo)),
        loss(std::rc::Rc::new(nccl)),
    );
    assert_eq!(plain, through_nccl);
}
