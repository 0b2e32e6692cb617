"""PatchCore, pure: arrays in, arrays out. No files, no environment variables, no HTTP."""
