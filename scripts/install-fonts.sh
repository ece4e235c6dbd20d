#!/usr/bin/env bash
# Installs the free Debian fonts the drawtext simulator draws digits and characters with.
# Handwriting fonts give PE styles close to handwritten data (Sim-PE draws from thousands of
# fonts). Without root or apt-get, drawtext still runs on the fonts matplotlib ships.
set -euo pipefail
packages=(
  fonts-dejavu-core fonts-freefont-ttf fonts-liberation2 fonts-comic-neue
  fonts-dkg-handwriting fonts-breip fonts-bwht fonts-dancingscript fonts-femkeklaver
  fonts-humor-sans fonts-klee fonts-rufscript fonts-leckerli-one fonts-sjfonts
  fonts-yusei-magic fonts-seto
)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "fonts: not installing ${missing[*]} (needs root and apt-get);" \
       "drawtext will use the fonts it finds (fewer styles, lower fidelity)" >&2
  exit 0
fi
echo "fonts: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
