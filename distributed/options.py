"""What a build on a Ray cluster is told: where the cluster is and how to spread the work. No Ray import here."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from model.errors import ConfigError

INSTALL_HINT = "the Ray builder needs the ray extra: pip install '.[ray]' (or pip install 'ray[data]')"
DEFAULT_OVERSAMPLE = 8.0


@dataclass(frozen=True)
class RayOptions:
    address: str  # "auto" (the cluster this machine belongs to), "local" (start one in this process), or HOST:PORT
    oversample: float = DEFAULT_OVERSAMPLE  # candidates kept per image = oversample x coreset ratio x its patches
    cpus_per_actor: int | None = None  # one backbone per actor; default: the smallest node's CPUs (one per node)
    actors: int | None = None  # default: as many as the cluster's CPUs (or GPUs, with --device cuda) allow
    local_cpus: int | None = None  # address "local" only: CPUs of the cluster started in this process

    def __post_init__(self) -> None:
        if not self.address:
            raise ConfigError("--ray needs an address: auto, local or HOST:PORT")
        if not self.oversample > 0:
            raise ConfigError(f"--ray-oversample must be > 0, got {self.oversample}")
        for name in ("cpus_per_actor", "actors", "local_cpus"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--ray-{name.replace('_', '-')} must be >= 1, got {value}")

    def candidates_per_image(self, per_image: int, coreset_ratio: float) -> int:
        """Patches of one image the workers keep for the driver's greedy (all of them once oversample >= 1/ratio)."""
        return min(per_image, max(1, math.ceil(self.oversample * coreset_ratio * per_image)))


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("ray", "build on a Ray cluster (needs pip install '.[ray]'); every node needs this "
                                  "package, the backbone weights (patchcore-fetch-weights) and --data at the same path")
    g.add_argument("--ray", metavar="ADDRESS", help="auto (the running cluster), local (start one here) or HOST:PORT")
    g.add_argument("--ray-oversample", type=float, default=DEFAULT_OVERSAMPLE,
                   help="workers keep this many x coreset-ratio of each image's patches for the driver's greedy "
                        f"(default {DEFAULT_OVERSAMPLE:g}; 1/coreset-ratio keeps all: the local builder's bank)")
    g.add_argument("--ray-cpus-per-actor", type=int, help="CPUs (torch threads) per backbone actor (default: a node's)")
    g.add_argument("--ray-actors", type=int, help="backbone actors (default: as many as the cluster holds)")


def options_from_args(args: argparse.Namespace) -> RayOptions | None:
    if not args.ray:
        return None
    return RayOptions(address=args.ray, oversample=args.ray_oversample, cpus_per_actor=args.ray_cpus_per_actor,
                      actors=args.ray_actors)
