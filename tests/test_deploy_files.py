"""The Kubernetes training manifest and the multi-worker docs agree with the code: the Indexed
Job and its headless Service fit together, the pod's shell command builds a TF_CONFIG that
`cluster_from_env` accepts, and every `tf-gru4rec` command they show parses with the real CLI."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys

import pytest
import yaml

from tf_gru4rec.cli import build_parser
from tf_gru4rec.training.workers import cluster_from_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFEST = os.path.join(REPO, "deploy", "k8s", "train-job.yaml")


def _documents(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _by_kind(kind):
    found = [d for d in _documents(MANIFEST) if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in {MANIFEST}"
    return found[0]


def _container():
    (container,) = _by_kind("Job")["spec"]["template"]["spec"]["containers"]
    return container


def _env(container):
    return {e["name"]: e["value"] for e in container["env"]}


def test_job_is_indexed_with_one_pod_per_worker():
    job = _by_kind("Job")["spec"]
    workers = int(_env(_container())["NUM_WORKERS"])
    assert job["completionMode"] == "Indexed"
    assert job["completions"] == job["parallelism"] == workers >= 2
    assert 0 <= job["backoffLimit"] <= 10
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    resources = _container()["resources"]["requests"]
    assert resources["cpu"] and resources["memory"]


def test_service_is_headless_and_is_the_pods_subdomain():
    service, job = _by_kind("Service"), _by_kind("Job")
    pod = job["spec"]["template"]["spec"]
    env = _env(_container())
    assert service["spec"]["clusterIP"] == "None"
    assert pod["subdomain"] == service["metadata"]["name"] == env["SERVICE_NAME"]
    assert env["JOB_NAME"] == job["metadata"]["name"]
    assert service["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    port = int(env["WORKER_PORT"])
    assert [p["port"] for p in service["spec"]["ports"]] == [port]
    assert [p["containerPort"] for p in _container()["ports"]] == [port]


def test_volumes_are_one_read_write_many_claim():
    pod = _by_kind("Job")["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in _container()["volumeMounts"]}
    assert set(mounts) == {"/data", "/models"}
    (volume,) = pod["volumes"]
    assert set(mounts.values()) == {volume["name"]}
    claim = volume["persistentVolumeClaim"]["claimName"]
    (pvc,) = _documents(os.path.join(REPO, "deploy", "k8s", "pvc.yaml"))
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["metadata"]["name"] == claim
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def _run_command(tmp_path, index, shell="bash"):
    """Runs the container's command with a stand-in `tf-gru4rec` that records its TF_CONFIG
    and arguments; returns them."""
    container = _container()
    command = container["command"]
    assert command[:2] == ["/bin/sh", "-c"] and len(command) == 3
    stub = tmp_path / "tf-gru4rec"
    record = tmp_path / f"record-{index}.json"
    stub.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"json.dump({{'TF_CONFIG': os.environ['TF_CONFIG'], 'argv': sys.argv[1:]}}, "
                    f"open({str(record)!r}, 'w'))\n")
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    env = {"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", **_env(container),
           "JOB_COMPLETION_INDEX": str(index)}
    done = subprocess.run([shutil.which(shell), "-c", command[2]], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    with open(record) as f:
        return json.load(f)


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_command_builds_a_tf_config_the_workers_accept(tmp_path, shell):
    if shutil.which(shell) is None:
        pytest.skip(f"no {shell}")
    for index in (0, 1):
        run = _run_command(tmp_path, index, shell)
        assert cluster_from_env({"TF_CONFIG": run["TF_CONFIG"]}) == (2, index)
        config = json.loads(run["TF_CONFIG"])
        assert config["cluster"]["worker"] == ["train-gru4rec-0.train-gru4rec:2222",
                                               "train-gru4rec-1.train-gru4rec:2222"]


def test_command_without_an_index_fails(tmp_path):
    container = _container()
    done = subprocess.run([shutil.which("bash"), "-c", container["command"][2]],
                          env={"PATH": str(tmp_path), **_env(container)},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "JOB_COMPLETION_INDEX" in done.stderr


def test_command_arguments_parse_with_the_real_cli(tmp_path):
    argv = _run_command(tmp_path, 1)["argv"]
    args = build_parser().parse_args(argv)
    assert args.command == "train"
    assert (args.train, args.test, args.out, args.preset) == (
        "/data/shards/train", "/data/shards/test.parquet", "/models/gru4rec-run", "rsc15-xe")
    assert args.workers == 1 and not args.mirrored  # the cluster comes from TF_CONFIG


def _section(text, title):
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def _commands(text):
    """The `tf-gru4rec ...` command lines of the code blocks in `text` (continuations joined)."""
    blocks = re.findall(r"```(?:bash)?\n(.*?)```", text, flags=re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [shlex.split(line.split("#")[0])[1:] for line in lines
            if line.strip().startswith("tf-gru4rec ")]


def _options(parser_argv):
    """The option strings of a subcommand's parser, e.g. ["train"] or ["prepare", "log"]."""
    parser = build_parser()
    for name in parser_argv:
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = sub.choices[name]
    return {s for a in parser._actions for s in a.option_strings}


def test_documented_commands_parse_with_the_real_cli():
    with open(os.path.join(REPO, "README.md")) as f:
        readme = _section(f.read(), "More than one machine")
    with open(os.path.join(REPO, "deploy", "README.md")) as f:
        deploy = f.read()
    commands = _commands(readme) + _commands(deploy)
    assert any(c[0] == "train" for c in commands) and any(c[0] == "export" for c in commands)
    for argv in commands:
        build_parser().parse_args(argv)  # SystemExit (a usage error) fails the test


def test_train_options_in_the_readme_section_exist():
    with open(os.path.join(REPO, "README.md")) as f:
        readme = _section(f.read(), "More than one machine")
    mentioned = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", readme))
    known = _options(["train"]) | _options(["prepare", "log"])
    assert "--workers" in mentioned and "--mirrored" in mentioned
    assert mentioned <= known, sorted(mentioned - known)
