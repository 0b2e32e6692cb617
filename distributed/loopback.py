"""A real multi-node Ray cluster on this machine's loopback, for tests and benchmarks: `ray start --head` plus
`ray start --address` nodes, each a `--block` child process of ours, so stopping it ends that node and nothing else.
Peak RSS per node is the sum over each node's process tree (read from /proc; Linux), sampled while it runs.

    with LoopbackCluster(nodes=2, cpus_per_node=1) as cluster:
        subprocess.run(["patchcore-build-index", ..., "--ray", cluster.address], env=cluster.env)
        cluster.peak_rss_mb()   # {"node0": MiB, "node1": MiB}

Needs the ray extra (the `ray` command); imports nothing of Ray itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


def _ray_command() -> str:
    here = Path(sys.executable).with_name("ray")
    found = str(here) if here.exists() else shutil.which("ray")
    if not found:
        raise FileNotFoundError("no `ray` command: pip install '.[ray]'")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_rss_mb(pid: int, tree: dict[int, list[int]] | None = None) -> float:
    """Resident memory of pid and all its descendants, MiB."""
    tree = _children() if tree is None else tree
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(tree.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024.0


class LoopbackCluster:
    def __init__(self, nodes: int = 2, cpus_per_node: int = 1, object_store_mb: int = 300) -> None:
        self.nodes, self.cpus, self.store = nodes, cpus_per_node, object_store_mb
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        self.peaks: dict[str, float] = {}
        self.watched: dict[str, int] = {}  # extra process trees to sample (the driver)
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        # `ray start` turns token authentication on (ray >= 2.5x; the token lives in ~/.ray/auth_token): whoever
        # connects (the builder, the probe below) must say so too. Pass this env to them.
        self.env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token")

    def __enter__(self) -> LoopbackCluster:
        ray = _ray_command()
        common = ["--num-cpus", str(self.cpus), "--object-store-memory", str(self.store * 2**20), "--block",
                  "--disable-usage-stats"]
        env = self.env
        # Ray rewrites 127.0.0.1 in an address to this machine's own IP, so the nodes listen there: still this host.
        self.procs.append(subprocess.Popen([ray, "start", "--head", "--port", str(self.port), "--include-dashboard",
                                            "false", *common], env=env, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))
        try:
            self._wait_for_nodes(1)
            for _ in range(1, self.nodes):
                self.procs.append(subprocess.Popen([ray, "start", "--address", self.address, *common], env=env,
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self._wait_for_nodes(self.nodes)
        except BaseException:
            self.__exit__()
            raise
        self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._sampler.is_alive():
            self._sampler.join()
        for proc in reversed(self.procs):  # workers first, the head last; SIGTERM ends a --block node's processes
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()

    def watch(self, name: str, pid: int) -> None:
        self.watched[name] = pid

    def peak_rss_mb(self) -> dict[str, float]:
        return {k: round(v, 1) for k, v in self.peaks.items()}

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            tree = _children()
            named = {f"node{i}": p.pid for i, p in enumerate(self.procs)} | dict(self.watched)
            for name, pid in named.items():
                self.peaks[name] = max(self.peaks.get(name, 0.0), tree_rss_mb(pid, tree))

    def _wait_for_nodes(self, n: int, timeout: float = 120.0) -> None:
        """Until the cluster reports n live nodes (asked in a child process, so this one never joins Ray)."""
        probe = ("import ray; ray.init(address=%r, log_to_driver=False); "
                 "print(sum(1 for x in ray.nodes() if x['Alive']))" % self.address)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError("a Ray node exited while starting: see /tmp/ray/session_latest/logs")
            out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=self.env)
            if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
                return
            time.sleep(1.0)
        raise TimeoutError(f"the loopback Ray cluster did not reach {n} nodes in {timeout:.0f} s")
