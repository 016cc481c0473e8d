# The two commands of the README:
#   make run    set everything up, boot a microVM and run `uname -a` in it
#   make test   set everything up and run the whole test suite
# Both are idempotent: packages, the guest kernel and the build are reused when present.

.PHONY: all setup build run test test-asan test-tsan fuzz bench clean

all: build

setup:
	./scripts/bootstrap

build: setup
	cmake --preset default >/dev/null
	cmake --build --preset default

run: build
	./build/vessel run -- uname -a

# The sanitizer and fuzz runs go first so that the closing lines are the whole suite's.
test: build
	$(MAKE) --no-print-directory test-asan
	$(MAKE) --no-print-directory test-tsan
	$(MAKE) --no-print-directory fuzz
	ctest --preset default

# The unit tests again, under AddressSanitizer and UndefinedBehaviorSanitizer. Each binary
# runs once: an instrumented process takes most of a second to start, which per test (as
# `ctest --preset asan` runs them) is ten minutes of startup.
test-asan: setup
	cmake --preset asan >/dev/null
	cmake --build --preset asan
	./build-asan/tests/vessel_unit_tests --gtest_brief=1
	./build-asan/tests/vessel_vmm_unit_tests --gtest_brief=1

# The pools' unit tests (worker threads, waiters, handles released from other threads)
# under ThreadSanitizer, against the fake engine; any report fails the run.
test-tsan: setup
	cmake --preset tsan >/dev/null
	cmake --build --preset tsan
	TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
	  ./build-tsan/tests/vessel_unit_tests --gtest_filter='*Pool*'

# The wire decoders under libFuzzer (clang), each for FUZZ_SECONDS (default 30); fails on
# any crash, sanitizer report or broken invariant.
fuzz: setup
	./tests/fuzz/run-fuzzers $(FUZZ_SECONDS)

bench: build
	./bench/run

clean:
	rm -rf build build-asan build-tsan build-fuzz
