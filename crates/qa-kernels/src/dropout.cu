// PhiloxDropout on a GPU: one thread per four elements, grid-stride; the same mask as the
// CPU version (dropout.rs) bit for bit.

__device__ uint4 philox4x32(uint4 c, uint2 k) {
    for (int r = 0; r < 10; r++) {
        const unsigned int hi0 = __umulhi(0xD2511F53u, c.x), lo0 = 0xD2511F53u * c.x;
        const unsigned int hi1 = __umulhi(0xCD9E8D57u, c.z), lo1 = 0xCD9E8D57u * c.z;
        c = make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
        k.x += 0x9E3779B9u;
        k.y += 0xBB67AE85u;
    }
    return c;
}

extern "C" __global__ void philox_dropout(const float* x, float* y, unsigned long long n,
                                          unsigned int key0, unsigned int key1,
                                          unsigned int s0, unsigned int s1, float p, float scale) {
    for (unsigned long long q = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; q * 4 < n;
         q += (unsigned long long)gridDim.x * blockDim.x) {
        const uint4 r = philox4x32(make_uint4((unsigned int)q, (unsigned int)(q >> 32), s0, s1),
                                   make_uint2(key0, key1));
        const unsigned int w[4] = {r.x, r.y, r.z, r.w};
        for (int j = 0; j < 4; j++) {
            const unsigned long long i = q * 4 + j;
            if (i < n) {
                const float u = (float)(w[j] >> 8) * (1.0f / 16777216.0f);
                y[i] = u >= p ? x[i] * scale : 0.0f;
            }
        }
    }
}
