// mma.h under the simulator: everything is in cudasim.h.
#include "../cudasim.h"
