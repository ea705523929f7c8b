"""The cluster launcher configs pass Ray's own validation and keep raynas's conventions.

``cluster.yaml`` (AWS) and ``cluster.local.yaml`` (Ray's ``local`` provider) are checked
offline. Ray has no public validator for these files, so the tests call what ``ray up``
calls first (``ray.autoscaler._private.commands._bootstrap_config``): ``prepare_config``
merges the provider's ``defaults.yaml`` (and, for ``local``, runs ``prepare_local``), then
``validate_config`` applies ``ray/autoscaler/ray-schema.json`` and Ray's cross-field checks.
Neither touches the network or a cloud SDK. The later steps of ``ray up`` (instance-type
autodetection, AWS bootstrap) call AWS and are not run here.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import click
import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[2]
AWS = REPO / "cluster.yaml"
LOCAL = REPO / "cluster.local.yaml"
CONFIGS = [pytest.param(AWS, id="aws"), pytest.param(LOCAL, id="local")]

TARGET_PREFIX = "target:"
# raynas's latency.resource convention: "target:<name>", name in lowercase letters, digits, -.
TARGET_RE = re.compile(r"^target:[a-z0-9][a-z0-9-]*$")
COMMAND_LISTS = ("initialization_commands", "setup_commands", "head_setup_commands",
                 "worker_setup_commands", "head_start_ray_commands",
                 "worker_start_ray_commands")


def load(path: Path) -> dict:
    # `ray up` reads the file with yaml.safe_load too.
    return yaml.safe_load(path.read_text())


def ray_validate(config: dict) -> dict:
    """What `ray up` does before it talks to a provider; returns the prepared config."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def commands_with(commands: list[str], needle: str) -> list[str]:
    return [c for c in commands if needle in c]


# --- Ray's validation ----------------------------------------------------------------


@pytest.mark.parametrize("path", CONFIGS)
def test_config_passes_ray_validation(path):
    prepared = ray_validate(load(path))
    assert prepared["head_node_type"] in prepared["available_node_types"]


def _rename_top_level_key(config):
    config["idle_timeout_minute"] = config.pop("idle_timeout_minutes")


def _rename_node_type_key(config):
    gpu = config["available_node_types"]["gpu"]
    gpu["max_worker"] = gpu.pop("max_workers")


def _string_resource(config):
    config["available_node_types"]["gpu"]["resources"]["GPU"] = "1"


def _fractional_resource(config):
    config["available_node_types"]["latency_x86"]["resources"]["CPU"] = 0.5


def _string_max_workers(config):
    config["max_workers"] = "14"


def _rename_start_commands(config):
    config["worker_start_ray_command"] = config.pop("worker_start_ray_commands")


def _string_worker_ips(config):
    config["provider"]["worker_ips"] = "10.0.0.2"


def _nested_start_command(config):
    config["head_start_ray_commands"].append(["ray", "start"])


@pytest.mark.parametrize("path, mutate, message", [
    pytest.param(AWS, _rename_top_level_key, "idle_timeout_minute", id="aws-typo-top-level"),
    pytest.param(AWS, _rename_node_type_key, "max_worker", id="aws-typo-node-type"),
    pytest.param(AWS, _string_resource, "'1' is not of type 'integer'", id="aws-str-resource"),
    pytest.param(AWS, _fractional_resource, "0.5 is not of type 'integer'",
                 id="aws-float-resource"),
    pytest.param(AWS, _string_max_workers, "'14' is not of type 'integer'",
                 id="aws-str-max-workers"),
    pytest.param(LOCAL, _rename_start_commands, "worker_start_ray_command",
                 id="local-typo-top-level"),
    pytest.param(LOCAL, _string_worker_ips, "is not of type 'array'", id="local-str-ips"),
    pytest.param(LOCAL, _nested_start_command, "is not of type 'string'",
                 id="local-list-command"),
])
def test_ray_rejects_a_broken_copy(path, mutate, message):
    config = load(path)
    mutate(config)
    with pytest.raises(jsonschema.ValidationError, match=re.escape(message)):
        ray_validate(config)


def test_local_provider_refuses_node_types():
    # Why cluster.local.yaml declares targets in `ray start --resources` instead.
    config = load(LOCAL)
    config["available_node_types"] = {"edge": {"resources": {"CPU": 1}, "node_config": {}}}
    config["head_node_type"] = "edge"
    with pytest.raises(click.ClickException, match="available_node_types"):
        ray_validate(config)


# --- raynas conventions --------------------------------------------------------------


@pytest.mark.parametrize("path", CONFIGS)
def test_every_command_list_is_explicit(path):
    # Otherwise Ray fills it from its defaults.yaml (AWS: installs a Ray nightly wheel).
    config = load(path)
    missing = [k for k in COMMAND_LISTS if k not in config]
    assert not missing, f"{path.name}: set {missing} explicitly (may be [])"


@pytest.mark.parametrize("path", CONFIGS)
def test_idle_timeout_is_set(path):
    config = load(path)
    assert config.get("idle_timeout_minutes", 0) > 0


def test_every_aws_node_type_bounds_its_workers():
    config = load(AWS)
    types = config["available_node_types"]
    for name, node_type in types.items():
        assert {"min_workers", "max_workers"} <= node_type.keys(), name
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"], name
    assert types[config["head_node_type"]]["max_workers"] == 0
    workers = sum(t["max_workers"] for n, t in types.items() if n != config["head_node_type"])
    assert workers <= config["max_workers"]


def test_aws_node_types_pin_instance_and_image():
    # Ray's default AMI (Ubuntu 18.04) has no Python new enough for raynas.
    for name, node_type in load(AWS)["available_node_types"].items():
        assert node_type["node_config"].get("InstanceType"), name
        assert node_type["node_config"].get("ImageId"), name


def test_aws_head_runs_no_tasks_and_gpu_type_has_gpus():
    types = load(AWS)["available_node_types"]
    assert types["head"]["resources"] == {"CPU": 0}
    assert types["gpu"]["resources"].get("GPU", 0) >= 1


def test_local_head_runs_no_tasks():
    (head,) = commands_with(load(LOCAL)["head_start_ray_commands"], "ray start")
    assert "--num-cpus=0" in shlex.split(head)


def test_local_node_type_bounds_its_workers():
    config = load(LOCAL)
    prepared = ray_validate(config)
    (node_type,) = prepared["available_node_types"].values()
    n = len(config["provider"]["worker_ips"])
    assert node_type["min_workers"] == node_type["max_workers"] == n


def test_aws_latency_targets_live_on_latency_types():
    types = load(AWS)["available_node_types"]
    latency = {n: t for n, t in types.items() if n.startswith("latency_")}
    assert len(latency) >= 2
    seen = []
    for name, node_type in types.items():
        targets = [r for r in node_type["resources"] if r.startswith(TARGET_PREFIX)]
        if name not in latency:
            assert not targets, f"{name} carries {targets}: only latency_* types may"
            continue
        assert len(targets) == 1, f"{name}: exactly one target:* resource, got {targets}"
        assert TARGET_RE.match(targets[0]), targets[0]
        assert node_type["resources"][targets[0]] == 1
        assert (node_type["min_workers"], node_type["max_workers"]) == (0, 1), name
        seen.append(targets[0])
    assert len(set(seen)) == len(seen), f"a target on two node types: {seen}"


# One `case` arm per target: `*" <ip> "*) EXTRA=(... --resources='<json>') ;;`
_ARM = re.compile(r"""\*" ([0-9.]+) "\*\).*--resources='([^']*)'""")


def test_local_latency_targets_map_to_worker_ips():
    config = load(LOCAL)
    start = "\n".join(config["worker_start_ray_commands"])
    arms = _ARM.findall(start)
    assert arms, "no latency target in worker_start_ray_commands"
    ips = set(config["provider"]["worker_ips"])
    targets = []
    for ip, resources in arms:
        assert ip in ips, f"{ip} gets a latency target but is not in provider.worker_ips"
        names = list(json.loads(resources))
        assert len(names) == 1, f"{ip}: exactly one target:* resource, got {names}"
        name = names[0]
        assert TARGET_RE.match(name), name
        targets.append(name)
    assert len(set(targets)) == len(targets), f"a target on two machines: {targets}"


@pytest.mark.parametrize("path", CONFIGS)
def test_ray_starts_with_token_auth_and_a_local_dashboard(path):
    config = load(path)
    (head,) = commands_with(config["head_start_ray_commands"], "ray start")
    assert "--head" in head
    assert "--dashboard-host=127.0.0.1" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    workers = commands_with(config["worker_start_ray_commands"], "ray start")
    assert workers
    for cmd in [head, *workers]:
        # Each command runs in its own shell: the export must precede `ray start` in it.
        assert cmd.index("export RAY_AUTH_MODE=token") < cmd.index("ray start"), cmd
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


@pytest.mark.parametrize("path", CONFIGS)
def test_mlflow_server_binds_localhost(path):
    config = load(path)
    (server,) = commands_with(config["head_start_ray_commands"], "mlflow server")
    tokens = shlex.split(server)
    assert tokens[tokens.index("--host") + 1] == "127.0.0.1"
    everything = [c for k in COMMAND_LISTS for c in config[k]]
    assert not commands_with(everything, "0.0.0.0"), "a service binds all interfaces"


@pytest.mark.parametrize("path", CONFIGS)
def test_setup_installs_raynas_from_the_mounted_checkout(path):
    config = load(path)
    assert commands_with(config["setup_commands"], "pip install -e ~/raynas")
    mounts = {remote: local for remote, local in config["file_mounts"].items()
              if remote.startswith("~/raynas/")}
    # What `pip install -e` needs (pyproject.toml names README.md as the readme).
    for needed in ("raynas", "pyproject.toml", "README.md"):
        assert f"~/raynas/{needed}" in mounts, needed
    for remote, local in mounts.items():
        assert (REPO / local).exists(), f"{remote}: {local} is not in the repository"


@pytest.mark.parametrize("path", CONFIGS)
def test_cpu_torch_pin_matches_pyproject(path):
    pinned = re.search(r'"torch==([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    setup = "\n".join(load(path)["setup_commands"])
    assert re.findall(r"torch==([^\"'\s]+)", setup) == [pinned]
