/* A host built with -Ofast (-ffast-math: the compiler may assume no NaN or Inf). The library's
   finiteness checks read bit patterns, so they still refuse NaN and Inf here. make check-compile
   builds and runs it; it exits 0 only when every check holds. */
#define RESBM_IMPLEMENTATION
#include "../resbm.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

int main(int argc, char **argv) {
    float nan = from_bits(0x7fc00000u), inf = from_bits(0x7f800000u), x[4] = {1, 2, 3, 4};
    unsigned char buf[256];
    size_t len;
    resbm_frame_info f;
    resbm_model_config c = resbm_model_config_default();
    resbm_opt_config o = resbm_opt_config_default();
    resbm_model *m = NULL;
    int bad = 0;
    (void)argv;
    if (argc > 1) nan = inf = (float)argc; /* keep the values out of constant folding */
    memset(&f, 0, sizeof(f));
    f.kind = RESBM_KIND_ACT; f.dtype = RESBM_WIRE_F32; f.rows = 1; f.cols = 4;
    x[2] = nan;
    if (resbm_frame_encode(buf, sizeof(buf), &len, &f, x) != RESBM_ENONFINITE) { puts("NaN encoded"); bad = 1; }
    x[2] = inf;
    if (resbm_frame_encode(buf, sizeof(buf), &len, &f, x) != RESBM_ENONFINITE) { puts("Inf encoded"); bad = 1; }
    f.dtype = RESBM_WIRE_I8; /* FLT_MAX's i8 scale, x 127, is Inf: still refused, not folded away */
    x[2] = argc > 1 ? (float)argc : -from_bits(0x7f7fffffu);
    if (resbm_frame_encode(buf, sizeof(buf), &len, &f, x) != RESBM_ERANGE) { puts("-FLT_MAX encoded in i8"); bad = 1; }
    f.dtype = RESBM_WIRE_F32;
    c.d = 32; c.layers = 2; c.heads = 2; c.seq = 8; c.batch = 1;
    o.lr = nan;
    if (resbm_model_init(&c, &o, &m) != RESBM_EINVAL) { puts("NaN lr accepted"); bad = 1; resbm_model_free(m); }
    o = resbm_opt_config_default();
    o.clip = inf;
    if (resbm_model_init(&c, &o, &m) != RESBM_EINVAL) { puts("Inf clip accepted"); bad = 1; resbm_model_free(m); }
    c.init_std = nan;
    o = resbm_opt_config_default();
    if (resbm_model_init(&c, &o, &m) != RESBM_EINVAL) { puts("NaN init_std accepted"); bad = 1; resbm_model_free(m); }
    return bad;
}
