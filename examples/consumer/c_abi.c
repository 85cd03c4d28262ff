/* A C11 program against the installed C ABI (include/kiln/c_api.h): the header compiles as C, the library links from
 * C, and a bad call comes back as a status code with a message naming the argument. Needs no GPU: the call is
 * rejected by validation before any device work. Exit 0 when all of that holds. */
#include <kiln/c_api.h>
#include <stdio.h>
#include <string.h>

int main(void) {
  kiln_runtime* rt = NULL;
  if (kiln_runtime_create(NULL, "sm_90a", &rt) != KILN_OK) {
    fprintf(stderr, "kiln_runtime_create: %s\n", kiln_last_error());
    return 1;
  }
  const int64_t xs[2] = {64, 2048}, ws[2] = {256, 2048}, zs[2] = {64, 256};
  void* fake = (void*)(uintptr_t)0x10000; /* aligned, never dereferenced: validation fails first */
  const kiln_tensor x = kiln_tensor_contiguous(fake, KILN_BF16, 2, xs);
  const kiln_tensor w = kiln_tensor_contiguous(fake, KILN_BF16, 2, ws);
  const kiln_tensor logits = kiln_tensor_contiguous(fake, KILN_BF16, 2, zs); /* must be fp32 */
  const kiln_status s = kiln_router_gemm_fp32_fwd(rt, &x, &w, &logits, NULL);
  printf("kiln %s from C: router_gemm_fp32_fwd with bf16 logits -> status %d: %s\n", kiln_version(), (int)s,
         kiln_last_error());
  kiln_runtime_destroy(rt);
  return s == KILN_ERROR_UNSUPPORTED_DTYPE && strstr(kiln_last_error(), "'logits'") != NULL ? 0 : 1;
}
