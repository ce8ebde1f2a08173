// PhiloxDropout on a GPU: one thread per element, grid-stride; the same mask as the CPU
// version (dropout.rs) bit for bit. Element i lies in run i / run_len, which starts at a
// counter made of its global-batch row and its head and query position (dropout.rs: Runs).

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

// Must match ROW_SHIFT in dropout.rs.
#define ROW_SHIFT 40

extern "C" __global__ void philox_dropout(const float* x, float* y, unsigned long long n,
                                          unsigned long long run_len, unsigned long long per_row,
                                          unsigned long long per_head,
                                          unsigned long long positions,
                                          unsigned long long first_row, unsigned int key0,
                                          unsigned int key1, unsigned int s0, unsigned int s1,
                                          float p, float scale) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned long long r = i / run_len, j = r % per_row;
        const unsigned long long head = j / per_head, query = j % per_head;
        const unsigned long long c = ((first_row + r / per_row) << ROW_SHIFT) +
                                     (head * positions + query) * positions + i % run_len;
        const unsigned long long q = c / 4;
        const uint4 w = philox4x32(make_uint4((unsigned int)q, (unsigned int)(q >> 32), s0, s1),
                                   make_uint2(key0, key1));
        const unsigned int words[4] = {w.x, w.y, w.z, w.w};
        const float u = (float)(words[c % 4] >> 8) * (1.0f / 16777216.0f);
        y[i] = u >= p ? x[i] * scale : 0.0f;
    }
}
