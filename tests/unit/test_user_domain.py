"""User rules without I/O: input validation, password hashing, signing keys and token claims."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import jwt
import pytest

from services.common.errors import InvalidArgument, Unauthenticated
from services.common.settings import load_settings
from services.user import domain as d
from services.user import tokens as t


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Alice@Example.COM", "alice@example.com"),
        ("  bob.smith+shop@mail.example.org \n", "bob.smith+shop@mail.example.org"),
        ("x@a-b.io", "x@a-b.io"),
    ],
)
def test_normalize_email_lowercases_and_trims(raw: str, expected: str) -> None:
    assert d.normalize_email(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "email is required"),
        ("   ", "email is required"),
        ("no-at-sign", "not a valid"),
        ("two@@example.com", "not a valid"),
        ("a b@example.com", "not a valid"),
        ("user@localhost", "not a valid"),
        ("user@-bad.com", "not a valid"),
        ("user@example..com", "not a valid"),
        ("@example.com", "not a valid"),
        ("a" * 250 + "@example.com", "longer than 254"),
    ],
)
def test_normalize_email_rejects(raw: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        d.normalize_email(raw)


def test_normalize_name_trims_and_folds_whitespace() -> None:
    assert d.normalize_name("  Ada \n  Lovelace ") == "Ada Lovelace"


@pytest.mark.parametrize(("raw", "message"), [("", "required"), ("  \t", "required"),
                                               ("n" * 101, "longer than 100")])
def test_normalize_name_rejects(raw: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        d.normalize_name(raw)


def test_name_of_exactly_the_limit_is_accepted() -> None:
    assert d.normalize_name("n" * 100) == "n" * 100


@pytest.mark.parametrize(("pw", "message"), [("", "at least 8"), ("1234567", "at least 8"),
                                             ("p" * 1025, "longer than 1024")])
def test_password_rules(pw: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        d.check_password_rules(pw)


def test_validate_registration_names_the_first_bad_field() -> None:
    with pytest.raises(InvalidArgument, match="email"):
        d.validate_registration("bad", "", "short")
    with pytest.raises(InvalidArgument, match="name"):
        d.validate_registration("a@example.com", "", "short")
    reg = d.validate_registration(" A@Example.com ", " Ann ", "correct horse")
    assert reg == d.Registration("a@example.com", "Ann", "correct horse")


def test_validate_login() -> None:
    assert d.validate_login(" A@B.com ", "pw") == ("a@b.com", "pw")
    with pytest.raises(InvalidArgument):
        d.validate_login("", "pw")
    with pytest.raises(InvalidArgument):
        d.validate_login("a@b.com", "")
    # An absurd password is just a failed login, and costs no scrypt work.
    with pytest.raises(Unauthenticated, match=d.LOGIN_FAILED):
        d.validate_login("a@b.com", "p" * 2000)


def test_validate_user_id() -> None:
    assert d.validate_user_id("abc") == "abc"
    with pytest.raises(InvalidArgument, match="id is required"):
        d.validate_user_id("")
    with pytest.raises(InvalidArgument, match="longer"):
        d.validate_user_id("x" * 129)


# Cheap parameters where only the format or the logic is under test.
CHEAP = d.ScryptParams(n=2**10)


def test_hash_password_round_trip_and_format_at_the_default_cost() -> None:
    encoded = d.hash_password("correct horse")
    scheme, n, r, p, _salt, _digest = encoded.split("$")
    assert (scheme, int(n), int(r), int(p)) == ("scrypt", 2**17, 8, 1)
    assert "correct horse" not in encoded
    assert d.verify_password("correct horse", encoded)
    assert not d.verify_password("correct horsE", encoded)


def test_verify_reads_the_parameters_stored_with_the_hash() -> None:
    legacy = d.hash_password("correct horse", params=d.ScryptParams(n=d.LEGACY_SCRYPT_N))
    assert legacy.startswith("scrypt$16384$8$1$")
    assert d.verify_password("correct horse", legacy)
    cheap = d.hash_password("correct horse", params=CHEAP)
    assert d.verify_password("correct horse", cheap)
    assert not d.verify_password("", cheap)
    # The same salt under other parameters is another hash.
    salt = b"0123456789abcdef"
    assert d.hash_password("pw", salt=salt, params=CHEAP).split("$")[5] != d.hash_password(
        "pw", salt=salt, params=d.ScryptParams(n=2**11)).split("$")[5]


def test_needs_rehash_only_below_the_current_cost() -> None:
    legacy = d.hash_password("pw123456", params=d.ScryptParams(n=d.LEGACY_SCRYPT_N))
    assert d.needs_rehash(legacy)  # against the default, 2^17
    assert d.needs_rehash(legacy, d.ScryptParams(n=2**14, r=16))
    assert not d.needs_rehash(legacy, d.ScryptParams(n=2**14))
    # A lower setting (a test run) never downgrades a stronger hash.
    assert not d.needs_rehash(legacy, CHEAP)
    assert not d.needs_rehash("garbage")


@pytest.mark.parametrize("n", [0, 1, 3, 1000, 2**21])
def test_scrypt_params_refuse_what_scrypt_cannot_or_should_not_run(n: int) -> None:
    with pytest.raises(ValueError, match="power of 2"):
        d.ScryptParams(n=n)


def test_hash_password_uses_a_random_salt() -> None:
    assert d.hash_password("same password", params=CHEAP) != d.hash_password(
        "same password", params=CHEAP)
    salt = b"0123456789abcdef"
    assert d.hash_password("pw123456", salt=salt, params=CHEAP) == d.hash_password(
        "pw123456", salt=salt, params=CHEAP)


@pytest.mark.parametrize("stored", ["", "garbage", "bcrypt$1$2$3$AAAA$AAAA",
                                    "scrypt$x$8$1$AAAA$AAAA", "scrypt$16384$8$1$!!$AAAA",
                                    "scrypt$16384$8$1$AAAA$", "scrypt$1048577$8$1$AAAA$AAAA",
                                    # asks for 2^24 * 8 * 128 bytes: refused unread
                                    "scrypt$16777216$8$1$AAAA$AAAA"])
def test_verify_password_is_false_for_malformed_hashes(stored: str) -> None:
    assert d.verify_password("whatever1", stored) is False


def test_dummy_hash_is_a_real_hash_nobody_knows() -> None:
    assert d.dummy_hash(CHEAP).startswith("scrypt$1024$")
    assert d.dummy_hash(CHEAP) is d.dummy_hash(CHEAP)  # made once
    assert not d.verify_password("password", d.dummy_hash(CHEAP))
    # Checked like a stored hash: scrypt under its parameters, one digest as long.
    params, salt, digest = d._parse(d.dummy_hash(CHEAP))
    real = d._parse(d.hash_password("password", params=CHEAP))
    assert params == real[0] == CHEAP
    assert (len(salt), len(digest)) == (len(real[1]), len(real[2]))


# --- tokens ------------------------------------------------------------------------------

SETTINGS = t.TokenSettings(ttl_s=600, issuer="iss-test", audience="aud-test")


def test_claims_for() -> None:
    claims = t.claims_for("u1", "a@b.com", now=1000, settings=SETTINGS, jti="j1")
    assert claims == {"sub": "u1", "email": "a@b.com", "iss": "iss-test", "aud": "aud-test",
                      "iat": 1000, "nbf": 1000, "exp": 1600, "jti": "j1", "roles": []}
    admin = t.claims_for("u1", "a@b.com", now=1000, settings=SETTINGS, jti="j1",
                         roles=("admin",))
    assert admin["roles"] == ["admin"]


def test_token_settings_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # load_settings makes the data dir
    monkeypatch.setenv("SHOP_TOKEN_TTL_S", "42")
    monkeypatch.setenv("SHOP_JWT_ISSUER", "me")
    monkeypatch.delenv("SHOP_JWT_AUDIENCE", raising=False)
    assert t.TokenSettings.of(load_settings("user").user) == t.TokenSettings(42, "me",
                                                                             "shop-api")
    monkeypatch.setenv("SHOP_TOKEN_TTL_S", "0")
    with pytest.raises(ValueError, match="positive"):
        t.TokenSettings.of(load_settings("user").user)


def test_key_is_made_once_private_and_reloaded(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    ring = t.KeyRing.load_or_create(keys_dir, SETTINGS)
    files = [p for p in keys_dir.iterdir()]
    assert [p.name for p in files] == ["user-ed25519-0001.pem"]
    assert stat.S_IMODE(os.stat(files[0]).st_mode) == 0o600
    again = t.KeyRing.load_or_create(keys_dir, SETTINGS)
    assert again.current.kid == ring.current.kid
    assert len(ring.current.kid) == 16


def test_racing_instances_end_up_with_one_key(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    kids: list[str] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        kids.append(t.KeyRing.load_or_create(keys_dir, SETTINGS).current.kid)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(kids) == 8 and len(set(kids)) == 1
    assert len(list(keys_dir.glob("*.pem"))) == 1
    assert not list(keys_dir.glob(".tmp-*"))


def test_minted_token_verifies_with_the_jwk(tmp_path: Path) -> None:
    ring = t.KeyRing.load_or_create(tmp_path / "keys", SETTINGS)
    token = ring.mint("u1", "a@b.com", now=None)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA" and header["kid"] == ring.current.kid
    [jwk] = ring.jwks()
    assert jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519" and jwk["use"] == "sig"
    assert "=" not in jwk["x"] and "d" not in jwk  # public part only, unpadded
    key = jwt.PyJWK(jwk, algorithm="EdDSA").key
    claims = jwt.decode(token, key, algorithms=["EdDSA"], audience="aud-test",
                        issuer="iss-test")
    assert claims["sub"] == "u1" and claims["email"] == "a@b.com"
    assert claims["exp"] - claims["iat"] == 600
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, key, algorithms=["EdDSA"], audience="other", issuer="iss-test")


def test_expired_token_is_rejected(tmp_path: Path) -> None:
    ring = t.KeyRing.load_or_create(tmp_path / "keys", SETTINGS)
    token = ring.mint("u1", "a@b.com", now=1000)
    key = jwt.PyJWK(ring.jwks()[0], algorithm="EdDSA").key
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(token, key, algorithms=["EdDSA"], audience="aud-test")


def test_rotation_newest_signs_all_are_published(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    old = t.KeyRing.load_or_create(keys_dir, SETTINGS)
    old_token = old.mint("u1", "a@b.com")
    assert t.create_key(keys_dir, generation=2) is True
    assert t.create_key(keys_dir, generation=2) is False  # taken: no overwrite
    ring = t.KeyRing.load_or_create(keys_dir, SETTINGS)
    assert ring.current.generation == 2 and ring.current.kid != old.current.kid
    assert [j["kid"] for j in ring.jwks()] == [ring.current.kid, old.current.kid]
    new_token = ring.mint("u1", "a@b.com")
    assert jwt.get_unverified_header(new_token)["kid"] == ring.current.kid
    keys = {j["kid"]: jwt.PyJWK(j, algorithm="EdDSA").key for j in ring.jwks()}
    for token in (old_token, new_token):
        kid = jwt.get_unverified_header(token)["kid"]
        jwt.decode(token, keys[kid], algorithms=["EdDSA"], audience="aud-test")


def test_a_foreign_file_in_the_keys_dir_fails_loudly(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    (keys_dir / "user-ed25519-0001.pem").write_text("not a key")
    with pytest.raises(ValueError):
        t.KeyRing.load_or_create(keys_dir, SETTINGS)


def test_reload_picks_up_a_key_added_by_someone_else(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    ring = t.KeyRing.load_or_create(keys_dir, SETTINGS)
    first = ring.current.kid
    assert ring.reload() is False
    t.create_key(keys_dir, generation=2)
    assert ring.reload() is True
    assert ring.current.generation == 2 and ring.current.kid != first
    assert {j["kid"] for j in ring.jwks()} == {first, ring.current.kid}
