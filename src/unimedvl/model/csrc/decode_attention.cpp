// Decoding's attention on CPU: one query row per head over a KV cache, in fp32.
//
// On the 2-core EPYC here torch's SDPA kernel took 0.54-0.85 ms per small-preset layer at 4,096 keys
// with the cache already in L3 (7-8 GB/s from memory, which streams 25-45 GB/s): bound by its arithmetic,
// not by reading the cache. This computes each key row's scores for every query head that shares it
// (grouped-query attention) while the row is in L1, in chunks of CHUNK keys spread over torch's intra-op
// threads, with exp vectorised; the chunks' partial softmax sums are then merged (the split-K form of
// flash decoding).
// Built at run time by unimedvl/model/decode_attention.py (torch.utils.cpp_extension), which also
// times it against SDPA where it runs and falls back to SDPA when it cannot be built.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t CHUNK = 256;  // key rows per work item: its scores stay in L1, its K / V rows in L2

// One chunk of keys for the G query heads of one kv head: scores, their max and sum, and the
// unnormalised weighted sum of the value rows (combined across chunks afterwards).
template <int64_t D>
void attend_chunk(const float* q, const float* k, int64_t sk, const float* v, int64_t sv, int64_t n, int64_t G,
                  float scale, float* s, float* m_out, float* l_out, float* acc) {
  for (int64_t t = 0; t < n; ++t) {
    const float* kr = k + t * sk;
    for (int64_t g = 0; g < G; ++g) {
      const float* qg = q + g * D;
      float dot = 0.f;
#pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < D; ++d) dot += qg[d] * kr[d];
      s[g * CHUNK + t] = dot * scale;
    }
  }
  for (int64_t g = 0; g < G; ++g) {
    float* sg = s + g * CHUNK;
    float m = sg[0];
    for (int64_t t = 1; t < n; ++t) m = std::max(m, sg[t]);
    float l = 0.f;
#pragma omp simd reduction(+ : l)
    for (int64_t t = 0; t < n; ++t) {
      const float p = std::exp(sg[t] - m);
      sg[t] = p;
      l += p;
    }
    m_out[g] = m;
    l_out[g] = l;
    float a[D];
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) a[d] = 0.f;
    for (int64_t t = 0; t < n; ++t) {
      const float p = sg[t];
      const float* vr = v + t * sv;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) a[d] += p * vr[d];
    }
    std::copy(a, a + D, acc + g * D);
  }
}

void attend_chunk_any(int64_t D, const float* q, const float* k, int64_t sk, const float* v, int64_t sv, int64_t n,
                      int64_t G, float scale, float* s, float* m, float* l, float* acc) {
  switch (D) {  // the head sizes of the configs in use; others take SDPA (decode_attention.py)
    case 16: return attend_chunk<16>(q, k, sk, v, sv, n, G, scale, s, m, l, acc);
    case 32: return attend_chunk<32>(q, k, sk, v, sv, n, G, scale, s, m, l, acc);
    case 48: return attend_chunk<48>(q, k, sk, v, sv, n, G, scale, s, m, l, acc);
    case 64: return attend_chunk<64>(q, k, sk, v, sv, n, G, scale, s, m, l, acc);
    case 80: return attend_chunk<80>(q, k, sk, v, sv, n, G, scale, s, m, l, acc);
    case 96: return attend_chunk<96>(q, k, sk, v, sv, n, G, scale, s, m, l, acc);
    case 128: return attend_chunk<128>(q, k, sk, v, sv, n, G, scale, s, m, l, acc);
    case 256: return attend_chunk<256>(q, k, sk, v, sv, n, G, scale, s, m, l, acc);
    default: TORCH_CHECK(false, "decode_attention: head_dim ", D, " is not compiled in");
  }
}

}  // namespace

torch::Tensor decode_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, double scale) {
  TORCH_CHECK(q.dtype() == torch::kFloat32 && k.dtype() == torch::kFloat32 && v.dtype() == torch::kFloat32,
              "decode_attention: float32 only");
  TORCH_CHECK(q.dim() == 2 && k.dim() == 3 && v.dim() == 3 && q.is_contiguous(), "decode_attention: shapes");
  TORCH_CHECK(k.stride(2) == 1 && v.stride(2) == 1 && k.sizes() == v.sizes(), "decode_attention: key layout");
  const int64_t Hq = q.size(0), D = q.size(1), Hkv = k.size(0), T = k.size(1);
  TORCH_CHECK(T > 0 && Hq % Hkv == 0 && k.size(2) == D, "decode_attention: head counts");
  const int64_t G = Hq / Hkv, C = (T + CHUNK - 1) / CHUNK;
  auto part_m = torch::empty({Hkv, C, G}, q.options());
  auto part_l = torch::empty({Hkv, C, G}, q.options());
  auto part_acc = torch::empty({Hkv, C, G, D}, q.options());
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  float *pm = part_m.data_ptr<float>(), *pl = part_l.data_ptr<float>(), *pa = part_acc.data_ptr<float>();
  const int64_t skh = k.stride(0), skt = k.stride(1), svh = v.stride(0), svt = v.stride(1);
  const float sc = static_cast<float>(scale);
  at::parallel_for(0, Hkv * C, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> s(G * CHUNK);
    for (int64_t w = begin; w < end; ++w) {
      const int64_t h = w / C, t0 = (w % C) * CHUNK, n = std::min(T, t0 + CHUNK) - t0;
      attend_chunk_any(D, qp + h * G * D, kp + h * skh + t0 * skt, skt, vp + h * svh + t0 * svt, svt, n, G, sc,
                       s.data(), pm + w * G, pl + w * G, pa + w * G * D);
    }
  });
  auto out = torch::zeros({Hq, D}, q.options());
  float* op = out.data_ptr<float>();
  for (int64_t h = 0; h < Hkv; ++h) {
    for (int64_t g = 0; g < G; ++g) {
      float M = pm[h * C * G + g];
      for (int64_t c = 1; c < C; ++c) M = std::max(M, pm[(h * C + c) * G + g]);
      float den = 0.f;
      float* o = op + (h * G + g) * D;
      for (int64_t c = 0; c < C; ++c) {
        const float f = std::exp(pm[(h * C + c) * G + g] - M);
        den += f * pl[(h * C + c) * G + g];
        const float* a = pa + ((h * C + c) * G + g) * D;
        for (int64_t d = 0; d < D; ++d) o[d] += f * a[d];
      }
      for (int64_t d = 0; d < D; ++d) o[d] /= den;
    }
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("decode_attention", &decode_attention); }
