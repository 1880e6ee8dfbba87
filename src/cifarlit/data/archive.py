"""CIFAR-10's release archive: downloaded, checked against the release's md5, and unpacked by cifarlit itself.

The archive is unpacked only when its md5 is the release's, and then not by ``tarfile``'s filters (which had holes,
CVE-2025-4517) but entry by entry: regular files and folders inside the target, at most
:data:`ARCHIVE_MAX_BYTES` and :data:`ARCHIVE_MAX_MEMBERS`, into a temporary folder renamed into place once whole,
so an interrupted extraction never leaves a half dataset that later runs would read.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import socket
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO, NoReturn

from cifarlit.data import DataError
from cifarlit.data.images import open_regular, reading
from cifarlit.data.pickles import PICKLE_DIR
from cifarlit.utils.files import owner

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MAX_BYTES = 256 * 2**20  # unpacked at most: CIFAR-10's archive unpacks to 178 MB (with its tar headers)
ARCHIVE_MAX_RATIO = 4  # unpacked bytes per archive byte, at most (+1 MB): CIFAR-10's pixels barely compress (1.05)
ARCHIVE_MAX_MEMBERS = 100  # CIFAR-10's holds 9: a folder, 7 batch files and a readme
EXTRACT_PREFIX = ".cifarlit-extract-"  # + host-pid: the archive is unpacked here, then moved into place
HOW_TO_GET_DATA = (
    f"put CIFAR-10's '{PICKLE_DIR}' folder (or '{ARCHIVE}') there, or an image folder laid out as "
    "ROOT/train/<class>/*.png|jpg and ROOT/test/<class>/*; the repository's README explains both"
)


def download(root: Path) -> None:
    """Download CIFAR-10's release into ``root`` (checked by its md5) and unpack it."""
    from torchvision.datasets.utils import download_url

    host = "www.cs.toronto.edu"
    try:  # fail in seconds rather than hang on a machine without internet
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as err:
        raise DataError(
            f"data.data_dir={str(root)!r} holds no dataset and {host} cannot be reached to download CIFAR-10 "
            f"({err.__class__.__name__}): {HOW_TO_GET_DATA}."
        ) from None
    root.mkdir(parents=True, exist_ok=True)
    download_url(CIFAR10_URL, str(root), ARCHIVE, CIFAR10_MD5)
    extract(root / ARCHIVE, root)


def extract(archive: Path, root: Path) -> None:
    """Unpack into a temporary folder next to the dataset, then move the finished folder into place: an
    interrupted extraction never leaves a half ``cifar-10-batches-py`` that later runs would read."""
    _check_md5(archive, root)
    tmp = root / f"{EXTRACT_PREFIX}{owner()}"
    try:
        try:
            size = archive.stat().st_size
            limit = min(ARCHIVE_MAX_BYTES, ARCHIVE_MAX_RATIO * size + 2**20)
            with open_regular(archive) as raw, reading(raw, size, "extracting") as f:
                with gzip.GzipFile(fileobj=f) as unzipped:  # type: ignore[arg-type]
                    # stream mode ("r|"): tarfile reads the bytes once, in order, through the counter
                    with tarfile.open(fileobj=_Capped(unzipped, limit, archive), mode="r|") as tar:
                        _unpack(tar, tmp, archive)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            raise DataError(
                f"{archive} is not a readable CIFAR-10 archive ({err}); delete it and download again."
            ) from None
        if not (tmp / PICKLE_DIR).is_dir():
            raise DataError(
                f"{archive} holds no '{PICKLE_DIR}' folder, so it is not CIFAR-10's python archive; delete it and "
                "download again."
            )
        _move_into_place(tmp / PICKLE_DIR, root / PICKLE_DIR)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_md5(archive: Path, root: Path) -> None:
    """Refuse an archive that is not CIFAR-10's release, as the download does, before anything is unpacked."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with open_regular(archive) as f:
            for block in iter(lambda: f.read(2**20), b""):
                digest.update(block)
    except OSError as err:
        raise DataError(f"{archive} cannot be read ({err}); delete it and download again.") from None
    if digest.hexdigest() != CIFAR10_MD5:
        raise DataError(
            f"{archive} is not CIFAR-10's release (its md5 is {digest.hexdigest()}, the release's {CIFAR10_MD5}), so "
            f"it was not unpacked: delete it so it is downloaded again, or, for an archive you packed yourself, "
            f"unpack it yourself and put its '{PICKLE_DIR}' folder in {root}."
        )


class _Capped:
    """A file's ``read`` that refuses to go past ``limit`` bytes: counted on the unpacked bytes, so a small
    archive that unpacks to gigabytes, or a header that lies about its size, stops there."""

    def __init__(self, f: BinaryIO, limit: int, archive: Path) -> None:
        self.f, self.limit, self.archive, self.read_so_far = f, limit, archive, 0

    def read(self, size: int = -1) -> bytes:
        left = self.limit - self.read_so_far
        data = self.f.read(left + 1 if size < 0 or size > left else size)
        self.read_so_far += len(data)
        if self.read_so_far > self.limit:
            _unsafe(
                self.archive,
                f"it unpacks to more than {self.limit / 2**20:.1f} MB ({ARCHIVE_MAX_RATIO} times its size plus 1 MB, "
                f"at most {ARCHIVE_MAX_BYTES // 2**20} MB)",
            )
        return data


def _unsafe(archive: Path, why: str) -> NoReturn:
    raise DataError(
        f"{archive} was not unpacked: {why}, and CIFAR-10's archive holds only the '{PICKLE_DIR}' folder and its "
        "files; delete it so it is downloaded again."
    )


def _unpack(tar: tarfile.TarFile, folder: Path, archive: Path) -> None:
    """Write the archive's folders and regular files into ``folder``, by cifarlit rather than ``tarfile``: links,
    devices and FIFOs, names outside ``folder`` and more than :data:`ARCHIVE_MAX_MEMBERS` entries are refused;
    file modes and owners are not taken from the archive."""
    folder.mkdir()
    inside = Path(os.path.realpath(folder))
    for count, member in enumerate(tar, start=1):
        if count > ARCHIVE_MAX_MEMBERS:
            _unsafe(archive, f"it holds more than {ARCHIVE_MAX_MEMBERS} entries")
        parts = PurePosixPath(member.name).parts
        if not parts and member.isdir():  # "./": the folder itself
            continue
        target = folder.joinpath(*parts)
        if not parts or member.name.startswith("/") or ".." in parts or not _within(target, inside):
            _unsafe(archive, f"its entry {member.name!r} points outside the folder it is unpacked into")
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
        elif not member.isreg():
            _unsafe(archive, f"its entry {member.name!r} is a {_member_kind(member)}, not a file or folder")
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_member(tar.extractfile(member), target)  # type: ignore[arg-type]
    # tarfile stops quietly at a block that is not a header: what follows the last entry must be padding, or a
    # header lied about its size (the rest is read through the counter too)
    for block in iter(lambda: tar.fileobj.read(2**16), b""):  # type: ignore[union-attr]
        if block.strip(b"\0"):
            _unsafe(archive, "it has data after its last entry (a header that lies about a size)")


def _within(path: Path, folder: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(folder)


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym() or member.islnk():
        return f"link to {member.linkname!r}"
    return {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "FIFO"}.get(
        member.type, f"tar entry of type {member.type!r}"
    )


def write_member(source: BinaryIO, target: Path) -> None:
    """Copy one archive entry into a new file ``target``."""
    # O_NOFOLLOW: never write through a link, even one that appeared after the checks
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(source, out)


def _move_into_place(folder: Path, target: Path) -> None:
    try:
        os.replace(folder, target)  # one rename: the folder appears whole or not at all
    except OSError as err:
        if not target.is_dir():  # else another run extracted it first, and its copy is as good as this one
            raise DataError(
                f"cannot move the extracted '{PICKLE_DIR}' into {target.parent} ({err}); check the folder's "
                "permissions and free space."
            ) from None
