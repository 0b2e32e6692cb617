"""Builds on a Ray cluster (patchcore-build-index --ray ADDRESS).

- options.py: RayOptions and the CLI's --ray arguments; imports nothing of Ray, so the CLI can say how to install it.
- bank.py: pure numpy + FAISS. BankFilter (workers): drop the patches the bank already covers. ChunkedBank (driver):
  the kept patches in image order -> the memory bank, by the same seeded greedy continuation over the same chunks as
  index_store.build.
- ray_build.py: the Ray Data pipeline (read + decode tasks, embed + reduce actors) and the build entry point. It
  needs the `ray` extra: pip install '.[ray]'.
"""
