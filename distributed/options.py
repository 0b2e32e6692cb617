"""What a build on a Ray cluster is told: where the cluster is and how to spread the work. No Ray import here."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from model.errors import ConfigError

INSTALL_HINT = "the Ray builder needs the ray extra: pip install '.[ray]' (or pip install 'ray[data]')"
DEFAULT_MARGIN = 0.5


@dataclass(frozen=True)
class RayOptions:
    address: str  # "auto" (the cluster this machine belongs to), "local" (start one in this process), or HOST:PORT
    # Workers send only the patches farther than margin x (the last chunk's coverage radius) from the bank so far:
    # 0 sends every patch; any margin keeps the local builder's picks as long as the radius does not fall below it
    margin: float = DEFAULT_MARGIN
    cpus_per_actor: int | None = None  # one backbone per actor; default: the smallest node's CPUs (one per node)
    actors: int | None = None  # default: as many as the cluster's CPUs (or GPUs, with --device cuda) allow
    local_cpus: int | None = None  # address "local" only: CPUs of the cluster started in this process

    def __post_init__(self) -> None:
        if not self.address:
            raise ConfigError("--ray needs an address: auto, local or HOST:PORT")
        if not 0 <= self.margin < 1:
            raise ConfigError(f"--ray-margin must be in [0, 1), got {self.margin}")
        for name in ("cpus_per_actor", "actors", "local_cpus"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--ray-{name.replace('_', '-')} must be >= 1, got {value}")


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("ray", "build on a Ray cluster (needs pip install '.[ray]'); every node needs this "
                                  "package, the backbone weights (patchcore-fetch-weights) and --data at the same path")
    g.add_argument("--ray", metavar="ADDRESS", help="auto (the running cluster), local (start one here) or HOST:PORT")
    g.add_argument("--ray-margin", type=float, default=DEFAULT_MARGIN,
                   help="chunked builds: workers drop the patches within MARGIN x the last chunk's coverage radius of "
                        f"the bank so far (default {DEFAULT_MARGIN:g}; 0 sends every patch to the driver)")
    g.add_argument("--ray-cpus-per-actor", type=int, help="CPUs (torch threads) per backbone actor (default: a node's)")
    g.add_argument("--ray-actors", type=int, help="backbone actors (default: as many as the cluster holds)")


def options_from_args(args: argparse.Namespace) -> RayOptions | None:
    if not args.ray:
        return None
    return RayOptions(address=args.ray, margin=args.ray_margin, cpus_per_actor=args.ray_cpus_per_actor,
                      actors=args.ray_actors)
