"""A device for the SSH tests: a real OpenSSH server on a loopback port, for a throwaway user.

`ssh_device("edgeconv-deploy")` creates the user (home in /var/tmp), a host key and a client
key, starts sshd on a free 127.0.0.1 port, and on exit ends every session that server
started, stops it and removes the user with its home, also when the test failed. Needs root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import free_port

SSHD = Path("/usr/sbin/sshd")


@dataclass(frozen=True)
class SSHDevice:
    user: str
    port: int
    home: Path
    identity: Path  # the client's private key
    host_key: tuple[str, str]  # the server's public key: type, base64

    def write(self, relative: str, text: str) -> Path:
        """Write a file in the user's home, owned by the user (as if they had written it)."""
        path = self.home / relative
        account = pwd.getpwnam(self.user)
        for folder in reversed(path.relative_to(self.home).parents[:-1]):
            (self.home / folder).mkdir(exist_ok=True)
            os.chown(self.home / folder, account.pw_uid, account.pw_gid)
        path.write_text(text)
        os.chown(path, account.pw_uid, account.pw_gid)
        return path


@contextmanager
def ssh_device(user: str) -> Iterator[SSHDevice]:
    if not SSHD.exists():
        pytest.fail("OpenSSH server not installed (.ci/run installs openssh-server)")
    if os.geteuid() != 0:
        pytest.fail("the SSH tests create throwaway users and need root")
    base = Path(tempfile.mkdtemp(prefix=f"{user}-ssh-", dir="/var/tmp"))
    home = Path("/var/tmp") / f"{user}-home"
    server = None
    try:
        remove_user(user, home)  # left over by a run that was killed
        subprocess.run(["useradd", "--create-home", "--home-dir", str(home), "--shell",
                        "/bin/bash", user], check=True)
        # No password, but not "locked" either: sshd without PAM refuses locked accounts.
        subprocess.run(["usermod", "--password", "*", user], check=True)
        for key in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(base / key)], check=True)
        device = SSHDevice(user, free_port(), home, base / "client_key",
                           tuple((base / "host_key.pub").read_text().split()[:2]))
        device.write(".ssh/authorized_keys", (base / "client_key.pub").read_text())
        os.chmod(home / ".ssh", 0o700)
        os.chmod(home / ".ssh" / "authorized_keys", 0o600)
        config = base / "sshd_config"
        config.write_text(f"Port {device.port}\nListenAddress 127.0.0.1\n"
                          f"HostKey {base / 'host_key'}\nPidFile {base / 'sshd.pid'}\n"
                          "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                          f"UsePAM no\nPermitRootLogin no\nAllowUsers {user}\n"
                          "AuthorizedKeysFile .ssh/authorized_keys\n"
                          "Subsystem sftp internal-sftp\n")
        Path("/run/sshd").mkdir(exist_ok=True)
        # Its log goes to a file: a pipe nobody reads would stall it once full.
        server = subprocess.Popen([str(SSHD), "-D", "-E", str(base / "sshd.log"), "-f",
                                   str(config)], stdin=subprocess.DEVNULL)
        wait_for_port(device.port, server, base / "sshd.log")
        yield device
    finally:
        if server is not None:
            stop_server(server)
        remove_user(user, home)
        shutil.rmtree(base, ignore_errors=True)


def wait_for_port(port: int, server: subprocess.Popen, log: Path, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"sshd exited: {log.read_text() if log.exists() else ''}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    pytest.fail(f"sshd did not listen on port {port} within {seconds} s")


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (its sessions and what they run), children first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except OSError:  # it ended while we looked
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))

    def below(parent: int) -> list[int]:
        return [pid for child in children.get(parent, []) for pid in [*below(child), child]]

    return below(pid)


def stop_server(server: subprocess.Popen) -> None:
    """End the sessions the server started (ssh masters left open by clients included), then
    the server itself: a session outliving it would keep its user from being removed."""
    for pid in descendants(server.pid):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def remove_user(user: str, home: Path) -> None:
    try:
        pwd.getpwnam(user)
    except KeyError:
        pass
    else:
        subprocess.run(["userdel", "--remove", user], capture_output=True)  # and its home
    shutil.rmtree(home, ignore_errors=True)
