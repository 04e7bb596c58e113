/* A host that includes the implementation first and then uses libc features of its own: M_PI and
   friends must still be there (the header asks for more of libc, never for less). Built by make
   check-compile as C99 (gnu99) and C++. */
#define RESBM_IMPLEMENTATION
#include "../resbm.h"
#include <math.h>
#include <stdio.h>
#include <string.h>

int main(void) {
    double half_turn = M_PI, e = M_E;
    char *dup = strdup("host"); /* POSIX, as a gnu99 host expects */
    int ok = half_turn > 3.14 && e > 2.7 && dup != NULL;
    free(dup);
    return ok ? 0 : 1;
}
