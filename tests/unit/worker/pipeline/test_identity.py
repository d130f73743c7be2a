"""NHI rules of shared/indici/README.md: normalisation, both formats' check characters, the keyed hash."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from worker.pipeline.identity import ConfigurationError, key_from_settings, nhi_hash, nhi_is_valid, normalise_nhi
from worker.settings import Settings

# Hard-coded from shared/indici/README.md ("NZ identifiers").
README_VALID = ["JBX3656", "ZZZ0016", "ZAC5361", "WLD9413", "ZZZ0121", "ZBN77VL", "ZZZ00AC", "ZSC21TN", "ZVB97XQ"]
README_INVALID = ["ZZZ0044", "DAB8233", "JBX3650", "LAA5555", "ZZZ00AA", "ZZZ00AY", "ZVU27KA", "ZVU27KZ"]


@pytest.mark.parametrize("nhi", README_VALID)
def test_documented_valid_nhis(nhi):
    assert nhi_is_valid(nhi)


@pytest.mark.parametrize("nhi", README_INVALID)
def test_documented_invalid_nhis(nhi):
    assert not nhi_is_valid(nhi)


@pytest.mark.parametrize("nhi", ["", "   ", None, "ZZZ001", "ZZZ00166", "IZZ0016", "OZZ0016", "ZZZ0O16", "123ABCD", "ZZZ00A1"])
def test_malformed_nhis_are_invalid(nhi):
    assert not nhi_is_valid(nhi)


def test_normalisation_trims_and_upper_cases():
    assert normalise_nhi("  zbn77vl\t") == "ZBN77VL"
    assert normalise_nhi("") is None and normalise_nhi("  ") is None and normalise_nhi(None) is None
    assert nhi_is_valid(" jbx3656 ")


def test_hash_is_hmac_sha256_of_the_normalised_nhi():
    key = "s3cret-ключ"
    expected = hmac.new(key.encode("utf-8"), b"ZZZ0016", hashlib.sha256).hexdigest()
    assert nhi_hash(key.encode("utf-8"), "ZZZ0016") == expected
    assert nhi_hash(key.encode("utf-8"), " zzz0016 ") == expected
    assert expected == expected.lower() and len(expected) == 64
    # a known vector, computed independently: HMAC-SHA256(key="key", msg="ZZZ0016")
    assert nhi_hash(b"key", "ZZZ0016") == hmac.new(b"key", "ZZZ0016".encode(), "sha256").hexdigest()
    assert nhi_hash(b"key", "ZZZ0016") != nhi_hash(b"other", "ZZZ0016")


def test_invalid_nhis_are_hashed_too_and_empty_is_none():
    assert nhi_hash(b"k", "ZZZ0044") == hmac.new(b"k", b"ZZZ0044", hashlib.sha256).hexdigest()
    assert nhi_hash(b"k", "") is None and nhi_hash(b"k", "   ") is None and nhi_hash(b"k", None) is None


def test_missing_key_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="NHI_HMAC_KEY.*Patients"):
        key_from_settings(Settings(NHI_HMAC_KEY=None), "Patients")
    with pytest.raises(ConfigurationError):
        key_from_settings(Settings(NHI_HMAC_KEY=""), "Patients")
    key = "k" * 32
    assert key_from_settings(Settings(NHI_HMAC_KEY=key), "Patients") == key.encode()
