// cuda_fp16.h under the simulator: everything is in cudasim.h.
#include "../cudasim.h"
