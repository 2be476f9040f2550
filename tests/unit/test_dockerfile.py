"""The Dockerfile, checked without Docker (no engine runs where the tests run).

What can be checked outside Docker is: the Dockerfile's structure (two python:3.11-slim stages,
wheels into a venv, only the venv copied, a numeric non-root USER, ENTRYPOINT/CMD/EXPOSE/
HEALTHCHECK), the .dockerignore, and the image's command line run for real: the exact
ENTRYPOINT + CMD (`mssante-connector serve --config <file>`) on the configuration the Helm chart
renders, as uid/gid 10001, in a mount namespace where everything but the data directory and an
empty TMPDIR is read-only (the image's read-only root filesystem), probed with the HEALTHCHECK's
own Python one-liner and stopped with SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import CISIS_FIXTURES, SCHEMAS, SHARED

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
VENV_BIN = ROOT / ".venv" / "bin"
UID = GID = 10001
DATA_DIR = "/var/lib/mssante-connector"
CONFIG_PATH = "/etc/mssante-connector/connector.toml"

#: What `helm template` renders into the ConfigMap (connector.toml) for the chart's default values
#: (helm/mssante-connector/templates/_config.tpl). tests/unit/test_helm_chart.py checks it against
#: values.yaml and the template, and against `helm template` itself where helm is installed.
CHART_DEFAULT_TOML = """\
# Rendered by the mssante-connector Helm chart from its values: edit the values, not this file.
data_dir = "/var/lib/mssante-connector"
default_charset = "UTF-8"

[logging]
format = "json"
level = "info"

[admin]
host = "0.0.0.0"
port = 9610

[store]
backend = "sqlite"
path = "/var/lib/mssante-connector/connector.db"
retransmission_window_seconds = 86400
payload_retention_days = 90
patient_context_retention_days = 400

[[tenants]]
id = "default"
name = "Default establishment"
oid = "2.25.146357245062853604420394627113962385681"
application = "MSSANTE-CONNECTOR"

[[tenants.listeners]]
name = "default"
host = "0.0.0.0"
port = 2575
max_frame_bytes = 16777216
idle_timeout_seconds = 300
max_connections = 64
enhanced_ack = "commit"

[tenants.mailbox]
address = "dry-run@connector.invalid"

[tenants.cisis]
schematron_policy = "reject"
unknown_original = "accept"
sending_matrix = "strict"
partial_sending = false
missing_pdf = "refuse"

[tenants.transport]
kind = "maildir"

[tenants.delivery]
concurrency = 2
batch_size = 20
rate_per_second = 0
lease_seconds = 120
poll_seconds = 2
config_error_pause_seconds = 300
retry_initial_seconds = 60
retry_maximum_seconds = 3600
retry_factor = 2
retry_jitter = 0.2
retry_budget_hours = 48
"""


# -- a small Dockerfile reader ------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int


def read_dockerfile(path: Path = DOCKERFILE) -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped, tagged by stage."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continued instruction are skipped
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    instructions, stage = [], -1
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, args.strip(), stage))
    return instructions


def only(instructions: list[Instruction], keyword: str, stage: int | None = None
         ) -> list[Instruction]:
    return [i for i in instructions
            if i.keyword == keyword and (stage is None or i.stage == stage)]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list)
    assert all(isinstance(item, str) for item in value)
    return value


def healthcheck_command() -> list[str]:
    (check,) = only(read_dockerfile(), "HEALTHCHECK")
    _, sep, command = check.args.partition("CMD ")
    assert sep, "HEALTHCHECK must run a command (CMD)"
    return exec_form(command)


def env_of(instructions: list[Instruction], stage: int) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in only(instructions, "ENV", stage):
        for token in shlex.split(instruction.args):
            key, sep, value = token.partition("=")
            assert sep, f"ENV {instruction.args!r}: use the KEY=value form"
            env[key] = value
    return env


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return read_dockerfile()


# -- the Dockerfile's structure -----------------------------------------------------------------


def test_two_stages_on_python_311_slim(instructions: list[Instruction]) -> None:
    froms = [i.args for i in only(instructions, "FROM")]
    assert froms == ["python:3.11-slim AS builder", "python:3.11-slim AS runtime"]


def test_the_builder_makes_wheels_and_installs_them_into_a_venv(
        instructions: list[Instruction]) -> None:
    runs = " ".join(i.args for i in only(instructions, "RUN", 0))
    assert "python -m venv /opt/mssante-connector" in runs
    assert "pip wheel --wheel-dir /wheels ." in runs
    assert "pip install --no-index --find-links /wheels mssante-connector" in runs
    copied = [i.args.split()[0] for i in only(instructions, "COPY", 0)]
    assert set(copied) == {"pyproject.toml", "connector"}


def test_the_runtime_stage_holds_only_the_venv(instructions: list[Instruction]) -> None:
    copies = [i.args for i in only(instructions, "COPY", 1)]
    assert copies == ["--from=builder /opt/mssante-connector /opt/mssante-connector"]
    runtime_runs = " ".join(i.args for i in only(instructions, "RUN", 1))
    assert "pip" not in runtime_runs  # nothing installed in the runtime stage but, from
    # Debian, the libraries the PDF renderer loads, and no cache of the package lists
    installs = re.findall(r"apt-get install -y --no-install-recommends ([^&]+)", runtime_runs)
    assert [set(i.split()) for i in installs] == [
        {"libpango-1.0-0", "libpangoft2-1.0-0", "libharfbuzz-subset0", "fonts-dejavu-core"}]
    assert "rm -rf /var/lib/apt/lists/*" in runtime_runs
    env = env_of(instructions, 1)
    assert env["PATH"].startswith("/opt/mssante-connector/bin:")


def test_the_runtime_runs_as_a_fixed_numeric_non_root_user(
        instructions: list[Instruction]) -> None:
    users = only(instructions, "USER")
    assert [u.stage for u in users] == [1]
    user, _, group = users[0].args.partition(":")
    assert user.isdigit()
    assert group.isdigit()
    assert (int(user), int(group)) == (UID, GID)
    runs = " ".join(i.args for i in only(instructions, "RUN", 1))
    assert f"--uid {UID}" in runs
    assert f"--gid {GID}" in runs
    assert f"install -d -o {UID} -g {GID} -m 0750 {DATA_DIR}" in runs


def test_entrypoint_and_cmd_serve_the_mounted_configuration(
        instructions: list[Instruction]) -> None:
    (entrypoint,) = only(instructions, "ENTRYPOINT")
    (cmd,) = only(instructions, "CMD")
    assert exec_form(entrypoint.args) == ["mssante-connector"]
    assert exec_form(cmd.args) == ["serve", "--config", CONFIG_PATH]


def test_ports_volume_and_environment(instructions: list[Instruction]) -> None:
    (expose,) = only(instructions, "EXPOSE", 1)
    assert expose.args.split() == ["2575", "9610"]
    (volume,) = only(instructions, "VOLUME", 1)
    assert exec_form(volume.args) == [DATA_DIR]
    env = env_of(instructions, 1)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["TMPDIR"] == "/tmp"
    assert env["MSSCONNECTOR_CONFIG"] == CONFIG_PATH
    assert "MSSCONNECTOR_ADMIN_PORT" not in env  # the health check reads the configuration
    (workdir,) = only(instructions, "WORKDIR", 1)
    assert workdir.args == DATA_DIR


def test_the_healthcheck_gets_healthz_with_the_standard_library(
        instructions: list[Instruction]) -> None:
    (check,) = only(instructions, "HEALTHCHECK")
    options = dict(re.findall(r"--([a-z-]+)=(\S+)", check.args.partition("CMD ")[0]))
    assert set(options) == {"interval", "timeout", "start-period", "retries"}
    command = healthcheck_command()
    # The connector's own check: $MSSCONNECTOR_CONFIG's [admin] (port, TLS), http.client (stdlib,
    # no proxy from the environment); tests/integration/test_healthcheck.py runs it.
    assert command[:2] == ["mssante-connector", "healthcheck"]
    timeout = float(command[command.index("--timeout") + 1])
    assert timeout < float(options["timeout"].rstrip("s"))  # it answers before Docker gives up


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*"  # an allowlist: .venv, .git, var/, tests never reach the context
    included = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert included == {"pyproject.toml", "README.md", "connector"}
    sources = {word.rstrip("/") for i in only(read_dockerfile(), "COPY", 0)
               for word in i.args.split()[:-1] if not word.startswith("--")}
    assert sources == included  # and what the build copies is in the context


# -- the image's command line, run for real ----------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chart_config(data_dir: Path, mllp_port: int, admin_port: int) -> str:
    """The chart's default rendering with the data directory and ports moved, the ANS files of
    shared/ as the site's validation files (so saxonche is loaded and run) and the MDM examples'
    matrix, so that a fixture is accepted, stored and written to the Maildir."""
    text = (CHART_DEFAULT_TOML
            .replace(f'"{DATA_DIR}', f'"{data_dir}')
            .replace("port = 9610", f"port = {admin_port}")
            .replace('host = "0.0.0.0"', 'host = "127.0.0.1"')
            .replace("port = 2575", f"port = {mllp_port}")
            .replace('schematron_policy = "reject"', 'schematron_policy = "warn"')
            .replace('sending_matrix = "strict"', 'sending_matrix = "ans-examples"')
            .replace("poll_seconds = 2", "poll_seconds = 0.2"))
    validation = (
        "[validation]\n"
        f'cda_xsd = "{SCHEMAS / "cda-xsd" / "CDA_extended.xsd"}"\n'
        f'schematron = "{SCHEMAS / "schematron" / "structurationMinimale"}'
        '/ASIP-STRUCT-MIN-StrucMin.sch"\n\n')
    return text.replace("[[tenants]]", validation + "[[tenants]]", 1)


def _mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines():
        point = line.split()[4]
        points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point))
    return points


def _hidden_ancestors(paths: list[Path]) -> dict[Path, set[str]]:
    """Directories that uid 10001 cannot traverse on the way to `paths` (e.g. /root, where pyenv
    keeps the interpreter), with the children it needs inside them."""
    hidden: dict[Path, set[str]] = {}
    for path in paths:
        parts = path.resolve().parts
        for depth in range(1, len(parts) - 1):
            directory = Path(*parts[:depth + 1])
            st = directory.stat()
            if st.st_uid != UID and not st.st_mode & 0o001:
                hidden.setdefault(directory, set()).add(parts[depth + 1])
                break
    return hidden


def sandbox_script(work: Path, writable: list[Path], needed: list[Path]) -> str:
    """Shell run by `unshare --mount`: keep `writable` read-write, expose `needed` through the
    directories uid 10001 cannot traverse, make every other mount read-only, drop to 10001."""
    q = shlex.quote
    lines = ["set -eu"]
    for path in writable:
        lines.append(f"mount --bind {q(str(path))} {q(str(path))}")
    stage = work / "stage"
    for n, (directory, children) in enumerate(sorted(_hidden_ancestors(needed).items())):
        for child in sorted(children):
            staged = stage / f"{n}-{child}"
            lines += [f"mkdir -p {q(str(staged))}",
                      f"mount --rbind {q(str(directory / child))} {q(str(staged))}"]
        lines.append(f"mount -t tmpfs -o mode=0755,size=1m tmpfs {q(str(directory))}")
        for child in sorted(children):
            staged = stage / f"{n}-{child}"
            lines += [f"mkdir -p {q(str(directory / child))}",
                      f"mount --move {q(str(staged))} {q(str(directory / child))}"]
    keep = {str(p) for p in writable}
    lines.append("for mp in $(awk '{print $5}' /proc/self/mountinfo); do")
    lines.append('  case "$mp" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue ;; esac')
    for path in sorted(keep):
        lines.append(f'  [ "$mp" = {q(path)} ] && continue')
    lines.append('  mount -o remount,bind,ro "$mp" 2>/dev/null || true')
    lines.append("done")
    probe = ROOT / ".read-only-probe"
    lines.append(f"if touch {q(str(probe))} 2>/dev/null; then rm -f {q(str(probe))}; "
                 "echo 'the root filesystem is still writable' >&2; exit 97; fi")
    lines.append(f'exec setpriv --reuid={UID} --regid={GID} --clear-groups -- "$@"')
    return "\n".join(lines)


@dataclass
class Sandbox:
    work: Path
    data: Path
    home: Path
    tmp: Path
    script: str

    def argv(self, command: list[str]) -> list[str]:
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", self.script,
                "sandbox", *command]

    def env(self, config: Path | None = None) -> dict[str, str]:
        """The image's environment; `config`: the mounted file `MSSCONNECTOR_CONFIG` names."""
        env = {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(self.home),
               "TMPDIR": str(self.tmp), "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}
        if config is not None:
            env["MSSCONNECTOR_CONFIG"] = str(config)
        return env


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to uid 10001 and to build a read-only mount namespace")
    for tool in ("unshare", "setpriv", "mount", "awk"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    work = Path(tempfile.mkdtemp(prefix="mssconnector-image-"))
    try:
        work.chmod(0o755)
        data, home, tmp = work / "data", work / "home", work / "tmp"
        for directory in (data, home, tmp):
            directory.mkdir()
            os.chown(directory, UID, GID)
            directory.chmod(0o700)
        needed = [Path(os.path.realpath(sys.executable)), Path(sys.base_prefix), ROOT, SHARED]
        box = Sandbox(work, data, home, tmp, sandbox_script(work, [data, tmp, home], needed))
        probe = subprocess.run(box.argv(["python", "-c", "pass"]), env=box.env(),
                               capture_output=True, text=True, timeout=60, check=False)
        if probe.returncode != 0:
            pytest.skip(f"cannot build the read-only, unprivileged sandbox here: "
                        f"{probe.stderr.strip()[-300:]}")
        yield box
    finally:  # the mounts lived in the sandboxes' own namespaces: gone with them
        shutil.rmtree(work, ignore_errors=True)


def owned_by_uid(roots: list[Path], skip: Path) -> set[Path]:
    found = set()
    for top in roots:
        for dirpath, dirnames, filenames in os.walk(top):
            current = Path(dirpath)
            if current == skip or skip in current.parents:
                dirnames[:] = []
                continue
            for name in dirnames + filenames:
                path = current / name
                with contextlib.suppress(OSError):
                    if path.lstat().st_uid == UID:
                        found.add(path)
    return found


@pytest.mark.slow
def test_the_image_command_line_serves_as_an_unprivileged_user_on_a_read_only_root(
        sandbox: Sandbox) -> None:
    instructions = read_dockerfile()
    (entrypoint,) = only(instructions, "ENTRYPOINT")
    (cmd,) = only(instructions, "CMD")
    argv = exec_form(entrypoint.args) + exec_form(cmd.args)
    config_path = argv[argv.index("--config") + 1]
    assert config_path == CONFIG_PATH
    mllp_port, admin_port = free_port(), free_port()
    config = sandbox.work / "connector.toml"
    config.write_text(chart_config(sandbox.data, mllp_port, admin_port), encoding="utf-8")
    config.chmod(0o644)
    argv[argv.index("--config") + 1] = str(config)  # the mounted file, here

    watched = [Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"), ROOT]
    owned_before = owned_by_uid(watched, sandbox.work)
    env = sandbox.env(config)
    server = subprocess.Popen(sandbox.argv(argv), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        health = sandbox.argv(healthcheck_command())
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"serve exited: {server.communicate()}"
            check = subprocess.run(health, env=env, capture_output=True, timeout=30,
                                   check=False)
            if check.returncode == 0:
                break
            assert time.monotonic() < deadline, "the HEALTHCHECK never passed"
            time.sleep(0.5)

        message = CISIS_FIXTURES / "mdm-t02-initial" / "message.er7"
        sent = subprocess.run([str(VENV_BIN / "mssante-connector"), "send", str(message),
                               "--host", "127.0.0.1", "--port", str(mllp_port)],
                              capture_output=True, text=True, timeout=120, check=False)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert " AA" in sent.stdout
        maildir = sandbox.data / "maildir" / "default" / "new"
        deadline = time.monotonic() + 60
        while not (maildir.is_dir() and any(maildir.iterdir())):
            assert server.poll() is None, f"serve exited: {server.communicate()}"
            assert time.monotonic() < deadline, "no mail reached the Maildir"
            time.sleep(0.2)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            out, err = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            out, err = server.communicate()
    assert server.returncode == 0, err

    # JSON logs, as [logging] format = "json" asks
    events = [json.loads(line)["event"] for line in (out + err).splitlines() if line.strip()]
    assert "serving" in events
    assert events[-1] == "stopped"
    # what it wrote: the store and the Maildir under the data directory, nothing anywhere else
    written = {p.name for p in sandbox.data.iterdir()}
    assert {"connector.db", "maildir"} <= written
    assert not any(sandbox.tmp.iterdir()), "something was written to TMPDIR"
    assert not any(sandbox.home.iterdir()), "something was written to HOME"
    assert owned_by_uid(watched, sandbox.work) == owned_before


def test_the_chart_default_configuration_is_valid() -> None:
    from connector.settings import parse_settings

    settings = parse_settings(tomllib.loads(CHART_DEFAULT_TOML), env={})
    assert str(settings.store.path) == f"{DATA_DIR}/connector.db"
    assert settings.admin is not None
    assert (settings.admin.host, settings.admin.port) == ("0.0.0.0", 9610)
    assert [(listener.host, listener.port) for listener in settings.tenants[0].listeners] == [
        ("0.0.0.0", 2575)]
    assert str(settings.tenants[0].transport.maildir) == f"{DATA_DIR}/maildir/default"
