#!/usr/bin/env python3
"""Deploy edgeconv to a device over SSH: code, model, install, self-test, optional service.

  python devices/deploy.py --host USER@HOST [--model FILE] [--profile NAME]
                           [--service [camera|serve]] [--listen HOST:PORT]

Copies runtime/ and devices/ (rsync when both ends have it, else tar over ssh) beside the old
ones and swaps them in by rename, copies the model beside the current one, runs
devices/install.sh on the device with it, and renames it into place only when its self-test
passed: the model's golden outputs on the device's engine, and the bundled photo getting the
label it gets here (a running service never sees half a file, half the code, or a model that
failed). Host keys are checked as ssh always does; --accept-new-host-key is the
explicit way to trust a device seen for the first time.
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from edgeconv.runtime.kinds import SUFFIXES
from edgeconv.runtime.metadata import ModelFileError, read_metadata
from edgeconv.runtime.text import command_name, display

ROOT = Path(__file__).resolve().parents[1]

SELFTEST_PHOTO = ROOT / "devices" / "selftest" / "cat.jpg"
SHIPPED_MODEL = ROOT / "models" / "plus_int8.tflite"


class DeployError(Exception):
    """A failed step: its name and what the device said."""


class Remote:
    def __init__(self, args: argparse.Namespace):
        self.host, self.dir = args.host, args.remote_dir
        self.options = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={args.timeout}",
                        "-o", "StrictHostKeyChecking="
                        + ("accept-new" if args.accept_new_host_key else "yes")]
        if args.identity:
            self.options += ["-i", str(args.identity), "-o", "IdentitiesOnly=yes"]
        if args.known_hosts:
            self.options += ["-o", f"UserKnownHostsFile={args.known_hosts}"]
        self.port = str(args.port)

    def ssh(self, script: str, *args: str, step: str, data: bytes | None = None,
            stream: bool = False) -> str:
        """Run the sh `script` on the device with `args` as $1, $2... (feeding it `data`); its
        output, or DeployError. ssh hands the device's shell one string: the script and every
        argument go in it quoted, so no value is ever read as shell syntax there."""
        command = " ".join(["sh", "-c", shlex.quote(script), "sh", *map(shlex.quote, args)])
        argv = ["ssh", "-p", self.port, *self.options, self.host, command]
        if not stream:
            result = subprocess.run(argv, input=data, capture_output=True,
                                    stdin=None if data is not None else subprocess.DEVNULL)
            if result.returncode != 0:
                raise DeployError(f"{step} failed on {self.host}:\n{_text(result.stderr)}")
            for line in _text(result.stderr).splitlines():  # notes, e.g. from swap_code.sh
                print(f"  {self.host}: {line}", file=sys.stderr, flush=True)
            return _text(result.stdout)
        lines = []
        with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) as process:
            for line in process.stdout:
                lines.append(line)
                print(f"  {self.host}: {line.rstrip()}", flush=True)
        if process.returncode != 0:
            raise DeployError(f"{step} failed on {self.host} (exit {process.returncode})")
        return "".join(lines)

    def copy_code(self, use_rsync: bool) -> str:
        """Unpack runtime/ and devices/ beside the old ones, then swap them in by rename
        (devices/swap_code.sh): a failure at any point leaves the old code running."""
        if use_rsync:
            stage = f"{self.dir}/.incoming-code.rsync"
            shell = " ".join(["ssh", "-p", self.port, *map(shlex.quote, self.options)])
            # --protect-args: the device's shell never parses the path; --link-dest: files
            # that did not change are hard links to the running ones, not copies.
            command = ["rsync", "-a", "--delete", "--protect-args", "--exclude", "__pycache__",
                       "--link-dest", "..", "-e", shell, "runtime", "devices",
                       f"{self.host}:{stage}/"]
            result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
            if result.returncode != 0:
                raise DeployError(f"copying the code failed:\n{result.stderr.strip()}")
            self.ssh('exec sh "$2/devices/swap_code.sh" "$1" "$2"', self.dir, stage,
                     step="swapping in the code")
            return "rsync"
        archive = subprocess.run(["tar", "czf", "-", "--exclude", "__pycache__", "runtime",
                                  "devices"], cwd=ROOT, capture_output=True, check=True).stdout
        self.ssh('stage=$(mktemp -d "$1/.incoming-code.XXXXXX") || exit 1\n'
                 'tar xzf - -C "$stage" || { rm -rf -- "$stage"; exit 1; }\n'
                 'exec sh "$stage/devices/swap_code.sh" "$1" "$stage"',
                 self.dir, step="copying the code", data=archive)
        return "tar over ssh"

    def copy_model(self, model: Path) -> str:
        """Upload beside the current model as models/candidate.SUFFIX: to a temporary name,
        digest checked, then renamed. A connection cut mid-upload ends `cat` as if the file
        had ended, so only the digest tells a whole upload from a truncated one."""
        suffix = model.suffix.lower()
        data = model.read_bytes()
        self.ssh('incoming="$1/models/.incoming$2" final="$1/models/candidate$2"\n'
                 'if cat > "$incoming" && [ "$(sha256sum < "$incoming")" = "$3  -" ]; then\n'
                 '  mv -f -- "$incoming" "$final"\n'
                 'else\n'
                 '  rm -f -- "$incoming"\n'
                 '  echo "upload incomplete: the model on the device is unchanged" >&2; exit 1\n'
                 'fi', self.dir, suffix, hashlib.sha256(data).hexdigest(),
                 step="copying the model", data=data)
        return f"{self.dir}/models/candidate{suffix}"

    def promote(self, candidate: str) -> str:
        """The self-tested candidate becomes models/current.SUFFIX, by rename."""
        current = candidate.replace("/models/candidate", "/models/current")
        self.ssh('mv -f -- "$1" "$2"', candidate, current, step="switching the model")
        return current

    def discard(self, candidate: str) -> None:
        self.ssh('rm -f -- "$1"', candidate, step="removing the refused model")


def _text(data) -> str:
    return (data.decode(errors="replace") if isinstance(data, bytes) else data or "").strip()


def expected_label(model: Path) -> str | None:
    """The label this machine gives the self-test photo, when it has an engine for the model."""
    try:
        from edgeconv.runtime.classifier import Classifier

        return Classifier(model).predict(SELFTEST_PHOTO).label
    except Exception as error:  # no local engine: the device still checks it classifies
        print(f"note: cannot classify here ({error}); the self-test will not compare labels")
        return None


def deploy(args: argparse.Namespace) -> str:
    try:
        metadata = read_metadata(args.model)
    except ModelFileError as error:
        raise DeployError(str(error)) from None
    expect = expected_label(args.model)
    remote = Remote(args)
    remote_tools = remote.ssh('mkdir -p -- "$1/models" && { command -v rsync || true; }',
                              args.remote_dir, step="connecting")
    use_rsync = not args.no_rsync and bool(shutil.which("rsync")) and "rsync" in remote_tools
    print(f"connected to {args.host}; copying code ({'rsync' if use_rsync else 'tar'})")
    remote.copy_code(use_rsync)
    candidate = remote.copy_model(args.model)
    labels = metadata.get("labels") if isinstance(metadata.get("labels"), list) else []
    print(display(f"model {args.model.name} ({', '.join(map(str, labels))}, "
                  f"{metadata.get('quantization')}) -> {args.host}:{candidate}"))
    install = [f"{args.remote_dir}/devices/install.sh", "--profile", args.profile,
               "--venv", f"{args.remote_dir}/.venv"]
    if expect:
        install += ["--expect", expect]
    try:  # the candidate goes live only once its self-test (golden outputs, photo) passed
        output = remote.ssh('exec bash "$@"', *install, "--model", candidate, step="install.sh",
                            stream=True)
    except DeployError as error:
        remote.discard(candidate)
        raise DeployError(f"{error}; the device keeps its previous model") from None
    current = remote.promote(candidate)
    if args.service:
        output = remote.ssh('exec bash "$@"', *install, "--model", current, "--service",
                            args.service, "--listen", args.listen, step="install.sh --service",
                            stream=True)
    passed = [line for line in output.splitlines() if "self-test passed" in line]
    return passed[-1].split("install: ", 1)[-1] if passed else "installed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=command_name("devices/deploy.py"), description=__doc__.split(
        "\n\n")[0].strip(), epilog=f"Example: {command_name('python devices/deploy.py')} "
        "--host pi@raspberrypi.local"
        " --model runs/augmented/model_int8.tflite --profile raspberry-pi-5 --service")
    parser.add_argument("--host", required=True, help="USER@HOST of the device")
    parser.add_argument("--port", type=int, default=22, help="SSH port (default: 22)")
    parser.add_argument("--identity", type=Path, help="SSH private key")
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL,
                        help=".tflite or .onnx to deploy (default: the shipped plus model, "
                        "models/plus_int8.tflite)")
    parser.add_argument("--profile", default="auto", help="device profile (default: detected "
                        "on the device)")
    parser.add_argument("--service", nargs="?", const="camera", choices=("camera", "serve"),
                        help="install and (re)start a systemd service: camera (default: "
                        "classify --camera to the journal) or serve (the preview page and API)")
    parser.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                        help="where the serve service listens (default: %(default)s; "
                        "0.0.0.0:8080 for the network, with a token)")
    parser.add_argument("--remote-dir", default="edgeconv",
                        help="folder on the device, relative to the user's home (default: "
                        "%(default)s)")
    parser.add_argument("--accept-new-host-key", action="store_true",
                        help="trust the device's host key if ssh has never seen it")
    parser.add_argument("--known-hosts", type=Path, help="known_hosts file to use")
    parser.add_argument("--no-rsync", action="store_true", help="copy with tar over ssh")
    parser.add_argument("--timeout", type=int, default=10, help="connect timeout, seconds")
    args = parser.parse_args(argv)
    if args.host.startswith("-"):
        parser.error(f"--host {display(args.host)}: not USER@HOST")  # ssh would read an option
    if args.remote_dir.startswith("-"):
        args.remote_dir = f"./{args.remote_dir}"  # a path, never an option of mkdir or bash
    if args.model.suffix.lower() not in SUFFIXES:
        parser.error(f"{display(args.model)}: a model is a .tflite or .onnx file")
    if not args.model.is_file():
        parser.error(f"{display(args.model)}: model file not found")
    try:
        result = deploy(args)
    except DeployError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"deployed to {args.host}: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
