/* libnuma (Debian: libnuma-dev). */
#include <numa.h>
#include <numaif.h>
