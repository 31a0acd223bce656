// Beam search's step for fairseq's BeamSearch: the k best of (log-probability + its hypothesis's score) over a
// sentence's beam x vocabulary sums, descending, with their flat indices (what torch.topk of the sums gives).
// Loaded by vocab_passes.py.
//
// Two passes over a sentence's sums. The first takes the largest of each block of 64 (in vectors; a NaN
// anywhere stops it); the (k+1)-th largest of those, L, is at most the (k+1)-th largest sum, as k + 1 blocks
// hold a sum at least L each (with k blocks or fewer, L is -inf). The second looks only at blocks whose
// largest is at least L, keeping the k + 1 best sums. Where two of those k + 1 are equal, torch.topk's answer
// depends on how it breaks ties, and the sentence is refused (1): the caller then takes torch.topk's.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <omp.h>

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t i16 __attribute__((vector_size(64)));

constexpr int64_t MOST = 65;  // k + 1 at most
constexpr int64_t BLOCK = 64;

static int sentence(const float* lp, const float* sc, int64_t beam, int64_t vocab, int64_t k, float* values,
                    int64_t* indices, std::vector<float>& most, std::vector<float>& order) {
  const int64_t m = k + 1, blocks = (vocab + BLOCK - 1) / BLOCK;
  most.resize(beam * blocks);
  for (int64_t h = 0; h < beam; ++h) {  // first pass: each block's largest sum
    const float* row = lp + h * vocab;
    const float s = sc[h];
    const v16 sv = s - v16{};
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t c0 = b * BLOCK;
      float top = -INFINITY;
      if (c0 + BLOCK <= vocab) {
        v16 a = -INFINITY - v16{}, x;
        i16 nan = i16{};
        for (int64_t v = c0; v < c0 + BLOCK; v += 16) {
          std::memcpy(&x, row + v, sizeof x);
          x += sv;
          nan |= x != x;
          a = a > x ? a : x;
        }
        for (int i = 0; i < 16; ++i) {
          if (nan[i]) return 1;
          top = top > a[i] ? top : a[i];
        }
      } else {
        for (int64_t v = c0; v < vocab; ++v) {
          const float x = row[v] + s;
          if (x != x) return 1;
          top = top > x ? top : x;
        }
      }
      most[h * blocks + b] = top;
    }
  }
  float least = -INFINITY;  // L: the (k+1)-th largest block's largest (with fewer blocks, every block is read)
  if ((int64_t)most.size() > k) {
    order.assign(most.begin(), most.end());
    std::nth_element(order.begin(), order.begin() + k, order.end(), std::greater<float>());
    least = order[k];
  }
  float bv[MOST];
  int64_t bi[MOST];
  int64_t have = 0;
  // second pass: the k + 1 best in blocks that reach L (at least k + 1 sums reach it: the buffer fills)
  for (int64_t h = 0; h < beam; ++h) {
    const float* row = lp + h * vocab;
    const float s = sc[h];
    for (int64_t b = 0; b < blocks; ++b) {
      if (!(most[h * blocks + b] >= least)) continue;
      for (int64_t v = b * BLOCK, end = std::min(vocab, v + BLOCK); v < end; ++v) {
        const float x = row[v] + s;
        int64_t p;
        if (have == m) {
          if (!(x > bv[m - 1])) continue;
          p = m - 1;
        } else {
          p = have++;
        }
        for (; p > 0 && bv[p - 1] < x; --p) { bv[p] = bv[p - 1]; bi[p] = bi[p - 1]; }
        bv[p] = x;
        bi[p] = h * vocab + v;
      }
    }
  }
  for (int64_t i = 1; i < m; ++i)
    if (!(bv[i - 1] > bv[i])) return 1;  // a tie among the k + 1 best
  for (int64_t i = 0; i < k; ++i) { values[i] = bv[i]; indices[i] = bi[i]; }
  return 0;
}

// 0 where every sentence's k best are one exact answer; otherwise nonzero, and the outputs are not to be used
extern "C" int beam_topk(const float* lprobs, const float* scores, int64_t sentences, int64_t beam, int64_t vocab,
                         int64_t k, float* values, int64_t* indices, int threads) {
  if (k < 1 || k + 1 > MOST || k + 1 > beam * vocab) return 1;
  int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1 && sentences > 1) reduction(| : failed)
  {
    std::vector<float> most, order;  // each thread's scratch, reused sentence after sentence
#pragma omp for schedule(static)
    for (int64_t b = 0; b < sentences; ++b)
      failed |= sentence(lprobs + b * beam * vocab, scores + b * beam, beam, vocab, k, values + b * k,
                         indices + b * k, most, order);
  }
  return failed;
}
