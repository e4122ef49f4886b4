"""The Ray cluster a sweep runs on: a local instance started here (dashboard on loopback), or one joined by address.

    with connect(spec.address) as cluster:   # Cluster(address, dashboard_url, started_here, token_auth)
        ...

Joining a cluster started with `ray start`, which uses token authentication by default: when RAY_AUTH_MODE is
unset and a token is at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token), the driver sends it, as
Ray itself does only for `auto` (a cluster without authentication ignores it). The address must answer within
a few seconds (ray.init would retry for minutes), and every failure to join is one UserError saying what to check.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import time
from dataclasses import dataclass, replace
from typing import Any, Iterator

from trainables.errors import UserError

DASHBOARD_HOST, DASHBOARD_PORT = "127.0.0.1", 8265
CONNECT_TIMEOUT_S = 5  # a HOST:PORT that does not answer in this long is refused
GIB = 2 ** 30


@dataclass(frozen=True)
class Cluster:
    """The Ray instance this driver talks to."""

    address: str  # what was joined, or the local instance's GCS address
    dashboard_url: str = ""  # http://HOST:PORT of the dashboard this process started ("" when joined)
    started_here: bool = False  # this process started it, and stops it when done
    token_auth: bool = False  # the driver sent an authentication token
    reaped: int = 0  # Ray processes a killed driver had left behind, stopped before this one started

    def resources(self) -> list[dict[str, float]]:
        """The resources of each live node."""
        import ray

        return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


# The instance this process started or joined, by its GCS address: joined again (each stage of a two-stage space
# is a sweep of its own on one instance), it is the same Cluster, its dashboard and token hint included.
_CURRENT: dict[str, Cluster] = {}


@contextlib.contextmanager
def connect(address: str | None, runtime_env: dict[str, Any] | None = None,
            shared_data_bytes: int | None = None) -> Iterator[Cluster]:
    """Start or join (see `start`), and stop what was started here on the way out. `shared_data_bytes`: what the
    sweep puts in Ray's object store (its in-memory data; 0 for memory-mapped data), to size a local one."""
    import ray

    from tuner.stopping import shielded

    cluster = start(address, runtime_env, shared_data_bytes)
    try:
        yield cluster
    finally:
        if cluster.started_here:
            with shielded():  # a second Ctrl-C must not leave Ray's processes behind
                ray.shutdown()
                _CURRENT.clear()


def start(address: str | None, runtime_env: dict[str, Any] | None = None,
          shared_data_bytes: int | None = None) -> Cluster:
    """Join `address` (auto, HOST:PORT, ray://HOST:PORT), or start a local instance. An instance this process
    already joined is reused (two-stage spaces run every stage on one): the same Cluster, but not started here, so
    the outer `connect` alone stops it. `runtime_env` ships the user's own code (their model's module) to every
    worker."""
    import ray

    if ray.is_initialized():
        return _again(address)
    quiet_ray()
    extra = {"runtime_env": runtime_env} if runtime_env else {}
    if not address and (store := object_store_bytes(shared_data_bytes)) is not None:
        extra["object_store_memory"] = store
    cluster = _start_local(extra) if not address else _join(address, extra)
    _CURRENT.clear()
    _CURRENT[_gcs_address()] = cluster
    return cluster


def _gcs_address() -> str:
    import ray

    try:
        return str(getattr(ray.get_runtime_context(), "gcs_address", "") or "")
    except Exception:  # noqa: BLE001 - a Ray Client session may not tell: "" keys it all the same
        return ""


def _again(address: str | None) -> Cluster:
    """The Cluster of the instance this process is already on; one Ray started elsewhere in this process (a
    test's ray.init) is described as far as Ray tells: its address and, when local, its dashboard."""
    gcs = _gcs_address()
    known = _CURRENT.get(gcs)
    if known is not None:
        _CURRENT[gcs] = replace(known, reaped=0)  # the orphans it stopped are told once, by the first sweep on it
        return replace(known, started_here=False)  # stopped by the connect that started it
    return Cluster(address=gcs or address or "", dashboard_url=_local_dashboard_url())


def _local_dashboard_url() -> str:
    """http://HOST:PORT of the dashboard Ray says this process's instance has, "" when it says none."""
    try:
        from ray._private import worker

        info = worker.global_worker.node.address_info or {}
    except (ImportError, AttributeError, RuntimeError):  # a Ray Client session, or a Ray without these
        return ""
    return _http(info.get("webui_url") or "")


def _http(url: str) -> str:
    return f"http://{url}" if url and "://" not in url else url


class _LogFile(logging.FileHandler):
    def handleError(self, record: logging.LogRecord) -> None:
        pass  # a full disk fails this file too: that must not come to the terminal as logging's own traceback


@contextlib.contextmanager
def ray_messages_to(log_file) -> Iterator[None]:
    """Ray's own log messages (its loggers' warnings, errors and tracebacks) go to `log_file` instead of the
    terminal while the block runs: what reaches the user is our one-line account of what happened."""
    ray_logger = logging.getLogger("ray")
    handlers, level = list(ray_logger.handlers), ray_logger.level
    handler = _LogFile(log_file, delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for old in handlers:
        ray_logger.removeHandler(old)
    ray_logger.addHandler(handler)
    ray_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        ray_logger.removeHandler(handler)
        handler.close()
        for old in handlers:
            ray_logger.addHandler(old)
        ray_logger.setLevel(level)


def quiet_ray() -> None:
    """Ray's and Optuna's own console output off: our progress display and one-line errors replace it."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def object_store_bytes(shared_data_bytes: int | None, available: int | None = None) -> int | None:
    """The object store a local instance needs: room for the sweep's in-memory data twice over (Ray copies on put
    and on get) plus 1 GiB for Tune's own objects. None (Ray's default, 30 % of free memory) when that is not less,
    or when the data are unknown. Every byte kept out of the store is memory Ray can give trials (its `memory`
    resource is free memory less the store): a ResNet-50 trial that needs 14.5 GiB fits a 24 GB machine only so."""
    if shared_data_bytes is None:
        return None
    if available is None:
        import psutil

        available = int(psutil.virtual_memory().available)
    wanted = 2 * int(shared_data_bytes) + GIB
    return wanted if wanted < 0.3 * available else None


def _init_kwargs() -> dict[str, Any]:
    return {"logging_level": logging.ERROR, "log_to_driver": False, "configure_logging": True}


def _start_local(extra: dict[str, Any]) -> Cluster:
    import ray

    reaped = reap_orphans()
    port = free_port(DASHBOARD_HOST, DASHBOARD_PORT)
    for attempt in (1, 2, 3):
        try:
            context = ray.init(include_dashboard=True, dashboard_host=DASHBOARD_HOST, dashboard_port=port,
                               **_init_kwargs(), **extra)
            break
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception when the dashboard cannot bind
            # another Ray on this machine took the free port between our probe and the dashboard's bind
            if attempt == 3 or "address already in use" not in str(exc):
                raise
            ray.shutdown()
            port = free_port(DASHBOARD_HOST, 0)
    return Cluster(address=context.address_info.get("gcs_address", "local"),
                   dashboard_url=_http(context.dashboard_url or ""), started_here=True,
                   token_auth=_local_token_auth(), reaped=reaped)


def reap_orphans() -> int:
    """Stop the Ray processes a killed driver left behind: a local instance's session folder is named after the
    process that started it (session_<date>_<pid>); once that process is gone, its raylet and GCS go with it,
    but the dashboard agent, the runtime-env agent and idle workers stay. Each is found by the session folder
    it holds files in, and only when that session's starter is dead and its GCS is gone too: a cluster started
    by `ray start` (whose starter exits at once) keeps its GCS, so it is never touched. `ray stop` removes them
    too (and every other Ray process of this machine)."""
    import psutil

    me = psutil.Process()
    candidates, live_sessions = [], set()
    for proc in psutil.process_iter(["name", "cmdline", "username"]):
        try:
            if proc.pid == me.pid or proc.info["username"] != me.username() or not _is_ray(proc.info):
                continue
            sessions = {m.group(0) for f in proc.open_files() if (m := _SESSION.search(f.path))}
            sessions |= {m.group(0) for m in _SESSION.finditer(" ".join(proc.info["cmdline"] or []))}
            if "gcs_server" in (proc.info["name"] or "") + " ".join(proc.info["cmdline"] or []):
                live_sessions |= sessions
            candidates.append((proc, sessions))
        except (psutil.Error, OSError):
            continue
    stopped = 0
    for proc, sessions in candidates:
        owners = {int(_SESSION.search(s).group(1)) for s in sessions}
        if sessions and not sessions & live_sessions and not any(psutil.pid_exists(pid) for pid in owners):
            with contextlib.suppress(psutil.Error):
                proc.kill()
                stopped += 1
    return stopped


_SESSION = re.compile(r"/session_\d{4}-\d\d-\d\d_[\d-]+_\d+_(\d+)(?=/|\s|$)")  # session_<date>_<time>_<us>_<pid>/


def _is_ray(info: dict) -> bool:
    name, cmdline = info.get("name") or "", " ".join(info.get("cmdline") or [])
    return name.startswith("ray::") or cmdline.startswith("ray::") or "/ray/" in cmdline or "raylet" in name


def _local_token_auth() -> bool:
    """Whether the local instance asks for a token (Ray 2.60 turns token auth on for local clusters too)."""
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled

        return bool(is_token_auth_enabled())
    except (ImportError, AttributeError, Exception):  # noqa: BLE001 - a Ray without token authentication
        return False


def _join(address: str, extra: dict[str, Any]) -> Cluster:
    target = _resolve(address)
    if target:
        _probe(address, target)
    token_found = _send_token_if_any(address)
    _init_with_retry(address, token_found, extra)
    return Cluster(address=address, token_auth=token_found)


def _fail(address: str, why: str) -> UserError:
    return UserError(f"cannot join the Ray cluster at --address {address}: {why}")


def _resolve(address: str) -> str | None:
    """Where to knock: HOST:PORT as given; `auto` as Ray resolves it ($RAY_ADDRESS, else this machine's latest
    `ray start`); ray://HOST:PORT is the head's Ray Client server (`ray start --ray-client-server-port`)."""
    if address != "auto":
        return address[len("ray://"):] if address.startswith("ray://") else address
    try:
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address("auto")
    except ImportError:  # a Ray without this helper: ray.init resolves `auto` itself
        return None
    except ConnectionError:
        raise _fail(address, "no running Ray cluster found on this machine and RAY_ADDRESS is not set; start one "
                             "with `ray start --head`, or pass --address HOST:PORT") from None


def _probe(address: str, target: str) -> None:
    host, sep, port = target.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not sep or not host or not port.isdigit():
        raise _fail(address, "expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise _fail(address, f"nothing answers at {host}:{port} ({exc.strerror or type(exc).__name__}); is "
                             f"`ray start --head` running there, and is the port open to this machine?") from None


def _send_token_if_any(address: str) -> bool:
    """Token authentication, as the cluster's nodes have it. True when a token was found."""
    from ray.exceptions import AuthenticationError

    try:
        from ray._private.authentication import authentication_token_setup as token_setup
        from ray._raylet import AuthenticationTokenLoader
    except ImportError:  # a Ray without token authentication
        return False
    try:
        token_found = AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True)
        if token_found and os.environ.get("RAY_AUTH_MODE") is None:
            quiet = logging.getLogger(token_setup.__name__)
            level = quiet.level
            quiet.setLevel(logging.ERROR)  # Ray's "token authentication is enabled for this cluster" notice
            try:
                token_setup.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
            finally:
                quiet.setLevel(level)
    except AuthenticationError as exc:  # e.g. RAY_AUTH_TOKEN_PATH names a missing or empty file
        raise _fail(address, str(exc).split(". ")[0]) from None
    return token_found


def _init_with_retry(address: str, token_found: bool, extra: dict[str, Any]) -> None:
    """ray.init on the address. Ray Client (ray://) starts a server process per driver on the head, which now and
    then fails to come up (ConnectionAbortedError "Initialization failure from server"): one more try."""
    import ray
    from ray.exceptions import AuthenticationError

    for attempt in (1, 2):
        try:
            ray.init(address=address, **_init_kwargs(), **extra)
            return
        except (ConnectionError, RuntimeError, ValueError, TimeoutError, AuthenticationError) as exc:
            if attempt == 1 and address.startswith("ray://") and isinstance(exc, ConnectionAbortedError):
                ray.shutdown()
                time.sleep(2)
                continue
            detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            raise _fail(address, f"{detail}; {_token_hint(token_found)}") from None


def _token_hint(token_found: bool) -> str:
    if token_found and os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        source = ("$RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else
                  os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token")
        return (f"this driver sent the token from {source}: is it the head's (`ray get-auth-token` on the head "
                f"prints it)? Ray and Python must also be the cluster's versions")
    return ("clusters started by `ray start` use token authentication by default: give this driver the head's "
            "token with RAY_AUTH_TOKEN_PATH=FILE or RAY_AUTH_TOKEN=TOKEN (`ray get-auth-token` on the head prints "
            "it), and leave RAY_AUTH_MODE unset or set to token")


def free_port(host: str, preferred: int) -> int:
    """The preferred port if free (another Ray may hold 8265), else any free one."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind((host, port))
                return s.getsockname()[1]
            except OSError:
                continue
    return preferred


def check_resources(cluster: Cluster, gpus_per_trial: float, cpus_per_trial: float) -> None:
    """Fail at once when no node could ever run a trial, instead of leaving trials pending forever."""
    nodes = cluster.resources()
    max_gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    max_cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    if gpus_per_trial > 0 and max_gpus == 0:
        raise UserError(f"--gpus-per-trial {gpus_per_trial:g} but the Ray cluster has no GPU; use "
                        f"--gpus-per-trial 0 to train on CPU, or --address a cluster with GPUs")
    if gpus_per_trial > max_gpus:
        raise UserError(f"--gpus-per-trial {gpus_per_trial:g} but the largest node has {max_gpus:g} GPU(s)")
    if cpus_per_trial > max_cpus:
        raise UserError(f"--cpus-per-trial {cpus_per_trial:g} but the largest node has {max_cpus:g} CPU(s)")
