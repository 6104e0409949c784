#!/usr/bin/env bash
# Install edgeconv's runtime on this device and prove it works.
#
#   devices/install.sh [--profile NAME|auto] [--model FILE] [--expect LABEL] [--venv DIR]
#                      [--service [camera|serve]] [--listen HOST:PORT] [--user NAME]
#                      [--no-apt] [--render-unit FILE]
#
# Detects the architecture and OS, creates a virtual environment holding only what the
# profile's runtime needs (numpy, Pillow, one engine: ONNX Runtime for an .onnx model, else the
# profile's TFLite engine; picamera2 comes from apt on Raspberry Pi OS), then classifies the
# bundled photo with the model as a self-test, after the golden outputs stored in the model
# (a device whose engine computes something else refuses the model). Safe to re-run.
# --model defaults to the shipped plus model (models/plus_int8.tflite) in a clone.
# --service installs and starts edgeconv-camera.service (classify --camera, lines to the
# journal) or, with "serve", edgeconv-serve.service (the preview page and HTTP API on
# --listen, default 127.0.0.1:8080); --render-unit FILE only writes that unit to FILE (nothing
# installed). --profile auto: the profile whose profile.json fits this board and architecture.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
profile=auto model="" expect="" venv="$root/.venv" service="" user="${SUDO_USER:-$(id -un)}"
apt=1 render="" listen="127.0.0.1:8080" unit_kind=camera
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    --expect) expect="$2"; shift 2 ;;
    --venv) venv="$2"; shift 2 ;;
    --service)
      service=camera
      case "${2:-}" in camera|serve) service="$2"; shift ;; esac
      unit_kind="$service"; shift ;;
    --listen) listen="$2"; shift 2 ;;
    --user) user="$2"; shift 2 ;;
    --no-apt) apt=0; shift ;;
    --render-unit) render="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

[ -n "$model" ] || [ ! -f "$root/models/plus_int8.tflite" ] || model="$root/models/plus_int8.tflite"
venv="$(realpath -ms -- "$venv")"  # the unit's ExecStart needs an absolute path
say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

command -v python3 >/dev/null || die "python3 not found (sudo apt install python3 python3-venv)"
arch="$(uname -m)"
os="$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-unknown}" || echo unknown)"
board=""; [ -r /proc/device-tree/model ] && board="$(tr -d '\0' < /proc/device-tree/model)"
if [ "$profile" = auto ]; then  # -I: the standard library only, no Pillow needed yet
  profile="$(python3 -I "$root/runtime/profiles.py")" || die "cannot detect the profile; pass --profile"
fi
case "$profile" in */*|.*|"") die "unknown profile '$profile' (see $here/*/profile.json)" ;; esac
profile_file="$here/$profile/profile.json"
[ -f "$profile_file" ] || die "unknown profile '$profile' (see $here/*/profile.json)"
field() { python3 -I -c "import json,sys; v=json.load(open(sys.argv[1]))[sys.argv[2]]; print(' '.join(v) if isinstance(v, list) else v)" "$profile_file" "$1"; }
say "device: $arch, $os${board:+, $board}; profile $profile"
case " $(field arch) " in
  *" $arch "*) ;;
  *) say "warning: profile $profile is meant for $(field arch), this is $arch" ;;
esac

case "$listen" in
  *:*) ;;
  *) die "--listen takes HOST:PORT, e.g. 0.0.0.0:8080" ;;
esac
render_unit() {  # the unit with this install's paths, user, model, profile and address
  python3 -I "$here/render_unit.py" "$here/edgeconv-$unit_kind.service" "$1" \
    "ROOT=$root" "VENV=$venv" "USER=$user" "MODEL=$(realpath -ms -- "$model")" \
    "PROFILE=$profile" "HOST=${listen%:*}" "PORT=${listen##*:}" || die "cannot render the unit"
}
if [ -n "$render" ]; then  # only the unit: nothing installed, nothing started
  [ -n "$model" ] || die "--render-unit needs --model"
  [ -f "$model" ] || die "model $model not found"
  render_unit "$render"
  say "unit written to $render"
  exit 0
fi

if [ "$apt" = 1 ] && [ -n "$(field apt)" ] && [ -n "$board" ]; then
  say "system packages: $(field apt)"
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get install -y -q $(field apt) >/dev/null
fi

site=""; [ "$(field system_site_packages)" = True ] && site="--system-site-packages"
if [ ! -x "$venv/bin/python" ]; then
  say "virtual environment: $venv ${site:+(with system packages, for picamera2)}"
  python3 -m venv $site "$venv"
else
  say "virtual environment: $venv (reused)"
fi
read -r -a packages <<< "$(field pip)"
if [ -n "$model" ]; then  # the model's kind's engine, if the profile's list lacks it
  extra="$(python3 -I "$root/runtime/kinds.py" "$model" "$profile_file" 2>&1)" ||
    die "${extra#error: }"
  read -r -a extra_packages <<< "$extra"
  packages+=("${extra_packages[@]}")
fi
say "python packages: ${packages[*]}"
installed="$("$venv/bin/pip" install --disable-pip-version-check "${packages[@]}" |
             sed -n 's/^Successfully installed //p')"
[ -z "$installed" ] || say "python packages installed: $installed"
# The code's import name, edgeconv (edgeconv.runtime, edgeconv.devices), without installing the
# project: a package in the venv whose runtime/ and devices/ are links to this clone's folders.
# deploy.py and the fleet swap those folders by rename, so the links follow a code update and
# its rollback.
"$venv/bin/python" -I "$here/link_package.py" "$root" || die "cannot link the edgeconv package"

if [ -n "$model" ]; then
  [ -f "$model" ] || die "model $model not found"
  say "self-test: classifying devices/selftest/cat.jpg with $model"
  errors="$(mktemp)"
  # --self-test first runs the model's golden inputs (runtime/golden.py) on this engine.
  status=0
  result="$("$venv/bin/python" "$root/runtime/classify" "$model" "$here/selftest/cat.jpg" \
            --self-test --profile "$profile" --json 2>"$errors")" || status=$?
  last="$(tail -n 1 "$errors" | sed 's/^error: //')"
  golden="$(grep -m 1 -e '^golden self-test' -e 'carries no golden' "$errors" || true)"
  rm -f "$errors"
  case "$status:$last" in
    0:*) ;;
    *:"golden self-test FAILED"*) die "self-test failed: $last" ;;
    *) die "self-test could not classify: $last" ;;
  esac
  say "${golden:-golden self-test: no answer}"
  label="$(printf '%s' "$result" | "$venv/bin/python" -c 'import json,sys; print(json.loads(sys.stdin.readline())["label"])')"
  if [ -n "$expect" ] && [ "$label" != "$expect" ]; then
    die "self-test failed: got '$label', expected '$expect'"
  fi
  say "self-test passed: $label${expect:+ (expected $expect)}"
fi

if [ -n "$service" ]; then
  [ -n "$model" ] || die "--service needs --model"
  unit=/etc/systemd/system/edgeconv-$service.service
  rendered="$(mktemp)"
  render_unit "$rendered"
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd install -m 644 "$rendered" "$unit"
  rm -f "$rendered"
  $sudo_cmd systemctl daemon-reload
  $sudo_cmd systemctl enable --now "edgeconv-$service.service"
  $sudo_cmd systemctl restart "edgeconv-$service.service"
  say "service: edgeconv-$service enabled (journalctl -u edgeconv-$service -f)"
  if [ "$service" = serve ]; then
    say "page: http://$listen/ (token, off loopback: ~$user/.config/edgeconv/token)"
  fi
fi
say "done: $root/runtime/classify MODEL --profile $profile --camera"
