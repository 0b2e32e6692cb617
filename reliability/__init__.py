"""Reliability evidence: the fuzzed API, the soak and the SIGKILL-during-build harness (see docs/reliability.md).

Run from the repository root: python -m reliability.fuzz_api | soak | crash_build.
"""
