/* Compiles the ABI header on the host so its _Static_asserts hold for the
 * Swift side too (SwiftPM needs one source file in a C target). */
#include "cxl_bmc_abi.h"
