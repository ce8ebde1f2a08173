// LayerNorm forward and backward, one block per row; the parameter gradients as PARTS
// partial sums over fixed row ranges. Needs block_reduce.cuh before it.

// stats[2 * row] = mean, stats[2 * row + 1] = 1 / sqrt(var + eps)
extern "C" __global__ void layer_norm_stats(const float* x, float* stats, int d, float eps) {
    const float* xr = x + (size_t)blockIdx.x * d;
    float s = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) s += xr[j];
    const float mean = block_reduce(s, false) / d;
    float v = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) { const float c = xr[j] - mean; v += c * c; }
    const float var = block_reduce(v, false) / d;
    if (threadIdx.x == 0) { stats[2 * blockIdx.x] = mean; stats[2 * blockIdx.x + 1] = rsqrtf(var + eps); }
}

extern "C" __global__ void layer_norm_apply(const float* x, const float* stats, const float* w,
                                            const float* b, float* y, int d) {
    const size_t row = blockIdx.x;
    const float mean = stats[2 * row], rstd = stats[2 * row + 1];
    for (int j = threadIdx.x; j < d; j += blockDim.x)
        y[row * d + j] = (x[row * d + j] - mean) * rstd * w[j] + b[j];
}

extern "C" __global__ void layer_norm_grad_input(const float* x, const float* stats, const float* w,
                                                 const float* g, float* dx, int d) {
    const size_t row = blockIdx.x;
    const float mean = stats[2 * row], rstd = stats[2 * row + 1];
    float a = 0.0f, b = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float gw = g[row * d + j] * w[j];
        a += gw;
        b += gw * ((x[row * d + j] - mean) * rstd);
    }
    a = block_reduce(a, false) / d;
    b = block_reduce(b, false) / d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float xhat = (x[row * d + j] - mean) * rstd;
        dx[row * d + j] = rstd * (g[row * d + j] * w[j] - a - xhat * b);
    }
}

// grid (ceil(d / blockDim), parts): partial sums of g * xhat and g over each part's rows.
extern "C" __global__ void layer_norm_grad_params(const float* x, const float* stats, const float* g,
                                                  float* dw, float* db, int rows, int d, int parts) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    const int per = (rows + parts - 1) / parts;
    const int start = min(blockIdx.y * per, rows), end = min((int)(blockIdx.y + 1) * per, rows);
    float sw = 0.0f, sb = 0.0f;
    for (int r = start; r < end; r++) {
        const float gv = g[(size_t)r * d + j];
        sw += gv * ((x[(size_t)r * d + j] - stats[2 * r]) * stats[2 * r + 1]);
        sb += gv;
    }
    dw[(size_t)blockIdx.y * d + j] = sw;
    db[(size_t)blockIdx.y * d + j] = sb;
}

