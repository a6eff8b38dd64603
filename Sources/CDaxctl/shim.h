/* libdaxctl (Debian: libdaxctl-dev). */
#include <daxctl/libdaxctl.h>
