"""What a user hands to prediction: files, folders, uploaded bytes and zips of photos, expanded into
one input per photo. Zips are read in memory, member by member (never written to disk), with the
untrusted-input checks; a refused or broken item becomes an input with an error sentence.
"""

from __future__ import annotations

import io
import os
import stat
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from lib.data.sources import zip_entry_count
from lib.text import size_text
from lib.vocab import is_archive_name, is_junk_name, is_junk_path

ZIP_MAX_MEMBERS = 10_000
ZIP_MAX_ENTRIES = 20_000  # files and folders listed: counted before the zip is parsed
ZIP_MAX_TOTAL_BYTES = 4 * 1024**3  # declared uncompressed total
ZIP_MAX_MEMBER_BYTES = 256 * 1024**2  # one photo; enforced while reading, whatever the header says
FOLDER_MAX_FILES = 100_000

Source = str | Path | bytes | bytearray


@dataclass
class Quota:
    """What one batch may hold: photos and bytes (zip members counted at their real size). Inputs
    past it become errors without their bytes being read."""

    files: int
    bytes: int
    used_files: int = 0
    used_bytes: int = 0

    def refusal(self, size: int) -> str | None:
        """None when one more photo of `size` bytes fits (and counts it), else why not."""
        if self.used_files + 1 > self.files:
            return f"Only {self.files:,} photos are judged per batch here: send the rest in another batch."
        if self.used_bytes + size > self.bytes:
            return (
                f"This batch is over the {size_text(self.bytes)} limit here: send the rest of the photos "
                "in another batch."
            )
        self.used_files += 1
        self.used_bytes += size
        return None


def unlimited() -> Quota:
    return Quota(files=10**12, bytes=10**15)


@dataclass
class Input:
    """One photo to judge (its bytes or path), or why it can't be (error; skipped = junk in a zip)."""

    name: str
    source: Source | None = None
    error: str | None = None
    skipped: bool = False


def _is_zip_bytes(head: bytes) -> bool:
    return head[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def _head(source: Source) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source[:4])
    with open(source, "rb") as fh:
        return fh.read(4)


def _unsafe_member_reason(info: zipfile.ZipInfo) -> str | None:
    name = info.filename.replace("\\", "/")
    if "\x00" in name:
        return "it contains a file name with a NUL character"
    mode = (info.external_attr >> 16) & 0xFFFF
    if mode and stat.S_ISLNK(mode):
        return f"it contains a link ({info.filename}), which is not allowed"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return f"it contains an absolute path ({info.filename}), which is not allowed"
    if ".." in PurePosixPath(name).parts:
        return f"it contains a path that leaves the archive ({info.filename}), which is not allowed"
    if not info.is_dir() and not is_junk_path(name) and is_archive_name(name):
        return f"it contains another archive ({info.filename}); unpack that one and upload its photos"
    return None


def _zip_entries(name: str, source: Source, quota: Quota) -> Iterator[Input]:
    """The members of a zip as entries, read lazily in memory; one error entry when it is refused."""
    fp: Any = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray)) else source
    try:
        count, exact = zip_entry_count(fp, ZIP_MAX_ENTRIES)
    except OSError as exc:
        yield Input(name, error=f"The zip file cannot be read ({exc.strerror or exc}).")
        return
    if count > ZIP_MAX_ENTRIES:
        held = f"{count:,}" if exact else f"more than {ZIP_MAX_ENTRIES:,}"
        yield Input(
            name, error=f"The zip file lists {held} files and folders; the limit is {ZIP_MAX_ENTRIES:,}."
        )
        return
    try:
        zf = zipfile.ZipFile(fp)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        yield Input(name, error=f"The zip file is damaged and cannot be opened ({exc}).")
        return
    with zf:
        try:
            infos = zf.infolist()
        except Exception as exc:  # a malformed central directory
            yield Input(name, error=f"The zip file is damaged and cannot be opened ({exc}).")
            return
        files = [i for i in infos if not i.is_dir()]
        if len(files) > ZIP_MAX_MEMBERS:
            yield Input(
                name, error=f"The zip file holds {len(files):,} files; the limit is {ZIP_MAX_MEMBERS:,}."
            )
            return
        total = sum(i.file_size for i in files)
        if total > ZIP_MAX_TOTAL_BYTES:
            yield Input(
                name,
                error=f"The zip file unpacks to {size_text(total)}; the limit is {size_text(ZIP_MAX_TOTAL_BYTES)}.",
            )
            return
        for info in infos:
            reason = _unsafe_member_reason(info)
            if reason:
                yield Input(name, error=f"The zip file was refused: {reason}.")
                return
        candidates = 0
        for info in files:
            member = info.filename.replace("\\", "/")
            label = f"{name}/{member}"
            if is_junk_path(member):
                yield Input(label, error="Skipped: a system file, not a photo.", skipped=True)
                continue
            candidates += 1
            if info.flag_bits & 0x1:
                yield Input(label, error="The file is password-protected inside the zip.")
                continue
            if info.file_size > ZIP_MAX_MEMBER_BYTES:
                yield Input(
                    label,
                    error=f"The file is too big ({size_text(info.file_size)} unpacked; "
                    f"the limit is {size_text(ZIP_MAX_MEMBER_BYTES)}).",
                )
                continue
            if refused := quota.refusal(info.file_size):
                yield Input(label, error=refused)
                continue
            try:
                with zf.open(info) as fh:
                    data = fh.read(ZIP_MAX_MEMBER_BYTES + 1)
            except (
                zipfile.BadZipFile,
                OSError,
                ValueError,
                EOFError,
                RuntimeError,
                NotImplementedError,
            ) as exc:
                yield Input(label, error=f"The file is damaged inside the zip ({exc}).")
                continue
            if len(data) > ZIP_MAX_MEMBER_BYTES:
                yield Input(label, error="The file is too big once unpacked (the zip's sizes are wrong).")
                continue
            if _is_zip_bytes(data[:4]):
                yield Input(
                    label, error="This is an archive inside the archive: nested archives are not opened."
                )
                continue
            yield Input(label, source=data)
        if candidates == 0:
            yield Input(name, error="The zip file has no photos in it.")


def expand(items: Iterable[tuple[str, Source]], quota: Quota | None = None) -> Iterator[Input]:
    """Expand the user's items: zips (by content) and folders into their files, paths checked to
    exist, at most `quota` photos and bytes (the rest come back as errors, unread)."""
    quota = quota or unlimited()
    for name, source in items:
        name = str(name)
        if not isinstance(source, (bytes, bytearray)):
            path = Path(source)
            if not path.exists():
                yield Input(name, error="The file does not exist.")
                continue
            if path.is_dir():
                yield from _folder_inputs(name, path, quota)
                continue
            source = path
        try:
            head = _head(source)
        except OSError as exc:
            yield Input(name, error=f"The file cannot be read ({exc.strerror or exc}).")
            continue
        if _is_zip_bytes(head):
            yield from _zip_entries(name, source, quota)
        elif refused := quota.refusal(
            len(source) if isinstance(source, (bytes, bytearray)) else _size(source)
        ):
            yield Input(name, error=refused)
        else:
            yield Input(name, source=source)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _folder_inputs(name: str, folder: Path, quota: Quota) -> Iterator[Input]:
    """Every visible file under a folder (sorted, recursively), or one error when it has none."""
    found = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not is_junk_name(d))
        for file in sorted(filenames):
            if is_junk_name(file):
                continue
            found += 1
            if found > FOLDER_MAX_FILES:
                yield Input(
                    name,
                    error=f"The folder holds more than {FOLDER_MAX_FILES:,} files; the rest are left out.",
                )
                return
            full = Path(dirpath) / file
            shown = f"{name.rstrip('/')}/{full.relative_to(folder).as_posix()}"
            yield from expand([(shown, full)], quota)
    if not found:
        yield Input(name, error="The folder has no files in it.")
