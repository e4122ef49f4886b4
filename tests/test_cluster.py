"""A real two-node Ray cluster on loopback, token authentication on, joined with --address.

The head runs on 127.0.0.2 and the worker on 127.0.0.3: both are loopback addresses, but Ray replaces
127.0.0.1 and `localhost` by the machine's routable address, so a loopback-only cluster needs others. Each
node offers 1 CPU, so two concurrent 1-CPU trials must land on both nodes. Every process the cluster starts
carries a marker in its environment; teardown ends the `ray start --block` process groups, then any process
still carrying the marker, by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tuner.folder import SweepFolder
from tests.conftest import REPO

pytestmark = pytest.mark.integration

HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
SMALL = ["--space", "resnet_rsb", "--dataset", "digits", "--set", "model=cnn_basic", "--set", "width=0.25"]
RAY = str(Path(sys.executable).with_name("ray"))


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def processes_with(marker: str) -> list[int]:
    """Pids whose environment holds marker: everything the cluster started, whatever it renamed itself to."""
    needle = marker.encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


class LoopbackCluster:
    """`ray start --head` on 127.0.0.2 and `ray start --address` on 127.0.0.3, 1 CPU each, token auth on."""

    def __init__(self) -> None:
        # Ray's unix socket paths must stay short: a folder right under /tmp, not pytest's deep tmp_path.
        self.root = Path(tempfile.mkdtemp(prefix="raylb-", dir="/tmp"))
        self.token_file = self.root / "auth_token"
        self.token_file.write_text(secrets.token_hex(32))
        self.token_file.chmod(0o600)
        self.marker = f"SWEEPS_TEST_CLUSTER={self.root.name}"
        self.port = free_port(HEAD_IP)
        self.client_port = free_port(HEAD_IP)
        self.address = f"{HEAD_IP}:{self.port}"
        self.procs: list[subprocess.Popen] = []
        self.node_ids: dict[str, str] = {}  # node ip -> node id

    def env(self, *, auth_mode: bool = True, **extra: str) -> dict[str, str]:
        """The nodes' environment; auth_mode=False leaves RAY_AUTH_MODE out, as a shell that never set it."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "MLFLOW_TRACKING_URI"}
        key, value = self.marker.split("=")
        env.update({"RAY_AUTH_TOKEN_PATH": str(self.token_file), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
                    "RAY_USAGE_STATS_ENABLED": "0", key: value, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
                    "COLUMNS": "160"})
        if auth_mode:
            env["RAY_AUTH_MODE"] = "token"
        env.update(extra)
        return env

    def cli(self, *args: str, cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
        """`python -m tuner.run ARGS` with exactly this environment."""
        return subprocess.run([sys.executable, "-m", "tuner.run", *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=timeout)

    def _ray_start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "wb")
        proc = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args], env=self.env(),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self) -> "LoopbackCluster":
        t0 = time.monotonic()
        head = self._ray_start(
            "head", "--head", "--node-ip-address", HEAD_IP, "--port", str(self.port), "--num-cpus", "1",
            "--num-gpus", "0", "--resources", json.dumps({"head_node_slot": 1}),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(free_port("127.0.0.1")),
            "--dashboard-agent-listen-port", str(free_port(HEAD_IP)),
            "--ray-client-server-port", str(self.client_port),
            "--object-store-memory", str(300 * 2**20), "--temp-dir", str(self.root / "head"))
        self._wait(lambda: answers(HEAD_IP, self.port), head, "head GCS port", 90)
        worker = self._ray_start(
            "worker", "--address", self.address, "--node-ip-address", WORKER_IP, "--num-cpus", "1",
            "--num-gpus", "0", "--resources", json.dumps({"worker_node_slot": 1}),
            "--dashboard-agent-listen-port", str(free_port(WORKER_IP)),
            "--object-store-memory", str(300 * 2**20), "--temp-dir", str(self.root / "worker"))
        self._wait(lambda: b"Ray runtime started" in (self.root / "worker.log").read_bytes(), worker,
                   "worker node", 90)
        # (a) a driver joins with token authentication on, and sees both nodes alive
        nodes = self.python("import ray, json, time\n"
                            f"ray.init(address='{self.address}', log_to_driver=False)\n"
                            "for _ in range(60):\n"
                            "    alive = [n for n in ray.nodes() if n['Alive']]\n"
                            "    if len(alive) == 2: break\n"
                            "    time.sleep(1)\n"
                            "print(json.dumps({n['NodeManagerAddress']: n['NodeID'] for n in alive}))")
        self.node_ids = json.loads(nodes.stdout.strip().splitlines()[-1])
        assert set(self.node_ids) == {HEAD_IP, WORKER_IP}, nodes.stdout + nodes.stderr
        self.startup_s = time.monotonic() - t0
        return self

    def python(self, code: str, **env: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-c", code], env=self.env(**env), capture_output=True, text=True,
                              timeout=120, cwd=REPO)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    def _wait(self, ready, proc: subprocess.Popen, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}:\n{self.logs()}")
            if ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"{what} not up within {timeout} s:\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.root.glob("*.log"))

    def stop(self) -> None:
        for proc in reversed(self.procs):  # the worker first, then the head
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # `ray start --block` ends the node's processes on SIGTERM
        deadline = time.monotonic() + 30
        for proc in self.procs:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for _ in range(20):  # workers the raylets forked, in whatever process group they ended up
            left = processes_with(self.marker)
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        assert not processes_with(self.marker), "cluster processes outlived teardown"
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def loopback_cluster():
    """A started two-node loopback cluster, torn down (and checked gone) on leaving."""
    c = LoopbackCluster()
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.fixture(scope="module")
def cluster():
    with loopback_cluster() as c:
        yield c


def test_sweep_through_address_runs_trials_on_both_nodes(cluster, tmp_path):
    """(b) the second node joined; (c) trials land on both and say so in Parquet and MLflow; the driver reads
    every result and checkpoint. The driver gets only the token file: start_ray turns token auth on for it."""
    import mlflow
    import torch

    t0 = time.monotonic()
    proc = cluster.cli(*SMALL, "--num-samples", "4", "--max-epochs", "2", "--max-concurrent", "2",
                   "--address", cluster.address, "--storage", str(tmp_path / "sweeps"), "--name", "two-nodes",
                   "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path,
                       env=cluster.env(auth_mode=False), timeout=400)
    sweep_s = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr + cluster.logs()
    assert "Traceback" not in proc.stdout + proc.stderr

    rows = SweepFolder(tmp_path / "sweeps" / "two-nodes").read_trials()  # checkpoints resolved where the folder is
    assert len(rows) == 4 and all(r["status"] in ("finished", "stopped") for r in rows)
    per_node = Counter(r["node_id"] for r in rows)
    assert set(per_node) == set(cluster.node_ids.values()), (per_node, cluster.node_ids)
    print(f"\ncluster up in {cluster.startup_s:.1f} s; sweep {sweep_s:.1f} s; trials per node: "
          + ", ".join(f"{ip}={per_node[nid]}" for ip, nid in cluster.node_ids.items()))

    # checkpoints written by either node are readable from the driver, and load
    from trainables.classify import load_checkpoint_model
    from trainables.data import load_dataset

    images = torch.from_numpy(load_dataset("digits").val_x[:8].astype(np.float32) / 255)
    for row in rows:
        assert row["checkpoint"] and Path(row["checkpoint"]).is_dir(), row
        model, _ = load_checkpoint_model(row["checkpoint"])
        with torch.no_grad():
            assert model(images).shape == (8, 10)

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("resnet_rsb")
    children = [r for r in client.search_runs([experiment.experiment_id]) if "trial_id" in r.data.tags]
    assert {r.data.tags["trial_id"]: r.data.tags["node_id"] for r in children} == \
        {r["trial_id"]: r["node_id"] for r in rows}


def test_address_forms_auto_and_ray_client(cluster):
    """`auto` (RAY_ADDRESS) and `ray://HOST:PORT` join the same cluster through start_ray; tasks run on both."""
    code = ("import ray, sys\n"
            "from tuner.cluster import start\n"
            "assert start(sys.argv[1]).started_here is False\n"
            "@ray.remote(num_cpus=1)\n"
            "def where():\n"
            "    import time; time.sleep(1); return ray.get_runtime_context().get_node_id()\n"
            "print(sorted({n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']}),\n"
            "      len(set(ray.get([where.remote() for _ in range(4)]))))\n")
    for address, env in (("auto", {"RAY_ADDRESS": cluster.address}),
                         (f"ray://{HEAD_IP}:{cluster.client_port}", {})):
        proc = subprocess.run([sys.executable, "-c", code, address], env=cluster.env(auth_mode=False, **env),
                              capture_output=True, text=True, timeout=120, cwd=REPO)
        assert proc.returncode == 0, address + proc.stdout + proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == f"['{HEAD_IP}', '{WORKER_IP}'] 2", address + proc.stdout


def test_join_failures_are_one_line(cluster, tmp_path):
    """Nothing listening: told at once, exit 2, nothing written. A wrong token: told what to give the driver."""
    dead = f"127.0.0.2:{free_port(HEAD_IP)}"
    t0 = time.monotonic()
    proc = cluster.cli(*SMALL, "--num-samples", "1", "--max-epochs", "1", "--address", dead,
                       "--storage", str(tmp_path / "s"), "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}",
                       cwd=tmp_path, env=cluster.env(), timeout=120)
    assert proc.returncode == 2 and time.monotonic() - t0 < 60, proc.stdout + proc.stderr
    assert f"cannot join the Ray cluster at --address {dead}: nothing answers" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not list(tmp_path.glob("s/*/sweep.json"))  # nothing of a sweep was written

    wrong = tmp_path / "wrong_token"
    wrong.write_text(secrets.token_hex(32))
    code = ("import sys\n"
            "from trainables.errors import UserError\n"
            "from tuner.cluster import start\n"
            "try:\n"
            "    start(sys.argv[1])\n"
            "except UserError as exc:\n"
            "    print(exc)\n"
            "    sys.exit(2)\n")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code, cluster.address], capture_output=True, text=True, timeout=180,
                          env=cluster.env(auth_mode=False, RAY_AUTH_TOKEN_PATH=str(wrong)), cwd=REPO)
    print(f"\nwrong token refused after {time.monotonic() - t0:.1f} s: {proc.stdout.strip()}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"cannot join the Ray cluster at --address {cluster.address}")
    assert "ray get-auth-token" in proc.stdout


@pytest.mark.slow
def test_a_user_model_trains_on_both_nodes(cluster, tmp_path):
    """`--set model=mynets:build` from the user's own folder: Ray ships the package to every node's workers."""
    from tests.test_own_code import user_package

    work = user_package(tmp_path / "project")
    proc = cluster.cli(*SMALL, "--set", "model=mynets:build", "--num-samples", "2", "--max-epochs", "1",
                       "--max-concurrent", "2", "--address", cluster.address, "--storage", str(work / "sweeps"),
                       "--name", "own-model", "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=work,
                       env=cluster.env(auth_mode=False), timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + cluster.logs()
    rows = pq.read_table(work / "sweeps" / "own-model" / "trials.parquet").to_pylist()
    assert len(rows) == 2 and {r["model"] for r in rows} == {"mynets:build"}
    assert all(r["status"] in ("finished", "stopped") for r in rows), rows
    assert len({r["node_id"] for r in rows}) == 2  # one trial on each node, each importing the user's code
