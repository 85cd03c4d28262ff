/* A C11 program against the installed C ABI (include/kiln/c_api.h): the header compiles as C, the library links from
 * C, and bad calls come back as status codes with messages naming the argument. Needs no GPU: every call is rejected
 * by validation before any device work. Exit 0 when all of that holds. */
#include <kiln/c_api.h>
#include <stdio.h>
#include <string.h>

/* 1 if the call returned `want` and the message names `arg` (quoted). */
static int rejected(const char* call, kiln_status got, kiln_status want, const char* arg) {
  char quoted[64];
  snprintf(quoted, sizeof quoted, "'%s'", arg);
  printf("kiln %s from C: %s -> status %d: %s\n", kiln_version(), call, (int)got, kiln_last_error());
  return got == want && strstr(kiln_last_error(), quoted) != NULL;
}

int main(void) {
  kiln_runtime* rt = NULL;
  if (kiln_runtime_create(NULL, "sm_90a", &rt) != KILN_OK) {
    fprintf(stderr, "kiln_runtime_create: %s\n", kiln_last_error());
    return 1;
  }
  void* fake = (void*)(uintptr_t)0x10000; /* aligned, never dereferenced: validation fails first */
  int ok = 1;

  const int64_t xs[2] = {64, 2048}, ws[2] = {256, 2048}, zs[2] = {64, 256};
  const kiln_tensor x = kiln_tensor_contiguous(fake, KILN_BF16, 2, xs);
  const kiln_tensor w = kiln_tensor_contiguous(fake, KILN_BF16, 2, ws);
  const kiln_tensor logits = kiln_tensor_contiguous(fake, KILN_BF16, 2, zs); /* must be fp32 */
  ok &= rejected("router_gemm_fp32_fwd with bf16 logits", kiln_router_gemm_fp32_fwd(rt, &x, &w, &logits, NULL),
                 KILN_ERROR_UNSUPPORTED_DTYPE, "logits");

  /* SwiGLU + fp8 quantization with an output mode out of 0 … 2 (options: a C struct; NULL would mean the defaults). */
  const int64_t hs[2] = {64, 256}, qs[2] = {64, 128}, ss[2] = {1, 64}, ts[2] = {128, 64}, tss[2] = {1, 128};
  const kiln_tensor h = kiln_tensor_contiguous(fake, KILN_BF16, 2, hs),
                    q = kiln_tensor_contiguous(fake, KILN_E4M3, 2, qs),
                    q_scale = kiln_tensor_contiguous(fake, KILN_F32, 2, ss),
                    qT = kiln_tensor_contiguous(fake, KILN_E4M3, 2, ts),
                    qT_scale = kiln_tensor_contiguous(fake, KILN_F32, 2, tss);
  const kiln_silu_block_quant_outputs out = {&q, &q_scale, &qT, &qT_scale};
  const kiln_silu_options opts = {0, 3, 0, 0};
  ok &= rejected("silu_block_quant_fwd with output_mode 3",
                 kiln_silu_block_quant_fwd(rt, &h, &out, &opts, NULL), KILN_ERROR_INVALID_ARGUMENT, "output_mode");

  /* A list reduction over an array of descriptors: the second one is int32. */
  const int64_t n1[1] = {1000}, n2[2] = {7, 3}, one[1] = {1};
  const kiln_tensor list[2] = {kiln_tensor_contiguous(fake, KILN_F32, 1, n1),
                               kiln_tensor_contiguous(fake, KILN_I32, 2, n2)};
  const kiln_tensor zeros = kiln_tensor_contiguous(fake, KILN_I64, 1, one);
  ok &= rejected("batch_count_zero with an int32 tensor", kiln_batch_count_zero(rt, list, 2, &zeros, NULL),
                 KILN_ERROR_UNSUPPORTED_DTYPE, "xs[1]");

  kiln_runtime_destroy(rt);
  return ok ? 0 : 1;
}
