// y = x W^T + bias for a CSR weight W (out x in), x and y row-major (rows x in, rows x out): what nn.Linear
// computes, without the two transposing copies torch's CSR product needs. Loaded by csr_kernel.py.
//
// Rows are taken in blocks of B rows; each block of x is first transposed into scratch (in x B), so that one
// weight entry W[j, k] multiplies B contiguous floats: V vectors of 8 (B = 8) or of 16 (B = 16, 32, 64; one
// AVX-512 register each, two AVX registers elsewhere: 5-15 % faster than vectors of 8 on a Xeon with AVX-512).
// Two accumulators per output hide the latency of the multiply-adds (four measured no faster). Tasks (64
// outputs x one block of rows, block by block) are shared among `threads` OpenMP threads; a single block is
// split by outputs instead, each thread transposing it for itself.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include <omp.h>

typedef float v8 __attribute__((vector_size(32)));
typedef float v16 __attribute__((vector_size(64)));

template <typename T> static inline T load(const float* p) { T v; std::memcpy(&v, p, sizeof v); return v; }

template <typename T, int V>
static void outputs(const float* xt, int64_t j0, int64_t j1, const int32_t* crow, const int32_t* col,
                    const float* val, const float* bias, float* y, int64_t out, int64_t rows) {
  constexpr int W = sizeof(T) / sizeof(float), B = W * V;
  for (int64_t j = j0; j < j1; ++j) {
    T a[V], c[V];
    for (int v = 0; v < V; ++v) a[v] = c[v] = T{};
    int32_t p = crow[j];
    const int32_t end = crow[j + 1];
    for (; p + 1 < end; p += 2) {
      const float s = val[p], t = val[p + 1];
      const float* r = xt + (int64_t)col[p] * B;
      const float* q = xt + (int64_t)col[p + 1] * B;
      for (int v = 0; v < V; ++v) { a[v] += s * load<T>(r + W * v); c[v] += t * load<T>(q + W * v); }
    }
    if (p < end) {
      const float s = val[p];
      const float* r = xt + (int64_t)col[p] * B;
      for (int v = 0; v < V; ++v) a[v] += s * load<T>(r + W * v);
    }
    const float b = bias ? bias[j] : 0.f;
    float sums[B];
    for (int v = 0; v < V; ++v) { T sum = a[v] + c[v] + b; std::memcpy(sums + W * v, &sum, sizeof sum); }
    for (int64_t r = 0; r < rows; ++r) y[r * out + j] = sums[r];
  }
}

// x (rows x in, rows <= B) into xt (in x B), lanes past `rows` zero: row by row, reading x in order (column
// by column took 6 us more per call for 5 rows of 512)
template <int B>
static void transpose(const float* x, int64_t in, int64_t rows, float* xt) {
  if (rows < B) std::memset(xt, 0, sizeof(float) * in * B);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < in; ++k) xt[k * B + r] = x[r * in + k];
}

template <typename T, int V>
static void linear(const float* x, int64_t n, int64_t in, int64_t out, const int32_t* crow, const int32_t* col,
                   const float* val, const float* bias, float* y, int threads, float* scratch) {
  constexpr int B = sizeof(T) / sizeof(float) * V;
  constexpr int64_t OUTPUTS = 64;  // outputs per task
  const int64_t blocks = (n + B - 1) / B, groups = (out + OUTPUTS - 1) / OUTPUTS;
  if (blocks == 1) {  // a few rows (a decoding step): each thread transposes them for itself, no barrier between
    if (threads == 1) {  // no parallel region: entering one took ~1 us, the product of 5 rows by 512x128 ~2.5 us
      transpose<B>(x, in, n, scratch);
      outputs<T, V>(scratch, 0, out, crow, col, val, bias, y, out, n);
      return;
    }
#pragma omp parallel num_threads(threads)
    {
      const int64_t count = omp_get_num_threads(), thread = omp_get_thread_num();
      float* xt = scratch + thread * in * B;
      transpose<B>(x, in, n, xt);
      outputs<T, V>(xt, out * thread / count, out * (thread + 1) / count, crow, col, val, bias, y, out, n);
    }
    return;
  }
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t block = 0; block < blocks; ++block)
      transpose<B>(x + block * B * in, in, std::min<int64_t>(B, n - block * B), scratch + block * in * B);
    // block by block: a block's transposed rows stay in cache while every output group reads them (group by
    // group, thousands of rows were re-read from memory for each group: 1.0x dense instead of 2.0x at 6400 rows)
#pragma omp for schedule(static) collapse(2)
    for (int64_t block = 0; block < blocks; ++block)
      for (int64_t group = 0; group < groups; ++group) {
        const int64_t first = block * B;
        outputs<T, V>(scratch + block * in * B, group * OUTPUTS, std::min(out, (group + 1) * OUTPUTS), crow, col, val,
                   bias, y + first * out, out, std::min<int64_t>(B, n - first));
      }
  }
}

// scratch: at least max(ceil(n / block), threads) * block * in floats. Returns 0, or 1 for a block size not built.
extern "C" int csr_linear(const float* x, int64_t n, int64_t in, int64_t out, const int32_t* crow,
                          const int32_t* col, const float* val, const float* bias, float* y, int threads,
                          int block, float* scratch) {
  switch (block) {
    case 8: linear<v8, 1>(x, n, in, out, crow, col, val, bias, y, threads, scratch); return 0;
    case 16: linear<v16, 1>(x, n, in, out, crow, col, val, bias, y, threads, scratch); return 0;
    case 32: linear<v16, 2>(x, n, in, out, crow, col, val, bias, y, threads, scratch); return 0;
    case 64: linear<v16, 4>(x, n, in, out, crow, col, val, bias, y, threads, scratch); return 0;
  }
  return 1;
}
