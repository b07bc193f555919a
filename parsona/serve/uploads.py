"""Unpack an uploaded adapter archive (tar, tar.gz/bz2/xz or zip) safely into an empty directory.

An upload is untrusted bytes, so nothing here calls ``extractall``. Each member is checked and
written by hand:

- regular files only: symlinks, hard links, devices and FIFOs are refused;
- names are relative, with no ``..``, no backslash, no leading dot; either flat or all inside one
  top-level folder (what ``tar -cf x.tar lora_dir`` makes); nothing deeper;
- only ``.json`` and ``.safetensors`` files (never a pickle); ``README.md``, which PEFT writes
  beside every adapter, is skipped;
- at most ``MAX_MEMBERS`` members of any kind, each ``.json`` at most ``MAX_JSON_BYTES``, and at most
  :func:`unpacked_limit` bytes in all. A member's declared size is checked *before* anything of it is
  written, and the bytes are counted again while streaming (a declared size can lie); a compressed tar
  is decompressed through a counter too, so its headers cannot expand without bound either. A zip bomb
  is therefore refused having written nothing.

Every refusal is a ``ConfigError`` on field ``file`` that says what to change.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import re
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import IO, Iterator

from parsona.errors import ConfigError

ALLOWED_SUFFIXES = (".json", ".safetensors")
SKIPPED = frozenset({"README.md"})
MAX_MEMBERS = 16            # a PEFT LoRA folder has 3 files and 1 folder entry
MAX_FILES = MAX_MEMBERS     # (the old name)
MAX_JSON_BYTES = 1 << 20    # adapter_config.json is a few KiB
MAX_UNPACKED = 256 << 20    # whatever the upload limit
MAX_RATIO = 8               # unpacked / packed: weights barely compress (~1.1x; ~2x when PEFT's B starts at 0)
RATIO_SLACK = 1 << 20       # tiny archives may expand more than MAX_RATIO
_TAR_OVERHEAD = 1 << 20     # headers and padding a decompressed tar adds to its files' bytes
_MAX_ZIP_DIRECTORY = 64 << 10  # central directory bytes: 16 entries need a few KiB
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CHUNK = 1 << 20
_COMPRESSED = {b"\x1f\x8b": lambda f: gzip.GzipFile(fileobj=f), b"BZh": bz2.BZ2File,
               b"\xfd7zXZ\x00": lzma.LZMAFile}  # magic -> a reader of the decompressed stream

Member = tuple[str, bool, int, "IO[bytes] | None"]  # name, is a folder, declared size, its bytes


def bad(problem: str, fix: str = "Upload a tar or zip of a saved PEFT LoRA directory "
        "(adapter_config.json + adapter_model.safetensors).") -> ConfigError:
    return ConfigError("file", fix, problem=problem)


def unpacked_limit(packed: int, max_bytes: int) -> int:
    """The most bytes an archive of ``packed`` bytes may unpack to."""
    return min(max_bytes, MAX_UNPACKED, MAX_RATIO * packed + RATIO_SLACK)


def extract_archive(data: bytes, dest: Path, max_bytes: int) -> list[str]:
    """Unpack ``data`` into the empty directory ``dest``; return the file names written.

    ``max_bytes`` caps the unpacked total (further capped by :func:`unpacked_limit`).
    """
    limit = unpacked_limit(len(data), max_bytes)
    try:
        if data[:4] == b"PK\x03\x04":
            _check_zip_directory(data)
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                return _write_all(_zip_members(archive), dest, limit)
        with _open_tar(data, limit) as archive:
            return _write_all(_tar_members(archive), dest, limit)
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError,
            RuntimeError, NotImplementedError) as exc:
        # RuntimeError: encrypted zip members; NotImplementedError: unsupported compression;
        # OSError without errno: a corrupt gzip/bz2 stream (one with errno is ours, e.g. a full disk)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise bad(f"the archive is corrupt ({type(exc).__name__}: {exc})") from None


def _open_tar(data: bytes, limit: int) -> tarfile.TarFile:
    """A tar read as a stream; a compressed one through a counter capped at ``limit`` plus headers."""
    opener = next((o for magic, o in _COMPRESSED.items() if data.startswith(magic)), None)
    raw: IO[bytes] = io.BytesIO(data)
    if opener is not None:
        raw = io.BufferedReader(_Capped(opener(raw), limit + _TAR_OVERHEAD, limit))
    try:
        return tarfile.open(fileobj=raw, mode="r|")
    except tarfile.TarError:
        raise bad("not a tar, tar.gz or zip archive") from None


class _Capped(io.RawIOBase):
    """Reads ``source`` and refuses to go past ``cap`` bytes (a decompression bomb stops here)."""

    def __init__(self, source: IO[bytes], cap: int, limit: int):
        self.source, self.cap, self.limit, self.seen = source, cap, limit, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.source.readinto(buffer)
        self.seen += n
        if self.seen > self.cap:
            raise _too_big(self.limit)
        return n


def _check_zip_directory(data: bytes) -> None:
    """Refuse a zip whose central directory is large before zipfile parses all of it into memory."""
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - 65_557))  # end record: 22 bytes + a comment
    if end < 0 or len(data) < end + 22:
        return  # zipfile reports it as corrupt
    entries, directory_bytes = struct.unpack_from("<HI", data, end + 10)
    zip64 = end >= 20 and data.startswith(b"PK\x06\x07", end - 20)  # its locator: counts that may be far larger
    if entries > MAX_MEMBERS or directory_bytes > _MAX_ZIP_DIRECTORY or zip64:
        raise bad(f"more than {MAX_MEMBERS} members (or a zip64 directory)",
                  f"Upload at most {MAX_MEMBERS} files: the adapter's .json and .safetensors files.")


def _tar_members(archive: tarfile.TarFile) -> Iterator[Member]:
    for member in archive:
        if member.isdir():
            yield member.name, True, 0, None
        elif member.isreg():
            yield member.name, False, member.size, archive.extractfile(member)
        else:
            raise bad(f"{member.name!r} is a link or special file", "Archive regular files only (no symlinks or hard links).")


def _zip_members(archive: zipfile.ZipFile) -> Iterator[Member]:
    for info in archive.infolist():
        file_type = (info.external_attr >> 16) & 0o170000  # Unix file type; 0 when the zip tool set none
        if file_type not in (0, 0o100000, 0o040000):            # only regular files and directories
            raise bad(f"{info.filename!r} is a link or special file", "Archive regular files only (no symlinks).")
        yield info.filename, info.is_dir(), info.file_size, None if info.is_dir() else archive.open(info)


def _write_all(members: Iterator[Member], dest: Path, limit: int) -> list[str]:
    written: list[str] = []
    top: str | None = None
    total = count = 0
    for raw_name, is_dir, declared, stream in members:
        count += 1
        if count > MAX_MEMBERS:
            raise bad(f"more than {MAX_MEMBERS} members",
                      f"Upload at most {MAX_MEMBERS} files: the adapter's .json and .safetensors files.")
        parts = _parts(raw_name)
        if is_dir:
            if len(parts) > 1:
                raise bad(f"{raw_name!r} is nested too deep", "Put the files at the top of the archive or in one folder.")
            continue
        top = _check_folder(raw_name, parts, top, bool(written))
        name = parts[-1]
        if name in SKIPPED:
            continue
        _check_file_name(raw_name, name, written)
        cap = min(limit - total, MAX_JSON_BYTES if name.endswith(".json") else limit)
        if declared > cap:  # before writing a byte of it
            raise _too_big(limit) if declared > limit - total else bad(
                f"{name!r} is larger than {MAX_JSON_BYTES} bytes", "Upload the adapter's own small config file.")
        total += _copy_capped(stream, dest / name, cap, limit)
        written.append(name)
    if not written:
        raise bad("the archive holds no .json or .safetensors file")
    return written


def _check_folder(raw_name: str, parts: list[str], top: str | None, any_written: bool) -> str | None:
    """The archive's one top-level folder (None if flat); files are all flat or all in one folder."""
    if len(parts) == 2:
        if top not in (None, parts[0]) or (top is None and any_written):
            raise bad(f"{raw_name!r} is outside the archive's one folder", "Put all files in one folder.")
        return parts[0]
    if len(parts) == 1:
        if top is not None:
            raise bad(f"{raw_name!r} is outside the archive's one folder", "Put all files in one folder.")
        return None
    raise bad(f"{raw_name!r} is nested too deep", "Put the files at the top of the archive or in one folder.")


def _check_file_name(raw_name: str, name: str, written: list[str]) -> None:
    if not name.endswith(ALLOWED_SUFFIXES) or not _NAME.fullmatch(name):
        raise bad(f"{raw_name!r} is not allowed", "Upload only .json and .safetensors files with plain names "
                  "(pickled .bin weights are refused: save with safetensors).")
    if name in written:
        raise bad(f"{name!r} appears twice")


def _copy_capped(stream: IO[bytes], target: Path, cap: int, limit: int) -> int:
    """Stream one member to ``target``, refusing it as soon as it passes ``cap`` bytes."""
    size = 0
    with open(target, "xb") as out:
        while chunk := stream.read(min(_CHUNK, cap - size + 1)):
            size += len(chunk)
            if size > cap:
                raise _too_big(limit)
            out.write(chunk)
    return size


def _too_big(limit: int) -> ConfigError:
    return bad(f"it unpacks to more than {limit} bytes", "Upload a smaller adapter.")


def _parts(name: str) -> list[str]:
    """The path parts of a member name, or an error if it could point outside the target."""
    if not name or "\\" in name or "\0" in name or name.startswith("/") or re.match(r"[A-Za-z]:", name):
        raise bad(f"unsafe member name {name!r}", "Use relative paths inside the archive.")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." or p.startswith(".") for p in parts):
        raise bad(f"unsafe member name {name!r}", "Use relative paths without '..' or hidden files.")
    return parts
