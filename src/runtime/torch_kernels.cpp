// libtorch kernels behind probe's CPU custom operators (src/runtime/cpu_ops/, through the checked wrappers in ffi.rs).
//
// tch (the Rust binding) does not expose at::convolution_backward (it returns three tensors
// under a bool[3] mask, which tch's generator skips), and that is the call PyTorch's own
// autograd makes for a convolution: on x86 CPUs it runs oneDNN's backward-data and
// backward-weights primitives. This file is the thinnest C ABI over it. Inputs are ONNX
// Runtime's buffers viewed in place (at::from_blob, no copy); results are copied into ONNX
// Runtime's output buffers. Exceptions never cross the ABI: they become an error string.
#include <ATen/core/Tensor.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/_log_softmax_backward_data.h>
#include <ATen/ops/_log_softmax.h>
#include <ATen/ops/_softmax.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/im2col.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/gelu_backward.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/silu_backward.h>
// The flash attention kernels' per-CPU entries (see cpu_kernel below).
#define HAVE_AVX512_CPU_DEFINITION
#define HAVE_AVX2_CPU_DEFINITION
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/native/transformers/attention.h>
#include <ATen/ops/empty.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <exception>
#include <optional>

namespace {

void put_error(const char* what, char* err, size_t err_len) {
  if (err_len == 0) return;
  std::strncpy(err, what, err_len - 1);
  err[err_len - 1] = '\0';
}

// The CPU kernel a libtorch dispatch stub runs, chosen as its dispatcher chooses (the best
// variant the CPU and ATEN_CPU_CAPABILITY allow that has one): the stub's own call goes through
// a function libtorch does not export, its per-variant entries are exported.
template <typename Stub>
typename Stub::FnPtr cpu_kernel() {
  static const std::string cap = at::get_cpu_capability();
  if (cap == "AVX512" && Stub::AVX512 != nullptr) return Stub::AVX512;
  if ((cap == "AVX512" || cap == "AVX2") && Stub::AVX2 != nullptr) return Stub::AVX2;
  return Stub::DEFAULT;
}

at::Tensor view(const float* p, const int64_t* shape, int64_t rank) {
  return at::from_blob(const_cast<float*>(p), at::IntArrayRef(shape, rank),
                       at::TensorOptions().dtype(at::kFloat));
}

// Whether a convolution runs channels-last: a 2-D depthwise one (one input channel a group).
// oneDNN's depthwise kernels are written for NHWC; on NCHW tensors its backward-weights ran
// 3.5-10x slower (ConvNeXt's 7x7 and MobileNet's 3x3 at batch 32, 2 threads: 231 against
// 66 ms on [32, 96, 56, 56]), which the two NCHW -> NHWC copies of X and dY (~8 ms each there)
// do not come near. PyTorch's own ConvNeXt reaches these convolutions channels-last already
// (its blocks end in a permute back from NHWC).
bool channels_last(int64_t rank, int64_t groups, const int64_t* w_shape) {
  return rank == 4 && groups > 1 && w_shape[1] == 1;
}

at::Tensor as_layout(at::Tensor t, bool cl) {
  return cl ? t.contiguous(at::MemoryFormat::ChannelsLast) : t;
}

// Runs a kernel body; an exception becomes an error string and a return of 1 (exceptions never
// cross the ABI).
template <class F>
int guarded(F f, char* err, size_t err_len) {
  try {
    // The kernels run on ONNX Runtime's threads, one part each. A thread libtorch has not seen
    // starts with OpenMP's default team (every core) until libtorch's first parallel_for on it
    // sets the team to libtorch's thread count (1 here, see measure::engine); oneDNN opens its
    // OpenMP teams itself and never triggers that, so each part's convolution ran on a full
    // team: two parts on two cores were four threads, a 512 -> 512 3x3 forward on 2x2 maps
    // 9.1 ms against 3.3 with one thread a part. libtorch's own lazy initialization, once per
    // thread, fixes the team.
    at::internal::lazy_init_num_threads();
    f();
    return 0;
  } catch (const std::exception& e) {
    put_error(e.what(), err, err_len);
    return 1;
  } catch (...) {
    put_error("unknown C++ exception", err, err_len);
    return 1;
  }
}

// How dW of a convolution is computed. oneDNN's backward-weights (PyTorch's) but for two
// 2-D, one-group cases where MKL's GEMM beat it (16 samples, 1 thread, ms oneDNN vs GEMM):
// - `PerSample`: a 1x1 kernel (no padding; strides allowed) onto 16 or more positions: dW =
//   sum_n dY[n] X[n]^T, one GEMM a sample accumulating in place (K = P positions), X read as it
//   lies when the stride is 1 (else subsampled by im2col). 256 -> 64 at 56x56 41.0 vs 20.1,
//   96 -> 384 at 56x56 77.6 vs 28.2, 512 -> 128 at 28x28 20.0 vs 13.1, 1024 -> 256 at 4x4 2.7
//   vs 1.1; never slower (768 -> 3072 at 7x7 32.4 vs 31.9).
// - `Gemm`: tiny output maps (P <= 4 positions a sample, or a 1x1 kernel onto fewer than 16):
//   im2col, then one GEMM over K = N*P (dY and the im2col matrix permuted so samples and
//   positions run together; small there). ResNet's last stage at 3x64x64 inputs, 2x2 maps:
//   512 -> 512 3x3 16.1 vs 3.0, 2048 -> 512 1x1 7.3 vs 1.4. At 4x4 a 3x3 kernel was even
//   (3.0 vs 3.5) and at 8x8 oneDNN won (2.2 vs 5.5): the im2col matrix is 9x X.
enum class DwPath { Onednn, PerSample, Gemm };

DwPath dw_path(int64_t rank, int64_t groups, const int64_t* dy_shape, const int64_t* w_shape,
               const int64_t* padding) {
  if (rank != 4 || groups != 1) return DwPath::Onednn;
  int64_t p = dy_shape[2] * dy_shape[3];
  bool pointwise = w_shape[2] == 1 && w_shape[3] == 1 && padding[0] == 0 && padding[1] == 0;
  if (pointwise) return p >= 16 ? DwPath::PerSample : DwPath::Gemm;
  return p <= 4 ? DwPath::Gemm : DwPath::Onednn;
}

// dW[m, (c,t)] = sum_{n,p} dY[n, m, p] cols[n, (c,t), p] by MKL's GEMM into `dw` ([M, C*T]
// viewed in place), `cols` X's im2col matrix [N, C*T, P] (X itself for a 1x1 kernel at
// stride 1).
void dw_gemm(DwPath path, const at::Tensor& dy, const at::Tensor& x, const int64_t* w_shape,
             float* dw, const int64_t* stride, const int64_t* padding, const int64_t* dilation) {
  int64_t n = dy.size(0), m = dy.size(1), p = dy.size(2) * dy.size(3);
  int64_t ct = w_shape[1] * w_shape[2] * w_shape[3];
  bool as_is = w_shape[2] == 1 && w_shape[3] == 1 && stride[0] == 1 && stride[1] == 1 &&
               padding[0] == 0 && padding[1] == 0;
  at::Tensor cols =
      as_is ? x.reshape({n, ct, p})
            : at::im2col(x, at::IntArrayRef(w_shape + 2, 2), at::IntArrayRef(dilation, 2),
                         at::IntArrayRef(padding, 2), at::IntArrayRef(stride, 2));
  std::array<int64_t, 2> out_shape = {m, ct};
  at::Tensor out = view(dw, out_shape.data(), 2);
  at::Tensor d = dy.reshape({n, m, p});
  if (path == DwPath::PerSample) {
    at::mm_out(out, d[0], cols[0].t());
    for (int64_t i = 1; i < n; ++i) out.addmm_(d[i], cols[i].t());
    return;
  }
  at::Tensor a = d.permute({1, 0, 2}).reshape({m, n * p});
  at::Tensor b = cols.permute({0, 2, 1}).reshape({n * p, ct});
  at::mm_out(out, a, b);
}

// `t` (shape `shape`, [N, C, ...]) copied plane by plane: plane (n, c) to planes[n C + c].
void to_planes(const at::Tensor& t, const int64_t* shape, int64_t rank, float* const* planes) {
  at::Tensor src = t.contiguous();
  const float* p = src.const_data_ptr<float>();
  int64_t count = shape[0] * shape[1], plane = 1;
  for (int64_t i = 2; i < rank; ++i) plane *= shape[i];
  for (int64_t j = 0; j < count; ++j) std::memcpy(planes[j], p + j * plane, plane * sizeof(float));
}

}  // namespace

// dX, dW, dB of Y = conv(X, W) (+ B) given dY; a null output pointer leaves that gradient
// uncomputed (libtorch's output_mask). `rank` is the tensors' rank (spatial rank + 2);
// stride, padding (symmetric), dilation have rank - 2 entries.
//
// `dy_lo`: W holds output channels [dy_lo, dy_lo + W's rows) of the convolution whose dY is
// given whole (a part that takes output channels: dW's and dB's rows of those channels). dX,
// if asked for, goes plane by plane to `dx_planes` (X's shape [N, C, ...]: N*C planes, n-major;
// a part that takes input channels passes W's columns of them, and X's shape with those).
extern "C" int probe_conv_grad(const float* dy, const int64_t* dy_shape, int64_t dy_lo,
                               const float* x, const int64_t* x_shape, const float* w,
                               const int64_t* w_shape, int64_t rank, const int64_t* stride,
                               const int64_t* padding, const int64_t* dilation, int64_t groups,
                               float* const* dx_planes, float* dw, float* db, char* err,
                               size_t err_len) {
  return guarded(
      [&] {
        int64_t k = rank - 2;
        bool cl = channels_last(rank, groups, w_shape);
        at::Tensor tdy = view(dy, dy_shape, rank);
        if (dy_lo != 0 || dy_shape[1] != w_shape[0]) tdy = tdy.narrow(1, dy_lo, w_shape[0]);
        tdy = as_layout(tdy, cl);
        // Channels-last and dX alone: oneDNN's backward-data reads X's shape only, and
        // libtorch would copy X into the layout first; an unfilled tensor of its shape spares
        // that copy.
        float* dx = dx_planes != nullptr ? dx_planes[0] : nullptr;  // "asked for"
        at::Tensor tx = !cl ? view(x, x_shape, rank)
                        : dw != nullptr ? as_layout(view(x, x_shape, rank), cl)
                                        : at::empty(at::IntArrayRef(x_shape, rank),
                                                    at::TensorOptions().dtype(at::kFloat).memory_format(
                                                        at::MemoryFormat::ChannelsLast));
        at::Tensor tw = as_layout(view(w, w_shape, rank), cl);
        DwPath path = dw_path(rank, groups, dy_shape, w_shape, padding);
        if (dw != nullptr && path != DwPath::Onednn) {
          dw_gemm(path, tdy, tx, w_shape, dw, stride, padding, dilation);
          dw = nullptr;
          // dB too: convolution_backward costs as much for dB alone as for dW there (oneDNN
          // sets up its whole backward-weights primitive; 14 ms for the 512 -> 512 above).
          if (db != nullptr) {
            int64_t m = w_shape[0];
            at::Tensor out = view(db, &m, 1);
            at::sum_out(out, tdy, {0, 2, 3});
            db = nullptr;
          }
          if (dx == nullptr) return;
        }
        std::array<bool, 3> mask = {dx != nullptr, dw != nullptr, db != nullptr};
        std::array<int64_t, 3> zeros = {0, 0, 0};
        int64_t m = w_shape[0];
        std::optional<at::IntArrayRef> bias_sizes;
        if (db != nullptr) bias_sizes = at::IntArrayRef(&m, 1);
        auto r = at::convolution_backward(tdy, tx, tw, bias_sizes, at::IntArrayRef(stride, k),
                                          at::IntArrayRef(padding, k), at::IntArrayRef(dilation, k),
                                          false, at::IntArrayRef(zeros.data(), k), groups, mask);
        if (dx != nullptr) to_planes(std::get<0>(r), x_shape, rank, dx_planes);
        if (dw != nullptr) view(dw, w_shape, rank).copy_(std::get<1>(r));
        if (db != nullptr) view(db, &m, 1).copy_(std::get<2>(r));
      },
      err, err_len);
}

// Y = conv(X, W) + B (B may be null) into `y` (shape y_shape), then max(Y, 0) when `relu`.
// The bias is added to libtorch's result as it is copied out, not given to the convolution:
// given the bias, oneDNN's result came out further from the exact one, by a factor of 1.2-1.45
// on GoogLeNet's 3x3 convolutions with a BatchNormalization folded in (relative L2 error 9.5e-8
// against 6.9e-8 for inception4b.branch2.1, whose folded bias -mean*s + B is 5x the
// convolution's own output; PyTorch's Conv then BatchNorm: 6.5e-8), and up to 7x on 1x1 ones
// (which probe leaves to ONNX Runtime, whose MLAS adds the bias after). Enough to swap
// near-ties downstream (a MaxPool's argmax, a ReLU's side): the zoo's googlenet at step-2 went
// from 4.9e-5 to 8.0e-7 (PyTorch float32's own: 6.2e-7). Added after, the error is the
// convolution's, and the addition rides in the copy this function makes anyway.
//
// Y goes plane by plane: plane (n, m) of Y's [N, M, ...] to y_planes[n M + m] (a part that
// takes output channels passes W's and B's rows of them, and its planes of the whole Y).
extern "C" int probe_conv(const float* x, const int64_t* x_shape, const float* w,
                          const int64_t* w_shape, const float* b, const int64_t* y_shape,
                          int64_t rank, const int64_t* stride, const int64_t* padding,
                          const int64_t* dilation, int64_t groups, int32_t relu,
                          float* const* y_planes, char* err, size_t err_len) {
  return guarded(
      [&] {
        int64_t k = rank - 2;
        std::array<int64_t, 3> zeros = {0, 0, 0};
        bool cl = channels_last(rank, groups, w_shape);
        at::Tensor r = at::convolution(as_layout(view(x, x_shape, rank), cl),
                                       as_layout(view(w, w_shape, rank), cl),
                                       std::nullopt, at::IntArrayRef(stride, k),
                                       at::IntArrayRef(padding, k), at::IntArrayRef(dilation, k),
                                       false, at::IntArrayRef(zeros.data(), k), groups)
                           .contiguous();
        const float* src = r.const_data_ptr<float>();
        int64_t planes = y_shape[0] * y_shape[1], plane = 1;
        for (int64_t i = 2; i < rank; ++i) plane *= y_shape[i];
        // One pass over the result, per (sample, channel) plane: + B[c], then `t < 0 ? 0 : t`
        // (a NaN stays a NaN, as a Relu after the Conv).
        for (int64_t p = 0; p < planes; ++p) {
          const float* in = src + p * plane;
          float* out = y_planes[p];
          if (b == nullptr && !relu) {
            std::memcpy(out, in, plane * sizeof(float));
            continue;
          }
          if (b == nullptr) {
            for (int64_t i = 0; i < plane; ++i) out[i] = in[i] < 0.0f ? 0.0f : in[i];
            continue;
          }
          const float bc = b[p % y_shape[1]];
          if (relu) {
            for (int64_t i = 0; i < plane; ++i) {
              float t = in[i] + bc;
              out[i] = t < 0.0f ? 0.0f : t;
            }
          } else {
            for (int64_t i = 0; i < plane; ++i) out[i] = in[i] + bc;
          }
        }
      },
      err, err_len);
}

// dX = dY * GELU'(X) over n elements, `tanh` selecting the tanh approximation (libtorch's
// vectorized gelu_backward, what PyTorch's autograd runs for F.gelu).
extern "C" int probe_gelu_grad(const float* dy, const float* x, int64_t n, int32_t tanh,
                               float* dx, char* err, size_t err_len) {
  return guarded(
      [&] {
        at::Tensor out = view(dx, &n, 1);
        at::gelu_backward_out(out, view(dy, &n, 1), view(x, &n, 1), tanh ? "tanh" : "none");
      },
      err, err_len);
}

// Y = silu(X) = X sigmoid(X) and dX = silu_backward(dY, X) = dY s (1 + X (1 - s)) over n
// elements (libtorch's vectorized kernels, what PyTorch runs for nn.SiLU).
extern "C" int probe_silu(const float* x, int64_t n, float* y, char* err, size_t err_len) {
  return guarded(
      [&] {
        at::Tensor out = view(y, &n, 1);
        at::silu_out(out, view(x, &n, 1));
      },
      err, err_len);
}

extern "C" int probe_silu_grad(const float* dy, const float* x, int64_t n, float* dx, char* err,
                               size_t err_len) {
  return guarded(
      [&] {
        at::Tensor out = view(dx, &n, 1);
        at::silu_backward_out(out, view(dy, &n, 1), view(x, &n, 1));
      },
      err, err_len);
}

// Y = softmax(X, axis), or with `log` log_softmax(X, axis), for X of shape `shape` (libtorch's
// vectorized kernels; ONNX Runtime's softmax ran ~5x slower on rows of 32, its log-softmax
// 2.5x slower on a [2048, 32000] loss head).
extern "C" int probe_softmax(const float* x, const int64_t* shape, int64_t rank, int64_t axis,
                             int32_t log, float* y, char* err, size_t err_len) {
  return guarded(
      [&] {
        at::Tensor out = view(y, shape, rank);
        if (log) {
          at::_log_softmax_out(out, view(x, shape, rank), axis, false);
        } else {
          at::_softmax_out(out, view(x, shape, rank), axis, false);
        }
      },
      err, err_len);
}

// Rows [lo, hi) (first axis) of Y = X.permute(perm), into `y` (those rows only).
extern "C" int probe_transpose(const float* x, const int64_t* shape, int64_t rank,
                               const int64_t* perm, int64_t lo, int64_t hi, float* y, char* err,
                               size_t err_len) {
  return guarded(
      [&] {
        at::Tensor src = view(x, shape, rank).permute(at::IntArrayRef(perm, rank)).narrow(0, lo, hi - lo);
        at::Tensor out = view(y, src.sizes().data(), rank);
        out.copy_(src);
      },
      err, err_len);
}

// Y = A op(B) + bias for A [m, k], B [k, n] or with `tb` [n, k] (read transposed in place),
// bias [n] (libtorch's addmm: the GEMM accumulates onto the broadcast bias, as PyTorch's
// Linear runs).
extern "C" int probe_matmul_add(const float* a, int64_t m, int64_t k, const float* b, int64_t n,
                                int32_t tb, const float* bias, float* y, char* err,
                                size_t err_len) {
  return guarded(
      [&] {
        int64_t ys[2] = {m, n}, as[2] = {m, k}, bs[2] = {k, n}, bts[2] = {n, k};
        at::Tensor out = view(y, ys, 2);
        at::Tensor b_ = tb ? view(b, bts, 2).t() : view(b, bs, 2);
        at::addmm_out(out, view(bias, &n, 1), view(a, as, 2), b_);
      },
      err, err_len);
}

// dX = dY - exp(Y) sum_axis(dY) for Y = log_softmax(X, axis) of shape `shape` (libtorch's
// vectorized kernel).
extern "C" int probe_log_softmax_grad(const float* dy, const float* y, const int64_t* shape,
                                      int64_t rank, int64_t axis, float* dx, char* err,
                                      size_t err_len) {
  return guarded(
      [&] {
        at::Tensor out = view(dx, shape, rank);
        at::_log_softmax_backward_data_out(out, view(dy, shape, rank), view(y, shape, rank), axis,
                                           at::kFloat);
      },
      err, err_len);
}

// Y = op(A) op(B), op transposing the last two axes where `ta` / `tb` say (libtorch's matmul:
// MKL's GEMM, batched over equal leading axes or against one matrix). Shapes are A's and B's
// as stored; `y_shape` is the result's.
extern "C" int probe_matmul(const float* a, const int64_t* a_shape, int64_t a_rank, int32_t ta,
                            const float* b, const int64_t* b_shape, int64_t b_rank, int32_t tb,
                            float* y, const int64_t* y_shape, int64_t y_rank, char* err,
                            size_t err_len) {
  return guarded(
      [&] {
        at::Tensor ta_ = view(a, a_shape, a_rank), tb_ = view(b, b_shape, b_rank);
        if (ta) ta_ = ta_.transpose(-1, -2);
        if (tb) tb_ = tb_.transpose(-1, -2);
        at::Tensor out = view(y, y_shape, y_rank);
        at::matmul_out(out, ta_, tb_);
      },
      err, err_len);
}

namespace {

// The inputs of one part of a ScaledDotProductAttention node: batch rows [lo, hi) of Q, K, V
// (shapes `q_shape` [B, H, L, E], `kv_shape` [B, H, S, E], stored as [B, L, H, E] when
// `blhe`) and of the additive mask when it has
// a batch axis (a mask of rank < 4 is viewed as [1, ..., L, S]: it broadcasts over B and H).
struct Sdpa {
  at::Tensor q, k, v;
  std::optional<at::Tensor> mask;
};

// A [B, H, L, E] tensor (shape `bhle`) stored as such, or as [B, L, H, E] when `blhe` (then a
// strided view, no copy); `row` > 0: [B, L, H, E] rows `row` elements apart (Q, K and V read
// in place from one [B, L, 3 H E] projection, `p` at the part's first column).
at::Tensor heads(const float* p, const int64_t* bhle, bool blhe, int64_t row = 0) {
  if (!blhe) return view(p, bhle, 4);
  std::array<int64_t, 4> s = {bhle[0], bhle[2], bhle[1], bhle[3]};
  if (row <= 0) row = s[2] * s[3];
  std::array<int64_t, 4> st = {s[1] * row, row, s[3], 1};
  return at::from_blob(const_cast<float*>(p), s, st, at::TensorOptions().dtype(at::kFloat))
      .permute({0, 2, 1, 3});
}

Sdpa sdpa_part(const float* q, const int64_t* q_shape, const float* k, const float* v,
               const int64_t* kv_shape, bool blhe, int64_t row, const float* mask,
               const int64_t* mask_shape, int64_t mask_rank, int64_t lo, int64_t hi) {
  Sdpa s;
  s.q = heads(q, q_shape, blhe, row).narrow(0, lo, hi - lo);
  s.k = heads(k, kv_shape, blhe, row).narrow(0, lo, hi - lo);
  s.v = heads(v, kv_shape, blhe, row).narrow(0, lo, hi - lo);
  if (mask != nullptr) {
    std::array<int64_t, 4> ms = {1, 1, 1, 1};
    for (int64_t i = 0; i < mask_rank; ++i) ms[4 - mask_rank + i] = mask_shape[i];
    at::Tensor m = view(mask, ms.data(), 4);
    if (ms[0] > 1) m = m.narrow(0, lo, hi - lo);
    s.mask = m;
  }
  return s;
}

}  // namespace

// Batch rows [lo, hi) of one attention, by libtorch's flash attention for CPU (what PyTorch
// runs for F.scaled_dot_product_attention on CPU). Forward when `dout` is null: O = softmax(scale
// Q K^T + mask) V into `o` and each row's log-sum-exp LSE [B, H, L] into `lse`. Backward
// otherwise: dQ, dK, dV from dO and the forward's O and LSE (a null gradient pointer: that
// gradient goes to scratch). O and dO are stored as `blhe_out` says, Q, K, V and their
// gradients as `blhe_in` says, their rows `in_row` elements apart when `in_row` > 0 (one
// projection holding Q, K and V side by side, and its gradient likewise: each pointer is its
// part's first column); every pointer addresses the whole tensor.
//
// The kernels are called through their dispatch stubs (ATen/native/transformers/attention.h),
// not the aten ops: the stubs take the output tensors, any strides with a unit last axis, so
// they write into ONNX Runtime's buffers in place. The ops allocate, zero and return fresh
// tensors that were then copied over: that copy and fill took about as long as the attention
// itself on the shipped GPT.
extern "C" int probe_sdpa(const float* dout, const float* q, const int64_t* q_shape,
                          const float* k, const float* v, const int64_t* kv_shape,
                          int32_t blhe_in, int32_t blhe_out, int64_t in_row,
                          const float* mask,
                          const int64_t* mask_shape, int64_t mask_rank, double scale, int64_t lo,
                          int64_t hi, float* o, float* lse, float* dq, float* dk, float* dv,
                          char* err, size_t err_len) {
  return guarded(
      [&] {
        int64_t n = hi - lo;
        // [B, L, H, E] (and LSE [B, L, H]) views, as the stubs take them.
        auto blhe = [](const at::Tensor& t) { return t.transpose(1, 2); };
        at::Tensor to = blhe(heads(o, q_shape, blhe_out).narrow(0, lo, n));
        at::Tensor tl = blhe(view(lse, q_shape, 3).narrow(0, lo, n));
        Sdpa s = sdpa_part(q, q_shape, k, v, kv_shape, blhe_in, in_row, mask, mask_shape,
                           mask_rank, lo, hi);
        at::Tensor tq = blhe(s.q), tk = blhe(s.k), tv = blhe(s.v);
        if (dout == nullptr) {
          // The forward stub takes Q, K, V as [B, H, L, E], O and LSE as [B, L, H, ...].
          cpu_kernel<at::native::flash_attention_kernel_DECLARE_DISPATCH_type>()(
              to, tl, s.q, s.k, s.v, 0.0, false, s.mask, scale);
          return;
        }
        at::Tensor tdo = blhe(heads(dout, q_shape, blhe_out).narrow(0, lo, n));
        // The backward kernel accumulates into the gradients: zeroed first.
        auto grad = [&](float* p, const int64_t* shape, const at::Tensor& like) {
          at::Tensor g = p != nullptr ? blhe(heads(p, shape, blhe_in, in_row).narrow(0, lo, n))
                                      : at::empty(like.sizes(), like.options());
          g.zero_();
          return g;
        };
        at::Tensor gq = grad(dq, q_shape, tq), gk = grad(dk, kv_shape, tk),
                   gv = grad(dv, kv_shape, tv);
        cpu_kernel<at::native::flash_attention_backward_kernel_DECLARE_DISPATCH_type>()(
            gq, gk, gv, tdo, tq, tk, tv, to, tl, 0.0, false, s.mask, scale);
      },
      err, err_len);
}
