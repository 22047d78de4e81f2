#!/usr/bin/env python3
"""Independent test vectors for onionvpn relay crypto and the circuit handshake.

Computes everything from fixed inputs with Python's `cryptography` package (no calls into
the Rust code), and writes:
  proto/testdata/relay_crypto_vectors.json
  proto/testdata/handshake_vectors.json

Usage (from the repository root):  pip install cryptography && python3 tools/vectors/gen_vectors.py
The spec is docs/spec.md.
"""

import hashlib
import json
import os
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives import serialization

CELL_BODY_LEN = 507
TAG_LEN = 16
R = bytes(16)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def det(label: str, n: int) -> bytes:
    """Deterministic 'random' bytes: SHA-256 in counter mode over a label."""
    out = b""
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b"onionvpn-test-vectors:" + label.encode() + struct.pack(">I", i)).digest()
        i += 1
    return out[:n]


# ---------------------------------------------------------------- relay crypto

NONCE_CHAIN_LEN = 4


def nonce(n: int, prev: bytes) -> bytes:
    """N = prev[0..4] || n (8 bytes big-endian)."""
    assert len(prev) == TAG_LEN
    return prev[:NONCE_CHAIN_LEN] + struct.pack(">Q", n)


def ecb_enc(key: bytes, block: bytes) -> bytes:
    e = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return e.update(block) + e.finalize()


def ecb_dec(key: bytes, block: bytes) -> bytes:
    d = Cipher(algorithms.AES(key), modes.ECB()).decryptor()
    return d.update(block) + d.finalize()


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def gcm_encrypt(k: bytes, nonce12: bytes, aad: bytes, plaintext: bytes):
    """(ciphertext, tag over aad and the ciphertext): standard AES-256-GCM."""
    out = AESGCM(k).encrypt(nonce12, plaintext, aad)
    return out[:-16], out[-16:]


def gcm_decrypt_unverified(k: bytes, nonce12: bytes, aad: bytes, ciphertext: bytes):
    """(plaintext, tag over aad and the ciphertext) without verifying anything.

    The CTR part is AES-CTR starting at J0 + 1 = nonce || 00000002; the tag is obtained by
    re-encrypting the recovered plaintext (the tag depends only on aad and the ciphertext).
    """
    ctr = Cipher(algorithms.AES(k), modes.CTR(nonce12 + b"\x00\x00\x00\x02")).encryptor()
    plaintext = ctr.update(ciphertext) + ctr.finalize()
    ct2, tag = gcm_encrypt(k, nonce12, aad, plaintext)
    assert ct2 == ciphertext
    return plaintext, tag


class Layer:
    """One layer: keys K, U; counter n; chain value prev (T' of the previous cell, R at first)."""

    def __init__(self, k: bytes, u: bytes):
        self.k, self.u, self.n, self.prev = k, u, 0, R

    def wrap(self, body: bytes) -> bytes:
        t_in, c_in = body[:TAG_LEN], body[TAG_LEN:]
        c, t = gcm_encrypt(self.k, nonce(self.n, self.prev), self.prev, c_in)
        self.n += 1
        self.prev = t_in
        return ecb_enc(self.u, xor(t_in, t)) + c

    def peel(self, body: bytes):
        t_in, c_in = body[:TAG_LEN], body[TAG_LEN:]
        c, t = gcm_decrypt_unverified(self.k, nonce(self.n, self.prev), self.prev, c_in)
        self.n += 1
        t_out = xor(ecb_dec(self.u, t_in), t)
        self.prev = t_out
        return t_out + c, t_out == R


def hop_keys(i: int) -> bytes:
    return det(f"hop-keys-{i}", 128)


def relay_vectors():
    hops = [hop_keys(i) for i in range(3)]
    # client-side and relay-side layer objects (independent state, as on the wire)
    c_fwd = [Layer(h[0:32], h[32:64]) for h in hops]
    c_bwd = [Layer(h[64:96], h[96:128]) for h in hops]
    r_fwd = [Layer(h[0:32], h[32:64]) for h in hops]
    r_bwd = [Layer(h[64:96], h[96:128]) for h in hops]
    cells = []
    # a schedule with counters advancing unevenly across layers
    # (every layer's chain value changes along the way; cells to a hop leave its chain at R)
    schedule = [("forward", 2), ("forward", 0), ("backward", 2), ("forward", 1),
                ("backward", 0), ("backward", 1), ("forward", 2), ("backward", 2),
                ("forward", 2), ("backward", 1), ("forward", 1), ("forward", 1),
                ("backward", 2), ("backward", 2), ("forward", 0), ("forward", 2)]
    for idx, (direction, hop) in enumerate(schedule):
        msg = det(f"message-{idx}", CELL_BODY_LEN - TAG_LEN)
        hops_seen = []
        if direction == "forward":
            body = R + msg
            for j in range(hop, -1, -1):
                body = c_fwd[j].wrap(body)
            wire = body
            # relays peel in order
            for j in range(0, 3):
                body, rec = r_fwd[j].peel(body)
                hops_seen.append(body.hex())
                if rec:
                    assert j == hop
                    break
            else:
                raise AssertionError("not recognized")
            assert body[TAG_LEN:] == msg
        else:
            body = r_bwd[hop].wrap(R + msg)
            hops_seen.append(body.hex())
            for j in range(hop - 1, -1, -1):
                body = r_bwd[j].wrap(body)
                hops_seen.append(body.hex())
            wire = body
            for j in range(0, 3):
                body, rec = c_bwd[j].peel(body)
                if rec:
                    assert j == hop
                    break
            else:
                raise AssertionError("not recognized")
            assert body[TAG_LEN:] == msg
        cells.append({
            "direction": direction,
            "hop": hop,
            "message": msg.hex(),
            # forward: the body the client sends to hop 0 (after all its wraps);
            # backward: the body hop 0 sends to the client.
            "wire": wire.hex(),
            # forward: body after each relay's peel (0..=hop);
            # backward: body after the originating relay's wrap, then each earlier relay's.
            "per_hop": hops_seen,
        })
    # relay and client layers end in the same state (counter, chain)
    for a, b in zip(c_fwd + c_bwd, r_fwd + r_bwd):
        assert (a.n, a.prev) == (b.n, b.prev)
    # a single-layer check with a non-zero start counter and chain value, exercising the
    # byte order of N = prev[0..4] || n and prev as associated data
    k, u = det("single-k", 32), det("single-u", 32)
    single = Layer(k, u)
    single.n = 0x0102030405060708
    single.prev = det("single-prev", 16)
    prev_before = single.prev
    t_prime = det("single-t", 16)
    c_prime = det("single-c", CELL_BODY_LEN - TAG_LEN)
    wrapped = single.wrap(t_prime + c_prime)
    assert single.prev == t_prime
    check = Layer(k, u)
    check.n, check.prev = 0x0102030405060708, prev_before
    assert check.peel(wrapped) == (t_prime + c_prime, False)
    return {
        "description": "onionvpn relay crypto (docs/spec.md); generated by tools/vectors/gen_vectors.py",
        "cell_body_len": CELL_BODY_LEN,
        "hops": [h.hex() for h in hops],
        "cells": cells,
        "single_layer": {
            "k": k.hex(), "u": u.hex(), "counter": single.n - 1, "prev": prev_before.hex(),
            "input": (t_prime + c_prime).hex(), "wrapped": wrapped.hex(),
        },
    }


# ---------------------------------------------------------------- handshake

PROTOID = b"onionvpn-ntor3-v1"
INFO_CLIENT = b"onionvpn-ntor3-v1:client-msg"
INFO_KEYS = b"onionvpn-ntor3-v1:keys"


def x25519_pub(secret: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def x25519(secret: bytes, public: bytes) -> bytes:
    # raises on an all-zero result, as the protocol requires
    return X25519PrivateKey.from_private_bytes(secret).exchange(X25519PublicKey.from_public_bytes(public))


def hkdf(ikm: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=PROTOID, info=info).derive(ikm)


def handshake_vector(label: str, ext_c: bytes, ext_s: bytes):
    x = det(label + "-x", 32)
    y = det(label + "-y", 32)
    b = det(label + "-b", 32)
    ident = det(label + "-id", 32)
    B = x25519_pub(b)
    X = x25519_pub(x)
    Y = x25519_pub(y)
    # client
    Bx = x25519(x, B)
    k_c = hkdf(Bx + ident + B + X, INFO_CLIENT, 32)
    enc_c = AESGCM(k_c).encrypt(bytes(12), ext_c, ident + B + X)
    client_msg = ident + B + X + enc_c
    # relay
    xb = x25519(b, X)
    assert xb == Bx
    xy = x25519(y, X)
    okm = hkdf(xy + xb + ident + B + X + Y + enc_c, INFO_KEYS, 32 + 128)
    k_s, keys = okm[:32], okm[32:]
    enc_s = AESGCM(k_s).encrypt(bytes(12), ext_s, ident + B + X + Y)
    server_msg = Y + enc_s
    # client finish
    assert x25519(x, Y) == xy
    assert AESGCM(k_s).decrypt(bytes(12), enc_s, ident + B + X + Y) == ext_s
    return {
        "name": label,
        "x": x.hex(), "y": y.hex(), "b": b.hex(), "id": ident.hex(),
        "B": B.hex(), "X": X.hex(), "Y": Y.hex(),
        "ext_c": ext_c.hex(), "ext_s": ext_s.hex(),
        "k_c": k_c.hex(), "k_s": k_s.hex(),
        "client_handshake": client_msg.hex(),
        "server_handshake": server_msg.hex(),
        "hop_keys": keys.hex(),
    }


def handshake_vectors():
    return {
        "description": "onionvpn circuit handshake (docs/spec.md); generated by tools/vectors/gen_vectors.py",
        "vectors": [
            handshake_vector("hs-empty", b"", b""),
            handshake_vector("hs-typical", bytes([1, 4]) + b"pay?", bytes([2, 8]) + b"terms:42"),
            handshake_vector("hs-max", det("ext-c-max", 256), det("ext-s-max", 256)),
        ],
    }


def main():
    out = os.path.join(ROOT, "proto", "testdata")
    os.makedirs(out, exist_ok=True)
    for name, data in [("relay_crypto_vectors.json", relay_vectors()),
                       ("handshake_vectors.json", handshake_vectors())]:
        with open(os.path.join(out, name), "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        print("wrote", os.path.join("proto", "testdata", name))


if __name__ == "__main__":
    main()
