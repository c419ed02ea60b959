#!/bin/bash
# The runtime Dockerfile's `ros2` stage: Cyclone DDS 0.10 and its Python binding for the target platform.
#   ros2-stage.sh prepare   what to build against: ROS 2's Cyclone DDS in the base (/opt/ros/DISTRO), else the
#                           Debian packages in /ros2/debs-$TARGETARCH; /tmp/dds-home is the prefix the sdist's
#                           setup.py looks for (include/, bin/, lib/libddsc.so), /out/root what the runtime
#                           image needs of it (nothing when the base has ROS 2's own)
#   ros2-stage.sh wheel     the binding (/ros2/src/cyclonedds-$CYCLONEDDS_PY.tar.gz), compiled by the base's own
#                           Python against it, into /out/wheels
set -euo pipefail

prepare() {
  mkdir -p /out/root
  local d lib f g
  for d in /opt/ros/*/; do
    if [ -e "${d}lib/libddsc.so" ]; then
      ln -s "${d%/}" /tmp/dds-home
      echo "ros2 stage: ROS 2's Cyclone DDS in $d"
      return 0
    fi
  done
  if ! compgen -G "/ros2/debs-${TARGETARCH}/*.deb" >/dev/null; then
    echo "ros2 stage: no Cyclone DDS in the base and no packages in ros2-sources/debs-${TARGETARCH} (run scripts/host-setup)" >&2
    exit 1
  fi
  find / -xdev -name '*.so*' \( -type f -o -type l \) 2>/dev/null | sort >/tmp/libs-before
  dpkg -i /ros2/debs-"${TARGETARCH}"/*.deb >/tmp/dpkg.log 2>&1 || { tail -n 20 /tmp/dpkg.log >&2; exit 1; }
  lib=$(dirname "$(readlink -f "$(find /usr/lib -name libddsc.so | head -n 1)")")
  mkdir /tmp/dds-home
  ln -s /usr/include /tmp/dds-home/include
  ln -s /usr/bin /tmp/dds-home/bin
  ln -s "$lib" /tmp/dds-home/lib
  # libddsc (with the unversioned name the binding's loader opens) and what it links that the base lacks, by
  # canonical path (/lib is /usr/lib on a merged-/usr base): the link's own name and its target
  for f in $( (ls "$lib"/libddsc.so*; ldd "$(readlink -f "$lib/libddsc.so")" | awk '$3 ~ /^\// {print $3}') | sort -u); do
    for g in "$(readlink -f "$(dirname "$f")")/$(basename "$f")" "$(readlink -f "$f")"; do
      if ! grep -qxF "$g" /tmp/libs-before; then
        mkdir -p "/out/root$(dirname "$g")"
        cp -a "$g" "/out/root$g"
      fi
    done
  done
  echo "ros2 stage: Debian's Cyclone DDS $(dpkg-query -W -f '${Version}' libddsc0debian); shipping:" \
    "$(cd /out/root && find . -name '*.so*' | sort | tr '\n' ' ')"
}

wheel() {
  local pip_whl
  python3 -m venv --without-pip /tmp/bv
  pip_whl=$(printf '%s\n' /ros2/src/pip-*.whl | sort -V | tail -n 1)
  /tmp/bv/bin/python "$pip_whl/pip" install -q --no-index --find-links /ros2/src setuptools wheel
  # Built in a fixed folder: pip's own build folder has a random name, which the compiled modules record
  # (their debug paths), and so two builds of one commit would give two wheels.
  mkdir -p /tmp/cyclonedds-src
  tar -xzf "/ros2/src/cyclonedds-${CYCLONEDDS_PY}.tar.gz" -C /tmp/cyclonedds-src --strip-components=1
  CYCLONEDDS_HOME=/tmp/dds-home /tmp/bv/bin/python "$pip_whl/pip" wheel -q --no-index --no-deps --no-build-isolation \
    -w /out/wheels /tmp/cyclonedds-src
  ls -l /out/wheels
}

case "${1:-}" in
  prepare) prepare ;;
  wheel) wheel ;;
  *) echo "usage: ros2-stage.sh prepare|wheel" >&2; exit 2 ;;
esac
