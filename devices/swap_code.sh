#!/bin/sh
# Swap a staged code tree into place on a device: sh STAGE/devices/swap_code.sh DIR STAGE
#
# STAGE (beside DIR's runtime/ and devices/, on the same filesystem) holds the new runtime/
# and devices/. Each old folder is renamed aside and the new one renamed in; if a rename fails,
# the old folders are put back, so a failed update leaves the old code running. The old trees
# are removed last, and a file there that cannot be removed (a root-owned __pycache__ from a
# `sudo runtime/classify`) is reported, never fatal: the code in use is already the new one.
# deploy.py and the fleet role both run it, from the tree they have just unpacked.
set -u
dir=$1 stage=$2
stamp=$(date +%s).$$
swapped=""

restore() {
  for part in $swapped; do
    mv -- "$dir/$part" "$stage/$part" && mv -- "$dir/.old-$part.$stamp" "$dir/$part"
  done
  echo "swap_code: could not swap in the new code; the old code stays" >&2
  exit 1
}

for part in runtime devices; do
  [ -d "$stage/$part" ] || { echo "swap_code: $stage/$part missing" >&2; restore; }
done
for part in runtime devices; do
  if [ -e "$dir/$part" ]; then
    mv -- "$dir/$part" "$dir/.old-$part.$stamp" || restore
    mv -- "$stage/$part" "$dir/$part" || { mv -- "$dir/.old-$part.$stamp" "$dir/$part"; restore; }
    swapped="$swapped $part"
  else
    mv -- "$stage/$part" "$dir/$part" || restore
  fi
done

# The old trees, this one's and any an earlier run could not remove; stale staging folders.
for leftover in "$stage" "$dir"/.old-runtime.* "$dir"/.old-devices.* "$dir"/.incoming-code.*; do
  [ -e "$leftover" ] || continue
  rm -rf -- "$leftover" 2>/dev/null ||
    echo "swap_code: note: could not remove all of $leftover (files owned by another user;" \
         "sudo rm -rf it); the new code is in place" >&2
done
exit 0
