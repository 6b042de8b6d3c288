#include <stdlib.h>
#include <string.h>
#include "primes.h"

unsigned char *bits_new(size_t n) {
    unsigned char *bits = malloc(n / 8 + 1);
    if (bits != NULL)
        memset(bits, 0xff, n / 8 + 1);
    return bits;
}

void bits_clear(unsigned char *bits, size_t i) { bits[i / 8] &= (unsigned char)~(1u << (i % 8)); }

int bits_test(const unsigned char *bits, size_t i) { return (bits[i / 8] >> (i % 8)) & 1; }
