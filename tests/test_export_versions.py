"""Tests for how `export_model` puts versions on disk (staging inside the base path, permissions,
fsync, concurrent and killed exports, leftovers) and for the published ports of the container
files in `serving/`. The exports run for real, several of them in subprocesses."""

import fcntl
import json
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

from tf_gru4rec.config import TrainConfig
from tf_gru4rec.data.vocabulary import ItemVocabulary
from tf_gru4rec.serving import export as export_lib
from tf_gru4rec.serving.export import STAGING_PREFIX, export_model, remove_stale_staging
from tf_gru4rec.training import build_model, save_model_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_ITEMS, K = 40, 5
RAW_IDS = np.arange(N_ITEMS, dtype=np.int64) * 7 + 1000
CONFIG = TrainConfig(layers=[12, 10], batch_size=4, n_sample=0, jit_compile=False, seed=5)
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)

# A child process exporting the model directory argv[1] to the base path argv[2]. Its renames
# into the base path are intercepted: "race" waits until argv[4] processes have reached theirs
# (so concurrent exports collide on one version number); "pause" says STAGED and sleeps (to be
# killed just before the rename).
_CHILD = """
import logging, os, sys, time
from tf_gru4rec.serving import export as export_lib
from tf_gru4rec.training import load_model_dir

model_dir, base, mode, flags, count = sys.argv[1:6]
logging.basicConfig(level=logging.INFO, format="%(message)s")
real_rename = os.rename

def rename(src, dst):
    if os.path.dirname(dst) == base and mode == "race":
        open(os.path.join(flags, str(os.getpid())), "w").close()
        while len(os.listdir(flags)) < int(count):
            time.sleep(0.02)
    elif os.path.dirname(dst) == base and mode == "pause":
        print("STAGED", src, flush=True)
        time.sleep(600)
    return real_rename(src, dst)

export_lib.os.rename = rename
trained = load_model_dir(model_dir)
print(export_lib.export_model(trained.model, trained.vocabulary, base, k=5, warmup=False),
      flush=True)
"""


@pytest.fixture(scope="module")
def model():
    return build_model(CONFIG, N_ITEMS,
                       item_support=np.random.default_rng(0).permutation(N_ITEMS) + 1)


@pytest.fixture(scope="module")
def vocabulary():
    return ItemVocabulary(RAW_IDS)


@pytest.fixture(scope="module")
def model_dir(model, vocabulary, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("trained") / "model")
    save_model_dir(path, model, vocabulary, CONFIG)
    return path


@pytest.fixture(scope="module")
def child_script(tmp_path_factory):
    path = tmp_path_factory.mktemp("child") / "child.py"
    path.write_text(_CHILD)
    return str(path)


def staging_dirs(base) -> list[str]:
    return sorted(n for n in os.listdir(base) if n.startswith(STAGING_PREFIX))


def numeric(base) -> list[str]:
    return sorted((n for n in os.listdir(base) if n.isdigit()), key=int)


def export_info(version_path) -> dict:
    with open(os.path.join(version_path, "assets.extra", export_lib.EXPORT_INFO)) as f:
        return json.load(f)


# ---------------------------------------------------------------------- staging and files
def test_version_is_staged_inside_the_base_and_nothing_is_left_elsewhere(
        model, vocabulary, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"  # the process's temporary directory: must stay empty
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)  # forget the cached one
    base = tmp_path / "models" / "gru4rec"
    renames, fsyncs = [], []
    real_rename, real_fsync = os.rename, os.fsync

    def spy_rename(src, dst):
        renames.append((str(src), str(dst), os.stat(src).st_dev))
        return real_rename(src, dst)

    def spy_fsync(fd):
        fsyncs.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "rename", spy_rename)
    monkeypatch.setattr(os, "fsync", spy_fsync)
    path = export_model(model, vocabulary, str(base), k=K)
    assert path == str(base / "1")
    (src, dst, device), = [r for r in renames if r[1] == path]
    assert os.path.dirname(os.path.dirname(src)) == str(base)  # <base>/<staging>/version
    assert os.path.basename(os.path.dirname(src)).startswith(STAGING_PREFIX)
    assert device == os.stat(base).st_dev
    # AutoGraph's converted functions are TensorFlow's, removed when the process exits
    assert [n for n in os.listdir(scratch) if not n.startswith("__autograph_generated")] == []
    assert sorted(os.listdir(tmp_path)) == ["models", "tmp"]
    assert os.listdir(base.parent) == ["gru4rec"] and os.listdir(base) == ["1"]
    # every file of the version and every directory were fsynced before the rename, the base
    # directory after it
    staged = [p.replace(src, path, 1) for p in fsyncs if p.startswith(src)]
    written = {os.path.join(d, n) for d, dirs, files in os.walk(path) for n in dirs + files}
    assert written | {path} <= set(staged)
    assert fsyncs[-1] == str(base)


@pytest.mark.skipif(not hasattr(os, "umask"), reason="POSIX permissions")
def test_version_is_readable_by_the_server_whatever_the_umask(model, vocabulary, tmp_path):
    base = tmp_path / "new" / "gru4rec"  # both directories created by the export
    old = os.umask(0o077)
    try:
        path = export_model(model, vocabulary, str(base), k=K)
    finally:
        os.umask(old)
    for directory in (tmp_path / "new", base):
        assert stat.S_IMODE(os.stat(directory).st_mode) & 0o755 == 0o755, directory
    checked = 0
    for parent, _, files in os.walk(path):
        assert stat.S_IMODE(os.stat(parent).st_mode) & 0o755 == 0o755, parent
        for name in files:
            mode = stat.S_IMODE(os.stat(os.path.join(parent, name)).st_mode)
            assert mode & 0o644 == 0o644, (name, oct(mode))
            assert not mode & 0o022, (name, oct(mode))  # readable, not writable, by others
            checked += 1
    assert checked >= 5  # saved_model.pb, variables, the vocabulary asset, assets.extra/*


def test_failed_export_leaves_nothing(model, vocabulary, tmp_path, monkeypatch):
    base = tmp_path / "gru4rec"

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_lib, "write_warmup_requests", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(model, vocabulary, str(base), k=K)
    assert os.listdir(base) == []


# ---------------------------------------------------------------------- version numbers
def test_version_taken_at_the_rename(model, vocabulary, tmp_path, monkeypatch):
    """Another export takes the number between the choice and the rename: an automatic number
    moves on (and the export info says which), an explicit one is a clean error."""
    base = tmp_path / "gru4rec"
    real_rename = os.rename

    def rival_first(src, dst):
        if os.path.dirname(dst) == str(base) and not os.path.exists(base / "3"):
            os.makedirs(base / "3")
            (base / "3" / "saved_model.pb").write_bytes(b"rival")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rival_first)
    with pytest.raises(FileExistsError, match=r"Version 3 already exists .* \(4\)"):
        export_model(model, vocabulary, str(base), version=3, k=K, warmup=False)
    assert os.listdir(base) == ["3"] and (base / "3" / "saved_model.pb").read_bytes() == b"rival"

    os.rename(base / "3", base / "2")  # so that the next automatic number is 3 again
    path = export_model(model, vocabulary, str(base), k=K, warmup=False)
    assert path == str(base / "4") and export_info(path)["version"] == 4
    assert numeric(base) == ["2", "3", "4"] and staging_dirs(base) == []


def test_concurrent_exports_get_distinct_versions(model_dir, child_script, tmp_path):
    base, flags = tmp_path / "gru4rec", tmp_path / "flags"
    flags.mkdir()
    children = [subprocess.Popen([sys.executable, child_script, model_dir, str(base), "race",
                                  str(flags), "2"], env=ENV, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [c.communicate(timeout=240) for c in children]
    for child, (_, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
    paths = sorted(out.strip().splitlines()[-1] for out, _ in outputs)
    assert paths == [str(base / "1"), str(base / "2")]
    assert [export_info(p)["version"] for p in paths] == [1, 2]
    assert sum("version 1 was taken by another export" in err for _, err in outputs) == 1
    assert sorted(os.listdir(base)) == ["1", "2"]


def test_existing_version_is_a_one_line_cli_error(model_dir, tmp_path):
    base = tmp_path / "gru4rec"
    os.makedirs(base / "1")
    (base / "1" / "saved_model.pb").write_bytes(b"keep me")
    run = subprocess.run([sys.executable, "-m", "tf_gru4rec.cli", "export", "--model", model_dir,
                          "--base", str(base), "--version", "1"], env=ENV, capture_output=True,
                         text=True, timeout=240)
    assert run.returncode == 2
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert "ERROR" in lines[0] and f"Version 1 already exists in {base}" in lines[0]
    assert os.listdir(base) == ["1"] and (base / "1" / "saved_model.pb").read_bytes() == b"keep me"


@pytest.mark.slow  # default suite time (README: Tests)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mount namespaces")
def test_base_path_that_is_a_mount_point(model_dir, tmp_path):
    """The base path is a tmpfs mounted in a private mount namespace (gone with the process):
    a staging directory beside it would be on another file system (rename: EXDEV)."""
    base = tmp_path / "gru4rec"
    base.mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs tmpfs "$0"', str(base)],
                           capture_output=True, timeout=30) if _has("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("cannot mount a tmpfs in a user mount namespace here")
    script = ('mount -t tmpfs -o size=64m tmpfs "$0" && '
              '"$1" -m tf_gru4rec.cli -v WARNING export --model "$2" --base "$0" --no-warmup && '
              '"$1" -c "import json, os, sys; print(json.dumps([os.path.ismount(sys.argv[1]), '
              'sorted(os.listdir(sys.argv[1]))]))" "$0"')
    run = subprocess.run(["unshare", "-rm", "sh", "-c", script, str(base), sys.executable,
                          model_dir], env=ENV, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr
    answer, _ = json.JSONDecoder().raw_decode(run.stdout)  # the CLI's JSON
    assert answer["export"] == str(base / "1")
    is_mount, listing = json.loads(run.stdout.strip().splitlines()[-1])
    assert is_mount and listing == ["1"]
    assert os.listdir(base) == []  # the tmpfs went with the namespace


def _has(program: str) -> bool:
    return any(os.access(os.path.join(d, program), os.X_OK)
               for d in os.environ.get("PATH", "").split(os.pathsep))


# ---------------------------------------------------------------------- leftovers
def test_killed_export_leaves_no_version_and_the_next_cleans_up(
        model, vocabulary, model_dir, child_script, tmp_path, caplog):
    base = tmp_path / "gru4rec"
    child = subprocess.Popen([sys.executable, child_script, model_dir, str(base), "pause", "-",
                              "0"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    watchdog = threading.Timer(240, child.kill)
    watchdog.start()
    try:
        line = child.stdout.readline()
        assert line.startswith("STAGED "), child.stderr.read()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        watchdog.cancel()
        child.stdout.close()
        child.stderr.close()
    leftover, = staging_dirs(base)
    assert leftover.startswith(f"{STAGING_PREFIX}{child.pid}@")
    assert numeric(base) == []  # TF Serving sees no version

    with caplog.at_level(logging.WARNING, logger="tf_gru4rec.serving.export"):
        path = export_model(model, vocabulary, str(base), k=K, warmup=False)
    assert path == str(base / "1") and os.listdir(base) == ["1"]
    assert f"removed {base / leftover}, left by an interrupted export" in caplog.text


def test_leftover_rules(tmp_path, caplog):
    """Removed: this host's with a free lock or a dead process, any not locked and older than
    the limit. Kept: a locked one (a running export, however old), this host's with a live
    process and no lock, another host's recent one (even with a free lock: locks may be local
    to a host), directories that are not staging."""
    base = tmp_path / "gru4rec"
    base.mkdir()
    host = export_lib._host()
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = os.getppid()
    old = time.time() - 2 * export_lib.STALE_STAGING_SECONDS

    def staging(name, lock=False, age=None):
        path = base / f"{STAGING_PREFIX}{name}"
        (path / "version").mkdir(parents=True)
        (path / "version" / "saved_model.pb").write_bytes(b"partial")
        if lock:
            (path / ".lock").touch()
        if age is not None:
            os.utime(path, (age, age))
        return path.name

    removed = {staging(f"{dead.pid}@{host}-dead0001"),
               staging(f"{live}@{host}-unlockd1", lock=True),
               staging(f"{live}@{host}-old00001", age=old),
               staging(f"{live}@other.host-old00002", age=old),
               staging(f"{live}@other.host-old00003", lock=True, age=old)}
    running = staging(f"{live}@{host}-running1", lock=True, age=old)
    kept = {running, staging(f"{live}@{host}-live0001"),
            staging(f"{dead.pid}@other.host-recent1"),
            staging(f"{dead.pid}@other.host-recent2", lock=True), "1", ".tf_gru4rec-other",
            "notes"}
    for name in ("1", ".tf_gru4rec-other", "notes"):
        (base / name).mkdir()
    holder = os.open(base / running / ".lock", os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with caplog.at_level(logging.WARNING, logger="tf_gru4rec.serving.export"):
            gone = remove_stale_staging(str(base))
    finally:
        os.close(holder)
    assert sorted(os.path.basename(p) for p in gone) == sorted(removed)
    assert set(os.listdir(base)) == kept
    assert caplog.text.count("left by an interrupted export") == len(removed)
    assert f"process {dead.pid} is gone" in caplog.text and "h old" in caplog.text


# ---------------------------------------------------------------------- serving/ defaults
def _compose_ports(text: str) -> list[str]:
    """The short-syntax entries of every `ports:` list in a compose file."""
    ports, indent = [], None
    for line in text.splitlines():
        stripped = line.strip()
        depth = len(line) - len(line.lstrip())
        if stripped == "ports:":
            indent = depth
        elif indent is not None and stripped and depth <= indent:
            indent = None
        elif indent is not None and stripped.startswith("-"):
            entry = re.sub(r"\s+#.*", "", stripped[1:]).strip()  # drop a trailing comment
            ports.append(entry.strip("\"'"))
    return ports


def _docker_run_publish(text: str) -> list[str]:
    """The `-p` / `--publish` values of every `docker run` command in a Markdown file."""
    commands = re.sub(r"\\\n", " ", text)  # join continued lines
    published = []
    for command in re.findall(r"docker run [^\n]*", commands):
        assert not re.search(r"\s(-P|--publish-all)\b", command), command
        published += re.findall(r"\s(?:-p|--publish)[ =](\S+)", command)
    return published


def _host_ip(mapping: str) -> str:
    """The host address of a port mapping once `${VAR:-default}` takes its default."""
    mapping = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", mapping)
    parts = mapping.rsplit(":", 2)
    return parts[0] if len(parts) == 3 else "0.0.0.0"  # HOST:CONTAINER binds every interface


def test_published_ports_bind_loopback_by_default():
    with open(os.path.join(REPO, "serving", "docker-compose.yml")) as f:
        compose = f.read()
    ports = _compose_ports(compose)
    assert len(ports) == 4  # gRPC and REST, GPU and CPU profile
    assert all(_host_ip(p) == "127.0.0.1" for p in ports), ports
    assert all(p.startswith("${GRU4REC_BIND:-127.0.0.1}:") for p in ports), ports
    examples = 0
    for name in ("serving/README.md", "README.md"):
        with open(os.path.join(REPO, name)) as f:
            published = _docker_run_publish(f.read())
        assert all(_host_ip(p) == "127.0.0.1" for p in published), (name, published)
        examples += len(published)
    assert examples >= 4
    assert _host_ip("8500:8500") == "0.0.0.0" and _host_ip("127.0.0.1:8500:8500") == "127.0.0.1"
    assert _docker_run_publish("docker run --rm -p 1:1 \\\n  -p 2.2.2.2:2:2 img") == [
        "1:1", "2.2.2.2:2:2"]
