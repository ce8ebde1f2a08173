// Softmax over the last dimension and its backward, one block per row. Needs
// block_reduce.cuh before it.

extern "C" __global__ void softmax_forward(const float* x, float* y, int d) {
    const size_t row = blockIdx.x;
    float m = __int_as_float(0xff800000);  // -inf (NVRTC has no math.h)
    for (int j = threadIdx.x; j < d; j += blockDim.x) m = fmaxf(m, x[row * d + j]);
    m = block_reduce(m, true);
    float s = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float e = expf(x[row * d + j] - m);
        y[row * d + j] = e;
        s += e;
    }
    s = block_reduce(s, false);
    for (int j = threadIdx.x; j < d; j += blockDim.x) y[row * d + j] /= s;
}

extern "C" __global__ void softmax_backward(const float* y, const float* g, float* dx, int d) {
    const size_t row = blockIdx.x;
    float dot = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) dot += y[row * d + j] * g[row * d + j];
    dot = block_reduce(dot, false);
    for (int j = threadIdx.x; j < d; j += blockDim.x)
        dx[row * d + j] = y[row * d + j] * (g[row * d + j] - dot);
}
