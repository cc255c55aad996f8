#!/usr/bin/env bash
# Installs a CPU Vulkan driver (Mesa lavapipe) so WebGPU (Dawn, the `webgpu` npm package) finds an
# adapter on machines without a GPU: CI and developer machines. Debian bookworm's own Mesa (22.3)
# lacks a feature Dawn requires, so the driver comes from bookworm-backports (Mesa 25.x).
# Idempotent and quiet. As root it runs apt-get itself (containers often have no sudo); as a user it
# runs itself again through sudo. PDVM_VULKAN_FORCE=1 skips the "already installed" check (tests).
# Afterwards run with
#   VK_ICD_FILENAMES=/usr/share/vulkan/icd.d/lvp_icd.json
# (the WebGPU backend sets it itself in Node when it is unset and this file exists).
set -euo pipefail

ICD=/usr/share/vulkan/icd.d/lvp_icd.json
if [ -z "${PDVM_VULKAN_FORCE:-}" ] && [ -f "$ICD" ] && ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  # apt-get needs root: through sudo where there is one
  if command -v sudo >/dev/null 2>&1; then
    exec sudo --preserve-env=PDVM_VULKAN_FORCE bash "$0" "$@"
  fi
  echo "install-vulkan.sh: apt-get needs root and there is no sudo here; run this script as root" >&2
  exit 1
fi
. /etc/os-release
if [ "${VERSION_CODENAME:-}" != "bookworm" ]; then
  echo "install-vulkan.sh: expected Debian bookworm, found ${PRETTY_NAME:-unknown}; install Mesa >= 24 (mesa-vulkan-drivers) yourself" >&2
  exit 1
fi

# Add bookworm-backports from the same mirror as the main suite.
MIRROR=http://deb.debian.org/debian
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  found=$(awk '/^URIs:/ && $2 ~ /debian\/?$/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  [ -n "$found" ] && MIRROR=$found
elif [ -f /etc/apt/sources.list ]; then
  found=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list)
  [ -n "$found" ] && MIRROR=$found
fi
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  cat > /etc/apt/sources.list.d/bookworm-backports.sources <<SRC
Types: deb
URIs: $MIRROR
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null
if [ ! -f "$ICD" ]; then
  echo "install-vulkan.sh: mesa-vulkan-drivers installed but $ICD is missing" >&2
  exit 1
fi
echo "install-vulkan.sh: lavapipe installed ($ICD)"
