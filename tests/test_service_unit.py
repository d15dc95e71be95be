"""The systemd unit, sysusers file, env example and install script.

Nothing here touches the machine: systemd-analyze and systemd-sysusers work on copies in
tmp_path, the install script is only parsed and asked for --help, and the sandbox checks run
a child process under seccomp filters equivalent to the unit's.
"""

from __future__ import annotations

import ctypes.util
import grp
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "claudio-daemon.service"
SYSUSERS = ROOT / "systemd" / "claudio.sysusers.conf"
ENV_EXAMPLE = ROOT / "systemd" / "claudio-daemon.env.example"
INSTALL = ROOT / "scripts" / "install-service.sh"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's ini dialect: repeated keys accumulate, '#'/';' comments, no continuations."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"line {n}: key outside a section"
        assert "=" in line, f"line {n}: not KEY=value: {raw!r}"
        assert not line.endswith("\\"), f"line {n}: continuation lines not expected"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def one(unit: dict[str, dict[str, list[str]]], key: str, section: str = "Service") -> str:
    values = unit[section].get(key)
    assert values, f"[{section}] {key}= missing"
    assert len(values) == 1, f"[{section}] {key}= given {len(values)} times"
    return values[0]


def test_unit_service_type_and_lifecycle(unit: dict[str, dict[str, list[str]]]) -> None:
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecStart": "/opt/claudio/.venv/bin/claudio-daemon run --rules /etc/claudio/rules.yaml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "RestartSec": "5",
        "User": "claudio",
        "Group": "claudio",
        "SupplementaryGroups": "audio",
        "DynamicUser": "no",
        "StateDirectory": "claudio",
        "ConfigurationDirectory": "claudio",
        # As install-service.sh makes /etc/claudio, or systemd warns at every start.
        "ConfigurationDirectoryMode": "0750",
        # A mistake to fix: no restarts that would lock the unit out after the fix.
        "RestartPreventExitStatus": "2",
        "EnvironmentFile": "-/etc/claudio/claudio.env",
    }
    for key, value in expected.items():
        assert one(unit, key) == value, key
    assert "PYTHONUNBUFFERED=1" in unit["Service"]["Environment"]
    assert one(unit, "WantedBy", "Install") == "multi-user.target"


def test_unit_hardening(unit: dict[str, dict[str, list[str]]]) -> None:
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "no",  # /dev/snd must stay reachable
        "DevicePolicy": "closed",
        "DeviceAllow": "char-alsa rw",
        "ReadOnlyPaths": "/etc/claudio",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "LockPersonality": "yes",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
        "SystemCallFilter": "@system-service",
    }
    for key, value in expected.items():
        assert one(unit, key) == value, key


def test_credential_is_loaded_from_a_file_the_install_script_creates(
    unit: dict[str, dict[str, list[str]]],
) -> None:
    cred_id, _, path = one(unit, "LoadCredential").partition(":")
    assert cred_id == "mqtt-password" and path.startswith("/etc/claudio/")
    script = INSTALL.read_text()
    # systemd 252 refuses to start when a LoadCredential= file is missing
    rel = path.removeprefix("/etc/claudio/")
    assert f'"$confdir/{rel}"' in script and "install -m 0600" in script
    # and the other paths the unit relies on are the ones the script fills
    assert "prefix=/opt/claudio" in script and '"$prefix/.venv"' in script
    # ...readable by the service user even when root's umask is 077
    assert script.index("\numask 022\n") < script.index('"$prefix/.venv"')
    assert one(unit, "ExecStart").startswith("/opt/claudio/.venv/bin/")
    assert '"$confdir/claudio.env"' in script and "confdir=/etc/claudio" in script
    assert '"$confdir/rules.yaml"' in script


def _verify(unit_text: str, tmp_path: Path) -> tuple[int, list[str]]:
    """systemd-analyze verify on a copy whose ExecStart binary exists here; returns the exit
    status and the output lines about OUR unit (verify exits 0 on unknown keys or bad values,
    it only prints them, so the lines are what matters)."""
    exe = Path(sys.executable).with_name("claudio-daemon")
    exe_path = str(exe) if exe.exists() else "/bin/true"
    text = unit_text.replace("/opt/claudio/.venv/bin/claudio-daemon", exe_path)
    copy = tmp_path / "claudio-daemon.service"
    copy.write_text(text)
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "notice", "SYSTEMD_LOG_COLOR": "0"}
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if "claudio-daemon" in line]
    return proc.returncode, ours


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    rc, lines = _verify(UNIT.read_text(), tmp_path)
    assert rc == 0 and lines == [], "\n".join(lines)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_verify_check_catches_mistakes(tmp_path: Path) -> None:
    # The check above must be able to fail: a typo'd value and an unknown key are reported.
    broken = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystem=strikt\nFooBar=1")
    rc, lines = _verify(broken, tmp_path)
    assert any("strikt" in line for line in lines), lines
    assert any("FooBar" in line for line in lines), lines


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers missing")
def test_sysusers_creates_claudio_in_audio(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\naudio:x:29:pi\n")
    for _ in range(2):  # idempotent
        proc = subprocess.run(
            ["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 0, proc.stderr
    users = [line.split(":") for line in (etc / "passwd").read_text().splitlines()]
    (claudio,) = [u for u in users if u[0] == "claudio"]
    assert claudio[5:] == ["/var/lib/claudio", "/usr/sbin/nologin"]
    assert 0 < int(claudio[2]) < 1000  # a system user
    groups = {
        g.split(":")[0]: g.split(":")[3].split(",")
        for g in (etc / "group").read_text().splitlines()
    }
    assert sorted(groups["audio"]) == ["claudio", "pi"]
    assert "claudio" in groups


def test_env_example_is_valid_environment_file() -> None:
    for n, raw in enumerate(ENV_EXAMPLE.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", line), f"line {n}: {raw!r}"
        assert "PASSWORD" not in line, f"line {n}: no live secrets in the example"


def test_install_script_parses_and_only_does_harmless_things_when_asked() -> None:
    assert subprocess.run(["bash", "-n", str(INSTALL)], timeout=10).returncode == 0
    assert os.access(INSTALL, os.X_OK)
    # --help and bad options exit before anything is touched (even as root)
    helped = subprocess.run(
        ["bash", str(INSTALL), "--help"], capture_output=True, text=True, timeout=10
    )
    assert helped.returncode == 0 and "sudo scripts/install-service.sh" in helped.stdout
    bad = subprocess.run(
        ["bash", str(INSTALL), "--bogus"], capture_output=True, text=True, timeout=10
    )
    assert bad.returncode == 1 and "unknown option '--bogus'" in bad.stderr
    rel = subprocess.run(
        ["bash", str(INSTALL), "--prefix", "relative"], capture_output=True, text=True, timeout=10
    )
    assert rel.returncode == 1 and "absolute" in rel.stderr
    # The unit hides home folders from the service (ProtectHome=yes): refused at once.
    home = subprocess.run(
        ["bash", str(INSTALL), "--prefix", "/home/pi/claudio"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert home.returncode == 1 and "ProtectHome=yes" in home.stderr
    if shutil.which("shellcheck"):
        sc = subprocess.run(
            ["shellcheck", "-S", "warning", str(INSTALL)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert sc.returncode == 0, sc.stdout


# --- the sandbox, emulated with the seccomp rules systemd installs ----------------------------

_SANDBOXED_CHILD = r"""
import ctypes, sys
mode, model, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
lib = ctypes.CDLL("libseccomp.so.2")
class Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                       ctypes.c_uint, ctypes.POINTER(Cmp)]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
ALLOW, EPERM, MASKED_EQ = 0x7FFF0000, 0x00050000 | 1, 7
def nr(name):
    return lib.seccomp_syscall_resolve_name(name.encode())
if mode == "mdwe":
    # systemd's MemoryDenyWriteExecute=: no W+X mmap, no mprotect/pkey_mprotect adding X
    ctx = lib.seccomp_init(ALLOW)
    for name, arg, mask in (("mmap", 2, 6), ("mprotect", 2, 4), ("pkey_mprotect", 2, 4)):
        if nr(name) >= 0:
            cmp = (Cmp * 1)(Cmp(arg, MASKED_EQ, mask, mask))
            assert lib.seccomp_rule_add_array(ctx, EPERM, nr(name), 1, cmp) == 0
else:
    # SystemCallFilter=@system-service with SystemCallErrorNumber=EPERM
    ctx = lib.seccomp_init(EPERM)
    for name in open(mode).read().split():
        if nr(name) >= 0:
            lib.seccomp_rule_add_array(ctx, ALLOW, nr(name), 0, None)
assert lib.seccomp_load(ctx) == 0

import numpy as np, onnxruntime as ort
opts = ort.SessionOptions(); opts.intra_op_num_threads = 2
s = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
out = s.run(None, {"x": np.ones((1, 1, 128, 256), np.float32)})[0]
print("ort", out.shape)
import soxr
print("soxr", soxr.resample(np.zeros(22050, np.float32), 22050, 16000).shape)
import sounddevice as sd
print("portaudio", sd.get_portaudio_version()[0] > 0, len(sd.query_devices()) >= 0)
try:
    sd._ffi.callback("PaStreamCallback", lambda *a: 0)
    print("cffi-callback ok")
except MemoryError:
    print("cffi-callback blocked")
if port:
    import paho.mqtt.client as mqtt
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", port); c.loop_start()
    info = c.publish("claudio/test", "hi", qos=1); info.wait_for_publish(5)
    print("mqtt", info.is_published())
    c.loop_stop(); c.disconnect()
"""


def _tiny_model(path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "W")
    g = numpy_helper.from_array(rng.standard_normal((8, 5)).astype(np.float32), "G")
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("MatMul", ["f", "G"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 128, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        [w, g],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _run_sandboxed(mode: str, model: Path, port: int = 0) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", _SANDBOXED_CHILD, mode, str(model), str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


needs_seccomp = pytest.mark.skipif(
    ctypes.util.find_library("seccomp") is None or not sys.platform.startswith("linux"),
    reason="libseccomp not available",
)


@needs_seccomp
def test_memory_deny_write_execute_decision(tmp_path: Path, unit) -> None:
    """onnxruntime runs under MemoryDenyWriteExecute=, but cffi callbacks (sounddevice's
    callback streams) need W+X memory. The unit may only set it once that is no longer so."""
    model = tmp_path / "tiny.onnx"
    _tiny_model(model)
    out = _run_sandboxed("mdwe", model)
    assert "ort (1, 5)" in out and "soxr (16000,)" in out
    if "cffi-callback blocked" in out:
        assert "MemoryDenyWriteExecute" not in unit["Service"], (
            "MemoryDenyWriteExecute= would break sounddevice callback streams (cffi W+X)"
        )
    else:
        assert "cffi-callback ok" in out


@needs_seccomp
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_daemon_dependencies_run_under_system_service_filter(tmp_path: Path) -> None:
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in listing.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.split()[0], [])
        elif line.strip() and not line.strip().startswith("#") and current is not None:
            current.append(line.strip())

    def expand(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
        out: set[str] = set()
        for item in groups[name]:
            if item.startswith("@"):
                if item not in seen:
                    out |= expand(item, seen | {name})
            else:
                out.add(item)
        return out

    allowed = tmp_path / "allowed.txt"
    allowed.write_text("\n".join(sorted(expand("@system-service"))))
    model = tmp_path / "tiny.onnx"
    _tiny_model(model)

    broker = None
    port = 0
    if shutil.which("mosquitto"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        conf = tmp_path / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        broker = subprocess.Popen(
            ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
    try:
        out = _run_sandboxed(str(allowed), model, port)
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(5)
    assert "ort (1, 5)" in out and "soxr (16000,)" in out and "portaudio True True" in out
    if port:
        assert "mqtt True" in out


def _ensure_venv(venv: Path) -> subprocess.CompletedProcess[str]:
    script = f". {ROOT / 'scripts' / 'system.sh'} && ensure_venv {venv}"
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # python3 = this one
    # A bare environment: no PYTHONPATH or the like from the test run may lend the venv a
    # pip it does not have.
    env = {"PATH": path, "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120
    )


def _venv_runs(venv: Path, *args: str) -> bool:
    return (
        subprocess.run(
            [str(venv / "bin" / "python"), *args],
            env={"PATH": os.environ["PATH"]},
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )


def _site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def test_a_venv_without_pip_gets_pip_and_keeps_its_packages(tmp_path: Path) -> None:
    """Made before python3-venv was installed, or by `uv venv`, a venv has a python but no
    pip, and `[ -x .venv/bin/python ]` kept it for good. scripts/system.sh adds pip to it;
    making it again would throw away what the user installed there."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (_site_packages(venv) / "users_own_module.py").write_text("WHO = 'mine'\n")
    assert not _venv_runs(venv, "-m", "pip", "--version")  # the pip-less venv this test needs
    first = _ensure_venv(venv)
    assert first.returncode == 0, first.stderr
    assert "added pip" in first.stdout and "making" not in first.stdout, first.stdout
    assert _venv_runs(venv, "-m", "pip", "--version")
    assert _venv_runs(venv, "-c", "import users_own_module")
    cfg = (venv / "pyvenv.cfg").stat().st_mtime_ns
    again = _ensure_venv(venv)  # a good venv is left alone
    assert again.returncode == 0 and again.stdout == ""
    assert (venv / "pyvenv.cfg").stat().st_mtime_ns == cfg


def test_a_venv_from_another_python_is_made_again(tmp_path: Path) -> None:
    """After a Debian release upgrade a venv's packages belong to the old Python and are not
    found: that venv is made again for the Python the system has now."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (_site_packages(venv) / "old_module.py").write_text("")
    # Stands in for the interpreter of the release before: it answers as Python 3.9.
    old = venv / "bin" / "python"
    old.unlink()
    old.write_text("#!/bin/sh\necho '(3, 9)'\n")
    old.chmod(0o755)
    made = _ensure_venv(venv)
    assert made.returncode == 0, made.stderr
    assert "making" in made.stdout and "(3, 9) ->" in made.stdout, made.stdout
    assert _venv_runs(venv, "-m", "pip", "--version")
    assert not _venv_runs(venv, "-c", "import old_module")


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None, reason="needs root and runuser"
)
def test_a_kept_rules_file_the_service_cannot_read_is_given_to_its_group() -> None:
    """An upgrade keeps /etc/claudio/rules.yaml; one made 0600 by root's umask would stop
    the daemon at every start. The install script lets the service user's group read it."""
    folder = Path(tempfile.mkdtemp(prefix="claudio-perm-"))  # not under pytest's 0700 tmp
    try:
        folder.chmod(0o755)
        rules = folder / "rules.yaml"
        rules.write_text("triggers: []\n")
        rules.chmod(0o600)
        user = "nobody"
        group = grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name

        def let_read() -> str:
            script = f". {ROOT / 'scripts' / 'system.sh'} && let_service_read {rules} {user}"
            done = subprocess.run(
                ["bash", "-c", script], capture_output=True, text=True, timeout=30
            )
            assert done.returncode == 0, done.stderr
            return done.stdout

        said = let_read()
        assert f"now group {group}" in said, said
        st = rules.stat()
        assert st.st_uid == 0 and grp.getgrgid(st.st_gid).gr_name == group
        assert stat.S_IMODE(st.st_mode) == 0o640  # the owner's bits kept, others still out
        as_user = subprocess.run(["runuser", "-u", user, "--", "cat", str(rules)], timeout=30)
        assert as_user.returncode == 0
        assert let_read() == ""  # readable now: left alone
    finally:
        shutil.rmtree(folder)
