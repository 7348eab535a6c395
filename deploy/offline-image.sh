# Builds a container image FROM scratch out of executables on this machine,
# for machines that cannot reach a registry (no base image can be pulled).
# Sourced by deploy/nats-image.sh, deploy/image.sh and deploy/cluster.sh, not run.
#
#   build_offline_image TAG DOCKERFILE SRC:DEST...
#
# lays out a root file system in a temporary build context, rootfs/:
#   - each SRC executable at DEST;
#   - the shared libraries `ldd` says it needs and the dynamic loader, at the
#     paths ldd names (nothing for a static binary);
#   - /etc/ssl/certs/ca-certificates.crt (this machine's CA bundle);
#   - /etc/passwd and /etc/group with root and `nonroot` (65532:65532, as in
#     the distroless images), /etc/nsswitch.conf, and a sticky /tmp;
# and an empty directory, empty/, that a Dockerfile copies with
# `COPY --chown=65532:65532 empty/ /dir/` to get a directory a non-root user
# may write. DOCKERFILE then says what the image runs (`COPY rootfs/ /`, USER,
# ENTRYPOINT...). Only glibc machines are supported (ldd's output format).

NONROOT_UID=65532

# A subshell, so that its EXIT trap removes the context however the build ends.
build_offline_image() (
  set -euo pipefail
  local tag="$1" dockerfile="$2"
  shift 2
  local context
  context="$(mktemp -d)"
  trap 'rm -rf "$context"' EXIT
  local root="$context/rootfs"
  mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$context/empty"
  chmod 1777 "$root/tmp"
  local pair src dest
  for pair in "$@"; do
    src="${pair%%:*}"
    dest="${pair#*:}"
    install -D -m 0755 "$src" "$root$dest"
    copy_shared_libraries "$src" "$root"
  done
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/tmp:/sbin/nologin\n' \
    "$NONROOT_UID" "$NONROOT_UID" >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:%s:\n' "$NONROOT_UID" >"$root/etc/group"
  # glibc reads it for name look-ups (NATS server names in a cluster).
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
  cp "$dockerfile" "$context/Dockerfile"
  docker build --quiet -t "$tag" "$context" >/dev/null
)

# Copies what `ldd EXECUTABLE` lists into ROOT at the same paths, symbolic
# links resolved. ldd prints `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)`
# for each library and `/lib64/ld-linux-x86-64.so.2 (0x…)` for the loader; for
# a static binary it prints "not a dynamic executable" and exits 1.
copy_shared_libraries() {
  local executable="$1" root="$2" lib
  local libs
  libs="$(ldd "$executable" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')" || true
  for lib in $libs; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}
