"""The owner's secret key and the watermark message derived from it.

The key file holds 32 random bytes. The k-bit message m planted in a model is never
stored: it is re-derived as the leading bits of HMAC-SHA256(key, model_id), so whoever
holds the key can recompute it for any model id, and nobody else can.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
from pathlib import Path

import torch

from ..data.folders import read_json_file
from ..errors import InputError

KEY_FORMAT = "modelseal-owner-key"
KEY_VERSION = 1
KEY_BYTES = 32
MAX_BITS = 256


def generate_key(path: str | Path, overwrite: bool = False, secret: bytes | None = None) -> bytes:
    """Write a new random key (or the given `secret`, e.g. the demo's published one) to `path`
    (JSON, mode 0600) and return its bytes.

    The file is written to a temporary name, made private, then moved into place, so it is
    never readable by others and never half-written. An existing file is kept (InputError)
    unless overwrite=True: losing a key loses the ability to prove ownership.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"key path '{path}' is a folder", "give a file name for the key, e.g. --key owner.key")
    if path.exists() and not overwrite:
        raise InputError(f"key file '{path}' already exists",
                         "choose another path, or add --overwrite to replace it (the old key is then lost)")
    if not path.parent.is_dir():  # a typo in the folder must not scatter secrets into new directories
        raise InputError(f"folder '{path.parent}' of the key file does not exist",
                         "create it first (mkdir), or give --key in an existing folder")
    if secret is not None and len(secret) != KEY_BYTES:
        raise ValueError(f"a key is {KEY_BYTES} bytes, got {len(secret)}")
    key = secrets.token_bytes(KEY_BYTES) if secret is None else bytes(secret)
    text = json.dumps({"format": KEY_FORMAT, "version": KEY_VERSION, "secret": key.hex()}, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _move_no_clobber(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return key


def _move_no_clobber(tmp: str, path: Path) -> None:
    # A hard link fails if the target exists, so a file created since the check above
    # is never replaced; filesystems without hard links fall back to a plain rename.
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise InputError(f"key file '{path}' already exists",
                         "choose another path, or add --overwrite to replace it (the old key is then lost)") from None
    except OSError:
        if path.exists():
            raise InputError(f"key file '{path}' already exists", "choose another path") from None
        os.replace(tmp, path)


def load_key(path: str | Path) -> bytes:
    """Read and validate a key file written by generate_key; returns the 32 secret bytes.
    A key file that the group or others may read is used, with a warning on stderr."""
    path = Path(path)
    fix = "give the owner key file written by `modelseal watermark keygen --key FILE`"
    if path.is_dir():
        raise InputError(f"key path '{path}' is a folder, not a key file", fix)
    if not path.is_file():
        raise InputError(f"key file '{path}' does not exist", fix)
    data = read_json_file(path, "key file", fix)
    if not isinstance(data, dict) or data.get("format") != KEY_FORMAT:
        raise InputError(f"'{path}' is not a modelseal owner key file", fix)
    if data.get("version") != KEY_VERSION:
        raise InputError(f"key file '{path}' has version {data.get('version')!r}; this modelseal reads "
                         f"version {KEY_VERSION}", "upgrade modelseal or use a key written by this version")
    try:
        key = bytes.fromhex(str(data.get("secret", "")))
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise InputError(f"key file '{path}' does not hold a {KEY_BYTES}-byte hex secret", fix)
    _warn_if_readable(path)  # a real key only: a file that is no key gets its one line
    return key


def _warn_if_readable(path: Path) -> None:
    """One warning line on stderr when the key file's mode lets the group or others read it:
    anyone who can read the key can claim the owner's models."""
    import stat
    import sys

    from .. import parallel

    mode = path.stat().st_mode
    if os.name == "posix" and mode & (stat.S_IRGRP | stat.S_IROTH) and parallel.is_main():
        who = " and ".join(w for w, bit in (("group", stat.S_IRGRP), ("others", stat.S_IROTH)) if mode & bit)
        print(f"warning: key file '{path}' is readable by {who} (mode {stat.S_IMODE(mode):04o}): whoever reads it "
              f"can claim your models; make it private with: chmod 600 '{path}'", file=sys.stderr, flush=True)


def message_bits(key: bytes, model_id: str, k: int) -> torch.Tensor:
    """The owner's k-bit message m for one model: float tensor (k,) of 0/1.

    The bits are HMAC-SHA256(key, model_id), most significant bit of each byte first
    (256 bits, enough for SleeperMark's 48; k is capped at MAX_BITS).
    """
    if not isinstance(key, (bytes, bytearray)) or len(key) == 0:
        raise ValueError("key must be non-empty bytes")
    if int(k) != k or not 1 <= k <= MAX_BITS:
        raise ValueError(f"k must be an integer in 1..{MAX_BITS}, got {k}")
    digest = hmac.new(bytes(key), str(model_id).encode("utf-8"), hashlib.sha256).digest()
    bits = [(byte >> (7 - i)) & 1 for byte in digest for i in range(8)]
    return torch.tensor(bits[: int(k)], dtype=torch.float32)
