// cuda_bf16.h under the simulator: everything is in cudasim.h.
#include "../cudasim.h"
