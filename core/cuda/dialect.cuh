// dialect.cuh — the macros through which the CUDA sources launch kernels and
// declare shared memory, so that the same text compiles under nvcc (the real
// syntax, below) and under the simulator (tests/cudasim/cudasim.h defines
// them its own way when SL_CUDASIM is set).
//   SL_LAUNCH(kernel, grid, block, smem, stream)(args...)   kernel<<<...>>>(args...);
//       kernel is a name or a function pointer (a template instance goes
//       through a local pointer: its commas would split the macro argument)
//   SL_SHARED(T, name, dims)    __shared__ T name dims     (dims: [n][m] or empty)
//   SL_DYN_SMEM(T, name)        extern __shared__ T name[] (aligned as T)
#ifndef SL_CUDA_DIALECT_CUH
#define SL_CUDA_DIALECT_CUH

#ifndef SL_CUDASIM
#define SL_LAUNCH(kernel, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
#define SL_SHARED(T, name, dims) __shared__ T name dims
#define SL_DYN_SMEM(T, name) extern __shared__ T name[]
#endif

#endif
