#include <stdlib.h>
#include "primes.h"

/* The number of primes below `below` (sieve of Eratosthenes); 0 when out of memory. */
size_t sieve_count(size_t below) {
    if (below < 3)
        return 0;
    unsigned char *bits = bits_new(below);
    if (bits == NULL)
        return 0;
    for (size_t i = 2; i <= isqrt(below - 1); i++)
        if (bits_test(bits, i))
            for (size_t j = i * i; j < below; j += i)
                bits_clear(bits, j);
    size_t count = 0;
    for (size_t i = 2; i < below; i++)
        count += (size_t)bits_test(bits, i);
    free(bits);
    return count;
}
