// y = x W^T + bias for a CSR weight W (out x in), x and y row-major (rows x in, rows x out): what nn.Linear
// computes, without the two transposing copies torch's CSR product needs. Built and loaded by csr_kernel.py.
//
// Rows are taken in blocks of B = 8 V; each block of x is first transposed into scratch (in x B), so that one
// weight entry W[j, k] multiplies B contiguous floats (V vectors of 8). Two accumulators per output hide the
// latency of the multiply-adds. Tasks (64 outputs x one block of rows) are shared among `threads` OpenMP threads;
// a single block is split by outputs instead, each thread transposing it for itself.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include <omp.h>

typedef float v8 __attribute__((vector_size(32)));

static inline v8 load(const float* p) { v8 v; std::memcpy(&v, p, sizeof v); return v; }

template <int V>
static void outputs(const float* xt, int64_t j0, int64_t j1, const int32_t* crow, const int32_t* col,
                    const float* val, const float* bias, float* y, int64_t out, int64_t rows) {
  constexpr int B = 8 * V;
  for (int64_t j = j0; j < j1; ++j) {
    v8 a[V], c[V];
    for (int v = 0; v < V; ++v) a[v] = c[v] = v8{};
    int32_t p = crow[j];
    const int32_t end = crow[j + 1];
    for (; p + 1 < end; p += 2) {
      const float s = val[p], t = val[p + 1];
      const float* r = xt + (int64_t)col[p] * B;
      const float* q = xt + (int64_t)col[p + 1] * B;
      for (int v = 0; v < V; ++v) { a[v] += s * load(r + 8 * v); c[v] += t * load(q + 8 * v); }
    }
    if (p < end) {
      const float s = val[p];
      const float* r = xt + (int64_t)col[p] * B;
      for (int v = 0; v < V; ++v) a[v] += s * load(r + 8 * v);
    }
    const float b = bias ? bias[j] : 0.f;
    float sums[B];
    for (int v = 0; v < V; ++v) { v8 sum = a[v] + c[v] + b; std::memcpy(sums + 8 * v, &sum, sizeof sum); }
    for (int64_t r = 0; r < rows; ++r) y[r * out + j] = sums[r];
  }
}

template <int V>
static void transpose(const float* x, int64_t in, int64_t rows, float* xt) {
  constexpr int B = 8 * V;
  for (int64_t k = 0; k < in; ++k) {
    for (int64_t r = 0; r < rows; ++r) xt[k * B + r] = x[r * in + k];
    for (int64_t r = rows; r < B; ++r) xt[k * B + r] = 0.f;
  }
}

template <int V>
static void linear(const float* x, int64_t n, int64_t in, int64_t out, const int32_t* crow, const int32_t* col,
                   const float* val, const float* bias, float* y, int threads, float* scratch) {
  constexpr int B = 8 * V;
  constexpr int64_t OUTPUTS = 64;  // outputs per task
  const int64_t blocks = (n + B - 1) / B, groups = (out + OUTPUTS - 1) / OUTPUTS;
  if (blocks == 1) {  // a few rows (a decoding step): each thread transposes them for itself, no barrier between
#pragma omp parallel num_threads(threads)
    {
      const int64_t count = omp_get_num_threads(), thread = omp_get_thread_num();
      float* xt = scratch + thread * in * B;
      transpose<V>(x, in, n, xt);
      outputs<V>(xt, out * thread / count, out * (thread + 1) / count, crow, col, val, bias, y, out, n);
    }
    return;
  }
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t block = 0; block < blocks; ++block)
      transpose<V>(x + block * B * in, in, std::min<int64_t>(B, n - block * B), scratch + block * in * B);
#pragma omp for schedule(static) collapse(2)
    for (int64_t group = 0; group < groups; ++group)
      for (int64_t block = 0; block < blocks; ++block) {
        const int64_t first = block * B;
        outputs<V>(scratch + block * in * B, group * OUTPUTS, std::min(out, (group + 1) * OUTPUTS), crow, col, val,
                   bias, y + first * out, out, std::min<int64_t>(B, n - first));
      }
  }
}

// scratch: at least max(ceil(n / block), threads) * block * in floats. Returns 0, or 1 for a block size not built.
extern "C" int csr_linear(const float* x, int64_t n, int64_t in, int64_t out, const int32_t* crow,
                          const int32_t* col, const float* val, const float* bias, float* y, int threads,
                          int block, float* scratch) {
  switch (block) {
    case 8: linear<1>(x, n, in, out, crow, col, val, bias, y, threads, scratch); return 0;
    case 16: linear<2>(x, n, in, out, crow, col, val, bias, y, threads, scratch); return 0;
    case 32: linear<4>(x, n, in, out, crow, col, val, bias, y, threads, scratch); return 0;
    case 64: linear<8>(x, n, in, out, crow, col, val, bias, y, threads, scratch); return 0;
  }
  return 1;
}
