// THREADS (threads per block) is defined by adamw.rs, which launches every kernel with it.
// grads[t], sizes[t]: tensor t's gradient (device address) and element count.

// grid (BLOCKS_PER_TENSOR, tensors): partials[t * gridDim.x + block] = that block's sum of
// squares of tensor t's gradient, in a fixed order.
extern "C" __global__ void sum_squares(const unsigned long long* grads,
                                       const unsigned long long* sizes, double* partials) {
    const int t = blockIdx.y;
    const float* g = (const float*)grads[t];
    const unsigned long long size = sizes[t];
    double acc = 0.0;
    for (unsigned long long i = blockIdx.x * blockDim.x + threadIdx.x; i < size;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        const double x = g[i];
        acc += x * x;
    }
    __shared__ double shared[THREADS];
    shared[threadIdx.x] = acc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) partials[t * gridDim.x + blockIdx.x] = shared[0];
}

// One block: the global norm of all partials and torch's clip factor
// min(1, max_norm / (norm + 1e-6)) (1 when max_norm <= 0), both left on the device.
extern "C" __global__ void clip_coefficient(const double* partials, int count, float max_norm,
                                            float* norm_out, float* coef_out) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
    __shared__ double shared[THREADS];
    shared[threadIdx.x] = acc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        const double norm = sqrt(shared[0]);
        float coef = 1.0f;
        if (max_norm > 0.0f) {
            const double c = (double)max_norm / (norm + 1e-6);
            if (c < 1.0) coef = (float)c;
        }
        norm_out[0] = (float)norm;
        coef_out[0] = coef;
    }
}

// grid (BLOCKS_PER_TENSOR, tensors): tensor t's AdamW update in place, its gradient scaled
// by coef[0], in the host path's order of operations (qa-train's optim.rs). params, m, v,
// grads: device addresses; decays[t]: whether weight decay applies to tensor t.
extern "C" __global__ void adamw(const unsigned long long* params, const unsigned long long* m_,
                                 const unsigned long long* v_, const unsigned long long* grads,
                                 const unsigned long long* sizes,
                                 const unsigned long long* decays, const float* coef,
                                 float decay, float step_size, float beta1, float beta2,
                                 float bias2_sqrt, float eps) {
    const int t = blockIdx.y;
    float* p = (float*)params[t];
    float* m = (float*)m_[t];
    float* v = (float*)v_[t];
    const float* g = (const float*)grads[t];
    const unsigned long long size = sizes[t];
    const float d = decays[t] ? decay : 1.0f;
    const float c = coef[0];
    const float one_minus_b1 = 1.0f - beta1, one_minus_b2 = 1.0f - beta2;
    for (unsigned long long i = blockIdx.x * blockDim.x + threadIdx.x; i < size;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        const float gi = g[i] * c;
        float pi = p[i] * d;
        float mi = m[i];
        mi += one_minus_b1 * (gi - mi);
        const float vi = v[i] * beta2 + one_minus_b2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        const float denom = __fsqrt_rn(vi) / bias2_sqrt + eps;
        p[i] = pi - step_size * (mi / denom);
    }
}
