"""The cryptography of a model signature: ECDSA over the DSSE PAE, with a bare public key or a
certificate that chains to a trusted CA bundle (issue 12). Only `cryptography` is used; the
reference implementation's pyOpenSSL store is a test dependency, never needed here.

Key identity follows model-signing: the bundle's `publicKey.hint` is the sha256 of the signer's
PEM SubjectPublicKeyInfo, so a signature made by an unknown key is told apart from a forged one
without trying every configured key.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fetcher.errors import SignatureError
from fetcher.verify.oms import Envelope, pae

_CURVES: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
    "secp521r1": hashes.SHA512,
}


def _hash_for(key: ec.EllipticCurvePublicKey) -> hashes.HashAlgorithm:
    try:
        return _CURVES[key.curve.name]()
    except KeyError:
        raise ValueError(f"unsupported curve {key.curve.name} (P-256, P-384 or P-521)") from None


def key_hint(key: ec.EllipticCurvePublicKey) -> str:
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(pem).hexdigest()


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """Raises OSError or ValueError (the caller says which setting named the file)."""
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("not an EC public key (P-256, P-384 or P-521)")
    _hash_for(key)
    return key


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an EC private key (P-256, P-384 or P-521)")
    _hash_for(key.public_key())
    return key


def load_certificates(path: Path) -> list[x509.Certificate]:
    certs = x509.load_pem_x509_certificates(path.read_bytes())
    if not certs:
        raise ValueError("no PEM certificate in it")
    return certs


def _ecdsa_ok(key: ec.EllipticCurvePublicKey, env: Envelope) -> bool:
    try:
        key.verify(env.signature, pae(env.payload), ec.ECDSA(_hash_for(key)))
        return True
    except (InvalidSignature, ValueError):
        return False


def verify_with_keys(env: Envelope, keys: Sequence[ec.EllipticCurvePublicKey], name: str) -> str:
    """The signer (`key:<hint>`) among `keys` whose signature holds, or SignatureError."""
    if env.certificates and not env.key_hint:
        raise SignatureError(f"{name}: signed with a certificate, but FETCH_SIGNER_KEY is set")
    candidates = [k for k in keys if env.key_hint in (None, key_hint(k))]
    if not candidates:
        raise SignatureError(
            f"{name}: signed by an unknown key (sha256 {env.key_hint}), not one of FETCH_SIGNER_KEY"
        )
    for key in candidates:
        if _ecdsa_ok(key, env):
            return f"key:{key_hint(key)}"
    raise SignatureError(f"{name}: bad signature (the model signature does not verify)")


# --- certificates ----------------------------------------------------------------------------


def verify_with_certificate(
    env: Envelope, roots: Sequence[x509.Certificate], identity: str, name: str
) -> str:
    """The leaf certificate's identity, once its chain reaches `roots` and it matches."""
    if not env.certificates:
        raise SignatureError(f"{name}: signed with a bare key, but FETCH_SIGNER_CERT is set")
    try:
        chain = [x509.load_der_x509_certificate(der) for der in env.certificates]
    except ValueError:
        raise SignatureError(f"{name}: a certificate in the bundle cannot be parsed") from None
    leaf = chain[0]
    _check_chain(chain, roots, name)
    _check_signing_use(leaf, name)
    names = identities(leaf)
    if identity not in names:
        shown = ", ".join(sorted(names)[:4]) or "none"
        raise SignatureError(f"{name}: signed by {shown}, not FETCH_SIGNER_IDENTITY {identity!r}")
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not _ecdsa_ok(key, env):
        raise SignatureError(f"{name}: bad signature (the model signature does not verify)")
    return f"cert:{identity}"


def _check_chain(
    chain: list[x509.Certificate], roots: Sequence[x509.Certificate], name: str
) -> None:
    # Validity is checked at signing time, as the reference does (the leaf's notBefore): a
    # signature stays valid after its short-lived certificate expires.
    at = chain[0].not_valid_before_utc
    for cert in chain:
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise SignatureError(f"{name}: certificate {cert.subject.rfc4514_string()} not valid")
    for child, parent in itertools.pairwise(chain):
        if not (_is_ca(parent) and _issued_by(child, parent)):
            raise SignatureError(f"{name}: the certificate chain in the bundle is broken")
    top = chain[-1]
    for root in roots:
        if top.fingerprint(hashes.SHA256()) == root.fingerprint(hashes.SHA256()):
            return
        if _is_ca(root) and _issued_by(top, root):
            return
    raise SignatureError(f"{name}: the signing certificate does not chain to FETCH_SIGNER_CERT")


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _check_signing_use(leaf: x509.Certificate, name: str) -> None:
    try:
        if leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            return
    except x509.ExtensionNotFound:
        pass
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.CODE_SIGNING in eku:
            return
    except x509.ExtensionNotFound:
        pass
    raise SignatureError(f"{name}: the signing certificate is not for digital signatures")


def identities(cert: x509.Certificate) -> set[str]:
    """SAN entries (DNS, e-mail, URI) and the subject, as RFC 4514 and as its common name."""
    out = {cert.subject.rfc4514_string()}
    out |= {str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return out
    for kind in (x509.DNSName, x509.RFC822Name, x509.UniformResourceIdentifier):
        out |= {str(v) for v in san.get_values_for_type(kind)}
    return out


# --- signing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SigningKey:
    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...] = ()  # leaf first: the certificate method

    def sign(self, payload: bytes) -> tuple[bytes, dict[str, Any]]:
        """The DER ECDSA signature of the PAE and the bundle's verification material."""
        public = self.key.public_key()
        signature = self.key.sign(pae(payload), ec.ECDSA(_hash_for(public)))
        if not self.chain:
            return signature, {"publicKey": {"hint": key_hint(public)}}
        der = [c.public_bytes(serialization.Encoding.DER) for c in self.chain]
        certs = [{"rawBytes": base64.b64encode(d).decode()} for d in der]
        return signature, {"x509CertificateChain": {"certificates": certs}}


def load_signing_key(key_path: Path, chain_path: Path | None) -> SigningKey:
    """Raises OSError / ValueError; a chain's first certificate must hold the key's public half."""
    key = load_private_key(key_path)
    if chain_path is None:
        return SigningKey(key)
    chain = load_certificates(chain_path)
    if chain[0].public_key() != key.public_key():
        raise ValueError("the first certificate of the chain is not for this key")
    return SigningKey(key, tuple(chain))
