#include "primes.h"

size_t isqrt(size_t n) {
    size_t r = 0;
    while ((r + 1) * (r + 1) <= n)
        r++;
    return r;
}
