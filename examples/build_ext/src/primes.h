#ifndef PRIMES_H
#define PRIMES_H
#include <stddef.h>

unsigned char *bits_new(size_t n);
void bits_clear(unsigned char *bits, size_t i);
int bits_test(const unsigned char *bits, size_t i);
size_t isqrt(size_t n);
size_t sieve_count(size_t below);

#endif
