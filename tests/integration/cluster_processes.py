"""Real Ray clusters and MLflow servers for the cluster tests.

Every process here is started by the tests, bound to 127.0.0.1 on free ports, keeps its files
in its own temporary directory, and is stopped by pid (its process tree, nothing else). Ray's
token authentication stays on, with a token file of the test's own (``RAY_AUTH_TOKEN_PATH``),
so the user's ``~/.ray/auth_token`` is neither read nor written.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def stop_tree(proc: subprocess.Popen, grace: float = 5) -> None:
    """SIGTERM ``proc`` and give it ``grace`` seconds to stop its children itself (``ray
    start`` then leaves the cluster cleanly); then SIGTERM every process left under it, as
    ``ray stop`` does to Ray's processes, and SIGKILL whatever is left ``grace`` seconds
    later. (A head node that has run jobs can take over 30 s to stop on its own.)"""
    try:
        root = psutil.Process(proc.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []

    def send(processes, how: str) -> list:
        for p in processes:
            try:
                getattr(p, how)()
            except psutil.NoSuchProcess:
                pass
        return psutil.wait_procs(tree, timeout=grace)[1]

    left = send(tree[:1], "terminate")  # the root alone: a clean stop
    if left:
        left = send(left, "terminate")  # everything still there
    if left:
        send(left, "kill")
    proc.wait(10)  # reaped


def wait_for(what: str, check, timeout: float, every: float = 0.5):
    """Poll ``check()`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a sqlite store and proxied artifacts; or, given
    ``store``, ``mlflow ui`` on that store, as a user browses a local one."""

    def __init__(self, root: Path, store: str | None = None):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (self.port,) = free_ports(1)
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = open(root / "mlflow-server.log", "w")  # noqa: SIM115 (closed in stop)
        where = (["ui", "--backend-store-uri", store] if store else
                 ["server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                  "--artifacts-destination", str(root / "artifacts")])
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), *where, "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=root,
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
        wait_for("the MLflow server", self._healthy, 90)

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"mlflow server exited:\n{self.tail()}")
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def tail(self, n: int = 4000) -> str:
        return (self.root / "mlflow-server.log").read_text()[-n:]

    def stop(self) -> None:
        stop_tree(self.proc)
        self.log.close()


class RayCluster:
    """A Ray cluster of ``ray start --block`` processes on this machine: a head and any
    number of named worker nodes, each a real raylet (with the resources it declares)."""

    def __init__(self, root: Path, env: dict[str, str] | None = None):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        token = root / "auth_token"
        token.write_text(secrets.token_hex(32))
        self.token = token.read_text()
        path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        self.env = {**os.environ, **(env or {}), "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0",
                    "PATH": path, "PYTHONUNBUFFERED": "1"}
        self.env.pop("RAY_ADDRESS", None)
        self.env.pop("RAY_API_SERVER_ADDRESS", None)
        self.nodes: dict[str, subprocess.Popen] = {}
        self.node_ids: dict[str, str] = {}
        self._logs: list = []
        self.gcs = self.dashboard = ""
        self._temp_dirs: list[Path] = []

    # ---- processes -------------------------------------------------------------------------
    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.root / f"ray-{name}.log", "w")  # noqa: SIM115 (closed in stop)
        self._logs.append(log)
        self.nodes[name] = subprocess.Popen([str(BIN / "ray"), "start", "--block", *args],
                                            stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env, cwd=self.root)

    def start_head(self, num_cpus: int, resources: dict[str, float] | None = None,
                   autoscaling: dict | None = None) -> str:
        """``autoscaling``: a cluster config (``available_node_types`` and the rest) for Ray's
        autoscaler with its fake node provider, which starts and stops worker nodes on this
        machine as the cluster's demand asks (``fake_autoscaling_config``)."""
        gcs, dash, client, agent = free_ports(4)
        extra = []
        if autoscaling is not None:
            config = dict(autoscaling, provider={**autoscaling["provider"],
                                                 "gcs_address": f"127.0.0.1:{gcs}"})
            (self.root / "autoscaling.json").write_text(json.dumps(config))
            extra = [f"--autoscaling-config={self.root / 'autoscaling.json'}"]
            self.env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
        self.gcs = f"127.0.0.1:{gcs}"
        self.dashboard = f"http://127.0.0.1:{dash}"
        # A short temp dir: Ray's socket paths must stay under the OS limit.
        self.temp_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"rn-{secrets.token_hex(3)}"
        self._temp_dirs.append(self.temp_dir)
        self._start("head", [
            "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
            "--ray-client-server-port", str(client), "--dashboard-agent-listen-port",
            str(agent), "--num-cpus", str(num_cpus), "--temp-dir", str(self.temp_dir),
            "--disable-usage-stats", *_resources(resources), *extra])
        return self._wait_node("head", head=True)

    def add_node(self, name: str, num_cpus: int,
                 resources: dict[str, float] | None = None) -> str:
        """Start a worker node; return its Ray node id once the cluster lists it alive."""
        (agent,) = free_ports(1)
        # Its own temp dir, as on a separate machine: nodes sharing one would share (and
        # garbage-collect) each other's runtime environments, working directories included.
        temp_dir = self.temp_dir.with_name(f"{self.temp_dir.name}-{name}")
        self._temp_dirs.append(temp_dir)
        self._start(name, ["--address", self.gcs, "--node-ip-address", "127.0.0.1",
                           "--temp-dir", str(temp_dir),
                           "--dashboard-agent-listen-port", str(agent),
                           "--num-cpus", str(num_cpus), *_resources(resources)])
        return self._wait_node(name, resources=resources or {})

    def remove_node(self, name: str) -> None:
        """Stop a node's processes (by pid) and wait until the cluster sees it dead."""
        stop_tree(self.nodes.pop(name))
        node_id = self.node_ids.pop(name)
        wait_for(f"node {name} to be marked dead", lambda: node_id not in {
            n["node_id"] for n in self.list("nodes") if n["state"] == "ALIVE"}, 60)

    def stop(self) -> None:
        for name in [n for n in self.nodes if n != "head"] + ["head"]:
            if name in self.nodes:
                stop_tree(self.nodes.pop(name))
        for log in self._logs:
            log.close()
        for d in self._temp_dirs:
            shutil.rmtree(d, ignore_errors=True)

    def _wait_node(self, name: str, head: bool = False,
                   resources: dict[str, float] | None = None) -> str:
        proc = self.nodes[name]
        known = set(self.node_ids.values())

        def up():
            if proc.poll() is not None:
                raise AssertionError(f"ray start ({name}) exited {proc.returncode}:\n"
                                     + (self.root / f"ray-{name}.log").read_text()[-3000:])
            try:
                nodes = self.list("nodes")
            except OSError:
                return None
            for n in nodes:
                if (n["state"] == "ALIVE" and n["node_id"] not in known
                        and n["is_head_node"] == head
                        and all(n["resources_total"].get(k) == v
                                for k, v in (resources or {}).items())):
                    return n["node_id"]
            return None

        self.node_ids[name] = wait_for(f"Ray node {name}", up, 120)
        return self.node_ids[name]

    # ---- the dashboard's REST API (state API and jobs), with the token -----------------------
    def api(self, path: str) -> dict:
        req = urllib.request.Request(f"{self.dashboard}{path}",
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def list(self, kind: str, detail: bool = True) -> list[dict]:
        """``nodes`` / ``actors`` / ... from Ray's state API."""
        doc = self.api(f"/api/v0/{kind}?limit=10000&detail={int(detail)}")
        return doc["data"]["result"]["result"]

    def actors(self, class_name: str, state: str = "ALIVE") -> list[dict]:
        return [a for a in self.list("actors")
                if a["class_name"] == class_name and a["state"] == state]

    def run(self, args: list[str], timeout: float = 600, env: dict | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        """A command with the cluster's environment (token, PATH), to completion."""
        return subprocess.run(args, env={**self.env, **(env or {})}, cwd=cwd or ROOT,
                              capture_output=True, text=True, timeout=timeout)

    def popen(self, args: list[str], log: Path, env: dict | None = None,
              cwd: Path | None = None) -> subprocess.Popen:
        out = open(log, "w")  # noqa: SIM115 (closed by the caller's process teardown)
        self._logs.append(out)
        return subprocess.Popen(args, env={**self.env, **(env or {})}, cwd=cwd or ROOT,
                                stdout=out, stderr=subprocess.STDOUT)


def _resources(resources: dict[str, float] | None) -> list[str]:
    return ["--resources", json.dumps(resources)] if resources else []


def fake_autoscaling_config(node_types: dict[str, dict], head: dict[str, float],
                            idle_timeout_minutes: float, max_workers: int) -> dict:
    """A config for Ray's fake multi-node provider: ``node_types`` (name -> ``resources``,
    ``min_workers``, ``max_workers``) start as real raylets on this machine."""
    types = {name: {"resources": t["resources"], "node_config": {},
                    "min_workers": t.get("min_workers", 0), "max_workers": t["max_workers"]}
             for name, t in node_types.items()}
    types["ray.head.default"] = {"resources": head, "node_config": {}, "max_workers": 0}
    return {"cluster_name": "raynas-test", "max_workers": max_workers,
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                         "disable_node_updaters": True, "disable_launch_config_check": True},
            "available_node_types": types, "head_node_type": "ray.head.default", "auth": {},
            "upscaling_speed": 1.0, "idle_timeout_minutes": idle_timeout_minutes,
            "docker": {}, "initialization_commands": [], "setup_commands": [],
            "head_setup_commands": [], "worker_setup_commands": [],
            "head_start_ray_commands": [], "worker_start_ray_commands": [],
            "file_mounts": {}, "cluster_synced_files": [],
            "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": []}
