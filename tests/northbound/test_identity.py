"""LFDI/SFDI per IEEE 2030.5 §6.3.4: the standard's worked example, real certificates, hostile text."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from devenv.pki import LocalPki
from northbound.cli import main
from northbound.identity import (
    SFDI_MAX, IdentityError, check_digit, identity_from_certificate, identity_from_fingerprint, parse_fingerprint,
    parse_lfdi, parse_sfdi, sfdi_from_lfdi,
)

# IEEE 2030.5-2018 §6.3.4 worked example (the same values appear in open-source 2030.5 test suites).
EXAMPLE_FINGERPRINT = "3E4F-45AB-31ED-FE5B-67E3-43E5-E456-2E31-984E-23E5-349E-2AD7-4567-2ED1-45EE-213A"
EXAMPLE_LFDI = "3E4F45AB31EDFE5B67E343E5E4562E31984E23E5"
EXAMPLE_SFDI = 167261211391


def test_standard_worked_example() -> None:
    ident = identity_from_fingerprint(parse_fingerprint(EXAMPLE_FINGERPRINT))
    assert ident.lfdi == EXAMPLE_LFDI
    assert ident.sfdi == EXAMPLE_SFDI
    # The arithmetic spelled out: 0x3E4F45AB3 = 16726121139, digit sum 39, check digit 1.
    assert int("3E4F45AB3", 16) == 16726121139 and check_digit("16726121139") == 1


def test_check_digit_is_sum_of_digits_not_luhn() -> None:
    # Luhn would give 7 for this prefix; the standard's rule gives 1 (sum of all digits ≡ 0 mod 10).
    assert sfdi_from_lfdi("3e4f45ab31edfe5b67e343e5e4562e3100000000") == EXAMPLE_SFDI
    assert parse_sfdi("167261211391") == EXAMPLE_SFDI
    with pytest.raises(IdentityError, match=r"sfdi has a wrong check digit \(expected 1\) \(got '167261211397'\)"):
        parse_sfdi("167261211397")


def test_certificate_identity_matches_openssl_fingerprint(pki: LocalPki) -> None:
    pair = pki.client("northbound-identity")
    out = subprocess.run(["openssl", "x509", "-in", str(pair.cert), "-noout", "-fingerprint", "-sha256"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    openssl_hex = out.strip().split("=", 1)[1].replace(":", "")
    pem = pair.cert.read_bytes()
    der = subprocess.run(["openssl", "x509", "-in", str(pair.cert), "-outform", "DER"],
                         capture_output=True, check=True, timeout=30).stdout
    for data in (pem, der):
        ident = identity_from_certificate(data)
        assert ident.lfdi == openssl_hex[:40].upper()
        assert ident.sfdi == parse_sfdi(str(ident.sfdi))


def test_lfdi_parser() -> None:
    assert parse_lfdi(EXAMPLE_LFDI.lower()) == EXAMPLE_LFDI
    for bad in ("", EXAMPLE_LFDI[:-1], EXAMPLE_LFDI + "0", "G" * 40, " " + EXAMPLE_LFDI[1:]):
        with pytest.raises(IdentityError, match="lfdi must be exactly 40 hex digits"):
            parse_lfdi(bad)


def test_sfdi_range() -> None:
    largest = f"{2**36 - 1}{check_digit(str(2**36 - 1))}"
    assert parse_sfdi(largest) == int(largest) <= SFDI_MAX
    top = str((2**36) * 10)                        # 37 bits of prefix: out of range whatever the check digit
    with pytest.raises(IdentityError, match="exceeds the 36-bit range"):
        parse_sfdi(top[:-1] + str(check_digit(top[:-1])))
    for bad in ("", "-1", "1e3", "１２", "1234567890123", True):
        with pytest.raises(IdentityError):
            parse_sfdi(bad)  # type: ignore[arg-type]


@given(st.binary(min_size=20, max_size=20))
def test_every_lfdi_gives_a_valid_sfdi(raw: bytes) -> None:
    lfdi = raw.hex().upper()
    sfdi = sfdi_from_lfdi(lfdi)
    assert parse_sfdi(sfdi) == sfdi and parse_sfdi(str(sfdi)) == sfdi
    assert sfdi // 10 == int.from_bytes(raw, "big") >> (160 - 36)
    assert sum(int(d) for d in str(sfdi)) % 10 == 0


@given(st.text(max_size=80))
def test_parsers_raise_only_identity_error(text: str) -> None:
    for parse in (parse_lfdi, parse_sfdi, parse_fingerprint):
        try:
            parse(text)
        except IdentityError:
            pass


@given(st.integers(min_value=0, max_value=2**36 - 1), st.integers(min_value=1, max_value=9))
def test_one_wrong_check_digit_is_caught(prefix: int, shift: int) -> None:
    good = f"{prefix}{check_digit(str(prefix))}"
    bad = good[:-1] + str((int(good[-1]) + shift) % 10)
    with pytest.raises(IdentityError, match="wrong check digit"):
        parse_sfdi(bad)


@given(st.binary(max_size=2000))
def test_certificate_parser_rejects_garbage_cleanly(data: bytes) -> None:
    with pytest.raises(IdentityError, match="certificate is neither a PEM nor a DER"):
        identity_from_certificate(data)


def test_cli_fingerprint_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["identity", "--fingerprint", EXAMPLE_FINGERPRINT, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"lfdi": EXAMPLE_LFDI, "sfdi": EXAMPLE_SFDI, "valid": True}


def test_cli_cert_text(pki: LocalPki, capsys: pytest.CaptureFixture[str]) -> None:
    pair = pki.client("northbound-identity")
    ident = identity_from_certificate(pair.cert.read_bytes())
    assert main(["identity", "--cert", str(pair.cert)]) == 0
    assert capsys.readouterr().out == f"lfdi: {ident.lfdi}\nsfdi: {ident.sfdi}\nvalid\n"
    assert main(["identity", "--cert", str(pair.cert), "--lfdi", EXAMPLE_LFDI, "--json"]) == 1
    assert "does not match the certificate's" in json.loads(capsys.readouterr().out)["error"]


@pytest.mark.parametrize(("argv", "code", "valid"), [
    (["--sfdi", "167261211391"], 0, True),
    (["--sfdi", "167261211390"], 1, False),
    (["--sfdi", "99999999999999"], 1, False),
    (["--lfdi", EXAMPLE_LFDI], 0, True),
    (["--lfdi", EXAMPLE_LFDI[:39]], 1, False),
    (["--lfdi", EXAMPLE_LFDI, "--sfdi", "167261211391"], 0, True),
    (["--lfdi", "00" + EXAMPLE_LFDI[2:], "--sfdi", "167261211391"], 1, False),
])
def test_cli_validation(argv: list[str], code: int, valid: bool, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["identity", *argv, "--json"]) == code
    body = json.loads(capsys.readouterr().out)
    assert body["valid"] is valid
    if valid:
        assert body["sfdi"] == EXAMPLE_SFDI


def test_cli_unreadable_certificate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["identity", "--cert", str(tmp_path / "missing.pem")]) == 2
    assert "cannot read --cert" in capsys.readouterr().err
    (tmp_path / "junk.pem").write_text("not a certificate")
    assert main(["identity", "--cert", str(tmp_path / "junk.pem")]) == 2
