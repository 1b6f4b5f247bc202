# tests/cudasim/cudasim.mk — the CUDA simulator build, included by the Makefile.
#   make test-cudasim        the CUDA backend compiled by $(CXX) against the
#                            simulator (build-cudasim/): its self-tests and
#                            planted bugs, then every op suite on ref,cpu,cuda
#                            in normal and reversed thread order
#   make test-cudasim-asan   the same under AddressSanitizer (build-cudasim-asan/)
# CUDASIM=1 (set by those targets, with CUDA=1) swaps nvcc and libcudart for
# the host compiler, a forced include and the simulator runtime.

CUDASIM ?= 0
CUDASIM_DIR := tests/cudasim
CUDASIM_CXXFLAGS = -x c++ -std=c++17 -include $(CUDASIM_DIR)/cudasim.h -I $(CUDASIM_DIR)/include -DSL_CUDASIM=1 \
                   -DSL_CUDA=1 -I core -fPIC -MMD -MP $(OPT) -g $(SAN) -Wall -Wextra -Wno-unused-parameter \
                   -Wno-unknown-pragmas $(if $(filter 1,$(WERROR)),-Werror)
CUDASIM_SUITES := $(CUDA_OP_SUITES)

ifeq ($(CUDASIM),1)
# Replaces the nvcc rule of the Makefile (same target and prerequisite pattern).
$(BUILD)/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	@echo "  SIMCXX $<"
	@$(CXX) $(CUDASIM_CXXFLAGS) -c $< -o $@
$(BUILD)/$(CUDASIM_DIR)/cudasim.o: $(CUDASIM_DIR)/cudasim.cc $(CUDASIM_DIR)/cudasim.h
	@mkdir -p $(dir $@)
	@echo "  CXX   $<"
	@$(CXX) -std=c++17 -fPIC -MMD -MP $(OPT) -g $(SAN) -Wall -Wextra $(if $(filter 1,$(WERROR)),-Werror) \
	    -I $(CUDASIM_DIR)/include -c $< -o $@
# The runtime goes into the core library, so everything linking it gets it.
$(LIB): $(BUILD)/$(CUDASIM_DIR)/cudasim.o
LDLIBS_ALL := $(filter-out -lcudart -L$(CUDA_HOME)/lib64 -Wl$(comma)-rpath$(comma)$(CUDA_HOME)/lib64,$(LDLIBS_ALL))
$(BUILD)/tests/cudasim/selftest: $(CUDASIM_DIR)/selftest.cu $(BUILD)/$(CUDASIM_DIR)/cudasim.o
	@mkdir -p $(dir $@)
	@echo "  SIMCXX $<"
	@$(CXX) $(CUDASIM_CXXFLAGS) $< -x none $(BUILD)/$(CUDASIM_DIR)/cudasim.o -o $@ -lm -lpthread $(SAN)
endif
comma := ,

CUDASIM_MAKE = $(MAKE) --no-print-directory CUDA=1 CUDASIM=1
.PHONY: test-cudasim test-cudasim-asan cudasim-clean
test-cudasim:
	@start=$$(date +%s); \
	$(CUDASIM_MAKE) BUILD=build-cudasim all $(CUDASIM_SUITES:%=build-cudasim/tests/%) build-cudasim/tests/cudasim/selftest && \
	sh $(CUDASIM_DIR)/run.sh build-cudasim $(CUDASIM_SUITES); rc=$$?; \
	echo "test-cudasim: $$(( $$(date +%s) - start )) s"; exit $$rc
# ASan, normal order, every op suite (CUDASIM_ASAN_SUITES picks others); about 8.5 min on 2 cores.
test-cudasim-asan:
	@start=$$(date +%s); \
	$(CUDASIM_MAKE) BUILD=build-cudasim-asan OPT=-O1 SAN="-fsanitize=address -fno-omit-frame-pointer" \
	    $(CUDASIM_ASAN_SUITES:%=build-cudasim-asan/tests/%) build-cudasim-asan/tests/cudasim/selftest && \
	CUDASIM_ORDERS=normal sh $(CUDASIM_DIR)/run.sh build-cudasim-asan $(CUDASIM_ASAN_SUITES); rc=$$?; \
	echo "test-cudasim-asan: $$(( $$(date +%s) - start )) s"; exit $$rc
CUDASIM_ASAN_SUITES ?= $(CUDASIM_SUITES)
cudasim-clean:
	rm -rf build-cudasim build-cudasim-asan
clean: cudasim-clean
