"""The shipped cluster launchers (SkyPilot task, Kubernetes JobSet) run a command line the CLI accepts."""
from __future__ import annotations

import re
import shlex

import yaml
from conftest import REPO

from fmnist_jax.cli import main as cli
from fmnist_jax.cli.main import cmd_train
from fmnist_jax.model import presets

CLUSTER = REPO / "cluster"


def _parse(argv: list[str]):
    assert argv[:3] == ["python", "-m", "fmnist_jax"], argv
    args = cli.build_parser().parse_args(argv[3:])
    assert args.func is cmd_train and args.distributed
    presets.preset(args.preset)  # a preset the library knows
    return args


def _expand(text: str, values: dict) -> str:
    return re.sub(r"\$\{(\w+)\}|\$\((\w+)\)", lambda m: str(values[m.group(1) or m.group(2)]), text)


def test_the_skypilot_task_runs_a_distributed_train_on_every_node() -> None:
    task = yaml.safe_load((CLUSTER / "skypilot.yaml").read_text())
    assert "requirements.txt -c constraints.txt" in task["setup"]  # the versions the tests passed with
    line = next(line for line in task["run"].splitlines() if line.startswith("python -m fmnist_jax"))
    for rank in range(task["num_nodes"]):
        values = {**task["envs"], "COORDINATOR": "10.0.0.1", "SKYPILOT_NUM_NODES": task["num_nodes"],
                  "SKYPILOT_NODE_RANK": rank, "FMNIST_HOME": "/home/sky/fmnist-home"}
        args = _parse(shlex.split(_expand(line, values)))
        assert args.coordinator == f"10.0.0.1:{task['envs']['COORDINATOR_PORT']}"
        assert (args.num_processes, args.process_id, args.json) == (task["num_nodes"], rank, True)
        assert args.epochs == task["envs"]["EPOCHS"]


def test_the_jobset_pods_find_their_coordinator_and_ranks() -> None:
    jobset = yaml.safe_load((CLUSTER / "jobset.yaml").read_text())
    assert jobset["kind"] == "JobSet" and jobset["apiVersion"].startswith("jobset.x-k8s.io/")
    name = jobset["metadata"]["name"]
    (replicated,) = jobset["spec"]["replicatedJobs"]
    job = replicated["template"]["spec"]
    assert job["completionMode"] == "Indexed" and job["parallelism"] == job["completions"]
    (container,) = job["template"]["spec"]["containers"]
    env = {item["name"]: item for item in container["env"]}
    assert "job-completion-index" in env["RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    for rank in range(job["parallelism"]):
        args = _parse([_expand(part, {"RANK": rank}) for part in container["command"]])
        assert (args.num_processes, args.process_id) == (job["parallelism"], rank)
        host, port = args.coordinator.rsplit(":", 1)
        assert host == f"{name}-{replicated['name']}-0-0.{name}"  # JobSet's DNS name of pod 0
        assert int(port) in [p["containerPort"] for p in container["ports"]]
        assert args.out.startswith(env["FMNIST_HOME"]["value"])
