#!/bin/busybox sh
# A guest that boots but never starts the agent: the test image for boot deadlines.
exec /bin/busybox sleep 100000
