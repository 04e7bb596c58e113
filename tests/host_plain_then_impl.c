/* A host in the stb pattern: the header included plainly (as a host's own header would), host
   code, then the implementation in the same file. Built as C99 and C++ by make check-compile. */
#include "../resbm.h"
#include <stdio.h>

static int host_uses_the_api(void) {
    resbm_model_config c = resbm_model_config_default();
    return c.d == 256 ? 0 : 1;
}

#define RESBM_IMPLEMENTATION
#include "../resbm.h"

int main(void) { return host_uses_the_api() || resbm_strerror(RESBM_OK)[0] != 's'; }
