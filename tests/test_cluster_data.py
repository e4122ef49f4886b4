"""An image-folder sweep on the two-node loopback cluster (tests/test_cluster.py's): one copy of the decoded data per
node. The head node has no cache folder of its own, so its trials memory-map the driver's; the worker node sets
its own $SWEEPS_DATA_CACHE (node-local disk), so its trial decodes the folder there (once: later trials on that
node, and those waiting on the lock meanwhile, map the same files)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import write_image_folder
from tests.test_cluster import SMALL, LoopbackCluster
from trainables import cache
from tuner.folder import SweepFolder

pytestmark = pytest.mark.integration


class NodeCaches(LoopbackCluster):
    """The loopback cluster, the worker node with its own $SWEEPS_DATA_CACHE, the head node with none."""

    def __init__(self) -> None:
        super().__init__()
        self.worker_cache = self.root / "worker-cache"

    def env(self, *, auth_mode: bool = True, **extra: str) -> dict[str, str]:
        env = super().env(auth_mode=auth_mode, **extra)
        if "SWEEPS_DATA_CACHE" not in extra:
            env.pop("SWEEPS_DATA_CACHE", None)
            if len(self.procs) == 1:  # the second `ray start`: the worker node's environment
                env["SWEEPS_DATA_CACHE"] = str(self.worker_cache)
        return env


@pytest.fixture(scope="module")
def node_caches():
    c = NodeCaches()
    try:
        yield c.start()
    finally:
        c.stop()


def test_each_node_holds_one_copy(node_caches, tmp_path):
    folder = write_image_folder(tmp_path / "imgs", classes=3, per_class=24, size=24)
    driver_cache = tmp_path / "driver-cache"
    proc = node_caches.cli(*SMALL[:4], "--dataset", "folder", "--data-dir", str(folder), *SMALL[6:],
                           "--set", "batch_size=16", "--num-samples", "2", "--max-epochs", "1",
                           "--max-concurrent", "2", "--address", node_caches.address,
                           "--storage", str(tmp_path / "s"), "--name", "two-nodes",
                           "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}", cwd=tmp_path,
                           env=node_caches.env(auth_mode=False, SWEEPS_DATA_CACHE=str(driver_cache)), timeout=500)
    assert proc.returncode == 0, proc.stdout + proc.stderr + node_caches.logs()
    rows = SweepFolder(tmp_path / "s" / "two-nodes").read_trials()
    assert len(rows) == 2 and all(r["status"] == "finished" for r in rows), rows
    per_node = Counter(r["node_id"] for r in rows)
    assert set(per_node) == set(node_caches.node_ids.values()), per_node

    def entries(root: Path) -> list[str]:
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))

    built_by_driver = (driver_cache / cache.BUILD_LOG).read_text().splitlines()
    built_on_worker = (node_caches.worker_cache / cache.BUILD_LOG).read_text().splitlines()
    assert len(built_by_driver) == 1 and len(built_on_worker) == 1, (built_by_driver, built_on_worker)
    assert entries(driver_cache) == entries(node_caches.worker_cache)  # the same key: the same decoded folder
    print(f"\ntrials per node: {dict(per_node)}; decoded by the driver once, on the worker node once")
