/* The header on its own, implementing, with -Wall -Wextra -Wpedantic -Werror (C99 and C++11). */
#define RESBM_IMPLEMENTATION
#include "../resbm.h"
int main(void) { return resbm_strerror(RESBM_OK)[0] == 's' ? 0 : 1; }
