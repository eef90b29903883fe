"""Which kernel headers bcc compiles against.

bcc needs a kernel build tree even though vmtrace reads every kernel struct at BTF offsets:
its BPF C includes the usual kernel headers. When the running kernel has none (custom or cloud
kernels), Debian's generic headers of another version do, once the -amd64 and -common halves
are merged into one tree that BCC_KERNEL_SOURCE can name.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass

from vmtrace.errors import EnvironmentProblem

DEFAULT_CACHE_DIR = "/var/cache/vmtrace/headers"

# uname -m -> Debian architecture flavour of linux-headers-*-FLAVOUR.
_DEBIAN_FLAVOURS = {"x86_64": "amd64", "aarch64": "arm64"}
# A generic Debian version ("6.1.0-56", "6.12.12+bpo"); this excludes -cloud, -rt and the like.
_GENERIC_VERSION = re.compile(r"\d+(\.\d+)*(-\d+)?(\+[0-9a-z.~]+)?")


@dataclass(frozen=True)
class HeadersChoice:
    """kernel_source: the value for BCC_KERNEL_SOURCE, or None to let bcc find the tree."""

    kernel_source: str | None
    description: str


def choose_headers(
    release: str | None = None,
    cache_dir: str = DEFAULT_CACHE_DIR,
    *,
    src_root: str = "/usr/src",
    modules_root: str = "/lib/modules",
    machine: str | None = None,
) -> HeadersChoice:
    """Pick the headers for bcc, building a merged generic tree under cache_dir if needed."""
    uname = os.uname()
    release = release if release is not None else uname.release
    machine = machine if machine is not None else uname.machine
    build = os.path.join(modules_root, release, "build")
    if os.path.isdir(build):
        return HeadersChoice(None, f"using the kernel's own headers at {build}")

    flavour = _DEBIAN_FLAVOURS.get(machine, machine)
    found = _newest_generic_tree(src_root, flavour)
    if found is None:
        raise EnvironmentProblem(
            f"failed to find kernel headers for bcc: none for {release} and no generic tree "
            f"under {src_root} (fix: apt-get install linux-headers-{flavour})"
        )
    version, arch_tree, common_tree = found
    name = f"linux-headers-{version}"
    merged = _merged_tree(cache_dir, name, arch_tree, common_tree)
    return HeadersChoice(
        merged,
        f"no headers for {release}; using Debian's {version} generic headers merged at "
        f"{merged} (struct layouts come from BTF)",
    )


def _version_key(version: str) -> tuple[tuple[int, ...], str]:
    return tuple(int(n) for n in re.findall(r"\d+", version)), version


def _newest_generic_tree(src_root: str, flavour: str) -> tuple[str, str, str] | None:
    try:
        entries = os.listdir(src_root)
    except OSError:
        return None
    prefix, suffix = "linux-headers-", f"-{flavour}"
    candidates = []
    for entry in entries:
        if not (entry.startswith(prefix) and entry.endswith(suffix)):
            continue
        version = entry[len(prefix) : -len(suffix)]
        if not _GENERIC_VERSION.fullmatch(version):
            continue
        arch_tree = os.path.join(src_root, entry)
        common_tree = os.path.join(src_root, f"{prefix}{version}-common")
        # Either half alone does not compile: -amd64 has the generated headers and .config,
        # -common the bulk of include/ and arch/.
        if os.path.isdir(arch_tree) and os.path.isdir(common_tree):
            candidates.append((version, arch_tree, common_tree))
    if not candidates:
        return None
    return max(candidates, key=lambda c: _version_key(c[0]))


def _merged_tree(cache_dir: str, name: str, arch_tree: str, common_tree: str) -> str:
    target = os.path.join(cache_dir, name)
    # Debian never changes the files of an installed version, so an existing farm stays valid.
    if os.path.isdir(target):
        return target
    try:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{name}.", dir=cache_dir)
    except OSError as e:
        raise EnvironmentProblem(
            f"failed to prepare kernel headers for bcc: cannot create {cache_dir}: "
            f"{e.strerror or e} (fix: run as root, or make it writable)"
        ) from e
    try:
        os.chmod(tmp, 0o755)
        _merge(tmp, arch_tree, common_tree)
        try:
            # Built aside and renamed, so bcc never sees a half-made tree, even with
            # several vmtrace processes starting at once.
            os.rename(tmp, target)
        except OSError:
            if not os.path.isdir(target):
                raise
            # Another process won the race; its tree is as good as ours.
    except OSError as e:
        raise EnvironmentProblem(
            f"failed to prepare kernel headers for bcc: cannot build {target}: {e.strerror or e}"
        ) from e
    finally:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _is_real_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.path.islink(path)


def _merge(dst: str, arch_tree: str, common_tree: str) -> None:
    """Symlink farm: the -amd64 entry wins, directories present in both are merged."""
    names = set(_listdir(arch_tree)) | set(_listdir(common_tree))
    for entry in sorted(names):
        a = os.path.join(arch_tree, entry)
        c = os.path.join(common_tree, entry)
        d = os.path.join(dst, entry)
        if _is_real_dir(a) and _is_real_dir(c):
            os.mkdir(d)
            _merge(d, a, c)
        else:
            # Link to the entry itself (not its target) so that Debian's relative links,
            # such as scripts -> ../../lib/linux-kbuild-6.1/scripts, keep resolving.
            os.symlink(a if os.path.lexists(a) else c, d)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []
