"""The trust policy settings (issue 12): who must have signed the model, which root digest is
pinned, and what the serving process may inherit. Parsed here, on behalf of `config.py`, from
the same flag-then-environment lookup; every key and certificate file is loaded once at start,
so an unreadable or malformed one is a configuration error (exit 2), not a refusal later.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

Find = Callable[[str | Sequence[str], str | None], tuple[str, str] | None]
_DIGEST = re.compile(r"sha256:([0-9a-fA-F]{64})")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True, slots=True)
class Trust:
    keys: tuple[Path, ...] = ()
    cert: Path | None = None
    identity: str | None = None
    digest: str | None = None  # hex of the pinned root digest
    keep_credentials: bool = False  # FETCH_KEEP_CREDENTIALS: the serving command keeps S3 keys
    refuse_pickle: bool = False  # FETCH_REFUSE_PICKLE
    sign_key: Path | None = None  # publish --sign-key
    sign_chain: Path | None = None  # publish --sign-cert-chain

    @property
    def required(self) -> bool:
        """Any of these makes a valid signature mandatory: fail closed."""
        return bool(self.keys or self.cert or self.digest)


def read_trust(find: Find, problems: list[str]) -> Trust:
    keys = _key_paths(find("FETCH_SIGNER_KEY", "--signer-key"), problems)
    cert = _file(find("FETCH_SIGNER_CERT", "--signer-cert"), problems, "load_certificates")
    identity = find("FETCH_SIGNER_IDENTITY", "--signer-identity")
    if cert is not None and identity is None:
        problems.append("FETCH_SIGNER_CERT: set without FETCH_SIGNER_IDENTITY (whose signature?)")
    if identity is not None and find("FETCH_SIGNER_CERT", "--signer-cert") is None:
        problems.append(f"{identity[0]}: set without FETCH_SIGNER_CERT")
    if keys and cert is not None:
        problems.append("FETCH_SIGNER_KEY and FETCH_SIGNER_CERT: set only one of them")
    sign_key = _file(find("FETCH_SIGN_KEY", "--sign-key"), problems, "load_private_key")
    chain_found = find("FETCH_SIGN_CERT_CHAIN", "--sign-cert-chain")
    chain = _file(chain_found, problems, "load_certificates")
    if chain_found is not None and find("FETCH_SIGN_KEY", "--sign-key") is None:
        problems.append(f"{chain_found[0]}: set without --sign-key")
    return Trust(
        keys=keys,
        cert=cert,
        identity=identity[1] if identity else None,
        digest=_digest(find("FETCH_MODEL_DIGEST", "--model-digest"), problems),
        keep_credentials=_flag(find("FETCH_KEEP_CREDENTIALS", None), problems),
        refuse_pickle=_flag(find("FETCH_REFUSE_PICKLE", None), problems),
        sign_key=sign_key,
        sign_chain=chain,
    )


def _key_paths(found: tuple[str, str] | None, problems: list[str]) -> tuple[Path, ...]:
    if found is None:
        return ()
    where, text = found
    paths = [p.strip() for p in text.split(",") if p.strip()]
    good = [
        path for p in paths if (path := _file((where, p), problems, "load_public_key")) is not None
    ]
    return tuple(good)


def _file(found: tuple[str, str] | None, problems: list[str], load: str) -> Path | None:
    """`found`'s path, checked by calling `omskeys.<load>` on it."""
    if found is None:
        return None
    # cryptography costs ~60 ms of every start (measured, issue 14): only a start with a
    # key or certificate configured pays it.
    from fetcher.verify import omskeys

    loader: Callable[[Path], object] = getattr(omskeys, load)
    where, text = found
    path = Path(text).absolute()
    try:
        loader(path)
    except OSError as exc:
        problems.append(f"{where}: cannot read {text!r} ({exc.strerror or exc})")
        return None
    except ValueError as exc:
        problems.append(f"{where}: {text!r} is not usable ({exc})")
        return None
    return path


def _digest(found: tuple[str, str] | None, problems: list[str]) -> str | None:
    if found is None:
        return None
    match = _DIGEST.fullmatch(found[1].strip())
    if match is None:
        problems.append(f"{found[0]}: expected sha256:<64 hex digits>, got {found[1]!r}")
        return None
    return match.group(1).lower()


def _flag(found: tuple[str, str] | None, problems: list[str]) -> bool:
    if found is None:
        return False
    word = found[1].strip().lower()
    if word not in _TRUE | _FALSE:
        problems.append(f"{found[0]}: expected true or false, got {found[1]!r}")
    return word in _TRUE
