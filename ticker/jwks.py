"""The public keys of a CMS that signs reader tokens itself (setting
``reader_token_public_keys``): a JWK Set (RFC 7517), read and checked once at start.

The setting holds the JWK Set itself (text starting with ``{``) or the path of a file
holding it (relative paths from the working directory)::

    {"keys": [{"kty": "EC", "crv": "P-256", "kid": "cms-2026-01", "alg": "ES256",
               "x": "...", "y": "..."},
              {"kty": "RSA", "kid": "cms-rsa-1", "alg": "RS256", "n": "...", "e": "AQAB"}]}

Each key is parsed by PyJWT (``PyJWK``) with the one algorithm its type allows, and
verifies only tokens of that algorithm (``ticker.tokens``): an EC key on P-256 verifies
ES256, an RSA key of at least ``MIN_RSA_BITS`` verifies RS256; nothing else is accepted.
Every mistake an operator can make is refused at start with a sentence saying what to
fix: no ``kid``, a private key (``d``: the wrong half of the pair was pasted), a shared
secret (``kty`` ``oct``), another key type, curve or algorithm, a short RSA key, two keys
with one kid, a kid that ticker uses for its own secrets (``RESERVED``), bad JSON, a
missing file. (``PyJWKSet`` is not used to read the set: it skips the keys it cannot use
without a word, and a key an operator meant to add must not vanish silently.)
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt import PyJWK
from jwt.exceptions import PyJWKError, PyJWTError

from ticker.errors import ConfigError

SETTING = "reader_token_public_keys"
MIN_RSA_BITS = 2048
MAX_KID = 128
MAX_KEYS = 100
# Members that only a private (or secret) key has.
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
# kids ticker gives its own secrets (``ticker.tokens``): "config" (the setting
# reader_token_secret), "s" + hex digits (secrets in the store), "key:..." (an API key's
# grant), "cms:..." (a grant of these keys), "~..." (the store's bookkeeping).
_RESERVED_RE = re.compile(r"config|s[0-9a-f]+|(?:key:|cms:|~).*", re.DOTALL)
RESERVED = "'config', 's' followed by hex digits, or starting with 'key:', 'cms:' or '~'"


def is_reserved(kid: str) -> bool:
    """Whether ``kid`` is one ticker may give its own secrets (no CMS key may have it)."""
    return _RESERVED_RE.fullmatch(kid) is not None


@dataclasses.dataclass(frozen=True, slots=True)
class PublicKey:
    """One CMS key: verifies tokens whose header names ``kid`` and ``algorithm`` only."""

    kid: str
    algorithm: str  # "ES256" or "RS256"
    jwk: PyJWK = dataclasses.field(repr=False)
    description: str  # "EC P-256" or "RSA 2048 bits": for 'ticker tokens list-secrets'


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class PublicKeys(Mapping[str, PublicKey]):
    """The configured keys by kid (empty: ticker accepts only the tokens it signed);
    compared as a mapping."""

    by_kid: Mapping[str, PublicKey] = dataclasses.field(default_factory=dict)

    def __getitem__(self, kid: str) -> PublicKey:
        return self.by_kid[kid]

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_kid)

    def __len__(self) -> int:
        return len(self.by_kid)


NO_KEYS = PublicKeys()


def load(value: str) -> PublicKeys:
    """The keys of the setting's value (a JWK Set, or the path of a file holding one);
    ConfigError with a sentence saying what to fix."""
    text = value.strip()
    if not text:
        return NO_KEYS
    if text.startswith("{"):
        where = f"Setting {SETTING!r}"
    else:
        path = Path(text).expanduser()
        where = f"The file {str(path)!r} (setting {SETTING!r})"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(
                f"Setting {SETTING!r} names the file {str(path)!r}, which does not exist: give "
                "the path of your CMS's JWK Set (a relative path is from the working "
                "directory), or the JWK Set itself as text starting with '{'.") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"Setting {SETTING!r} names the file {str(path)!r}, which cannot be read: "
                f"{exc}.") from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ConfigError(
            f"{where} is not valid JSON ({exc}): it must be a JWK Set such as "
            '{"keys": [{"kty": "EC", "crv": "P-256", "kid": "...", "x": "...", "y": "..."}]}.'
        ) from None
    return parse(document, where)


def parse(document: Any, where: str = f"Setting {SETTING!r}") -> PublicKeys:
    """The keys of a decoded JWK Set."""
    if isinstance(document, dict) and "kty" in document and "keys" not in document:
        raise ConfigError(
            f"{where} holds one key, not a JWK Set: put it in a set, as "
            '{"keys": [ <the key> ]}.')
    members = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(members, list):
        raise ConfigError(
            f"{where} must be a JWK Set: a JSON object whose 'keys' is a list of public keys.")
    if not members:
        raise ConfigError(
            f"{where} has no keys: add your CMS's public keys, or leave the setting empty "
            "to accept only the reader tokens ticker signs.")
    if len(members) > MAX_KEYS:
        raise ConfigError(f"{where} has {len(members)} keys; at most {MAX_KEYS} are accepted.")
    keys: dict[str, PublicKey] = {}
    for number, member in enumerate(members, 1):
        key = _key(member, f"{where}: key {number}")
        if key.kid in keys:
            raise ConfigError(
                f"{where} has two keys with kid {key.kid!r}: each key needs a kid of its own "
                "(the token's header names the one that verifies it).")
        keys[key.kid] = key
    return PublicKeys(keys)


def _key(member: Any, where: str) -> PublicKey:
    if not isinstance(member, dict):
        raise ConfigError(f"{where} is not a JSON object (a JWK).")
    kid = member.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ConfigError(
            f"{where} has no 'kid': give every key a kid, and have your CMS put the kid of the "
            "key it signs with in each token's header.")
    if len(kid) > MAX_KID or not kid.isprintable() or not kid.isascii():
        raise ConfigError(
            f"{where} has a kid that is not 1 to {MAX_KID} printable ASCII characters.")
    where = f"{where} (kid {kid!r})"
    if is_reserved(kid):
        raise ConfigError(
            f"{where}: that kid is reserved for ticker's own signing secrets (reserved kids are "
            f"{RESERVED}): give the key another kid, in the setting and in your CMS.")
    kty = member.get("kty")
    if kty == "oct":
        raise ConfigError(
            f"{where} is a shared secret (kty 'oct'): this setting takes the public keys of a "
            "CMS (EC P-256 for ES256, RSA for RS256). For a shared HS256 secret, use the "
            "setting 'reader_token_secret'.")
    private = [name for name in PRIVATE_MEMBERS if name in member]
    if private:
        raise ConfigError(
            f"{where} is a private key (it has {', '.join(repr(n) for n in private)}): give "
            "ticker the public key only (without 'd' and the other private members); the "
            "private key stays with your CMS. Whoever has seen this configuration can sign "
            "tokens with it: make a new key pair.")
    alg = member.get("alg")
    if kty == "EC":
        if member.get("crv") != "P-256":
            raise ConfigError(
                f"{where} is on curve {member.get('crv')!r}: only P-256 (ES256) is accepted "
                "for EC keys.")
        algorithm = "ES256"
    elif kty == "RSA":
        algorithm = "RS256"
    else:
        raise ConfigError(
            f"{where} has key type {kty!r}: only EC keys on P-256 (ES256) and RSA keys "
            f"(RS256, at least {MIN_RSA_BITS} bits) are accepted.")
    if alg is not None and alg != algorithm:
        raise ConfigError(
            f"{where} has alg {alg!r}: an {kty} key here verifies {algorithm} only (set alg "
            f"to {algorithm!r} or leave it out).")
    use = member.get("use")
    if use is not None and use != "sig":
        raise ConfigError(f"{where} has use {use!r}: a key that verifies tokens has use 'sig'.")
    ops = member.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise ConfigError(f"{where} has key_ops {ops!r}: it must include 'verify'.")
    try:
        jwk = PyJWK(member, algorithm=algorithm)
    except (PyJWTError, PyJWKError) as exc:
        raise ConfigError(f"{where} is not a valid {kty} public key: {str(exc)[:200]}.") from None
    if kty == "EC":
        if not isinstance(jwk.key, ec.EllipticCurvePublicKey):
            raise ConfigError(f"{where} is not an EC public key.")
        if not isinstance(jwk.key.curve, ec.SECP256R1):
            raise ConfigError(f"{where} is not on curve P-256.")
        description = "EC P-256"
    else:
        if not isinstance(jwk.key, rsa.RSAPublicKey):
            raise ConfigError(f"{where} is not an RSA public key.")
        bits = jwk.key.key_size
        if bits < MIN_RSA_BITS:
            raise ConfigError(
                f"{where} is an RSA key of {bits} bits: at least {MIN_RSA_BITS} are needed "
                "(a shorter one can be broken). Make a new key pair of 2048 bits or more "
                "(or an EC P-256 one) for your CMS.")
        description = f"RSA {bits} bits"
    return PublicKey(kid, algorithm, jwk, description)
